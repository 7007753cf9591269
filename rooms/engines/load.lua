-- What a room's actor starts from: its top seq, its lowest stored seq and its log's epoch
-- (see room_top, in front of this, then log.lua). Tombstones of old versions move into the
-- state hash here (log.lua's migrate).
-- KEYS: 1 stream (log), 2 seq counter, 3 epoch, 4 state hash, 5 changed set, 6 tombstones of
--       old versions
-- ARGV: 1 a new epoch, used if the log needs one, 2 floor (the highest seq this process has
--       seen stored in the room; 0 for none)
-- Returns {top, lowest stored seq (0: none), epoch, reset (0/1), repaired}: the lowest is the
-- log's first entry's, or a deleted message's before it (its tombstone is stored).
local top, epoch, reset, repaired = room_top(KEYS[1], KEYS[2], KEYS[3], ARGV[1],
                                             tonumber(ARGV[2]))
migrate(KEYS[6], KEYS[4], KEYS[5])
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local oldest = 0
if #first > 0 then
  oldest = tonumber(string.match(first[1][1], '^0%-(%d+)$')) or 0
end
local changed = redis.call('ZRANGE', KEYS[5], 0, 0)
if #changed > 0 then
  local lowest = tonumber(changed[1])
  if lowest and (oldest == 0 or lowest < oldest) then oldest = lowest end
end
return {top, oldest, epoch, reset and 1 or 0, repaired}
