-- wrk script: POST /v1/authorize alone, a unique request id per request.
-- The holds stay open until they expire; the bench accounts are funded far
-- beyond what a run can hold. Measures the latency of the call that sits in
-- front of every LLM request.
-- Arguments (after --): <api key> <accounts> <hot: 0|1>
local counter = 0
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

request = function()
  counter = counter + 1
  local account = hot and 0 or ((counter * 7919 + tid * 104729) % accounts)
  local body = string.format(
    '{"account_id":"acct-%d","request_id":"h-%s-%d-%d","model":"bench-model","input_tokens":2000,"max_output_tokens":500}',
    account, run, tid, counter)
  return wrk.format("POST", "/v1/authorize", headers, body)
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d seconds=%.2f rps=%.0f non2xx=%d errors=%d p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
