-- The log's rules for change entries and replies (rooms/changes.py, in Lua), and the current
-- state of changed messages. Not a script of its own: the engine puts it in front of
-- append.lua, erase.lua and load.lua, so a change is checked against its target's current
-- state and applied to it atomically with its append, whichever process sends it.
--
-- A room's keys (one hash tag): the stream `log` (entries `0-<seq>`: a message has fields
-- user, name, id, text (empty when it has files alone), ts, and reply, mentions and files
-- (JSON) when set; a change has c (e: edit, d: delete, r: react), target, user, name, id, ts,
-- and text / by / emoji and on), the hash `state` (seq -> the current state of each changed
-- message, JSON: user, name, id, text, ts, reply, mentions, files, edited, reactions
-- ([[emoji, [user, ...]], ...]), c (the seq of its last
-- change), e (its edits' seqs), a (the seqs of the messages answering it), d (1: deleted)),
-- and the sorted set `changed` (its seqs, by
-- seq: what a page overlays, and what retention prunes). A deleted message leaves the stream
-- (its text, and its edits' texts, leave Redis); its tombstone is its state.

-- A seq as Redis keys, fields and stream ids spell it (Lua writes big numbers as 9.0e+15).
local function sid(n)
  return string.format('%d', n)
end

local function fields_of(kv)
  local f = {}
  for i = 1, #kv, 2 do
    f[kv[i]] = kv[i + 1]
  end
  return f
end

-- Message seq's current state (a table, as stored in `state`), or nil when no message seq is
-- stored (never, pruned, or a change's seq). Unreadable records count as missing.
local function current(log_key, state_key, seq)
  if seq < 1 or seq >= 1e15 then
    return nil  -- no seq roomchat writes (rooms/engines/redis_records.py)
  end
  seq = sid(seq)
  local raw = redis.call('HGET', state_key, seq)
  if raw then
    local ok, st = pcall(cjson.decode, raw)
    if ok and type(st) == 'table' and type(st.user) == 'string' then
      return st
    end
    return nil
  end
  local id = '0-' .. seq
  local entry = redis.call('XRANGE', log_key, id, id)
  if #entry == 0 then
    return nil
  end
  local f = fields_of(entry[1][2])
  if f['c'] or not f['user'] or not f['text'] then
    return nil
  end
  local st = {user = f['user'], name = f['name'] or f['user'], id = f['id'] or '',
              text = f['text'], ts = tonumber(f['ts']) or 0}
  if f['reply'] then
    local ok, reply = pcall(cjson.decode, f['reply'])
    if ok and type(reply) == 'table' then st.reply = reply end
  end
  if f['mentions'] then
    local ok, mentions = pcall(cjson.decode, f['mentions'])
    if ok and type(mentions) == 'table' and #mentions > 0 then st.mentions = mentions end
  end
  if f['files'] then
    local ok, files = pcall(cjson.decode, f['files'])
    if ok and type(files) == 'table' and #files > 0 then st.files = files end
  end
  return st
end

local function save(state_key, changed_key, seq, st)
  redis.call('HSET', state_key, sid(seq), cjson.encode(st))
  redis.call('ZADD', changed_key, seq, sid(seq))
end

-- `text` cut to at most `chars` code points, the last one an ellipsis when cut (as
-- rooms.changes.excerpt: a code point starts at every byte that is not 10xxxxxx).
local function excerpt(text, chars)
  local total = 0
  for i = 1, #text do
    local b = string.byte(text, i)
    if b < 128 or b >= 192 then total = total + 1 end
  end
  if total <= chars then
    return text
  end
  local seen, cut = 0, #text
  for i = 1, #text do
    local b = string.byte(text, i)
    if b < 128 or b >= 192 then
      seen = seen + 1
      if seen == chars then
        cut = i - 1
        break
      end
    end
  end
  return string.sub(text, 1, cut) .. '\226\128\166'
end

-- Put (on) or take back `user`'s `emoji` on `st`: nil when done, or 'noop', or
-- 'too_many_reactions'.
local function react(st, user, emoji, on, most)
  local list = st.reactions or {}
  for i, r in ipairs(list) do
    if r[1] == emoji then
      local users, at = r[2], nil
      for j, u in ipairs(users) do
        if u == user then at = j break end
      end
      if (at ~= nil) == on then return 'noop' end
      if on then
        users[#users + 1] = user
      else
        table.remove(users, at)
        if #users == 0 then table.remove(list, i) end
      end
      if #list == 0 then st.reactions = nil else st.reactions = list end
      return nil
    end
  end
  if not on then return 'noop' end
  if #list >= most then return 'too_many_reactions' end
  list[#list + 1] = {emoji, {user}}
  st.reactions = list
  return nil
end

-- Check change `kind` ('e', 'd', 'r') by `user` at `ts` against `st` (the target's current
-- state, nil when missing) and apply it to `st`. Returns the refusal code, or 'noop', or nil
-- and, for a delete, who did it ('author' or 'moderator'). `a`: the edit's text, '1' when the
-- deleter moderates the room, or the emoji; `b`: '1' to put a reaction, '0' to take it back.
local function apply(st, kind, user, ts, a, b, window_ms, most)
  if not st then return 'not_found' end
  if kind == 'e' then
    if user ~= st.user then return 'forbidden' end
    if st.d then return 'already_deleted' end
    if window_ms > 0 and ts - st.ts > window_ms then return 'edit_window_passed' end
    st.text = a
    st.edited = ts
    return nil
  end
  if st.d then return 'already_deleted' end
  if kind == 'd' then
    if user == st.user then return nil, 'author' end
    if a == '1' then return nil, 'moderator' end
    return 'forbidden'
  end
  return react(st, user, a, b == '1', most)
end

-- Store `st` as deleted: the message's entry and its edits' entries leave the stream, and the
-- messages answering it lose their excerpt of it.
local function tombstone(log_key, state_key, changed_key, st, seq)
  redis.call('XDEL', log_key, '0-' .. sid(seq))
  for _, edit in ipairs(st.e or {}) do
    redis.call('XDEL', log_key, '0-' .. sid(edit))
  end
  for _, answer in ipairs(st.a or {}) do
    local reply = current(log_key, state_key, answer)
    if reply and not reply.d and type(reply.reply) == 'table' then
      reply.reply[4] = ''
      save(state_key, changed_key, answer, reply)
    end
  end
  return {user = st.user, name = st.name, id = st.id, ts = st.ts, text = '', d = 1}
end

-- Tombstones written before change entries existed (`deleted`: seq -> user\0name\0id\0ts),
-- moved into `state` and `changed` once.
local function migrate(deleted_key, state_key, changed_key)
  if redis.call('EXISTS', deleted_key) == 0 then return end
  local old = redis.call('HGETALL', deleted_key)
  for i = 1, #old, 2 do
    local seq = tonumber(old[i])
    local user, name, id, ts = string.match(old[i + 1], '^([^%z]*)%z([^%z]*)%z([^%z]*)%z(%d*)$')
    if seq and user and user ~= '' then
      save(state_key, changed_key, seq, {user = user, name = name, id = id,
                                         ts = tonumber(ts) or 0, text = '', d = 1, c = seq})
    end
  end
  redis.call('DEL', deleted_key)
end

-- Keep the log's `retention` newest entries (0: all); the state of messages older than what
-- is left goes too (and, when read, changes to them: rooms/engines/redis.py).
local function trim(log_key, state_key, changed_key, retention)
  if retention <= 0 then return end
  if redis.call('XTRIM', log_key, 'MAXLEN', retention) == 0 then return end
  local first = redis.call('XRANGE', log_key, '-', '+', 'COUNT', 1)
  if #first == 0 then return end
  local oldest = tonumber(string.match(first[1][1], '^0%-(%d+)$'))
  if not oldest then return end
  local gone = redis.call('ZRANGEBYSCORE', changed_key, '-inf', '(' .. oldest)
  for _, seq in ipairs(gone) do
    redis.call('HDEL', state_key, seq)
  end
  redis.call('ZREMRANGEBYSCORE', changed_key, '-inf', '(' .. oldest)
end
