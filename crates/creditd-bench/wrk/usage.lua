-- wrk script: one-shot POST /v1/usage with a unique request id per request.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
local counter = 0

request = function()
  counter = counter + 1
  local body = string.format(
    '{"account_id":"acct-%d","request_id":"u-%s-%d-%d","model":"bench-model","usage":{"input_tokens":2000,"output_tokens":500}}',
    account_for(counter), run, tid, counter)
  return wrk.format("POST", "/v1/usage", headers, body)
end
