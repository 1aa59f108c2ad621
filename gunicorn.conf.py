"""gunicorn settings for Comptroller's web processes: `gunicorn -c gunicorn.conf.py governance.wsgi`.

Every value can be changed from the environment (docs/deploy.md, "Web processes").
"""

from __future__ import annotations

import multiprocessing
import os

# Behind a proxy on the same host, 127.0.0.1 is enough; set GUNICORN_BIND=0.0.0.0:8000
# (or PORT, as platforms that run a Procfile do) when the load balancer is elsewhere.
bind = os.environ.get("GUNICORN_BIND") or (
    f"0.0.0.0:{os.environ['PORT']}" if os.environ.get("PORT") else "127.0.0.1:8000"
)
# Sync workers, about two per core, give the steadiest allowance latency (bench/README.md).
workers = int(os.environ.get("WEB_CONCURRENCY", 2 * multiprocessing.cpu_count()))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = int(os.environ.get("GUNICORN_THREADS", 1))
# A request that takes longer than this is stuck (every API call is milliseconds); the
# worker is replaced rather than left holding a database connection.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


# Granted holds shared by this master's workers (budgets/shelf.py): a commit that reaches
# another worker than its allowance's takes its hold from memory instead of the database.
# GRANTED_HOLD_SHELF=0 turns it off.
def on_starting(server):
    if os.environ.get("GRANTED_HOLD_SHELF", "1") != "0":
        from budgets import shelf

        # Room for a new worker while the one it replaces is still finishing its requests.
        shelf.create(regions=2 * server.cfg.workers + 2)


def pre_fork(server, worker):
    from budgets import shelf

    taken = {getattr(w, "shelf_region", None) for w in server.WORKERS.values()}
    worker.shelf_region = shelf.region_free({r for r in taken if r is not None})


def post_fork(server, worker):
    from budgets import shelf

    shelf.attach(getattr(worker, "shelf_region", None))
