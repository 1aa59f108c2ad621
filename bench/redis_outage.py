"""Redis stopped for 20 s under 16 clients looping allowance → commit: no 500s, and the books balance.

Starts its own redis-server on a free loopback port (never the shared one) and gunicorn on
PostgreSQL using it as cache and broker, for a fresh tenant with tenant, feature and
model-family block budgets. Client threads loop allowance → commit (a commit that fails is
retried, as comptroller-client's spool would); after ``--before`` seconds the redis-server is
stopped (SIGTERM) for ``--outage`` seconds, then started again on the same port (empty, as a
restarted cache is), and the load goes on for ``--after`` seconds. With ``--stall`` it is
frozen (SIGSTOP) instead: connections open, nothing answers. It prints the answers by
phase and status, then checks the books in the database: every committed hold has exactly one
usage event and every usage event one hold, every commit answered 200 is a committed hold, no
hold is left held, and each window's spent and reserved equal the ledger and the live holds.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/comptroller_bench \\
        .venv/bin/python bench/redis_outage.py [--clients 16] [--before 10] [--outage 20] [--after 10] \\
        [--workers 4] [--stall] [--root DIR]

``--root`` serves another checkout of the project (e.g. a worktree of an older commit) with
this virtualenv, to compare before and after a change.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.server import bench_env, database_create
from tests.faults import refused_port

ROOT = Path(__file__).resolve().parent.parent
ASK = {"feature": "outage", "model": "claude-sonnet-4-5", "input_tokens": 1000, "max_tokens": 1000}
USAGE = {"input_tokens": 1000, "output_tokens": 400}

SETUP = """
from governance.audit import Actor
from governance.models import Feature, KeyRole, Tenant
from governance.services import api_key_create
from budgets.models import Budget
tenant = Tenant.objects.create(slug=SLUG, name="Redis outage bench")
feature = Feature.objects.create(tenant=tenant, key="outage", name="Outage", default_model="claude-sonnet-4-5")
big = 10**6 * 10**9  # $1,000,000: the load never hits a limit, so every allowance is granted
Budget.objects.create(tenant=tenant, name="Tenant", scope="tenant", period="month", limit_nano=big)
Budget.objects.create(tenant=tenant, name="Feature", scope="feature", feature=feature, period="day", limit_nano=big)
Budget.objects.create(tenant=tenant, name="Sonnet", scope="tenant", model_families=["sonnet"], period="week",
                      limit_nano=big)
print(api_key_create(tenant=tenant, actor=Actor.system(), name="bench", role=KeyRole.SERVICE)[1])
"""

BOOKS = """
import json
from django.db.models import Sum
from budgets.models import BudgetWindow, Hold
from governance.models import Tenant
from usage.models import UsageEvent
tenant = Tenant.objects.get(slug=SLUG)
holds = Hold.objects.filter(tenant=tenant)
events = UsageEvent.objects.filter(tenant=tenant)
committed = holds.filter(state="committed")
live = list(holds.filter(state="held").values("amount_nano", "window_ids"))
windows = []
for window in BudgetWindow.objects.filter(budget__tenant=tenant).select_related("budget"):
    budget = window.budget
    ledger = events.filter(occurred_at__gte=window.start)
    if window.end:
        ledger = ledger.filter(occurred_at__lt=window.end)
    if budget.scope == "feature":
        ledger = ledger.filter(feature_id=budget.feature_id)
    if budget.model_families:
        ledger = ledger.filter(family__in=budget.model_families)
    spent = ledger.aggregate(total=Sum("cost_nano"))["total"] or 0
    reserved = sum(h["amount_nano"] for h in live if window.pk in h["window_ids"])
    windows.append({"budget": budget.name, "spent": window.spent_nano, "ledger": spent,
                    "reserved": window.reserved_nano, "live_holds": reserved})
print(json.dumps({
    "holds": holds.count(), "committed": committed.count(), "held": len(live),
    "committed_without_event": committed.filter(usage_event__isnull=True).count(),
    "events": events.count(), "events_without_hold": events.filter(hold__isnull=True).count(),
    "committed_ids": [f"hold_{pk.hex}" for pk in committed.values_list("pk", flat=True)],
    "windows": windows,
}))
"""


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.committed: set[str] = set()
        self.commit_retries = 0
        self.abandoned: list[str] = []

    def add(self, phase: str, what: str, status: int | str) -> None:
        with self.lock:
            self.counts[(phase, what, status)] += 1


def manage(env: dict, root: Path, script: str) -> str:
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=root, env=env,
                         check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def start_redis(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(50):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0:
            return proc
        time.sleep(0.1)
    raise SystemExit("redis-server did not start")


def start_gunicorn(env: dict, root: Path, port: int, workers: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(ROOT / ".venv/bin/gunicorn"), "governance.wsgi", "-b", f"127.0.0.1:{port}",
                             "-w", str(workers), "--log-level", "warning", "--access-logfile", "/dev/null",
                             "--chdir", str(root)], cwd=root, env=env)
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("gunicorn did not start")


def client_loop(base: str, secret: str, phase, stop: threading.Event, tally: Tally) -> None:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=30) as http:
        while not stop.is_set():
            now = phase()
            try:
                asked = http.post("/api/v1/allowances", json=ASK)
            except httpx.HTTPError as exc:
                tally.add(now, "allowance", type(exc).__name__)
                continue
            tally.add(now, "allowance", asked.status_code)
            if asked.status_code != 201 or not asked.json()["granted"]:
                continue
            hold = asked.json()["id"]
            body = {"usage": USAGE, "request_id": f"req_{uuid.uuid4().hex}"}
            for attempt in range(20):  # the call happened: its usage must be recorded
                try:
                    committed = http.post(f"/api/v1/allowances/{hold}/commit", json=body)
                    status: int | str = committed.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                tally.add(phase(), "commit", status)
                if status == 200:
                    with tally.lock:
                        tally.committed.add(hold)
                        tally.commit_retries += attempt
                    break
                time.sleep(0.5)
            else:
                with tally.lock:
                    tally.abandoned.append(hold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--before", type=float, default=10)
    parser.add_argument("--outage", type=float, default=20)
    parser.add_argument("--after", type=float, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--stall", action="store_true",
                        help="freeze redis-server (SIGSTOP) instead of stopping it: it accepts, never answers")
    args = parser.parse_args()

    redis_port, web_port = refused_port(), refused_port()
    env = bench_env()
    env.update(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", PYTHONPATH=str(args.root))
    database_create(env["DATABASE_URL"])
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=args.root, env=env, check=True)
    slug = f"outage-{uuid.uuid4().hex[:8]}"
    redis = start_redis(redis_port)
    secret = manage(env, args.root, f"SLUG = {slug!r}\n{SETUP}")
    server = start_gunicorn(env, args.root, web_port, args.workers)

    started = time.monotonic()

    def phase() -> str:
        elapsed = time.monotonic() - started
        return "before" if elapsed < args.before else "outage" if elapsed < args.before + args.outage else "after"

    tally, stop = Tally(), threading.Event()
    threads = [threading.Thread(target=client_loop, args=(f"http://127.0.0.1:{web_port}", secret, phase, stop, tally))
               for _ in range(args.clients)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(args.before)
        if args.stall:
            redis.send_signal(signal.SIGSTOP)
        else:
            redis.terminate()
            redis.wait()
        print(f"redis-server {'frozen' if args.stall else 'stopped'} at {time.monotonic() - started:.1f} s", flush=True)
        time.sleep(args.outage)
        if args.stall:
            redis.send_signal(signal.SIGCONT)
        else:
            redis = start_redis(redis_port)
        print(f"redis-server back at {time.monotonic() - started:.1f} s", flush=True)
        time.sleep(args.after)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        server.terminate()
        server.wait()
        redis.terminate()
        redis.wait()

    print(f"\n{args.clients} clients, {args.workers} gunicorn workers; root {args.root}")
    print(f"{'phase':8} {'request':10} {'status':>22} {'count':>7}")
    order = {"before": 0, "outage": 1, "after": 2}
    for (when, what, status), count in sorted(tally.counts.items(), key=lambda i: (order[i[0][0]], i[0][1], str(i[0][2]))):
        print(f"{when:8} {what:10} {status!s:>22} {count:7}")
    fives = sum(count for (_, _, status), count in tally.counts.items() if status == 500)
    print(f"500s: {fives}; commit retries: {tally.commit_retries}; commits given up: {len(tally.abandoned)}")

    books = json.loads(manage(env, args.root, f"SLUG = {slug!r}\n{BOOKS}"))
    committed_ids = set(books.pop("committed_ids"))
    windows = books.pop("windows")
    print(f"\nbooks of tenant {slug}: " + ", ".join(f"{k} {v}" for k, v in books.items()))
    for w in windows:
        print(f"  window {w['budget']:8} spent {w['spent']} ledger {w['ledger']} "
              f"reserved {w['reserved']} live holds {w['live_holds']}")
    checks = {
        "every committed hold has one event": books["committed_without_event"] == 0,
        "every event has its hold": books["events_without_hold"] == 0 and books["events"] == books["committed"],
        "every commit answered 200 is committed": tally.committed <= committed_ids,
        "every committed hold was answered 200": committed_ids <= tally.committed | set(tally.abandoned),
        "no hold left held": books["held"] == 0,
        "window spent = ledger": all(w["spent"] == w["ledger"] for w in windows),
        "window reserved = live holds": all(w["reserved"] == w["live_holds"] for w in windows),
        "no 500": fives == 0,
    }
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
