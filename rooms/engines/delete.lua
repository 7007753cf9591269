-- Replace a stored message by its tombstone, atomically: keep (user, name, id, ts) in the
-- room's tombstone hash, remove the entry (and its text) from the stream, and tell the other
-- processes serving the room. A stream entry cannot be rewritten, and its id cannot be added
-- again (XADD ids only grow), so read() merges the hash's tombstones into what XRANGE returns.
-- KEYS: 1 stream (log), 2 tombstones hash (seq -> user\0name\0id\0ts)
-- ARGV: 1 seq, 2 shard channel, 3 node id
-- Returns 1 when the message is (now or already) a tombstone, 0 when no such message is stored.
local id = '0-' .. ARGV[1]
local entry = redis.call('XRANGE', KEYS[1], id, id)
if #entry == 0 then
  return redis.call('HEXISTS', KEYS[2], ARGV[1])
end
local f = {}
local kv = entry[1][2]
for i = 1, #kv, 2 do
  f[kv[i]] = kv[i + 1]
end
redis.call('HSET', KEYS[2], ARGV[1],
           (f['user'] or '') .. '\0' .. (f['name'] or '') .. '\0' .. (f['id'] or '') .. '\0' ..
           (f['ts'] or ''))
redis.call('XDEL', KEYS[1], id)
redis.call('SPUBLISH', ARGV[2], 'd' .. ARGV[3] .. '\n' .. ARGV[1])
return 1
