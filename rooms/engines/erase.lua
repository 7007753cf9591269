-- One step of an erasure request in one room: among the next ARGV[3] entries of the log from
-- seq ARGV[2] on, every message of user ARGV[1] is deleted as a moderator's delete entry
-- would delete it (log.lua, in front of this after room_top.lua: the entry and its edits
-- leave the stream, its tombstone is its state), at most ARGV[6] of them (the step ends at the
-- last one): one delete entry each, appended to the log with its own seq and published like
-- an append, so members online and every later resume learn of it. Bounded by the page size,
-- so Redis serves everyone else between two steps.
-- KEYS: 1 stream (log), 2 seq counter, 3 epoch, 4 state hash, 5 changed set, 6 tombstones of
--       old versions (migrated)
-- ARGV: 1 user, 2 first seq to examine, 3 page size, 4 shard channel, 5 room, 6 most deletes
--       per step, 7 a new epoch, used if the log needs one, 8 now (ms)
-- Publishes "merase\n<first seq>\n<object>..." (no process's node id: every process serving
-- the room, this one too, passes the entries to its room).
-- Returns {entries examined, last seq examined (0 if none), then the seqs of the messages it
-- deleted}; deleted messages are not in the stream, so one deleted before is neither examined
-- nor counted.
migrate(KEYS[6], KEYS[4], KEYS[5])
local entries = redis.call('XRANGE', KEYS[1], '0-' .. ARGV[2], '+', 'COUNT', ARGV[3])
if #entries == 0 then
  return {0, 0}
end
local seq, epoch = room_top(KEYS[1], KEYS[2], KEYS[3], ARGV[7], 0)
local most = tonumber(ARGV[6])
local now = tonumber(ARGV[8])
local erased = {}
local fresh = {}
local first = nil
local examined = 0
for _, entry in ipairs(entries) do
  examined = examined + 1
  local f = fields_of(entry[2])
  if not f['c'] and f['user'] == ARGV[1] then
    local target = tonumber(string.match(entry[1], '^0%-(%d+)$'))
    local st = target and current(KEYS[1], KEYS[4], target)
    if st and not st.d then
      seq = seq + 1
      first = first or seq
      redis.call('XADD', KEYS[1], '0-' .. sid(seq), 'c', 'd', 'target', target, 'user', st.user,
                 'name', st.name, 'id', '', 'ts', now, 'by', 'moderator')
      st = tombstone(KEYS[1], KEYS[4], KEYS[5], st, target)
      st.c = seq
      save(KEYS[4], KEYS[5], target, st)
      fresh[#fresh + 1] = cjson.encode({type = 'change', room = ARGV[5], seq = seq,
                                        action = 'delete', target = target, id = cjson.null,
                                        user = st.user, name = st.name, ts = now,
                                        by = 'moderator'})
      erased[#erased + 1] = target
      if #erased >= most then
        break
      end
    end
  end
end
if #erased > 0 then
  redis.call('SET', KEYS[2], seq)
  redis.call('SPUBLISH', ARGV[4], 'merase\n' .. first .. '\n' .. table.concat(fresh, '\n'))
end
local result = {examined, string.match(entries[examined][1], '-(%d+)$')}
for _, target in ipairs(erased) do
  result[#result + 1] = target
end
return result
