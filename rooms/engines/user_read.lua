-- A user's index of their read markers (room -> seq), for Engine.markers: moved forward only,
-- like the room's own marker (mark_read.lua; a separate key, in the user's hash slot).
-- KEYS: 1 the user's markers hash; ARGV: 1 room, 2 seq
local now = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
if tonumber(ARGV[2]) > now then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
