-- wrk script of bench/load_test.py --client wrk: one connection per wrk thread (-t N -c N), so that each
-- thread's request() and response() alternate and a request's latency is exact. Each thread posts the
-- sample files BODIES/0 .. BODIES/(COUNT-1) in turn (starting at its own offset), waits Retry-After after
-- a 503 (delay()), and writes one line per response to OUT.<thread id>:
--   status  start_us(monotonic)  latency_us  json(1/0)  level  label  levels_tried  server_ms  sample  front(1/0)
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } icpc_timespec;
int clock_gettime(int clk_id, icpc_timespec *tp);
]]
local ts = ffi.new("icpc_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)   -- CLOCK_MONOTONIC, the clock of Python's time.monotonic()
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function init(args)
  local dir, count, ctype, out = args[1], tonumber(args[2]), args[3], args[4]
  retry_after = args[5] == "1"
  bodies = {}
  for i = 0, count - 1 do
    local f = assert(io.open(dir .. "/" .. i, "rb"))
    bodies[i] = f:read("*a")
    f:close()
  end
  n, next_sample, wait_ms = count, (tid * 7919) % count, 0
  headers = {["Content-Type"] = ctype}
  log = assert(io.open(out .. "." .. tid, "w"))
end

function delay()
  local d = wait_ms
  wait_ms = 0
  return d
end

function request()
  sample = next_sample
  next_sample = (next_sample + 1) % n
  started = now_us()
  return wrk.format("POST", "/v1/predict", headers, bodies[sample])
end

function response(status, hdrs, body)
  local elapsed = now_us() - started
  local json = body:sub(1, 1) == "{" and 1 or 0
  local level = body:match('"level":%s*(%d+)') or "-1"
  local label = body:match('"label":%s*(%d+)') or "-1"
  local tried_list = body:match('"levels_tried":%s*%[([^%]]*)%]')
  local tried = 0
  if tried_list then
    for _ in tried_list:gmatch("%d+") do tried = tried + 1 end
  end
  local server_ms = body:match('"latency_ms":%s*([%d%.eE%-]+)') or "nan"
  local front = (hdrs["X-ICPC-Shed"] or hdrs["x-icpc-shed"]) and 1 or 0   -- answered by the HAProxy front
  log:write(string.format("%d %.0f %.0f %d %s %s %d %s %d %d\n", status, started, elapsed, json, level, label, tried,
                          server_ms, sample, front))
  log:flush()   -- wrk ends its threads without closing their files: nothing may wait in a buffer
  if status == 503 and retry_after then
    wait_ms = 1000 * (tonumber(hdrs["Retry-After"] or hdrs["retry-after"] or "1") or 1)
  end
end
