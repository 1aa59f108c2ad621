"""The gunicorn worker the gateway runs under: uvicorn's, ending open streams before gunicorn kills it.

On a reload or stop gunicorn gives a worker ``graceful_timeout`` seconds, then kills it.
uvicorn's own worker would wait for every open stream until then, and a stream still open
at the kill would never be committed. This one cancels what is still open five seconds
before, so each open stream settles (commits what it metered) while the worker can still
write to the database.

    GUNICORN_WORKER_CLASS=gateway.workers.GatewayWorker gunicorn -c gunicorn.conf.py governance.asgi
"""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker

SETTLE_SECONDS = 5  # left, after the streams are cancelled, for their commits


class GatewayWorker(UvicornWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = max(1, int(self.cfg.graceful_timeout) - SETTLE_SECONDS)
