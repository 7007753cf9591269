-- Move a user's read marker in a room forward (never back), and tell the other processes
-- serving the room when it moved.
-- KEYS: 1 read markers hash (user -> seq)
-- ARGV: 1 user, 2 seq, 3 shard channel, 4 node id
-- Publishes "r<node>\n<user>\n<seq>" when the marker moved. Returns the marker now.
local seq = tonumber(ARGV[2])
local now = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
if seq <= now then
  return now
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SPUBLISH', ARGV[3], 'r' .. ARGV[4] .. '\n' .. ARGV[1] .. '\n' .. ARGV[2])
return seq
