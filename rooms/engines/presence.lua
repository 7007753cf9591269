-- Publish this process's members of a room and read the other processes' members, atomically:
-- the presence half of sync.lua, for a bus beside a log that is not Redis (redis_bus.py).
-- KEYS: 1 presence hash ("node\0user" -> "expires_ms\0name")
-- ARGV: 1 node id, 2 now (ms), 3 expiry of this node's entries (ms), 4 shard channel,
--       5 key lifetime (ms), then user, name pairs (this node's members; none withdraws them)
-- Returns {{user, name, ...} of the live members of other nodes, repaired}: repaired counts
-- the entries it could not read and removed (the bus logs a warning).
-- Entries of a node that stopped syncing (killed) expire and are removed here by any node.
local node, now = ARGV[1], tonumber(ARGV[2])
local mine = {}
for i = 6, #ARGV, 2 do
  mine[ARGV[i]] = ARGV[i + 1]
end
local changed = false
local repaired = 0
local others = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local field, value = entries[i], entries[i + 1]
  local sep = string.find(field, '\0', 1, true)
  local vsep = string.find(value, '\0', 1, true)
  local owner, user, expires = nil, nil, nil
  if sep and vsep then
    owner, user = string.sub(field, 1, sep - 1), string.sub(field, sep + 1)
    expires = tonumber(string.match(string.sub(value, 1, vsep - 1), '^%d+$'))
  end
  if expires == nil then
    -- Not an entry this script wrote: unreadable for every node, so removed.
    redis.call('HDEL', KEYS[1], field)
    repaired = repaired + 1
  elseif owner == node then
    if mine[user] == nil then
      redis.call('HDEL', KEYS[1], field)
      changed = true
    end
  elseif expires <= now then
    redis.call('HDEL', KEYS[1], field)
    changed = true
  else
    others[#others + 1] = user
    others[#others + 1] = string.sub(value, vsep + 1)
  end
end
for user, name in pairs(mine) do
  if redis.call('HSET', KEYS[1], node .. '\0' .. user, ARGV[3] .. '\0' .. name) == 1 then
    changed = true
  end
end
if next(mine) ~= nil then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
if changed then
  redis.call('SPUBLISH', ARGV[4], 'p' .. node)
end
return {others, repaired}
