-- A user's read marker in a room and the messages after it (rooms.engine.Engine.unread): not
-- theirs and not deleted (deleted messages are not in the stream), and those that mention
-- them, over at most the room's last ARGV[2] messages; changes are skipped. A user with no
-- marker has nothing unread (nothing is scanned). Read-only.
-- KEYS: 1 stream (log), 2 read markers hash (user -> seq)
-- ARGV: 1 user, 2 most messages to look at, 3 entries read per XREVRANGE
-- Returns {read, unread, mentions, capped (0/1)}.
local user = ARGV[1]
local read = tonumber(redis.call('HGET', KEYS[2], user) or '0') or 0
local scan, chunk = tonumber(ARGV[2]), tonumber(ARGV[3])
if read == 0 then
  return {0, 0, 0, 0}
end
local looked, unread, mentions = 0, 0, 0
local upper = '+'
while looked < scan do
  local entries = redis.call('XREVRANGE', KEYS[1], upper, '(0-' .. string.format('%d', read),
                             'COUNT', chunk)
  if #entries == 0 then break end
  for _, entry in ipairs(entries) do
    local kv = entry[2]
    local author, is_change, mentioned = nil, false, nil
    for i = 1, #kv, 2 do
      local key = kv[i]
      if key == 'c' then is_change = true
      elseif key == 'user' then author = kv[i + 1]
      elseif key == 'mentions' then mentioned = kv[i + 1]
      end
    end
    if not is_change then
      looked = looked + 1
      if author ~= user then
        unread = unread + 1
        if mentioned then
          local ok, ids = pcall(cjson.decode, mentioned)
          if ok and type(ids) == 'table' then
            for _, id in ipairs(ids) do
              if id == user then
                mentions = mentions + 1
                break
              end
            end
          end
        end
      end
      if looked >= scan then break end
    end
  end
  if #entries < chunk then break end
  upper = '(' .. entries[#entries][1]
end
return {read, unread, mentions, looked >= scan and 1 or 0}
