-- wrk script: POST /v1/authorize alone, a unique request id per request.
-- The holds stay open until they expire; the bench accounts are funded far
-- beyond what a run can hold. Measures the latency of the call that sits in
-- front of every LLM request.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
local counter = 0

request = function()
  counter = counter + 1
  local body = string.format(
    '{"account_id":"acct-%d","request_id":"h-%s-%d-%d","model":"bench-model","input_tokens":2000,"max_output_tokens":500}',
    account_for(counter), run, tid, counter)
  return wrk.format("POST", "/v1/authorize", headers, body)
end
