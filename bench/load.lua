-- wrk script for the serving benchmarks: one connection per wrk thread (-t N -c N), so each
-- thread's Lua state follows one client's requests in order.
--
-- BENCH_MODE=fetch: what botocore does to fetch credentials from IMDS, over and over:
--   PUT /latest/api/token, GET .../security-credentials/ (the role name), GET .../<role>.
-- BENCH_MODE=get: one GET of BENCH_PATH, with BENCH_AUTH as its Authorization header if set.
-- Each completed unit (a whole fetch, or one GET) is timed with clock_gettime through LuaJIT's
-- ffi; BENCH_OUT receives "<end, unix seconds> <latency, seconds>" per unit, and counts of
-- answers that were not 200 or lacked credentials.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME: comparable with the daemon's log timestamps
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local CREDS = "/latest/meta-data/iam/security-credentials/"
local mode = os.getenv("BENCH_MODE") or "fetch"
local get_path = os.getenv("BENCH_PATH") or "/"
local auth = os.getenv("BENCH_AUTH")

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Per-thread state (each thread has its own Lua state).
ends, lats, bad = {}, {}, 0
local step, started, token, role = 0, 0, "", ""

function request()
  if mode == "get" then
    started = now()
    return wrk.format("GET", get_path, auth and { Authorization = auth } or {})
  end
  if step == 0 then
    started = now()
    return wrk.format("PUT", "/latest/api/token", { ["X-aws-ec2-metadata-token-ttl-seconds"] = "21600" })
  elseif step == 1 then
    return wrk.format("GET", CREDS, { ["X-aws-ec2-metadata-token"] = token })
  end
  return wrk.format("GET", CREDS .. role, { ["X-aws-ec2-metadata-token"] = token })
end

local function finish(ok)
  if ok then
    local n = #lats + 1
    local t = now()
    ends[n], lats[n] = t, t - started
  else
    bad = bad + 1
  end
end

function response(status, headers, body)
  if mode == "get" then
    finish(status == 200 and string.find(body, "AccessKeyId", 1, true) ~= nil)
    return
  end
  if status ~= 200 then
    step = 0
    finish(false)
    return
  end
  if step == 0 then
    token, step = body, 1
  elseif step == 1 then
    role, step = body, 2
  else
    step = 0
    finish(string.find(body, "AccessKeyId", 1, true) ~= nil)
  end
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  local failed = 0
  for _, thread in ipairs(threads) do
    local e, l = thread:get("ends"), thread:get("lats")
    failed = failed + thread:get("bad")
    for i = 1, #l do
      out:write(string.format("%.6f %.6f\n", e[i], l[i]))
    end
  end
  local errors = summary.errors
  out:write(string.format("# requests %d duration_us %d bad %d connect %d read %d write %d status %d timeout %d\n",
    summary.requests, summary.duration, failed, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout))
  out:close()
end
