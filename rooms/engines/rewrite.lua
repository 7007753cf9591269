-- One step of rewriting a room's stream into a fresh key, so that the bytes of the entries an
-- erasure removed leave Redis: XDEL only flags an entry in its listpack node, whose bytes stay
-- (in memory, in the next RDB snapshot, in a rewritten AOF) until every entry of that node is
-- gone. The kept entries are copied, ids and fields as they are, into a copy of the room's
-- own (same hash tag), a bounded number per call so Redis serves everyone else between two
-- steps; the call that reaches the end copies the rest, gives the copy the stream's last id
-- and counters and renames it over the stream, atomically. Entries removed from the stream
-- meanwhile would come back from the copy: each step compares the count of entries removed
-- (entries-added minus length) with the copy's; oldest entries trimmed (retention) are trimmed
-- from the copy too, anything else removed (a delete) drops the copy: begin again.
-- Appends meanwhile land in the stream behind the copied part and are copied by a later step.
-- A reply's entry is copied with its `reply` as the message's current state has it: the
-- excerpt it quoted of a message deleted since is gone from the copy (log.lua's tombstone
-- empties it in the state only).
-- KEYS: 1 the room's stream (log), 2 the copy (a key of this rewrite's own), 3 the room's
--       state hash
-- ARGV: 1 the id after which to copy ('' to begin: any old copy is dropped), 2 most entries
--       to copy in this call (0: all the rest), 3 the removed count the copy began with
--       ('' to begin), 4 milliseconds the copy lives unless a step extends it (a rewrite
--       whose caller died leaves nothing behind for long)
-- Returns {status, the id to pass next, the removed count to pass next}: status 'more' (call
-- again), 'done' (the stream is now the copy), 'again' (entries were removed meanwhile: the
-- copy is dropped; begin again), 'gone' (no stream, or nothing in it: nothing to rewrite).
local function info(key)
  local raw = redis.call('XINFO', 'STREAM', key)
  local f = {}
  for i = 1, #raw, 2 do
    f[raw[i]] = raw[i + 1]
  end
  return f
end

if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  return {'gone', '', ''}
end
local stream = info(KEYS[1])
local removed = stream['entries-added'] - stream['length']
local after, most, began = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if after == '' then
  redis.call('DEL', KEYS[2])
  if stream['length'] == 0 then
    return {'gone', '', ''}  -- every node freed already: no bytes left behind
  end
  began = removed
  after = '-'
else
  began = tonumber(began)
  -- (A copy that expired under a slow caller is missing its beginning: never finish it.)
  if redis.call('EXISTS', KEYS[2]) == 0 then
    return {'again', '', ''}
  end
  if removed ~= began then
    -- Trimmed from the front meanwhile (retention trims on every append to a full room):
    -- trim the copy alike. Anything else removed (a delete, maybe of a copied entry) means
    -- beginning again.
    local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
    local trimmed = -1
    if #oldest > 0 then
      trimmed = redis.call('XTRIM', KEYS[2], 'MINID', oldest[1][1])
    end
    if removed - began ~= trimmed then
      redis.call('DEL', KEYS[2])
      return {'again', '', ''}
    end
    began = removed
  end
  after = '(' .. after
end
local entries
if most > 0 then
  entries = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', most)
else
  entries = redis.call('XRANGE', KEYS[1], after, '+')
end
for _, entry in ipairs(entries) do
  local kv = entry[2]
  for i = 1, #kv, 2 do
    if kv[i] == 'reply' then
      local raw = redis.call('HGET', KEYS[3], string.match(entry[1], '^0%-(%d+)$') or '')
      local ok, st = pcall(cjson.decode, raw or '')
      if ok and type(st) == 'table' and type(st.reply) == 'table' then
        kv[i + 1] = cjson.encode(st.reply)
      end
    end
  end
  redis.call('XADD', KEYS[2], entry[1], unpack(kv))
end
if most > 0 and #entries == most then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return {'more', entries[#entries][1], began}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {'again', '', ''}  -- (not reached: a first step that copies nothing found no entry)
end
redis.call('XSETID', KEYS[2], stream['last-generated-id'], 'ENTRIESADDED',
           stream['entries-added'], 'MAXDELETEDID', stream['max-deleted-entry-id'])
redis.call('RENAME', KEYS[2], KEYS[1])
redis.call('PERSIST', KEYS[1])
return {'done', '', ''}
