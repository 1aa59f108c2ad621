-- Shared by the allowance benchmark's wrk scripts: the key, JSON bodies, and a summary line
-- the Python driver parses. wrk runs one Lua state per thread; the driver runs one
-- connection per thread, so per-thread state is per-connection state.
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
wrk.headers["Content-Type"] = "application/json"

ASK = '{"feature": "bench", "model": "claude-haiku-4-5", "input_tokens": 800, "max_tokens": 256}'
USAGE = '{"usage": {"input_tokens": 800, "output_tokens": 120}}'

function done(summary, latency, requests)
   local failed = summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout
   io.write(string.format("BENCH requests=%d seconds=%.3f failed=%d p50_us=%d p99_us=%d\n",
      summary.requests, summary.duration / 1e6, failed,
      latency:percentile(50), latency:percentile(99)))
end
