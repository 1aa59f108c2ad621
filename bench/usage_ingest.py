"""Usage ingest: batches of 1,000 events through HTTP into PostgreSQL, in events per second.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/comptroller_bench \
        .venv/bin/python bench/usage_ingest.py [--batches 30] [--clients 2]
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.server import PORT, setup_database, start_server

MODELS = ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-5"]


def batch(rng: random.Random, size: int = 1000) -> dict:
    events = []
    for _ in range(size):
        events.append({
            "feature": "bench",
            "model": rng.choice(MODELS),
            "request_id": f"msg_{uuid.uuid4().hex}",
            "usage": {"input_tokens": rng.randint(50, 5000), "output_tokens": rng.randint(10, 1500),
                      "cache_read_input_tokens": rng.choice([0, 0, 2048, 8192]),
                      "service_tier": rng.choice(["standard", "standard", "batch"])},
            "stop_reason": rng.choice(["end_turn", "end_turn", "max_tokens"]),
            "latency_ms": rng.randint(200, 9000),
        })
    return {"events": events}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    secret = setup_database()
    rng = random.Random(7)
    bodies = [batch(rng) for _ in range(args.batches)]
    server = start_server(args.workers)
    try:
        queue = list(bodies)
        lock = threading.Lock()

        def worker():
            with httpx.Client(base_url=f"http://127.0.0.1:{PORT}",
                              headers={"Authorization": f"Bearer {secret}"}, timeout=120) as client:
                while True:
                    with lock:
                        if not queue:
                            return
                        body = queue.pop()
                    r = client.post("/api/v1/usage", json=body)
                    assert r.status_code == 201, r.text[:300]

        threads = [threading.Thread(target=worker) for _ in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        events = args.batches * 1000
        print(f"{events} events in {args.batches} batches of 1,000, {args.clients} clients, "
              f"gunicorn -w {args.workers}: {elapsed:.2f} s = {events / elapsed:,.0f} events/s")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
