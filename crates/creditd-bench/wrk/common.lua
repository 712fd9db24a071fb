-- What every creditd wrk script shares: arguments, thread ids, the account
-- of a request, and the RESULT line scripts/bench-http reads.
-- Arguments (after --): <api key> <accounts> <hot: 0|1>
local thread_counter = 0

function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("tid", thread_counter)
end

function init(args)
  key = args[1]
  accounts = tonumber(args[2] or "10000")
  hot = args[3] == "1"
  run = tostring(os.time())
  headers = {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}
end

-- The account of this thread's n-th request: account 0 when hot, else
-- spread over all accounts.
function account_for(n)
  return hot and 0 or ((n * 7919 + tid * 104729) % accounts)
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d seconds=%.2f rps=%.0f non2xx=%d errors=%d p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
