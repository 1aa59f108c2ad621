"""What the gateway adds to a call: the Messages API stub directly, through the gateway, and the REST path.

Comptroller runs under gunicorn with uvicorn workers (``governance.asgi``, as
docs/gateway.md deploys it) on PostgreSQL (``bench/server.py``'s bench database,
a tenant with room to spare and a stored inference key); the Messages API is a
local stub answering prebuilt bytes at once, so the model's own time is out and
what remains is what a caller would notice. For each call, interleaved:

- ``direct``: ``POST /v1/messages`` to the stub;
- ``gateway``: the same body to ``/anthropic/v1/messages`` (authenticate, size,
  allowance, forward, meter, commit before the answer ends);
- ``rest``: what a service using the REST API does around a direct call:
  ``POST /api/v1/allowances``, the direct call, ``POST …/commit`` (``--rest-wsgi``:
  against a second Comptroller under gunicorn sync workers, as the REST API runs today).

Each client keeps its connections alive (one ``httpx.Client`` per path). Printed:
p50/p90/p99 per path and the gateway's and the REST path's time over ``direct``.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/comptroller_bench \\
        .venv/bin/python bench/gateway_overhead.py [--calls 300] [--clients 1,16] [--stream] [--workers 2] [--rest-wsgi]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from statistics import quantiles

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from uvicorn_worker import UvicornWorker

from bench.server import PORT, ROOT, bench_env, setup_database


class QuietUvicornWorker(UvicornWorker):
    """uvicorn's worker without its access log (a line per call would be part of what is timed)."""

    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "access_log": False}

WSGI_PORT = PORT + 1
USAGE = {"input_tokens": 412, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
         "output_tokens": 180, "service_tier": "standard"}
MESSAGE = {"id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
           "content": [{"type": "text", "text": "word " * 180}], "stop_reason": "end_turn",
           "stop_sequence": None, "usage": USAGE}


def sse(message_id: str) -> bytes:
    start = {**MESSAGE, "id": message_id, "content": [], "usage": {**USAGE, "output_tokens": 1}}
    events = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        *[("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": "word "}})] * 60,
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 180}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


BODY = {"model": "claude-sonnet-4-5", "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Summarise this support ticket for the on-call engineer. " * 20}]}


class MessagesStub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as api.anthropic.com

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        message_id = f"msg_{time.monotonic_ns()}_{threading.get_ident()}"  # the ledger keeps one row per id
        if body.get("stream"):
            data, kind = sse(message_id), "text/event-stream"
        else:
            data, kind = json.dumps({**MESSAGE, "id": message_id}).encode(), "application/json"
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def store_inference_key() -> None:
    script = """
from usage.provider.models import ProviderConnection
from governance.models import Tenant
ProviderConnection.objects.update_or_create(tenant=Tenant.objects.get(slug="bench"),
                                            defaults={"inference_api_key": "sk-ant-api03-bench-key-0000"})
"""
    subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=bench_env(), check=True)


def start(app: str, port: int, workers: int, worker_class: str) -> subprocess.Popen:
    cmd = [str(ROOT / ".venv/bin/gunicorn"), app, "-b", f"127.0.0.1:{port}", "-w", str(workers),
           "-k", worker_class, "--log-level", "warning", "--keep-alive", "30"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=bench_env())
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"gunicorn ({worker_class}) did not start")


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    cuts = quantiles(samples, n=100)
    return {"p50": cuts[49] * 1000, "p90": cuts[89] * 1000, "p99": cuts[98] * 1000}


class Client(threading.Thread):
    """One caller: interleaves direct, gateway and REST calls, each path on its own kept-alive connection."""

    def __init__(self, *, stub: str, gateway: str, rest: str, secret: str, calls: int, stream: bool,
                 barrier: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.urls = {"stub": stub, "gateway": gateway, "rest": rest}
        self.secret, self.calls, self.stream, self.barrier = secret, calls, stream, barrier
        self.times: dict[str, list[float]] = {"direct": [], "gateway": [], "rest": []}
        self.failures = 0

    def run(self) -> None:
        body = {**BODY, "stream": True} if self.stream else BODY
        headers = {"x-api-key": self.secret, "x-comptroller-feature": "bench", "anthropic-version": "2023-06-01"}
        auth = {"Authorization": f"Bearer {self.secret}"}
        allowance = {"feature": "bench", "model": "claude-sonnet-4-5", "input_tokens": 400, "max_tokens": 1024}
        with httpx.Client(timeout=30) as direct, httpx.Client(timeout=30) as gateway, \
                httpx.Client(timeout=30) as rest:

            def call_direct() -> httpx.Response:
                return direct.post(f"{self.urls['stub']}/v1/messages", json=body,
                                   headers={"x-api-key": "sk-bench", "anthropic-version": "2023-06-01"})

            def call_gateway() -> httpx.Response:
                return gateway.post(f"{self.urls['gateway']}/anthropic/v1/messages", json=body, headers=headers)

            def call_rest() -> httpx.Response:
                hold = rest.post(f"{self.urls['rest']}/api/v1/allowances", json=allowance, headers=auth).json()
                answer = call_direct()
                rest.post(f"{self.urls['rest']}/api/v1/allowances/{hold['id']}/commit", headers=auth,
                          json={"usage": USAGE, "request_id": f"msg_rest_{time.monotonic_ns()}_{self.ident}"})
                return answer

            paths = (("direct", call_direct), ("gateway", call_gateway), ("rest", call_rest))
            for _ in range(5):  # warm up connections and the server's caches
                for _, fn in paths:
                    fn()
            self.barrier.wait()
            for _ in range(self.calls):
                for name, fn in paths:
                    started = time.perf_counter()
                    response = fn()
                    elapsed = time.perf_counter() - started
                    if response.status_code != 200:
                        self.failures += 1
                        continue
                    self.times[name].append(elapsed)


def measure(clients: int, args: argparse.Namespace, *, stub: str, gateway: str, rest: str, secret: str) -> None:
    barrier = threading.Barrier(clients)
    workers = [Client(stub=stub, gateway=gateway, rest=rest, secret=secret, calls=args.calls, stream=args.stream,
                      barrier=barrier) for _ in range(clients)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    times = {name: [t for w in workers for t in w.times[name]] for name in ("direct", "gateway", "rest")}
    failures = sum(w.failures for w in workers)
    cuts = {name: percentiles_ms(samples) for name, samples in times.items()}
    print(f"\n{clients} client(s), {args.calls} calls of each kind per client, {'stream' if args.stream else 'create'}"
          f"; {wall:.1f} s; failures: {failures}")
    print(f"{'':6}{'direct':>10}{'gateway':>10}{'added':>9}{'rest':>10}{'added':>9}   (ms)")
    for cut in ("p50", "p90", "p99"):
        d, g, r = cuts["direct"][cut], cuts["gateway"][cut], cuts["rest"][cut]
        print(f"{cut:6}{d:10.2f}{g:10.2f}{g - d:9.2f}{r:10.2f}{r - d:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls of each kind per client")
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts, run in turn")
    parser.add_argument("--stream", action="store_true", help="stream: true (60 deltas) instead of a JSON message")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per server")
    parser.add_argument("--rest-wsgi", action="store_true",
                        help="time the REST path against gunicorn sync workers (governance.wsgi) instead")
    args = parser.parse_args()

    stub = ThreadingHTTPServer(("127.0.0.1", 0), MessagesStub)
    stub.daemon_threads = True
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    stub_url = f"http://127.0.0.1:{stub.server_port}"
    os.environ["ANTHROPIC_API_BASE_URL"] = stub_url  # where the gateway forwards (bench_env copies os.environ)
    secret = setup_database()
    store_inference_key()
    servers = [start("governance.asgi", PORT, args.workers, "bench.gateway_overhead.QuietUvicornWorker")]
    rest_url = f"http://127.0.0.1:{PORT}"
    if args.rest_wsgi:
        servers.append(start("governance.wsgi", WSGI_PORT, args.workers, "sync"))
        rest_url = f"http://127.0.0.1:{WSGI_PORT}"
    try:
        print(f"Comptroller: {args.workers} uvicorn workers (gateway) on "
              f"{bench_env()['DATABASE_URL'].split('@')[-1]}; REST path on "
              f"{'gunicorn sync workers' if args.rest_wsgi else 'the same uvicorn workers'}; stub at {stub_url}")
        for clients in (int(c) for c in args.clients.split(",")):
            measure(clients, args, stub=stub_url, gateway=f"http://127.0.0.1:{PORT}", rest=rest_url, secret=secret)
    finally:
        for server in servers:
            server.terminate()
            server.wait()
        stub.shutdown()


if __name__ == "__main__":
    main()
