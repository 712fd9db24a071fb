-- wrk script: authorize + settle pairs. Each connection alternates: an
-- authorize, then the settle of the request it authorized. A pair counts as
-- two requests in wrk's totals.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
local counter = 0
local pending = {}

request = function()
  local ready = table.remove(pending)
  if ready then
    local body = string.format(
      '{"account_id":"%s","request_id":"%s","status":"success","usage":{"input_tokens":2000,"output_tokens":400}}',
      ready[1], ready[2])
    return wrk.format("POST", "/v1/settle", headers, body)
  end
  counter = counter + 1
  local body = string.format(
    '{"account_id":"acct-%d","request_id":"a-%s-%d-%d","model":"bench-model","input_tokens":2000,"max_output_tokens":500}',
    account_for(counter), run, tid, counter)
  return wrk.format("POST", "/v1/authorize", headers, body)
end

response = function(status, hdrs, body)
  if status == 201 then
    local rid = body:match('"request_id":"([^"]+)"')
    local acct = body:match('"account_id":"([^"]+)"')
    if rid and acct then table.insert(pending, {acct, rid}) end
  end
end
