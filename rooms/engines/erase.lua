-- One step of an erasure request in one room: among the next ARGV[3] entries of the log from
-- seq ARGV[2] on, every message of user ARGV[1] is deleted as a moderator's delete entry
-- would delete it (log.lua, in front of this after room_top.lua: the entry and its edits
-- leave the stream, its tombstone is its state), and every reaction entry of theirs leaves
-- the stream, replaced by a take-back: a react-off entry from them for its message and emoji
-- (whether or not the reaction is on now: a client that saw it put must see it taken back),
-- unless the message is deleted, marked `by erasure` (a later erasure keeps it); at most
-- ARGV[6] new entries (the step ends there): each appended to the log with its own seq and
-- published like an append, so members online and every later resume learn of it. Bounded by
-- the page size, so Redis serves everyone else between two steps.
-- KEYS: 1 stream (log), 2 seq counter, 3 epoch, 4 state hash, 5 changed set, 6 tombstones of
--       old versions (migrated)
-- ARGV: 1 user, 2 first seq to examine, 3 page size, 4 shard channel, 5 room, 6 most new
--       entries per step, 7 a new epoch, used if the log needs one, 8 now (ms)
-- Publishes "merase\n<first seq>\n<object>..." (no process's node id: every process serving
-- the room, this one too, passes the entries to its room).
-- Returns {entries examined, last seq examined (0 if none), entries removed from the stream,
-- 1 if the step stopped before the end of its page, then the seqs of the messages it
-- deleted}; deleted messages are not in the stream, so one deleted before is neither
-- examined nor counted.
migrate(KEYS[6], KEYS[4], KEYS[5])
local entries = redis.call('XRANGE', KEYS[1], '0-' .. ARGV[2], '+', 'COUNT', ARGV[3])
if #entries == 0 then
  return {0, 0, 0, 0}
end
local seq, epoch = room_top(KEYS[1], KEYS[2], KEYS[3], ARGV[7], 0)
local user = ARGV[1]
local most = tonumber(ARGV[6])
local now = tonumber(ARGV[8])
local erased = {}
local fresh = {}
local first = nil
local examined = 0
local removed = 0
local stopped = 0
local taken = {}  -- 'target emoji' -> true: taken back in this step

-- Take back the user's `emoji` on message `target` (unless deleted, or done in this step).
local function take_back(target, emoji, name)
  local pair = target .. ' ' .. emoji
  local st = current(KEYS[1], KEYS[4], target)
  if taken[pair] or not st or st.d then
    return
  end
  taken[pair] = true
  react(st, user, emoji, false, 0)  -- (nothing to do when it is not on now)
  seq = seq + 1
  first = first or seq
  redis.call('XADD', KEYS[1], '0-' .. sid(seq), 'c', 'r', 'target', target, 'user', user,
             'name', name, 'id', '', 'ts', now, 'emoji', emoji, 'on', '0', 'by', 'erasure')
  fresh[#fresh + 1] = cjson.encode({type = 'change', room = ARGV[5], seq = seq,
                                    action = 'react', target = target, id = cjson.null,
                                    user = user, name = name, ts = now, emoji = emoji,
                                    on = false})
  st.c = seq
  save(KEYS[4], KEYS[5], target, st)
end

for _, entry in ipairs(entries) do
  examined = examined + 1
  local f = fields_of(entry[2])
  local at = tonumber(string.match(entry[1], '^0%-(%d+)$'))
  if not f['c'] and f['user'] == user then
    local st = at and current(KEYS[1], KEYS[4], at)
    if st and not st.d then
      seq = seq + 1
      first = first or seq
      redis.call('XADD', KEYS[1], '0-' .. sid(seq), 'c', 'd', 'target', at, 'user', st.user,
                 'name', st.name, 'id', '', 'ts', now, 'by', 'moderator')
      removed = removed + 1 + #(st.e or {})
      st = tombstone(KEYS[1], KEYS[4], KEYS[5], st, at)
      st.c = seq
      save(KEYS[4], KEYS[5], at, st)
      fresh[#fresh + 1] = cjson.encode({type = 'change', room = ARGV[5], seq = seq,
                                        action = 'delete', target = at, id = cjson.null,
                                        user = st.user, name = st.name, ts = now,
                                        by = 'moderator'})
      erased[#erased + 1] = at
    end
  elseif f['c'] == 'r' and f['user'] == user and f['by'] ~= 'erasure' then
    redis.call('XDEL', KEYS[1], entry[1])
    removed = removed + 1
    local target = tonumber(f['target'])
    if target and f['emoji'] then
      take_back(target, f['emoji'], f['name'] or user)
    end
  end
  if #fresh >= most then
    stopped = 1
    break
  end
end
if #fresh > 0 then
  redis.call('SET', KEYS[2], seq)
  redis.call('SPUBLISH', ARGV[4], 'merase\n' .. first .. '\n' .. table.concat(fresh, '\n'))
end
local result = {examined, string.match(entries[examined][1], '-(%d+)$'), removed, stopped}
for _, target in ipairs(erased) do
  result[#result + 1] = target
end
return result
