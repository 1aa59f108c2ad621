"""The allowance and the full governed cycle beside the stack's floor for a durable hold, in one run.

Starts two servers under the same gunicorn settings (the project's gunicorn.conf.py, sync
workers) on the same PostgreSQL database: the app, and ``bench/floor.py`` (a bare WSGI app
whose request is one autocommitted statement that locks a counter, checks a limit and
inserts a hold: what no durable allowance on this stack can beat). Then, in turns over
several rounds, it drives with the same number of concurrent clients

- ``floor``: POST the allowance body to the floor app;
- ``allowance``: POST /api/v1/allowances;
- ``cycle``: allowance then commit, one connection alternating (a full governed call);
- ``single``: one client, allowance + commit in a loop, timed per cycle;
- ``single-floor``: one client, two floor holds in a loop (the single client's floor).

Every client hits the same tenant and feature budgets: the worst case for row locks. Each
figure is the median over the rounds, so a burst of noise on a shared machine moves one
round, not the result. The figures that matter are ratios taken in one run (allowance ÷
floor, cycles ÷ allowance), beside the CPU per request of gunicorn (the app's or the
floor's processes) and of PostgreSQL (the backends serving the bench database).

The load comes from wrk (Debian: ``apt-get install wrk``), a C load generator, so the
clients take little of the CPU the servers need; one wrk thread per client, each with one
connection. The single-client loop is Python (http.client), timed around each cycle.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/comptroller_bench \\
        .venv/bin/python bench/allowance_throughput.py [--clients 16] [--seconds 10] [--rounds 3] [--workers 4]

With ``--against OTHER_CHECKOUT`` (a worktree of another commit, with its .venv), that
checkout's app runs beside this one on a database of its own (the bench database's name
with ``_against``), and each of its loads runs right after this one's in every round, so a
change is measured against its base on the same machine at the same moment: on a shared
machine, runs taken one after the other drift more than most changes move the figures.

Targets (issue 19): allowance ≥ 0.60 of the floor with p99 < 50 ms at 16 clients; full
cycles ≥ 0.45 of the allowance rate; single-client allowance + commit ≤ 5 ms at p50.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import environ

from bench.floor import floor_setup
from bench.server import bench_env, free_port, setup_database, start_server

WRK_DIR = Path(__file__).resolve().parent / "wrk"
ASK = {"feature": "bench", "model": "claude-haiku-4-5", "input_tokens": 800, "max_tokens": 256}
USAGE = {"usage": {"input_tokens": 800, "output_tokens": 120}}
HOLD_ID = re.compile(rb'"id":\s*"(hold_[0-9a-f]+)"')


def cpu_seconds(root_pid: int, database: str) -> dict[tuple[str, int], float]:
    """Return the CPU seconds used so far by each process of gunicorn (``root_pid`` and its
    workers: ``("app", pid)``) and of PostgreSQL's backends connected to ``database`` (their
    process title names it: ``("db", pid)``)."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[tuple[str, int], float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            title = (stat.parent / "cmdline").read_bytes() if "postgres" in text[:64] else b""
        except OSError:
            continue  # the process ended meanwhile
        fields = text[text.rindex(")") + 2:].split()
        pid = int(stat.parent.name)
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        if pid == root_pid or int(fields[1]) == root_pid:
            used[("app", pid)] = seconds
        elif title.startswith(b"postgres:") and f" {database} ".encode() in title:
            used[("db", pid)] = seconds
    return used


def cpu_between(before: dict[tuple[str, int], float], after: dict[tuple[str, int], float]) -> tuple[float, float]:
    """Return the app's and the database's CPU seconds between two readings.

    Per process: one that started meanwhile counts whole, one that ended meanwhile is left
    out (its last part is lost, where a sum of totals would subtract all it ever used).
    """
    spent = {"app": 0.0, "db": 0.0}
    for key, seconds in after.items():
        spent[key[0]] += seconds - before.get(key, 0.0)
    return spent["app"], spent["db"]


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


@dataclass
class Target:
    port: int
    pid: int
    database: str
    secret: str


def wrk(script: str, target: Target, clients: int, seconds: float) -> Result:
    before = cpu_seconds(target.pid, target.database)
    env = {**os.environ, "BENCH_KEY": target.secret, "BENCH_WRK_DIR": str(WRK_DIR)}
    out = subprocess.run(
        ["wrk", f"-t{clients}", f"-c{clients}", f"-d{round(seconds)}s", "--timeout", "10s",
         "-s", str(WRK_DIR / f"{script}.lua"), f"http://127.0.0.1:{target.port}"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    match = re.search(r"BENCH requests=(\d+) seconds=([\d.]+) failed=(\d+) p50_us=(\d+) p99_us=(\d+)", out)
    if match is None:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    requests, elapsed, failed, p50, p99 = match.groups()
    if int(failed):
        raise SystemExit(f"{script}: {failed} of {requests} requests failed:\n{out}")
    app_cpu, db_cpu = cpu_between(before, cpu_seconds(target.pid, target.database))
    n = int(requests)
    return Result(n, float(elapsed), int(p50) / 1000, int(p99) / 1000, app_cpu * 1000 / n, db_cpu * 1000 / n)


def single_client(target: Target, seconds: float, *, floor: bool = False) -> Result:
    """One client: allowance, then commit, in a loop; latency per cycle (both requests).

    Against the floor app (``floor``), two of its durable holds in a row: what no cycle of
    two requests on this stack can beat.
    """
    headers = {"Authorization": f"Bearer {target.secret}", "Content-Type": "application/json"}
    ask, usage = json.dumps(ASK).encode(), json.dumps(USAGE).encode()
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)

    def post(path: str, body: bytes, expected: int) -> bytes:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != expected:
            raise SystemExit(f"single client: {path} answered {response.status}: {data[:300]!r}")
        return data

    before = cpu_seconds(target.pid, target.database)
    latencies: list[int] = []
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter_ns()
        match = HOLD_ID.search(post("/api/v1/allowances", ask, 201))
        if match is None:
            raise SystemExit("single client: the allowance answered no hold id")
        if floor:
            post("/api/v1/allowances", ask, 201)
        else:
            post(f"/api/v1/allowances/{match.group(1).decode()}/commit", usage, 200)
        latencies.append(time.perf_counter_ns() - t0)
    elapsed = time.perf_counter() - start
    conn.close()
    app_cpu, db_cpu = cpu_between(before, cpu_seconds(target.pid, target.database))
    cuts = statistics.quantiles(latencies, n=100)
    n = len(latencies)
    return Result(n, elapsed, cuts[49] / 1e6, cuts[98] / 1e6, app_cpu * 1000 / n, db_cpu * 1000 / n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="above 1: gthread workers with keep-alive")
    parser.add_argument("--only", default="", help="comma-separated loads to run (floor,allowance,cycle,single,single-floor)")
    parser.add_argument("--against", type=Path, default=None,
                        help="another checkout (with its .venv): its app runs beside this one, on a database "
                             "of its own, each of its loads in the same rounds, and each figure is compared")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("This benchmark needs wrk: apt-get install wrk")
    env = bench_env()
    database = environ.Env.db_url_config(env["DATABASE_URL"])["NAME"]
    dsn = env["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    secret = setup_database()
    floor_setup(dsn)
    app_port, floor_port = free_port(), free_port()
    app = start_server(args.workers, args.threads, port=app_port, quiet=True)
    floor = start_server(args.workers, args.threads, port=floor_port, app="bench.floor:application",
                         env={**env, "BENCH_FLOOR_DSN": dsn, "BENCH_KEY": secret}, quiet=True)
    app_target = Target(app_port, app.pid, database, secret)
    floor_target = Target(floor_port, floor.pid, database, secret)
    servers = [app, floor]
    loads = {
        "floor": lambda: wrk("allowance", floor_target, args.clients, args.seconds),
        "allowance": lambda: wrk("allowance", app_target, args.clients, args.seconds),
        "cycle": lambda: wrk("cycle", app_target, args.clients, args.seconds),
        "single": lambda: single_client(app_target, args.seconds),
        "single-floor": lambda: single_client(floor_target, args.seconds, floor=True),
    }
    if args.only:
        loads = {name: run for name, run in loads.items() if name in args.only.split(",")}
    warm = [app_target]
    if args.against:
        # The other checkout's app on its own database (its schema may differ), the same settings.
        other_env = {**env, "DATABASE_URL": env["DATABASE_URL"].rstrip("/") + "_against"}
        other_database = environ.Env.db_url_config(other_env["DATABASE_URL"])["NAME"]
        other_secret = setup_database(args.against.resolve(), other_env)
        other_port = free_port()
        other = start_server(args.workers, args.threads, port=other_port, env=other_env, quiet=True,
                             root=args.against.resolve())
        servers.append(other)
        other_target = Target(other_port, other.pid, other_database, other_secret)
        warm.append(other_target)
        against = {
            "allowance": lambda: wrk("allowance", other_target, args.clients, args.seconds),
            "cycle": lambda: wrk("cycle", other_target, args.clients, args.seconds),
            "single": lambda: single_client(other_target, args.seconds),
        }
        # Each of the other app's loads beside this one's, so both see the same machine; who
        # goes first alternates by round (the load before leaves dead rows and busy caches).
        loads = dict(item for name, run in loads.items()
                     for item in [(name, run)] + ([(f"{name}@", against[name])] if name in against else []))

    def in_turn(index: int) -> list[str]:
        """The loads' order in round ``index``: with --against, each pair swapped every other round."""
        if index % 2 == 0:
            return list(loads)
        return [turned for name in loads if not name.endswith("@")
                for turned in ([f"{name}@", name] if f"{name}@" in loads else [name])]

    try:
        # Warm every worker's imports, connections and prepared statements.
        wrk("allowance", floor_target, args.clients, 2)
        for target in warm:
            wrk("cycle", target, args.clients, 2)
        rounds = [{name: loads[name]() for name in in_turn(index)} for index in range(args.rounds)]
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    results = {name: median_result([r[name] for r in rounds]) for name in loads}
    print(f"gunicorn -w {args.workers}{f' --threads {args.threads}' if args.threads > 1 else ''}, "
          f"{args.clients} concurrent clients (wrk), {args.rounds} rounds of {args.seconds:.0f} s per load, "
          f"{os.cpu_count()} CPUs shared by servers, database and load; Redis {'on' if env.get('REDIS_URL') else 'off'}")
    print(f"{'load':<36} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'app CPU ms':>11} {'db CPU ms':>10}")
    labels = {
        "floor": "floor (bare durable hold)", "allowance": "allowance", "cycle": "cycle (requests)",
        "single": "single client (cycles)", "single-floor": "single client, floor (pairs)",
    }
    for name, r in results.items():
        label = labels[name.rstrip("@")] + (" @against" if name.endswith("@") else "")
        print(f"{label:<36} {r.rps:8.0f} {r.p50_ms:8.1f} {r.p99_ms:8.1f} {r.app_cpu_ms:11.2f} {r.db_cpu_ms:10.2f}")
    print("(CPU per request; for the single client, per cycle of two requests)")
    if args.against:
        print(f"@against: the app of {args.against}")
        for name in ("allowance", "cycle"):
            if name in results:
                print(f"{name}: this checkout's rate / --against's, round by round: "
                      + " / ".join(f"{r[name].rps / r[name + '@'].rps:.2f}" for r in rounds))
        if "floor" in results and "allowance" in results:
            print(f"@against allowance / floor: {results['allowance@'].rps / results['floor'].rps:.2f}")
        if "cycle" in results and "allowance" in results:
            print(f"@against cycles / allowance: {results['cycle@'].rps / 2 / results['allowance@'].rps:.2f}")
        if "single" in results:
            print(f"@against single client p50: {results['single@'].p50_ms:.1f} ms")
    if "cycle" in results:
        print(f"full cycles: {results['cycle'].rps / 2:.0f}/s (two requests each; latencies are per request)")
    if "floor" in results and "allowance" in results:
        print(f"allowance / floor: {results['allowance'].rps / results['floor'].rps:.2f}  (target >= 0.60, "
              f"p99 {results['allowance'].p99_ms:.1f} ms, target < 50)")
    if "cycle" in results and "allowance" in results:
        print(f"cycles / allowance: {results['cycle'].rps / 2 / results['allowance'].rps:.2f}  (target >= 0.45)")
    if "single" in results:
        floor_pair = f", two floor holds in a row {results['single-floor'].p50_ms:.1f} ms" if "single-floor" in results else ""
        print(f"single client allowance + commit p50: {results['single'].p50_ms:.1f} ms  (target <= 5{floor_pair})")


if __name__ == "__main__":
    main()
