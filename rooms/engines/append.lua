-- Append a batch of drafts (messages and changes) to a room's log, atomically: deduplicate by
-- (user, id), check each change and reply against its target's current state (log.lua, in
-- front of this, after room_top.lua), allocate seqs, add to the room's stream, update the
-- changed messages' current state, remember the ids, trim, and publish the new entries;
-- unless the log's epoch is not the caller's, or its top is behind what the caller has seen
-- (room_top): then nothing is stored, and the caller learns the epoch to go on with.
-- KEYS: 1 stream (log), 2 seq counter, 3 ids hash ("user\0id" -> seq), 4 ids order (list),
--       5 epoch, 6 state hash, 7 changed set, 8 tombstones of old versions (migrated)
-- ARGV: 1 retention (0: keep all), 2 dedup window, 3 shard channel, 4 node id, 5 room,
--       6 a new epoch, used if the log needs one, 7 floor (the highest seq the caller has
--       seen stored), 8 the epoch the caller knows ('': any), 9 edit window (ms, 0: forever),
--       10 most reactions per message, 11 reply excerpt length (characters),
--       then 9 per draft: kind ('m' message, 'e' edit, 'd' delete, 'r' react), user, name, id
--       ('' for none), ts, target (a change's message; a message's reply_to, 0 for none),
--       a (text; for a delete '1' when the sender moderates the room; for a reaction the
--       emoji), b (a message's mentions as a JSON array, '' for none; a reaction's '1' on or
--       '0' off), f (a message's files as a JSON array of their wire objects, '' for none)
-- Publishes "m<node>\n<first seq>\n<object>\n<object>..." with each new entry already in its
-- wire form (docs/protocol.md), so receivers pass it on as it is.
-- Returns {stored (1, or 0 when refused), epoch, top (after the batch), repaired, then (when
-- stored) three per draft: seq, status, wire}: status '' (stored: wire is its object), 'dup'
-- (seq is the original's), 'noop' (a reaction that changes nothing: seq is its target's last
-- change), or a refusal code (seq 0); repaired is how many malformed records (a counter or a
-- dedup entry that is not a number, written by something else than roomchat) it mended: the
-- engine logs a warning.
local seq, epoch, reset, repaired = room_top(KEYS[1], KEYS[2], KEYS[5], ARGV[6],
                                             tonumber(ARGV[7]))
if reset or (ARGV[8] ~= '' and ARGV[8] ~= epoch) then
  return {0, epoch, seq, repaired}
end
migrate(KEYS[8], KEYS[6], KEYS[7])
local window = tonumber(ARGV[2])
local room = ARGV[5]
local edit_window, most, excerpt_chars = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local actions = {e = 'edit', d = 'delete', r = 'react'}
local results = {1, epoch, seq, repaired}
local fresh = {}
local first = nil
for i = 12, #ARGV, 9 do
  local kind, user, name, id = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local ts, target, a, b = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]), ARGV[i + 6], ARGV[i + 7]
  local files = ARGV[i + 8]
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
  local status, wire, entry_seq = '', '', 0
  local client_id = cjson.null
  if id ~= '' then client_id = id end
  if original then
    status, entry_seq = 'dup', tonumber(original)
  elseif kind == 'm' then
    local reply, answered = nil, nil
    if target > 0 then
      answered = current(KEYS[1], KEYS[6], target)
      if not answered then
        status = 'not_found'
      elseif answered.d then
        status = 'already_deleted'
      else
        reply = {target, answered.user, answered.name, excerpt(answered.text, excerpt_chars)}
      end
    end
    if status == '' then
      seq = seq + 1
      entry_seq = seq
      local obj = {type = 'message', room = room, seq = seq, id = client_id, user = user,
                   name = name, text = a, ts = ts}
      local fields = {'user', user, 'name', name, 'id', id, 'text', a, 'ts', ts}
      if reply then
        fields[#fields + 1] = 'reply'
        fields[#fields + 1] = cjson.encode(reply)
        obj.reply_to = {seq = reply[1], user = reply[2], name = reply[3], excerpt = reply[4]}
      end
      if b ~= '' then
        fields[#fields + 1] = 'mentions'
        fields[#fields + 1] = b
        obj.mentions = cjson.decode(b)
      end
      if files ~= '' then
        fields[#fields + 1] = 'files'
        fields[#fields + 1] = files
        obj.files = cjson.decode(files)
      end
      redis.call('XADD', KEYS[1], '0-' .. sid(seq), unpack(fields))
      wire = cjson.encode(obj)
      if answered then
        -- Remembered with the answered message: its delete empties this reply's excerpt.
        local answers = answered.a or {}
        answers[#answers + 1] = seq
        answered.a = answers
        save(KEYS[6], KEYS[7], target, answered)
      end
    end
  else
    local st = current(KEYS[1], KEYS[6], target)
    local refused, by = apply(st, kind, user, ts, a, b, edit_window, most)
    if refused == 'noop' then
      status, entry_seq = 'noop', st.c or target
    elseif refused then
      status = refused
    else
      seq = seq + 1
      entry_seq = seq
      local obj = {type = 'change', room = room, seq = seq, action = actions[kind],
                   target = target, id = client_id, user = user, name = name, ts = ts}
      local fields = {'c', kind, 'target', target, 'user', user, 'name', name, 'id', id,
                      'ts', ts}
      local function add(key, value)
        fields[#fields + 1] = key
        fields[#fields + 1] = value
      end
      if kind == 'e' then
        add('text', a)
        obj.text = a
        local edits = st.e or {}
        edits[#edits + 1] = seq
        st.e = edits
      elseif kind == 'd' then
        add('by', by)
        obj.by = by
        st = tombstone(KEYS[1], KEYS[6], KEYS[7], st, target)
      else
        add('emoji', a)
        add('on', b)
        obj.emoji = a
        obj.on = b == '1'
      end
      st.c = seq
      save(KEYS[6], KEYS[7], target, st)
      redis.call('XADD', KEYS[1], '0-' .. sid(seq), unpack(fields))
      wire = cjson.encode(obj)
    end
  end
  if status == '' then
    if field then
      redis.call('HSET', KEYS[3], field, seq)
      redis.call('RPUSH', KEYS[4], field)
    end
    first = first or seq
    fresh[#fresh + 1] = wire
  end
  results[#results + 1] = entry_seq
  results[#results + 1] = status
  results[#results + 1] = wire
end
if #fresh > 0 then
  redis.call('SET', KEYS[2], seq)
  if window > 0 then
    local excess = redis.call('LLEN', KEYS[4]) - window
    for _ = 1, excess do
      redis.call('HDEL', KEYS[3], redis.call('LPOP', KEYS[4]))
    end
  end
  trim(KEYS[1], KEYS[6], KEYS[7], tonumber(ARGV[1]))
  redis.call('SPUBLISH', ARGV[3], 'm' .. ARGV[4] .. '\n' .. first .. '\n' ..
             table.concat(fresh, '\n'))
end
results[3], results[4] = seq, repaired
return results
