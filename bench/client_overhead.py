"""What governing a call adds to it: a bare SDK call, a governed call and the difference, side by side.

Comptroller is this project under gunicorn on PostgreSQL (``bench/server.py``:
the bench database, a tenant with room to spare); the Messages API is a
local stub answering prebuilt bytes at once, so the model's own time is
taken out and what remains is what a service would notice: the governed
call's allowance round trip and the client's work around it. The commit
goes to the background sender, off the call's path, as in production.
Calls are interleaved (bare, governed, bare, ...) so drift on a shared
machine hits both alike, ``--pause`` apart (a real call takes seconds, so
the previous commit has gone before the next allowance); wall-clock
percentiles per call, and the calling thread's own CPU.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/comptroller_bench \\
        .venv/bin/python bench/client_overhead.py [--calls 500] [--stream] [--workers 2] [--threads 1]

Target: at most 5 ms added at p50.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from statistics import quantiles

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anthropic
from comptroller_client import Comptroller, governed
from comptroller_client.estimate import worst_case

from bench.server import PORT, setup_database, start_server

USAGE = {"input_tokens": 412, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
         "output_tokens": 180, "service_tier": "standard"}
MESSAGE = {"id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
           "content": [{"type": "text", "text": "word " * 180}], "stop_reason": "end_turn",
           "stop_sequence": None, "usage": USAGE}
SSE = "".join(
    f"event: {name}\ndata: {json.dumps(data)}\n\n"
    for name, data in [
        ("message_start", {"type": "message_start", "message": {**MESSAGE, "content": [],
                                                                 "usage": {**USAGE, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        *[("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": "word "}})] * 60,
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 180}}),
        ("message_stop", {"type": "message_stop"}),
    ]
).encode()
MESSAGES = [{"role": "user", "content": "Summarise this support ticket for the on-call engineer. " * 20}]


class MessagesStub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as api.anthropic.com

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK hold each answer back 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if body.get("stream"):
            data, kind = SSE, "text/event-stream"
        else:
            data, kind = json.dumps({**MESSAGE, "id": f"msg_{time.monotonic_ns()}"}).encode(), "application/json"
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def percentile_ms(samples: list[float]) -> dict[str, float]:
    cuts = quantiles(samples, n=100)
    return {"p50": cuts[49] * 1000, "p90": cuts[89] * 1000, "p99": cuts[98] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls of each kind")
    parser.add_argument("--stream", action="store_true", help="messages.stream (60 deltas) instead of create")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=1, help="gthread workers' threads (keep-alive) when > 1")
    parser.add_argument("--pause", type=float, default=0.02,
                        help="seconds between calls: a real model call takes seconds, so the previous "
                             "call's commit has left before the next allowance (0: back to back)")
    args = parser.parse_args()

    stub = ThreadingHTTPServer(("127.0.0.1", 0), MessagesStub)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    secret = setup_database()
    server = start_server(workers=args.workers, threads=args.threads)
    try:
        comptroller = Comptroller(f"http://127.0.0.1:{PORT}", secret, spool_dir=tempfile.mkdtemp())
        bare = anthropic.Anthropic(api_key="sk-bench", base_url=f"http://127.0.0.1:{stub.server_port}",
                                   max_retries=0)
        wrapped = governed(bare, comptroller, feature="bench")
        params = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": MESSAGES}

        def call(client: anthropic.Anthropic) -> None:
            if args.stream:
                with client.messages.stream(**params) as stream:
                    stream.until_done()
            else:
                client.messages.create(**params)

        for _ in range(30):  # warm up: connections, the feature policy, the server's caches
            call(bare)
            call(wrapped)
        comptroller.flush()
        times: dict[str, list[float]] = {"bare": [], "governed": []}
        cpu: dict[str, float] = {"bare": 0.0, "governed": 0.0}
        in_flight = 0  # governed calls that began while the sender still had the previous report
        for _ in range(args.calls):
            for name, client in (("bare", bare), ("governed", wrapped)):
                if name == "governed" and len(comptroller.spool):
                    in_flight += 1
                started, started_cpu = time.perf_counter(), time.thread_time()
                call(client)
                times[name].append(time.perf_counter() - started)
                cpu[name] += time.thread_time() - started_cpu
                time.sleep(args.pause)
        parts: dict[str, list[float]] = {"allowance alone": [], "local estimate": []}
        allowance_cpu = 0.0
        for _ in range(args.calls):
            started, started_cpu = time.perf_counter(), time.thread_time()
            allowance = comptroller.reserve("bench", "claude-sonnet-4-5", 400, 1024)
            parts["allowance alone"].append(time.perf_counter() - started)
            allowance_cpu += time.thread_time() - started_cpu
            comptroller.release_later(allowance)
            time.sleep(args.pause)
            started = time.perf_counter()
            worst_case(params)
            parts["local estimate"].append(time.perf_counter() - started)
        comptroller.close()
    finally:
        server.terminate()
        server.wait()
        stub.shutdown()

    bare_ms, governed_ms = percentile_ms(times["bare"]), percentile_ms(times["governed"])
    kind = "messages.stream (60 deltas)" if args.stream else "messages.create"
    print(f"{kind}, {args.calls} calls each, interleaved; Comptroller on "
          f"{os.environ.get('DATABASE_URL', 'postgres (bench default)').split('@')[-1]}, "
          f"anthropic {anthropic.__version__}")
    print(f"{'':10}{'bare ms':>10}{'governed ms':>14}{'added ms':>11}")
    for cut in ("p50", "p90", "p99"):
        print(f"{cut:10}{bare_ms[cut]:10.2f}{governed_ms[cut]:14.2f}{governed_ms[cut] - bare_ms[cut]:11.2f}")
    bare_cpu, governed_cpu = (cpu[k] / args.calls * 1000 for k in ("bare", "governed"))
    print(f"{'cpu/call':10}{bare_cpu:10.2f}{governed_cpu:14.2f}{governed_cpu - bare_cpu:11.2f}"
          "   (the calling thread's own CPU)")
    print("the governed call's parts, p50 ms: " + ", ".join(
        f"{name} {percentile_ms(samples)['p50']:.2f}" for name, samples in parts.items())
        + f" (the allowance's CPU {allowance_cpu / args.calls * 1000:.2f} ms/call)")
    print(f"governed calls that began with the previous report still unsent: {in_flight} of {args.calls}")


if __name__ == "__main__":
    main()
