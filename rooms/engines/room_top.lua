-- The room's top seq and its log's epoch, checked against what the caller has seen. Not a
-- script of its own: the engine puts it in front of load.lua, append.lua and sync.lua.
--
-- The epoch names one unbroken life of the room's log (docs/protocol.md, "Epochs"): created
-- with the log, it is lost with it (a FLUSHALL, a restart without the AOF), and replaced when
-- the log is found behind `floor`, the highest seq the caller has seen stored (a failover to a
-- replica that lagged). Then the log moves on past `floor`, so a seq is never allocated twice
-- while any process that saw it serves the room.
-- Returns top, epoch, reset (true: the log was behind floor and now continues after it under
-- a new epoch), repaired (1 when a seq counter that is not a number was set again).
local function room_top(log_key, seq_key, epoch_key, candidate, floor)
  local repaired = 0
  local counter = redis.call('GET', seq_key)
  local top = 0
  if counter and string.match(counter, '^%d+$') then
    top = tonumber(counter)
  elseif counter then
    repaired = 1  -- not a number (not roomchat's): set again from the log below
  end
  if top == 0 then
    -- No counter (a log written before counters existed, or one that lost it): the log's top.
    local last = redis.call('XREVRANGE', log_key, '+', '-', 'COUNT', 1)
    if #last > 0 then
      top = tonumber(string.match(last[1][1], '^0%-(%d+)$')) or 0
    end
    if repaired == 1 then
      redis.call('SET', seq_key, top)
    end
  end
  local epoch = redis.call('GET', epoch_key)
  if not epoch then
    epoch = candidate
    redis.call('SET', epoch_key, epoch)
  end
  local reset = false
  if top < floor then
    top = floor
    epoch = candidate
    redis.call('SET', seq_key, top)
    redis.call('SET', epoch_key, epoch)
    reset = true
  end
  return top, epoch, reset, repaired
end
