"""Allowance throughput and latency beside the framework's own ceiling, in one run.

Starts gunicorn on PostgreSQL, then drives three loads one after the other with the
same number of concurrent clients: GET /api/v1/whoami (a trivial authenticated DRF
view: the ceiling), POST /api/v1/allowances, and a full allowance + commit cycle.
Every client hits the same tenant and feature budgets: the worst case for row locks.
The three loads take turns for several rounds and each figure is the median over the
rounds, so a burst of noise on a shared machine moves one round, not the result; the
CPU the server and the database spent per request is printed beside the latencies.

The load comes from wrk (Debian: ``apt-get install wrk``), a C load generator, so
the clients take little of the CPU the server needs; one wrk thread per client, each
with one keep-alive connection.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/comptroller_bench \\
        .venv/bin/python bench/allowance_throughput.py [--clients 16] [--seconds 5] [--rounds 3] [--workers 4]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.server import PORT, setup_database, start_server

WRK_DIR = Path(__file__).resolve().parent / "wrk"
LOADS = [("whoami (ceiling)", "whoami"), ("allowance", "allowance"), ("allowance+commit", "cycle")]


def cpu_seconds(root_pid: int) -> tuple[float, float]:
    """Return the CPU seconds used so far by gunicorn (``root_pid`` and its workers) and by PostgreSQL."""
    tick = os.sysconf("SC_CLK_TCK")
    app = db = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended meanwhile
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        used = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        if int(stat.parent.name) == root_pid or int(fields[1]) == root_pid:
            app += used
        elif name.startswith("postgres"):
            db += used
    return app, db


@dataclass
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    app_cpu_ms: float = 0.0  # CPU per request in gunicorn, and in PostgreSQL
    db_cpu_ms: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def median_result(results: list[Result]) -> Result:
    """Return the median of each figure over the rounds (requests scaled to the median rate)."""
    seconds = statistics.median(r.seconds for r in results)
    return Result(
        round(statistics.median(r.rps for r in results) * seconds), seconds,
        *(statistics.median(getattr(r, f) for r in results) for f in ("p50_ms", "p99_ms", "app_cpu_ms", "db_cpu_ms")),
    )


def wrk(script: str, secret: str, clients: int, seconds: float, server_pid: int) -> Result:
    before = cpu_seconds(server_pid)
    env = {**os.environ, "BENCH_KEY": secret, "BENCH_WRK_DIR": str(WRK_DIR)}
    out = subprocess.run(
        ["wrk", f"-t{clients}", f"-c{clients}", f"-d{round(seconds)}s", "--timeout", "10s",
         "-s", str(WRK_DIR / f"{script}.lua"), f"http://127.0.0.1:{PORT}"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    match = re.search(r"BENCH requests=(\d+) seconds=([\d.]+) failed=(\d+) p50_us=(\d+) p99_us=(\d+)", out)
    if match is None:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    requests, elapsed, failed, p50, p99 = match.groups()
    if int(failed):
        raise SystemExit(f"{script}: {failed} of {requests} requests failed:\n{out}")
    after = cpu_seconds(server_pid)
    n = int(requests)
    return Result(n, float(elapsed), int(p50) / 1000, int(p99) / 1000,
                  (after[0] - before[0]) * 1000 / n, (after[1] - before[1]) * 1000 / n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="above 1: gthread workers with keep-alive")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("This benchmark needs wrk: apt-get install wrk")
    secret = setup_database()
    server = start_server(args.workers, args.threads)
    try:
        wrk("whoami", secret, args.clients, 2, server.pid)  # warm every worker's imports and connections
        rounds = [
            {name: wrk(script, secret, args.clients, args.seconds, server.pid) for name, script in LOADS}
            for _ in range(args.rounds)
        ]
    finally:
        server.terminate()
        server.wait()
    results = {name: median_result([r[name] for r in rounds]) for name, _ in LOADS}
    ceiling = results["whoami (ceiling)"].rps
    print(f"gunicorn -w {args.workers}{f' --threads {args.threads}' if args.threads > 1 else ''}, {args.clients} concurrent clients (wrk), {args.rounds} rounds of "
          f"{args.seconds:.0f} s per load, {os.cpu_count()} CPUs shared by server, database and load")
    print(f"{'load':<18} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs ceiling':>10} "
          f"{'app CPU ms/req':>15} {'db CPU ms/req':>14}")
    for name, r in results.items():
        print(f"{name:<18} {r.rps:8.0f} {r.p50_ms:8.1f} {r.p99_ms:8.1f} {r.rps / ceiling:10.0%} "
              f"{r.app_cpu_ms:15.2f} {r.db_cpu_ms:14.2f}")
    cycles = results["allowance+commit"].rps / 2
    print(f"allowance+commit: {cycles:.0f} full cycles/s (two requests each; latencies are per request)")


if __name__ == "__main__":
    main()
