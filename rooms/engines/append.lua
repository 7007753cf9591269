-- Append a batch of drafts to a room, atomically: deduplicate by (user, id), allocate seqs,
-- add to the room's stream, remember the ids, trim, and publish the new messages.
-- KEYS: 1 stream (log), 2 seq counter, 3 ids hash ("user\0id" -> seq), 4 ids order (list)
-- ARGV: 1 retention (0: keep all), 2 dedup window, 3 shard channel, 4 node id,
--       then 5 per draft: user, name, id ('' for none), text, ts
-- Returns one integer per draft: its new seq, or minus the original's seq for a duplicate.
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
if seq == 0 then
  -- A stream written before the counter existed: continue after its last entry.
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #last > 0 then
    seq = tonumber(string.match(last[1][1], '-(%d+)$'))
  end
end
local window = tonumber(ARGV[2])
local results = {}
local fresh = {}
for i = 5, #ARGV, 5 do
  local user, id = ARGV[i], ARGV[i + 2]
  local field = nil
  local original = nil
  if id ~= '' and window > 0 then
    field = user .. '\0' .. id
    original = redis.call('HGET', KEYS[3], field)
  end
  if original then
    results[#results + 1] = -tonumber(original)
  else
    seq = seq + 1
    redis.call('XADD', KEYS[1], '0-' .. seq, 'user', user, 'name', ARGV[i + 1], 'id', id,
               'text', ARGV[i + 3], 'ts', ARGV[i + 4])
    if field then
      redis.call('HSET', KEYS[3], field, seq)
      redis.call('RPUSH', KEYS[4], field)
    end
    results[#results + 1] = seq
    fresh[#fresh + 1] = {seq, user, ARGV[i + 1], id, ARGV[i + 3], tonumber(ARGV[i + 4])}
  end
end
if #fresh > 0 then
  redis.call('SET', KEYS[2], seq)
  if window > 0 then
    local excess = redis.call('LLEN', KEYS[4]) - window
    for _ = 1, excess do
      redis.call('HDEL', KEYS[3], redis.call('LPOP', KEYS[4]))
    end
  end
  local retention = tonumber(ARGV[1])
  if retention > 0 then
    redis.call('XTRIM', KEYS[1], 'MAXLEN', retention)
  end
  redis.call('SPUBLISH', ARGV[3], 'm' .. ARGV[4] .. '\n' .. cjson.encode(fresh))
end
return results
