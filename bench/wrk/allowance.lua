-- POST /api/v1/allowances: every request asks for a new hold (201 expected).
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
wrk.method = "POST"
wrk.path = "/api/v1/allowances"
wrk.body = ASK
