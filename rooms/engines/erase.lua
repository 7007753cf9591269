-- One step of an erasure request in one room: among the next ARGV[3] entries of the log from
-- seq ARGV[2] on, the entries of user ARGV[1] become tombstones exactly as in delete.lua (kept
-- in the tombstone hash, removed from the stream), at most ARGV[6] of them (the step ends at
-- the last one), and one announcement names them all. Bounded by the page size, so Redis
-- serves everyone else between two steps.
-- KEYS: 1 stream (log), 2 tombstones hash (seq -> user\0name\0id\0ts)
-- ARGV: 1 user, 2 first seq to examine, 3 page size, 4 shard channel, 5 node id,
--       6 most tombstones per step
-- Publishes "d<node>\n<seq>\n<seq>..." when it erased anything.
-- Returns {entries examined, last seq examined (0 if none), erased seq...}; tombstones are not
-- in the stream, so a message erased or deleted before is neither examined nor counted.
local entries = redis.call('XRANGE', KEYS[1], '0-' .. ARGV[2], '+', 'COUNT', ARGV[3])
if #entries == 0 then
  return {0, 0}
end
local most = tonumber(ARGV[6])
local erased = {}
local examined = 0
for _, entry in ipairs(entries) do
  examined = examined + 1
  local f = {}
  local kv = entry[2]
  for i = 1, #kv, 2 do
    f[kv[i]] = kv[i + 1]
  end
  if f['user'] == ARGV[1] then
    local seq = string.match(entry[1], '-(%d+)$')
    redis.call('HSET', KEYS[2], seq,
               (f['user'] or '') .. '\0' .. (f['name'] or '') .. '\0' .. (f['id'] or '') .. '\0' ..
               (f['ts'] or ''))
    redis.call('XDEL', KEYS[1], entry[1])
    erased[#erased + 1] = seq
    if #erased >= most then
      break
    end
  end
end
if #erased > 0 then
  redis.call('SPUBLISH', ARGV[4], 'd' .. ARGV[5] .. '\n' .. table.concat(erased, '\n'))
end
local result = {examined, string.match(entries[examined][1], '-(%d+)$')}
for _, seq in ipairs(erased) do
  result[#result + 1] = seq
end
return result
