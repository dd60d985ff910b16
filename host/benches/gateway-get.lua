-- wrk script: GET with a bearer token. With $TOKENS (a file, one token per
-- line) each request takes the next token, round robin; with $TOKEN, always
-- the same one; with neither, no Authorization header.
local tokens = {}
local file = os.getenv("TOKENS")
if file then
  for line in io.lines(file) do tokens[#tokens + 1] = line end
elseif os.getenv("TOKEN") then
  tokens[1] = os.getenv("TOKEN")
end
local i = 0
request = function()
  if #tokens == 0 then return wrk.format("GET", "/rest/items") end
  i = i % #tokens + 1
  return wrk.format("GET", "/rest/items", { ["Authorization"] = "Bearer " .. tokens[i] })
end
