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
