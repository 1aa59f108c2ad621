-- GET /api/v1/whoami: a trivial authenticated DRF view, the framework's ceiling.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
wrk.method = "GET"
wrk.path = "/api/v1/whoami"
