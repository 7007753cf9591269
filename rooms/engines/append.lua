-- Append a batch of drafts to a room, atomically: deduplicate by (user, id), allocate seqs,
-- add to the room's stream, remember the ids, trim, and publish the new messages; unless the
-- log's epoch is not the caller's, or its top is behind what the caller has seen (room_top,
-- in front of this): then nothing is stored, and the caller learns the epoch to go on with.
-- KEYS: 1 stream (log), 2 seq counter, 3 ids hash ("user\0id" -> seq), 4 ids order (list),
--       5 epoch
-- ARGV: 1 retention (0: keep all), 2 dedup window, 3 shard channel, 4 node id, 5 room,
--       6 a new epoch, used if the log needs one, 7 floor (the highest seq the caller has
--       seen stored), 8 the epoch the caller knows ('': any),
--       then 5 per draft: user, name, id ('' for none), text, ts
-- Publishes "m<node>\n<first seq>\n<message object>\n<message object>..." with each new
-- message already in its wire form (docs/protocol.md), so receivers pass it on as it is.
-- Returns {stored (1, or 0 when refused), epoch, top (after the batch), repaired, then (when stored) one integer
-- per draft: its new seq, or minus the original's seq for a duplicate}; repaired is how many
-- malformed records (a counter or a dedup entry that is not a number, written by something
-- else than roomchat) it mended: the engine logs a warning.
local seq, epoch, reset, repaired = room_top(KEYS[1], KEYS[2], KEYS[5], ARGV[6],
                                             tonumber(ARGV[7]))
if reset or (ARGV[8] ~= '' and ARGV[8] ~= epoch) then
  return {0, epoch, seq, repaired}
end
local window = tonumber(ARGV[2])
local results = {1, epoch, seq, repaired}
local fresh = {}
local first = nil
for i = 9, #ARGV, 5 do
  local user, id = ARGV[i], ARGV[i + 2]
  local field = nil
  local original = nil
  if id ~= '' and window > 0 then
    field = user .. '\0' .. id
    original = redis.call('HGET', KEYS[3], field)
    if original and not string.match(original, '^%d+$') then
      original = nil  -- not a seq: forget it (the HSET below replaces it)
      repaired = repaired + 1
    end
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
    first = first or seq
    local client_id = cjson.null
    if id ~= '' then client_id = id end
    fresh[#fresh + 1] = cjson.encode({type = 'message', room = ARGV[5], seq = seq,
                                      id = client_id, user = user, name = ARGV[i + 1],
                                      text = ARGV[i + 3], ts = tonumber(ARGV[i + 4])})
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
  redis.call('SPUBLISH', ARGV[3], 'm' .. ARGV[4] .. '\n' .. first .. '\n' ..
             table.concat(fresh, '\n'))
end
results[3], results[4] = seq, repaired
return results
