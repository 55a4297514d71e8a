-- wrk script: POST one JSON body per request, cycling through a corpus, then print one JSON line.
--
--   wrk -t2 -c32 -d20s --timeout 60s -s benchmarks/wrk_post.lua http://127.0.0.1:PORT -- BODIES PATH
--
-- BODIES is a file with one request body per line; each wrk thread starts at its own line. The
-- summary line (prefixed "WRK_RESULT ") carries the request count, the errors by kind, and the
-- latency percentiles in microseconds.

local bodies = {}
local next_body = 0
local counter = 0
local threads = {}

function setup(thread)
   counter = counter + 1
   thread:set("thread_number", counter)
   table.insert(threads, thread)
end

function init(args)
   for line in io.lines(args[1]) do
      bodies[#bodies + 1] = line
   end
   wrk.method = "POST"
   wrk.path = args[2]
   wrk.headers["Content-Type"] = "application/json"
   next_body = ((thread_number or 1) * 97) % #bodies
end

function request()
   next_body = next_body % #bodies + 1
   return wrk.format(nil, nil, nil, bodies[next_body])
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      'WRK_RESULT {"requests": %d, "duration_us": %d, "non_2xx": %d, "connect": %d, '
         .. '"read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, '
         .. '"p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
      summary.requests, summary.duration, errors.status, errors.connect, errors.read,
      errors.write, errors.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.mean, latency.max))
end
