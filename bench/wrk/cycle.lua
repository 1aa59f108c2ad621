-- A full cycle per connection: ask for an allowance, then commit it; repeat.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
local hold = nil

function request()
   if hold then
      local path = "/api/v1/allowances/" .. hold .. "/commit"
      hold = nil
      return wrk.format("POST", path, nil, USAGE)
   end
   return wrk.format("POST", "/api/v1/allowances", nil, ASK)
end

function response(status, headers, body)
   if status == 201 then
      hold = body:match('"id":"(hold_%w+)"')
   end
end
