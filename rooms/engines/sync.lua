-- Publish this process's members of a room and read the room's shared state, atomically.
-- KEYS: 1 presence hash ("node\0user" -> "expires_ms\0name"), 2 seq counter, 3 stream (log),
--       4 epoch, then one ban key per member pair of ARGV, in the same order
-- ARGV: 1 node id, 2 now (ms), 3 expiry of this node's entries (ms), 4 shard channel,
--       5 key lifetime (ms), 6 a new epoch, used if the log needs one (room_top, in front of
--       this), 7 floor (the highest seq this node has seen stored), then user, name pairs
--       (this node's members; none withdraws them)
-- Returns {top seq, {user, name, ...} of the live members of other nodes, {user, ban value,
-- ...} of this node's members banned now, repaired, epoch}: the top lets a room catch up with
-- entries (messages and changes) and the bans with ban announcements that pub/sub
-- (at-most-once) lost; repaired counts the malformed records it mended (presence entries it
-- could not read are removed, a seq counter that is not a number is set again from the log):
-- the engine logs a warning.
-- Entries of a node that stopped syncing (killed) expire and are removed here by any node.
local node, now = ARGV[1], tonumber(ARGV[2])
local mine = {}
for i = 8, #ARGV, 2 do
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
local top, epoch, _, counter_repaired = room_top(KEYS[3], KEYS[2], KEYS[4], ARGV[6],
                                                tonumber(ARGV[7]))
repaired = repaired + counter_repaired
local banned = {}
for i = 8, #ARGV, 2 do
  local ban = redis.call('GET', KEYS[5 + (i - 8) / 2])
  if ban then
    banned[#banned + 1] = ARGV[i]
    banned[#banned + 1] = ban
  end
end
return {top, others, banned, repaired, epoch}
