"""Allowance throughput and latency beside the framework's own ceiling, in one run.

Starts gunicorn on PostgreSQL, then drives three endpoints with the same number of
concurrent clients: GET /api/v1/whoami (a trivial authenticated DRF view: the
ceiling), POST /api/v1/allowances, and a full allowance + commit cycle.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/comptroller_bench \
        .venv/bin/python bench/allowance_throughput.py [--clients 16] [--seconds 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.server import PORT, setup_database, start_server

ASK = {"feature": "bench", "model": "claude-haiku-4-5", "input_tokens": 800, "max_tokens": 256}
USAGE = {"usage": {"input_tokens": 800, "output_tokens": 120}}


def whoami(client):
    r = client.get("/api/v1/whoami")
    assert r.status_code == 200, r.text


def allowance(client):
    r = client.post("/api/v1/allowances", json=ASK)
    assert r.status_code == 201, r.text


def cycle(client):
    r = client.post("/api/v1/allowances", json=ASK)
    assert r.status_code == 201, r.text
    c = client.post(f"/api/v1/allowances/{r.json()['id']}/commit", json=USAGE)
    assert c.status_code == 200, c.text


def run(op, secret: str, clients: int, seconds: float) -> tuple[float, float, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker():
        local = []
        with httpx.Client(base_url=f"http://127.0.0.1:{PORT}",
                          headers={"Authorization": f"Bearer {secret}"}, timeout=30) as client:
            op(client)  # warm the connection
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                op(client)
                local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    return len(latencies) / elapsed, p50, p99


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    secret = setup_database()
    server = start_server(args.workers)
    try:
        results = {}
        for name, op in [("whoami (ceiling)", whoami), ("allowance", allowance), ("allowance+commit", cycle)]:
            results[name] = run(op, secret, args.clients, args.seconds)
        ceiling = results["whoami (ceiling)"][0]
        print(f"gunicorn -w {args.workers}, {args.clients} concurrent clients, {args.seconds:.0f} s each")
        print(f"{'endpoint':<20} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs ceiling':>10}")
        for name, (rps, p50, p99) in results.items():
            print(f"{name:<20} {rps:8.0f} {p50:8.1f} {p99:8.1f} {rps / ceiling:10.0%}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
