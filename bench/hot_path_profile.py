"""The app's CPU per hot request, in process: a constant view, the allowance and the commit, then profiles.

Calls the app's WSGI handler directly, as a gunicorn sync worker does (the same settings as
``bench/server.py``: DEBUG off, the production middleware, PostgreSQL; Redis off unless
``--redis``), with the bodies the throughput bench sends, and measures this process's CPU
(``time.process_time``) around each request, so the database's share is out and other
load on the machine moves the figures little. It prints, per request:

- ``constant``: ``POST /api/v1/bench-constant``, a view answering a constant through the
  same middleware and URL resolution (``bench/hot_path_urls.py``): the stack's own cost;
- ``allowance``: ``POST /api/v1/allowances``;
- ``commit``: ``POST /api/v1/allowances/{id}/commit`` of a fresh hold (its allowance is not timed),
  which this process granted and kept (``budgets.settle.hold_granted``);
- ``commit-read``: the same, of a hold this process did not keep: the commit reads it first;
- ``floor``: ``bench/floor.py``'s WSGI app (one statement, no framework) with the same body;

with the round trips to PostgreSQL each one makes (counted on the wire) and the CPU of the
PostgreSQL backend serving it (``/proc/PID/schedstat``, when the server is on this host; the
mean over every request), then the top
entries of a cProfile of the allowance and of the commit (cumulative time). gunicorn's own
request handling (~0.3 ms here) is not in any of these figures; the throughput bench pays it
for every load alike.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/comptroller_bench \\
        .venv/bin/python -m bench.hot_path_profile [--requests 2000] [--top 15] [--sort cumulative] [--redis] [--gap MS]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ASK = json.dumps({"feature": "bench", "model": "claude-haiku-4-5", "input_tokens": 800, "max_tokens": 256}).encode()
USAGE = json.dumps({"usage": {"input_tokens": 800, "output_tokens": 120}}).encode()
HOLD_ID = re.compile(rb'"id":\s*"(hold_[0-9a-f]+)"')


def environ_for(path: str, body: bytes, secret: str) -> dict:
    """Return the WSGI environ gunicorn makes for wrk's POST (bench/wrk/common.lua)."""
    return {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "RAW_URI": path, "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8765",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)), "HTTP_HOST": "127.0.0.1:8765", "HTTP_AUTHORIZATION": f"Bearer {secret}",
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }


class Caller:
    """Calls one WSGI app the way gunicorn does: the environ, start_response, the body read, close()."""

    def __init__(self, app: Callable, secret: str) -> None:
        self.app, self.secret = app, secret

    def post(self, path: str, body: bytes, expected: int) -> bytes:
        status: list[str] = []
        result = self.app(environ_for(path, body, self.secret), lambda s, headers, exc_info=None: status.append(s))
        try:
            data = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()  # Django's request_finished: old connections are closed or kept here
        if not status[0].startswith(str(expected)):
            raise SystemExit(f"{path} answered {status[0]}: {data[:300]!r}")
        return data

    def allowance(self) -> bytes:
        return self.post("/api/v1/allowances", ASK, 201)

    def hold(self) -> str:
        match = HOLD_ID.search(self.allowance())
        if match is None:
            raise SystemExit("the allowance answered no hold id")
        return match.group(1).decode()

    def hold_elsewhere(self) -> str:
        """Return a hold as if another process had granted it: this one does not keep it."""
        from budgets import settle

        hold_id = self.hold()
        settle._granted.clear()
        return hold_id

    def commit(self, hold_id: str) -> bytes:
        return self.post(f"/api/v1/allowances/{hold_id}/commit", USAGE, 200)


def cpu_ns(run: Callable[[], object], prepare: Callable[[], tuple] = tuple, n: int = 2000,
           backend: int | None = None, pause: Callable[[], None] | None = None) -> tuple[list[int], int]:
    """Return the CPU ns of each of n calls of ``run(*prepare())`` (``prepare`` not timed), and
    the CPU ns PostgreSQL's ``backend`` (a process id) spent in them all; ``pause``, when given,
    runs (untimed) before each call."""
    samples = []
    db = 0
    for _ in range(n):
        args = prepare()
        if pause:
            pause()
        before = backend_cpu_ns(backend)
        t0 = time.process_time_ns()
        run(*args)
        samples.append(time.process_time_ns() - t0)
        db += backend_cpu_ns(backend) - before
    return samples, db


def backend_cpu_ns(pid: int | None) -> int:
    """Return the CPU ns a process has run so far (Linux's schedstat, to the nanosecond), or 0."""
    if pid is None:
        return 0
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[0])


def round_trips(run: Callable[[], object], prepare: Callable[[], tuple] = tuple, n: int = 20,
                pgconn: Callable[[], object] | None = None) -> float:
    """Return the round trips to PostgreSQL per call of ``run(*prepare())`` over n calls, on
    Django's connection or the one ``pgconn()`` returns (counted on the wire)."""
    from governance.postgresql.wire import RoundTrips
    from governance.postgresql.wire import round_trips as django_round_trips

    total = 0
    for _ in range(n):
        args = prepare()
        with RoundTrips(pgconn()) if pgconn else django_round_trips() as count:
            run(*args)
        total += count.count
    return total / n


def profile(run: Callable[[], object], prepare: Callable[[], tuple], n: int, top: int, sort: str,
            save: str = "", pause: Callable[[], None] | None = None) -> str:
    profiler = cProfile.Profile(time.process_time)  # CPU only: the database's time is out
    for _ in range(n):
        args = prepare()
        if pause:
            pause()
        profiler.enable()
        run(*args)
        profiler.disable()
    if save:
        profiler.dump_stats(save)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats(sort).print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10, help="the requests in this many rounds, interleaved")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--sort", default="cumulative", help="pstats order: cumulative, tottime, ...")
    parser.add_argument("--redis", action="store_true", help="keep REDIS_URL (the rate limit and policy version)")
    parser.add_argument("--loads", default="constant,allowance,commit,commit-read,floor", help="the requests to measure")
    parser.add_argument("--gap", type=float, default=0, metavar="MS",
                        help="sleep MS (untimed) before each request, as a worker idles between requests; "
                             "0 (default): back to back")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile", default="allowance,commit", help="the requests to profile")
    parser.add_argument("--save", default="", help="write each profile to SAVE-<request>.pstats")
    args = parser.parse_args()

    if not args.redis:
        os.environ.pop("REDIS_URL", None)
    from bench.floor import floor_setup
    from bench.server import bench_env, setup_database

    os.environ.update(bench_env())
    os.environ["DJANGO_SETTINGS_MODULE"] = "governance.settings"
    secret = setup_database()
    dsn = os.environ["DATABASE_URL"].replace("postgres://", "postgresql://", 1)
    floor_setup(dsn)
    os.environ.update(BENCH_FLOOR_DSN=dsn, BENCH_KEY=secret)

    import django

    django.setup()
    from django.conf import settings

    settings.ROOT_URLCONF = "bench.hot_path_urls"
    from bench import floor
    from governance.hot_handler import HotPathHandler  # what governance.wsgi serves

    app = Caller(HotPathHandler(), secret)
    bare = Caller(floor.application, secret)
    loads: dict[str, tuple[Callable, Callable[[], tuple]]] = {
        "constant": (lambda: app.post("/api/v1/bench-constant", ASK, 201), tuple),
        "allowance": (app.allowance, tuple),
        "commit": (app.commit, lambda: (app.hold(),)),  # its hold kept by this process
        "commit-read": (app.commit, lambda: (app.hold_elsewhere(),)),  # as in another process
        "floor": (lambda: bare.post("/", ASK, 201), tuple),
    }
    loads = {name: loads[name] for name in args.loads.split(",")}
    for run, prepare in loads.values():  # imports, connections, prepared statements, caches
        cpu_ns(run, prepare, 200)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        app_backend = cursor.fetchone()[0]
    # The database's CPU is read off the backend serving each load (same host): schedstat.
    backends = {name: floor._conn().info.backend_pid if name == "floor" else app_backend for name in loads}
    if not os.path.exists(f"/proc/{app_backend}/schedstat"):
        backends = dict.fromkeys(loads)  # PostgreSQL on another host: no database CPU
    # An idle gap before each request: this VM then runs it cold, as the loaded workers do (bench/README.md).
    pause = partial(time.sleep, args.gap / 1000) if args.gap else None
    print(f"{args.requests} requests each, in process, {args.rounds} rounds interleaved; "
          f"Redis {'on' if args.redis else 'off'}; "
          + (f"{args.gap:g} ms idle before each request" if pause else "back to back"))
    # Each round runs every load in turn, so a burst of other load on the machine moves one
    # round of each, not one load's figure; the figure is the median of the rounds' means.
    size = max(1, args.requests // args.rounds)
    samples: dict[str, list[list[int]]] = {name: [] for name in loads}
    db_ns: dict[str, int] = dict.fromkeys(loads, 0)
    for _ in range(args.rounds):
        for name, (run, prepare) in loads.items():
            app_ns, database_ns = cpu_ns(run, prepare, size, backends[name], pause)
            samples[name].append(app_ns)
            db_ns[name] += database_ns
    # The least round is the one other processes disturbed least: the figure to compare runs by.
    print(f"{'request':<12}{'CPU ms':>8}{'least':>8}{'most':>8}{'p10':>8}{'p50':>8}{'round trips':>13}"
          f"{'db CPU ms':>11}")
    for name, (run, prepare) in loads.items():
        means = [statistics.fmean(chunk) / 1e6 for chunk in samples[name]]
        cuts = statistics.quantiles([ns / 1e6 for chunk in samples[name] for ns in chunk], n=10)
        trips = round_trips(run, prepare, pgconn=(lambda: floor._conn().pgconn) if name == "floor" else None)
        db = db_ns[name] / 1e6 / (size * args.rounds) if backends[name] else float("nan")
        print(f"{name:<12}{statistics.median(means):>8.3f}{min(means):>8.3f}{max(means):>8.3f}"
              f"{cuts[0]:>8.3f}{cuts[4]:>8.3f}{trips:>13.2f}{db:>11.3f}")
    if args.no_profile:
        return
    for name in args.profile.split(","):
        run, prepare = loads[name]
        print(f"\n--- {name}: cProfile over {args.requests} requests, by {args.sort} ---")
        save = f"{args.save}-{name}.pstats" if args.save else ""
        print(profile(run, prepare, args.requests, args.top, args.sort, save, pause))


if __name__ == "__main__":
    main()
