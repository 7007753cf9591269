// chat.js: the roomchat wire protocol (docs/protocol.md) from the browser's side.
//
// One ChatClient owns one WebSocket to one room: before every connect it trades its token for a single-use
// ticket (POST /rooms/<room>/ticket, so the token never travels in a URL and a refusal comes back with a
// reason it can read), connects with `?ticket=`, answers pings, splits coalesced server frames, resumes with `after=<last seq>` after every drop, drops duplicates by seq, and keeps an outbox of
// typed messages in sessionStorage until the server acknowledges them. It knows nothing about the DOM:
// the page listens to its events (see ChatClient) and calls send()/reconnectNow()/setToken().

import { backoffDelay as backoff, jittered } from '/static/backoff.js';

export const MAX_TEXT_CHARS = 2000; // the server's default max_text_chars, counted in code points
const BACKOFF_BASE_MS = 1000;
const BACKOFF_MAX_MS = 30000;
// After 1012 (server restart) every client of the server reconnects at a random point of this window: spread
// so they don't arrive together, short so a small server's restart still feels like a blip. A server the
// whole window would overload refuses the excess with 503 and a Retry-After spread over the time it needs.
const RESTART_SPREAD_MS = 2000;
const CONNECT_TIMEOUT_MS = 15000; // a connect that neither opens nor fails by then is abandoned
// The server pings every 25 s and drops us after 35 s of silence; if we hear nothing for longer than that,
// the connection is dead even if the browser has not noticed yet.
const STALE_AFTER_MS = 60000;
const STABLE_AFTER_MS = 10000; // a connection live this long resets the backoff
const REFUSED_HINT_AFTER = 3; // consecutive connects that never opened before we suspect the token
const TYPING_EVERY_MS = 3000; // the server relays one `typing` per user per 3 s: no use sending more
// A moderator's delete or ban not answered by then is reported as failed (the server answers in well under 1 s
// unless its storage is stuck; the request may still be done: the page sees the delete or the leave if it is).
const MODERATION_TIMEOUT_MS = 15000;
// An edit, delete or reaction not answered by then is reported as failed, for the same reason.
const REQUEST_TIMEOUT_MS = 15000;
// The read marker goes to the server at most this often: it moves with every message scrolled into view, and
// only its latest value matters.
const READ_EVERY_MS = 2000;
// While a history page is on its way, changes to messages not held yet are kept (at most this many) and folded
// into the page when it comes: the page may have been read before they were made.
const MAX_ORPHAN_CHANGES = 1000;
// A fresh join's replay is messages only (docs/protocol.md), so when the room's last entry is a change it ends
// below the welcome's seq. The server says where in `welcome.replay_upto`, and the page relies on that; only a
// server from before that field (met during a rolling upgrade, or a pinned older deployment) leaves the page
// guessing: the replay is taken as complete once its messages stop coming for this long (they are sent back to
// back). Without the guess such a replay would stay "loading" until the first live entry or the 3 s give-up.
const HISTORY_QUIET_MS = 400;
// The server's per-connection rate limit at its defaults (docs/protocol.md, `rate_limited`; rooms/config.py
// `rate_burst`, `rate_per_sec`, `pong_cost`): a bucket of 10 frames refilled at 2 a second, where a pong or a
// typing frame costs 0.1 and anything else 1. The welcome does not say what a server was configured with: a
// stricter server is met by its refusals instead (each empties our bucket and pauses the queue for its
// `retry_after`), so they come one at a time, never the 20 in a row that earn a 4008.
export const SERVER_RATE_BURST = 10;
export const SERVER_RATE_PER_SEC = 2;
const LIGHT_FRAME_COST = 0.1;
// Our own bucket sits a little inside the server's: the server's refills from when a frame arrives, not from
// when we sent it, so network jitter can bring two of our frames closer together than we sent them. One
// token kept in hand and a 10 % slower refill absorb about half a second of that.
export const PACE_BURST = SERVER_RATE_BURST - 1;
export const PACE_RATE_PER_SEC = SERVER_RATE_PER_SEC * 0.9;

export const State = Object.freeze({
  CONNECTING: 'connecting', // a socket is being opened, or is open and waiting for `welcome`
  LIVE: 'live', // welcome received; messages flow
  WAITING: 'waiting', // disconnected, a reconnect is scheduled at `retryAt`
  OFFLINE: 'offline', // disconnected for good until the user acts (see `reason`)
});

/** Why we are OFFLINE: what the page should tell the person. */
export const StopReason = Object.freeze({
  EXPIRED: 'token_expired', // 4001, or the token's exp has passed: a new token is needed
  FORBIDDEN: 'room_forbidden', // the token does not list this room
  INVALID: 'invalid_token', // the server cannot read or verify the token (or there is none)
  REVOKED: 'token_revoked', // 4003, or the ticket request said so: the user's access was withdrawn
  BAD_ROOM: 'bad_room', // the room name is not one the server accepts
  POLICY: 'policy', // 1008 / 1003: the server refused our frames; do not loop
  BANNED: 'banned', // 4004, or 403 banned: a moderator banned this user from the room (maybe for a while)
  CLOSED: 'closed', // 1000, or stop() was called
});

/** Stop reasons that no retry can fix: only a new token (setToken) gets the page going again. */
export const FINAL_REASONS = Object.freeze(new Set([
  StopReason.EXPIRED, StopReason.FORBIDDEN, StopReason.INVALID, StopReason.REVOKED, StopReason.BAD_ROOM,
]));

/** While WAITING: why the server is not taking us right now, when it told us (else null). */
export const WaitReason = Object.freeze({
  BUSY: 'busy', // 503 server_full / room_full, 429: the server is full or we asked too often
  UNAVAILABLE: 'unavailable', // 503 unavailable or close 1013: its storage is down for now
  RESTARTING: 'restarting', // 503 draining or close 1012
  TOO_FAST: 'too_fast', // close 4008: the server saw too many messages too fast (we pace, so: rare)
});

/** A monotonic clock in ms, for pacing (Date.now() can jump). */
const monotonic = () => performance.now();

/**
 * A token bucket like the server's (rooms/ratelimit.py): `burst` tokens refilled at `ratePerSec`. Pure:
 * `now` (ms, monotonic) is passed in.
 */
export class TokenBucket {
  constructor(ratePerSec, burst, now) {
    this.perMs = ratePerSec / 1000;
    this.burst = burst;
    this.tokens = burst;
    this.stamp = now;
  }

  refill(now) {
    const elapsed = Math.max(0, now - this.stamp);
    this.stamp = Math.max(this.stamp, now);
    this.tokens = Math.min(this.burst, this.tokens + elapsed * this.perMs);
  }

  /** The ms until `cost` tokens are there (0: now). */
  wait(now, cost = 1) {
    this.refill(now);
    // The epsilon: a timer set for the computed wait must find the token there, not a rounding short of it.
    return this.tokens + 1e-9 >= cost ? 0 : Math.ceil((cost - this.tokens) / this.perMs);
  }

  /** Take `cost` tokens if they are there; returns whether it did. */
  take(now, cost = 1) {
    if (this.wait(now, cost) > 0) return false;
    this.tokens -= cost;
    return true;
  }

  /** Take `cost` tokens even into debt, for a frame that must go now (a pong, a moderator's action). */
  charge(now, cost) {
    this.refill(now);
    this.tokens -= cost;
  }

  /** The server refused a frame for its rate: its bucket is empty, so ours is too. */
  empty(now) {
    this.refill(now);
    this.tokens = Math.min(this.tokens, 0);
  }
}

/**
 * Decode a JWT's payload without verifying it (the server verifies). Returns the claims object, or null
 * if the token is not a well-formed JWT.
 */
export function decodeToken(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/** The token's expiry in ms since the epoch, or null when it has no numeric `exp`. */
export function tokenExpiresAt(token) {
  const claims = decodeToken(token);
  return claims && typeof claims.exp === 'number' ? claims.exp * 1000 : null;
}

/**
 * Split one server frame into its JSON objects (the server coalesces several, separated by "\n").
 * Lines that are not JSON objects are skipped: a client must not die on something it cannot read.
 */
export function splitFrame(data) {
  if (typeof data !== 'string') return [];
  const out = [];
  for (const line of data.split('\n')) {
    if (!line.trim()) continue;
    try {
      const obj = JSON.parse(line);
      if (obj && typeof obj === 'object' && !Array.isArray(obj)) out.push(obj);
    } catch {
      // ignore: unknown or broken lines must not stop the stream
    }
  }
  return out;
}

/**
 * Exponential backoff with full jitter: d is 1 s doubling to 30 s, each delay drawn from [0, d] (AWS's "full
 * jitter": clients that failed together spread over the whole window instead of its second half).
 */
export function backoffDelay(attempt, random = Math.random) {
  return backoff(attempt, { baseMs: BACKOFF_BASE_MS, maxMs: BACKOFF_MAX_MS, jitter: 1, random });
}

/** The wait before reconnecting after 1012 (server restart): drawn from [0, RESTART_SPREAD_MS]. */
export function restartDelay(random = Math.random) {
  return Math.round(jittered(0, RESTART_SPREAD_MS, random));
}

/**
 * How long to wait before the next connect, for a plan from closeAction or ticketRefusalAction, when
 * `attempt` connects have failed since the last stable one. Returns {delay, attempt}: the attempt count to
 * keep for next time. The server's `retryAfterMs`, when it gave one, is a floor (never wait less than asked).
 */
export function reconnectDelay(plan, attempt, random = Math.random) {
  let delay;
  let next = attempt;
  if (plan.action === 'now') {
    delay = 0;
  } else if (plan.action === 'soon') {
    next = 0;
    delay = restartDelay(random);
  } else {
    next = Math.max(next, plan.minAttempt || 0);
    delay = backoffDelay(next, random);
  }
  if (plan.retryAfterMs) delay = Math.max(delay, plan.retryAfterMs);
  return { delay, attempt: next + 1 };
}

/** The number of Unicode code points in a string (what the server's length limit counts). */
export function codePointLength(text) {
  return Array.from(text).length;
}

/** `text` trimmed, as the server takes it: '' when empty; throws RangeError when longer than MAX_TEXT_CHARS. */
function checkedText(text) {
  const trimmed = String(text).trim();
  if (codePointLength(trimmed) > MAX_TEXT_CHARS) {
    throw new RangeError(`A message can have at most ${MAX_TEXT_CHARS} characters.`);
  }
  return trimmed;
}

/** A random client message id, unique enough for the server's (user, id) dedup. */
export function newMessageId() {
  const bytes = new Uint8Array(9);
  crypto.getRandomValues(bytes); // works outside secure contexts, unlike crypto.randomUUID
  return 'c-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// ---- messages in their current state (docs/design/rich-messages.md) ------------------------------

// A message's files (issue 23): their public metadata only, never URLs (the page asks for those: files.js).
// (Here rather than in files.js: this module imports nothing, so Node loads it alone, as tests and bench do.)

/** What a message may carry when the server does not say (the server's default `max_files_per_message`). */
export const DEFAULT_MAX_FILES = 10;
/** The most files a message is trusted to carry when drawn (a broken or hostile server's list is cut). */
const MAX_FILES_SHOWN = 50;
const FILE_ID = /^[A-Za-z0-9_-]{1,64}$/;

const positiveInt = (v) => Number.isSafeInteger(v) && v > 0;

/**
 * One file of a message as the page keeps it, or null when `f` is not one: {id, name, size, type, width?,
 * height?, thumb?}, width and height only together, only positive integers. Nothing else is copied.
 */
export function fileMeta(f) {
  if (!f || typeof f !== 'object' || typeof f.id !== 'string' || !FILE_ID.test(f.id)) return null;
  const out = {
    id: f.id,
    name: typeof f.name === 'string' && f.name ? f.name : 'file',
    size: Number.isSafeInteger(f.size) && f.size >= 0 ? f.size : 0,
    type: typeof f.type === 'string' ? f.type : '',
  };
  if (positiveInt(f.width) && positiveInt(f.height)) {
    out.width = f.width;
    out.height = f.height;
  }
  if (f.thumb === true) out.thumb = true;
  return out;
}

/** A message's `files` as the page keeps them: valid entries only, at most MAX_FILES_SHOWN, no id twice. */
export function fileList(files) {
  if (!Array.isArray(files)) return [];
  const seen = new Set();
  const out = [];
  for (const f of files) {
    const meta = fileMeta(f);
    if (!meta || seen.has(meta.id)) continue;
    seen.add(meta.id);
    out.push(meta);
    if (out.length >= MAX_FILES_SHOWN) break;
  }
  return out;
}


/** The most distinct people a reply, mention or reaction list is trusted to name (the server's own caps). */
const MAX_NAMED_USERS = 1000;

const isSeq = (v) => Number.isSafeInteger(v) && v > 0;
const userList = (v) => (Array.isArray(v) ? v.filter((u) => typeof u === 'string').slice(0, MAX_NAMED_USERS) : []);

/**
 * A server `message` object as the page keeps it: its current state (text, `edited`, `deleted`, `reactions`,
 * `reply_to`, `mentions`), copied so folding a change never touches an object someone else holds. Fields of
 * the wrong type are dropped rather than trusted.
 */
export function messageState(m) {
  const state = {
    seq: m.seq,
    id: typeof m.id === 'string' ? m.id : null,
    user: String(m.user ?? ''),
    name: typeof m.name === 'string' && m.name ? m.name : String(m.user ?? ''),
    text: typeof m.text === 'string' ? m.text : '',
    ts: typeof m.ts === 'number' ? m.ts : Date.now(),
  };
  if (m.deleted === true) {
    state.deleted = true;
    state.text = '';
    return state;
  }
  if (typeof m.edited === 'number') state.edited = m.edited;
  const files = fileList(m.files);
  if (files.length) state.files = files;
  const r = m.reply_to;
  if (r && typeof r === 'object' && isSeq(r.seq)) {
    state.reply_to = {
      seq: r.seq,
      user: String(r.user ?? ''),
      name: typeof r.name === 'string' && r.name ? r.name : String(r.user ?? ''),
      excerpt: typeof r.excerpt === 'string' ? r.excerpt : '',
    };
  }
  const mentions = userList(m.mentions);
  if (mentions.length) state.mentions = [...new Set(mentions)];
  if (Array.isArray(m.reactions)) {
    const reactions = m.reactions
      .filter((x) => x && typeof x.emoji === 'string' && x.emoji)
      .map((x) => ({ emoji: x.emoji, users: [...new Set(userList(x.users))] }))
      .filter((x) => x.users.length);
    if (reactions.length) state.reactions = reactions;
  }
  return state;
}

/** Whether `c` is a `change` object the page can fold (anything else is ignored, as unknown types are). */
export function isChange(c) {
  if (!c || c.type !== 'change' || !isSeq(c.seq) || !isSeq(c.target)) return false;
  if (c.action === 'edit') return typeof c.text === 'string';
  if (c.action === 'delete') return true;
  if (c.action === 'react') return typeof c.emoji === 'string' && !!c.emoji && typeof c.user === 'string';
  return false;
}

/**
 * Fold one `change` entry into `message` (a messageState): returns the new state, or `message` itself when
 * the change alters nothing. Idempotent, as the contract requires: an edit sets the text (and `edited`), a
 * delete sets the tombstone, a reaction adds or removes one user from one emoji's set; so a message received
 * in its current state may then meet a change already folded into it without harm. A tombstone takes no
 * further edit or reaction.
 */
export function applyChange(message, change) {
  if (message.deleted) return message;
  if (change.action === 'delete') {
    const { seq, id, user, name, ts } = message;
    return { seq, id, user, name, ts, text: '', deleted: true };
  }
  if (change.action === 'edit') {
    // An edit whose text left storage with the message's later delete (which follows it): nothing to set.
    if (!change.text) return message;
    const edited = typeof change.ts === 'number' ? change.ts : message.edited ?? Date.now();
    if (message.text === change.text && message.edited === edited) return message;
    return { ...message, text: change.text, edited };
  }
  // react
  const reactions = message.reactions || [];
  const at = reactions.findIndex((r) => r.emoji === change.emoji);
  const has = at >= 0 && reactions[at].users.includes(change.user);
  if (change.on === true ? has : !has) return message;
  let next;
  if (change.on === true) {
    next = at >= 0
      ? reactions.map((r, i) => (i === at ? { emoji: r.emoji, users: [...r.users, change.user] } : r))
      : [...reactions, { emoji: change.emoji, users: [change.user] }];
  } else {
    next = reactions
      .map((r, i) => (i === at ? { emoji: r.emoji, users: r.users.filter((u) => u !== change.user) } : r))
      .filter((r) => r.users.length);
  }
  const out = { ...message, reactions: next };
  if (!next.length) delete out.reactions;
  return out;
}

/**
 * What a refused change or message means, in the person's words (the server's own `message` is English for
 * developers). `action` is 'edit', 'delete', 'react', 'reply' or 'message'.
 */
export function refusalText(code, action, said = '') {
  switch (code) {
    case 'forbidden':
      if (action === 'edit') return 'You can only edit your own messages.';
      if (action === 'delete') return 'You can only delete your own messages.';
      return 'You are not allowed to do that in this room.';
    case 'not_found':
      return action === 'reply'
        ? 'The message you replied to no longer exists.'
        : 'That message no longer exists (deleted from the history, or never stored).';
    case 'already_deleted':
      return action === 'reply' ? 'The message you replied to was deleted.' : 'That message was already deleted.';
    case 'edit_window_passed':
      return 'This message is too old to edit now.';
    case 'too_many_reactions':
      return 'This message has as many different reactions as it can take: add yours to one already there.';
    case 'file_not_found':
      return 'A file attached to it is gone (not uploaded, or removed after waiting too long). Attach it again.';
    case 'file_not_attachable':
      return 'A file attached to it cannot be attached (it is already in another message, or not yours).';
    case 'too_many_files':
      return 'It has more files attached than a message may carry.';
    case 'offline':
      return 'Not connected; try again once connected.';
    case 'timeout':
      return 'The server did not answer in time; check whether it was done and try again.';
    default:
      return said || 'The server refused it.';
  }
}

/**
 * What to do after the socket closed with `code` (docs/protocol.md, "Close codes").
 * Returns {action: 'soon' | 'backoff' | 'stop', reason?, minAttempt?}.
 */
export function closeAction(code) {
  switch (code) {
    case 1012: // server restart: it will be back shortly
      return { action: 'soon' };
    case 4001:
      return { action: 'stop', reason: StopReason.EXPIRED };
    case 4003:
      return { action: 'stop', reason: StopReason.REVOKED };
    case 4004: // banned: every join is refused until the ban ends, so do not retry
      return { action: 'stop', reason: StopReason.BANNED };
    case 1013: // storage unavailable: the handshake is refused with 503 until it is back
      return { action: 'backoff', wait: WaitReason.UNAVAILABLE };
    case 1003:
    case 1008:
      return { action: 'stop', reason: StopReason.POLICY };
    case 1000:
      return { action: 'stop', reason: StopReason.CLOSED };
    case 4008: // rate-limit abuse: wait a while before coming back
      return { action: 'backoff', minAttempt: 3, wait: WaitReason.TOO_FAST };
    default: // 1006, 1009, 1011, 4009, 4010 and anything unknown
      return { action: 'backoff' };
  }
}

const CLOSE_TEXT = {
  1003: 'the server refused a frame it cannot read',
  1008: 'the server closed the connection after invalid messages',
  1009: 'a message was too large',
  1011: 'the room had an internal error',
  1012: 'the server is restarting',
  1013: 'the service is temporarily unavailable',
  4001: 'your link expired',
  4003: 'your access was revoked',
  4004: 'a moderator banned you from this room',
  4008: 'too many messages too fast',
  4009: 'the connection fell behind',
  4010: 'the connection went quiet',
};

/** Human text for a close code, for the status line. */
export function describeClose(code, reason) {
  if (reason) return reason;
  return CLOSE_TEXT[code] || (code === 1006 ? 'the connection dropped' : `closed (${code})`);
}

/**
 * What to do when `POST /rooms/<room>/ticket` answered `status` with the JSON body `body` (docs/protocol.md,
 * "Connecting"). Returns a plan like closeAction's; `retryAfterMs` is the server's own wait, if it gave one.
 */
export function ticketRefusalAction(status, body, retryAfterMs = null) {
  const error = body && typeof body.error === 'string' ? body.error : '';
  const final = (reason) => ({ action: 'stop', reason });
  const transient = (wait, extra = {}) => ({ action: 'backoff', wait, retryAfterMs, ...extra });
  if (status === 401) {
    if (error === 'token_expired') return final(StopReason.EXPIRED);
    if (error === 'token_revoked') return final(StopReason.REVOKED);
    return final(StopReason.INVALID); // missing_token, invalid_token and anything unknown
  }
  if (status === 403) {
    if (error === 'room_forbidden') return final(StopReason.FORBIDDEN);
    if (error === 'banned') return final(StopReason.BANNED);
    return final(StopReason.POLICY); // origin_forbidden: this page may not connect from where it is
  }
  if (status === 404) return error === 'bad_room' ? final(StopReason.BAD_ROOM) : final(StopReason.POLICY);
  if (status === 400) return final(StopReason.POLICY);
  if (status === 429) return transient(WaitReason.BUSY, { minAttempt: 2 });
  if (status === 503) {
    if (error === 'draining') return { action: 'soon', wait: WaitReason.RESTARTING, retryAfterMs };
    if (error === 'unavailable') return transient(WaitReason.UNAVAILABLE);
    return transient(WaitReason.BUSY); // server_full, room_full
  }
  return transient(null); // 5xx from a proxy, or anything unexpected: try again later
}

/**
 * The end and reason of a ban, read from the `detail` of a 403 `banned` (gateway/errors.py writes "banned from
 * this room[ until <Unix seconds> (Unix time)][: <reason>]"; tests/e2e/test_dead_ends.py holds the two to each
 * other). Returns {until: ms since the epoch or null (until lifted), reason: string}, or null when the detail
 * has another form (show it as it is then).
 */
export function parseBanDetail(detail) {
  const m = /^banned from this room(?: until (\d+(?:\.\d+)?) \(Unix time\))?(?:: ([\s\S]+))?$/.exec(
    typeof detail === 'string' ? detail : '',
  );
  if (!m) return null;
  return { until: m[1] ? Number(m[1]) * 1000 : null, reason: m[2] || '' };
}

/** The server's `Retry-After` header (seconds) in ms, or null. */
function retryAfterHeader(response) {
  const secs = Number(response.headers?.get?.('retry-after'));
  return Number.isFinite(secs) && secs > 0 ? Math.min(BACKOFF_MAX_MS, secs * 1000) : null;
}

/** An outbox entry's reply (`reply`: the quoted message's {seq, user, name, excerpt}) and `mentions`, if valid. */
function outboxExtras(e) {
  const out = {};
  const r = e.reply;
  if (r && typeof r === 'object' && isSeq(r.seq)) {
    out.reply = {
      seq: r.seq,
      user: String(r.user ?? ''),
      name: String(r.name ?? ''),
      excerpt: typeof r.excerpt === 'string' ? r.excerpt : '',
    };
  }
  const mentions = userList(e.mentions);
  if (mentions.length) out.mentions = mentions;
  const files = fileList(e.files);
  if (files.length) out.files = files;
  return out;
}

/**
 * The outbox: messages the person typed that the server has not acknowledged yet. Persisted in `storage`
 * (sessionStorage) so a reload does not lose them; each keeps its client id forever so resends are deduped.
 */
class Outbox {
  constructor(storage, key) {
    this.storage = storage;
    this.key = key;
    this.entries = [];
    try {
      const saved = JSON.parse(storage?.getItem(key) || '[]');
      if (Array.isArray(saved)) {
        for (const e of saved) {
          if (e && typeof e.id === 'string' && typeof e.text === 'string' && (e.text || fileList(e.files).length)) {
            const createdAt = e.createdAt || Date.now();
            this.entries.push({ ...outboxExtras(e), id: e.id, text: e.text, createdAt, state: 'queued' });
          }
        }
      }
    } catch {
      // a corrupt entry is not worth failing the page for
    }
  }

  save() {
    const keep = this.entries
      .filter((e) => e.state !== 'sent' && e.state !== 'failed')
      .map((e) => ({ ...outboxExtras(e), id: e.id, text: e.text, createdAt: e.createdAt }));
    try {
      if (keep.length) this.storage?.setItem(this.key, JSON.stringify(keep));
      else this.storage?.removeItem(this.key);
    } catch {
      // storage full or disabled: the outbox still works for this page's lifetime
    }
  }

  find(id) {
    return this.entries.find((e) => e.id === id);
  }

  remove(id) {
    const before = this.entries.length;
    this.entries = this.entries.filter((e) => e.id !== id);
    return this.entries.length !== before;
  }
}

/**
 * A connection to one room.
 *
 * Events (CustomEvent, payload in `detail`):
 * - `state`    {state, retryAt, attempt, code, reason, detail, refused, wait, status, error}: status changes.
 *              `reason` is a StopReason while OFFLINE (FINAL_REASONS need a new token); `wait` a WaitReason
 *              while WAITING when the server said why; `status`/`error` the ticket refusal, if that was it;
 *              `refused` is true when several connects in a row never opened.
 * - `welcome`  {welcome, resumed, reset}: a connection went live. `reset` means the server could not
 *              replay gaplessly: the page must drop what it shows and treat what follows as fresh history.
 *              `welcome.read` / `unread` / `mentions`: the user's read marker here and what is newer.
 * - `message`  {message, own, kind}: a new message (a messageState), in seq order, never twice. `kind` is
 *              'history' (initial history), 'missed' (replayed after a reconnect) or 'live'.
 * - `change`   {change, message, replies, kind}: a `change` entry (edit, delete, react) was folded into the
 *              message it targets; `message` is that message's new state, or null when the page does not hold
 *              it (nothing to show then: a history page loaded later has it in its current state). `replies`
 *              are the held replies to a deleted message, their quote emptied as the server empties it.
 * - `history-end` {}: every entry up to the welcome's seq has been delivered.
 * - `read`     {seq}: the user's read marker moved on another of their connections (another tab, a phone).
 * - `presence` {presence}: a member joined or left.
 * - `outbox`   {entries, waiting, nextAt}: the pending messages changed; entries have {id, text, createdAt,
 *              state, error?, retryAt?, code?} with state 'queued' | 'sending' | 'retrying' | 'sent' |
 *              'failed'; a 'retrying' entry's `code` says why (rate_limited, busy, unavailable). `waiting`
 *              counts the entries not sent yet (queued or retrying); `nextAt` (ms since the epoch) is when
 *              the next of them goes, or null when none waits or we are not live. Sends are paced within
 *              the server's rate (PACE_BURST, PACE_RATE_PER_SEC), so a burst of typing waits its turn here.
 * - `problem`  {error}: an `error` frame that did not belong to a pending message.
 * - `typing`   {user, name}: someone else in the room is typing (ephemeral: show it for ~5 s).
 *
 * `messages` holds the current state of every message delivered or loaded (seq -> messageState): the page's
 * copy of the server's, kept exact by folding each change (replays after `after=K` included).
 *
 * edit(), deleteMessage() and react() send their frame at the pace the server allows and resolve with its
 * `ack` (or reject with an Error carrying the server's `code`); markRead() moves the read marker.
 * `moderator` is true while the server says (in `welcome`) that this connection moderates the room: then
 * deleteMessage() works on anyone's message and ban() sends the ban frame, resolving with `moderated`.
 */
export class ChatClient extends EventTarget {
  /**
   * @param {object} opts
   * @param {string} opts.room      the room name
   * @param {string} opts.token     the JWT
   * @param {{protocol: string, host: string}} opts.location  where the server is (the page's location)
   * @param {Storage} [opts.storage] where the outbox is kept (sessionStorage)
   * @param {typeof WebSocket} [opts.WebSocketImpl]
   * @param {typeof fetch} [opts.fetchImpl]  used for the ticket request
   */
  constructor({
    room, token, location, storage = null, WebSocketImpl = WebSocket, fetchImpl = (...a) => fetch(...a),
  }) {
    super();
    this.fetchImpl = fetchImpl;
    this.room = room;
    this.token = token;
    this.location = location;
    this.WebSocketImpl = WebSocketImpl;
    this.outbox = new Outbox(storage, `roomchat:outbox:${room}`);

    this.state = null;
    this.reason = null; // a StopReason while OFFLINE
    this.user = null; // from welcome
    this.moderator = false; // from welcome: this connection may delete messages and ban users
    this.maxFiles = DEFAULT_MAX_FILES; // from welcome (`max_files_per_message`) when the server says
    this.moderating = new Map(); // frame id -> {resolve, reject, timer}: moderation awaiting its answer
    this.name = null;
    this.members = [];
    this.lastSeq = 0; // the highest seq delivered to the page (a message's or a change's)
    this.welcomeSeq = 0;
    this.replayUpto = 0; // the seq of the replay's last entry (see onWelcome)
    this.historyDone = false; // every entry up to welcomeSeq was delivered (history-end was sent)
    this.guessHistoryEnd = false; // a fresh replay from a server that does not send `replay_upto`
    this.messages = new Map(); // seq -> messageState: every message the page holds, in its current state
    this.fetchesInFlight = 0; // history pages on their way
    this.orphans = []; // while any is: changes to messages not held yet, oldest first
    this.requests = new Map(); // frame id -> an edit, delete or react waiting to go or for its answer
    this.readSeq = 0; // the read marker: the highest seq the person has seen here
    this.readSent = 0; // the marker the server holds, as far as we know
    this.readSentAt = -Infinity; // monotonic ms of our last `read` frame
    this.readKept = false; // the welcome says the server keeps read markers (it has `read`)
    this.resumable = false; // true once a welcome was seen: later connects send after=lastSeq
    this.epoch = null; // from welcome: the epoch our seqs belong to, sent back with after
    this.historyKind = 'history';

    this.ws = null;
    this.ticketing = null; // an AbortController while a ticket request is in flight
    this.opened = false;
    this.attempt = 0;
    this.refusedInARow = 0;
    this.liveSince = 0;
    this.lastHeard = 0;
    this.pausedUntil = 0; // monotonic ms: sending paused after rate_limited/busy/unavailable until then
    // Our side of the server's rate limit. Kept across reconnects (a new socket gets a full bucket on the
    // server, so ours is never the more generous one).
    this.bucket = new TokenBucket(PACE_RATE_PER_SEC, PACE_BURST, monotonic());
    this.nextSendAt = null; // ms since the epoch: when the next queued message goes (for the page)
    this.typingSentAt = 0;
    this.socketToken = null; // the token the current (or last) socket's ticket was asked with
    this.timers = { reconnect: null, connect: null, flush: null, watchdog: null, read: null, history: null };
    this.stopped = false;
  }

  // ---- public API ------------------------------------------------------------------------------

  /** Start connecting (once). */
  start() {
    this.stopped = false;
    this.emitOutbox();
    this.connect();
  }

  /** Close for good (code 1000); no reconnects until reconnectNow(). */
  stop() {
    this.stopped = true;
    this.clearTimers();
    this.abortTicket();
    this.dropSocket(1000);
    this.setState(State.OFFLINE, { reason: StopReason.CLOSED });
  }

  /** Skip the backoff wait (the person pressed "Reconnect now", or the network came back). */
  reconnectNow() {
    if (this.state === State.LIVE || this.state === State.CONNECTING) return;
    if (this.state === State.OFFLINE && FINAL_REASONS.has(this.reason)) return; // a new token is needed
    this.stopped = false;
    this.connect();
  }

  /**
   * Use a new token (e.g. after the old one expired, or renewed before it does) and connect with it,
   * resuming where we were. A live socket is kept: when the server closes it because the old token
   * expired (4001), we reconnect at once with this one and resume with `after` (no gap).
   */
  setToken(token) {
    this.token = token;
    this.refusedInARow = 0;
    this.attempt = 0;
    this.stopped = false;
    if (this.state === State.LIVE) return;
    this.abortTicket(); // a ticket being asked for with the old token is of no use now
    if (!this.ws) this.connect();
  }

  /**
   * Queue `text` for sending; it is sent now if we are live, else when we are. `reply`: the message it
   * answers ({seq, user, name, excerpt}, shown while it waits); `mentions`: the user ids it mentions; `files`:
   * uploaded files it carries (their public metadata: the frame carries their ids; the text may then be
   * empty). Returns the outbox entry, or null when there is neither text nor a file. Throws RangeError when
   * the text is too long or there are more files than `maxFiles`.
   */
  send(text, { reply = null, mentions = [], files = [] } = {}) {
    const trimmed = checkedText(text);
    const attached = fileList(files);
    if (!trimmed && !attached.length) return null;
    if (attached.length > this.maxFiles) {
      throw new RangeError(`A message can carry at most ${this.maxFiles} files.`);
    }
    const entry = {
      ...outboxExtras({ reply, mentions: [...new Set(mentions)], files: attached }),
      id: newMessageId(),
      text: trimmed,
      createdAt: Date.now(),
      state: 'queued',
    };
    this.outbox.entries.push(entry);
    this.outbox.save();
    this.flush();
    this.emitOutbox();
    return entry;
  }

  /**
   * Replace the text of our message `seq`. Resolves with the server's `ack`; rejects with an Error whose
   * `code` is the server's (forbidden, not_found, already_deleted, edit_window_passed, ...) or 'offline' /
   * 'timeout'. Throws RangeError (synchronously) when the text is empty or too long.
   */
  edit(seq, text) {
    const trimmed = checkedText(text);
    if (!trimmed) throw new RangeError('A message cannot be empty: delete it instead.');
    return this.request({ type: 'edit', seq, text: trimmed });
  }

  /**
   * Delete message `seq`: our own, or anyone's when we moderate the room. Resolves with the server's answer
   * (`ack`, or `moderated` from a server that answers moderators so); rejects like edit().
   */
  deleteMessage(seq) {
    return this.request({ type: 'delete', seq });
  }

  /** Add (`on`) or take back our reaction `emoji` to message `seq`. Resolves and rejects like edit(). */
  react(seq, emoji, on) {
    return this.request({ type: 'react', seq, emoji, on: on === true });
  }

  /**
   * The person has seen everything up to `seq`: move the read marker (never back) and tell the server, at
   * most every READ_EVERY_MS (the latest value wins; our other connections get it from the server).
   */
  markRead(seq) {
    if (!isSeq(seq) || seq <= this.readSeq) return;
    this.readSeq = seq;
    this.sendRead();
  }

  /** Send the read marker now if it moved, we are live, and the last one went long enough ago. */
  sendRead() {
    this.clearTimer('read');
    if (this.readSeq <= this.readSent || this.state !== State.LIVE || !this.readKept) return;
    const now = monotonic();
    // (A `read` costs what a pong costs; waiting until a message's token is there too keeps it from ever
    // taking the one a message needs.)
    const wait = Math.max(this.readSentAt + READ_EVERY_MS - now, this.pausedUntil - now,
      this.bucket.wait(now, 1 + LIGHT_FRAME_COST));
    if (wait > 0) {
      this.timers.read = setTimeout(() => {
        this.timers.read = null;
        this.sendRead();
      }, wait);
      return;
    }
    if (this.sendFrame({ type: 'read', seq: this.readSeq })) {
      this.bucket.take(now, LIGHT_FRAME_COST);
      this.readSent = this.readSeq;
      this.readSentAt = now;
    }
  }

  /** Send the read marker now, whatever the pace: the page is being left or hidden. Only while live. */
  flushRead() {
    if (this.readSeq <= this.readSent || this.state !== State.LIVE || !this.readKept) return;
    this.clearTimer('read');
    if (this.sendCharged({ type: 'read', seq: this.readSeq }, LIGHT_FRAME_COST)) {
      this.readSent = this.readSeq;
      this.readSentAt = monotonic();
    }
  }

  /**
   * Send an edit, delete or react frame (with a new id) at the pace the server allows; resolve with its
   * answer. A frame refused for the rate (or busy, unavailable) goes again with the same id after the
   * server's wait, and so does one in flight when the connection drops: the server's dedup by (user, id)
   * makes that safe. Gives up after REQUEST_TIMEOUT_MS.
   */
  request(frame) {
    return new Promise((resolve, reject) => {
      const fail = (code, message = '') => reject(Object.assign(new Error(refusalText(code, frame.type, message)),
        { code }));
      if (this.state !== State.LIVE) {
        fail('offline');
        return;
      }
      const id = newMessageId();
      const timer = setTimeout(() => {
        if (this.requests.delete(id)) fail('timeout');
      }, REQUEST_TIMEOUT_MS);
      this.requests.set(id, { frame: { ...frame, id }, state: 'queued', resolve, fail, timer });
      this.flush();
    });
  }

  /** Settle request `id` with the server's answer, or its `error` object. Returns whether it was ours. */
  settleRequest(id, answer, error = null) {
    const req = this.requests.get(id);
    if (!req) return false;
    if (error && (error.code === 'rate_limited' || error.code === 'busy' || error.code === 'unavailable')) {
      // Not done: again, same id, once the server says we may.
      req.state = 'queued';
      this.pauseSending(Math.max(100, (Number(error.retry_after) || 1) * 1000));
      return true;
    }
    this.requests.delete(id);
    clearTimeout(req.timer);
    if (error) req.fail(error.code || 'refused', typeof error.message === 'string' ? error.message : '');
    else req.resolve(answer);
    return true;
  }

  /**
   * Older stored messages: those with seq < `before`, the newest `limit` of them, oldest first
   * (`GET /rooms/<room>/history`, with the token we hold), in their current state: changes made while the
   * page was on its way are folded in, and each is added to `messages`. Resolves to {messages, oldest}:
   * `oldest` is the lowest seq the server still stores (when we hold it, we have the room's beginning).
   * Rejects with an Error whose `status` is the HTTP status (0 when the server could not be reached).
   */
  async fetchOlder(before, limit = 50) {
    this.fetchesInFlight += 1;
    try {
      const got = await this.fetchPage(before, limit);
      const messages = got.messages.map((m) => {
        const held = this.messages.get(m.seq);
        if (held) return held; // kept current by the stream since
        let state = messageState(m);
        for (const c of this.orphans) if (c.target === m.seq) state = applyChange(state, c);
        this.messages.set(state.seq, state);
        return state;
      });
      return { messages, oldest: got.oldest };
    } finally {
      this.fetchesInFlight -= 1;
      if (this.fetchesInFlight === 0) this.orphans = [];
    }
  }

  async fetchPage(before, limit) {
    const scheme = this.location.protocol === 'https:' ? 'https' : 'http';
    const params = new URLSearchParams({ before: String(before), limit: String(limit) });
    const url = `${scheme}://${this.location.host}/rooms/${encodeURIComponent(this.room)}/history?${params}`;
    let res;
    try {
      res = await this.fetchImpl(url, {
        headers: { authorization: `Bearer ${this.token}`, accept: 'application/json' },
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch {
      throw Object.assign(new Error('the server could not be reached'), { status: 0 });
    }
    let body = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    if (!res.ok || !body || !Array.isArray(body.messages) || typeof body.oldest !== 'number') {
      const said = body && typeof body.detail === 'string' ? body.detail : `HTTP ${res.status}`;
      throw Object.assign(new Error(said), { status: res.status });
    }
    const messages = body.messages.filter((m) => m && typeof m.seq === 'number' && m.seq < before);
    return { messages, oldest: body.oldest };
  }

  /** The person is typing: tell the room (at most every TYPING_EVERY_MS, and only while live). */
  typing() {
    const now = Date.now();
    if (this.state !== State.LIVE || now - this.typingSentAt < TYPING_EVERY_MS) return;
    // Only a hint: skipped rather than spend what a message needs (over the rate it would count as abuse).
    if (this.bucket.wait(monotonic(), 1 + LIGHT_FRAME_COST) > 0) return;
    if (this.sendCharged({ type: 'typing' }, LIGHT_FRAME_COST)) this.typingSentAt = now;
  }

  /**
   * Moderator only: ban `user` from this room (their sockets close, their joins are refused) for `minutes`, or
   * until lifted when `minutes` is null. Resolves with the server's `moderated` answer.
   */
  ban(user, reason = '', minutes = null) {
    const frame = { type: 'ban', user };
    if (reason) frame.reason = reason;
    if (minutes) frame.minutes = minutes;
    return this.moderate(frame);
  }

  moderate(frame) {
    return new Promise((resolve, reject) => {
      const fail = (message, code) => reject(Object.assign(new Error(message), { code }));
      if (!this.moderator) return fail('You are not a moderator of this room.', 'forbidden');
      if (this.state !== State.LIVE) return fail('Not connected; try again once connected.', 'offline');
      const id = newMessageId();
      const timer = setTimeout(() => {
        this.moderating.delete(id);
        fail('The server did not answer in time; check whether it was done and try again.', 'timeout');
      }, MODERATION_TIMEOUT_MS);
      this.moderating.set(id, { resolve, reject, timer });
      if (!this.sendCharged({ ...frame, id }, 1)) this.settleModeration(id, null, { message: 'Not connected.' });
      return undefined;
    });
  }

  /** Settle the moderation request `id` with the server's answer, or its error object. */
  settleModeration(id, answer, error = null) {
    const pending = this.moderating.get(id);
    if (!pending) return false;
    this.moderating.delete(id);
    clearTimeout(pending.timer);
    if (error) {
      const said = typeof error.message === 'string' && error.message ? error.message : 'refused';
      pending.reject(Object.assign(new Error(said), { code: error.code || null }));
    } else {
      pending.resolve(answer);
    }
    return true;
  }

  /** Forget a failed (or still pending) message. */
  discard(id) {
    if (this.outbox.remove(id)) {
      this.outbox.save();
      this.emitOutbox();
    }
  }

  // ---- connection lifecycle --------------------------------------------------------------------

  url(ticket) {
    const scheme = this.location.protocol === 'https:' ? 'wss' : 'ws';
    const params = new URLSearchParams({ ticket });
    if (this.resumable) params.set('after', String(this.lastSeq));
    if (this.resumable && this.epoch) params.set('epoch', this.epoch);
    return `${scheme}://${this.location.host}/rooms/${encodeURIComponent(this.room)}/ws?${params}`;
  }

  ticketUrl() {
    const scheme = this.location.protocol === 'https:' ? 'https' : 'http';
    return `${scheme}://${this.location.host}/rooms/${encodeURIComponent(this.room)}/ticket`;
  }

  abortTicket() {
    if (this.ticketing) this.ticketing.abort();
    this.ticketing = null;
  }

  /**
   * Ask for a ticket with the token we hold. Resolves to {ticket} or {plan, code, detail, status, error}
   * (what to do instead of connecting), or null when the request was aborted (stop() or a new token).
   */
  async requestTicket(signal) {
    let res;
    try {
      res = await this.fetchImpl(this.ticketUrl(), {
        method: 'POST',
        headers: { authorization: `Bearer ${this.token}`, accept: 'application/json' },
        cache: 'no-store',
        credentials: 'omit',
        signal,
      });
    } catch {
      if (signal.aborted) return null;
      return { plan: { action: 'backoff' }, code: 1006, detail: 'the server could not be reached' };
    }
    let body = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    if (signal.aborted) return null;
    if (res.ok && body && typeof body.ticket === 'string' && body.ticket) return { ticket: body.ticket };
    const plan = res.ok
      ? { action: 'backoff' } // 200 without a ticket: a proxy answering for the server?
      : ticketRefusalAction(res.status, body, retryAfterHeader(res));
    const said = body && typeof body.detail === 'string' ? body.detail : '';
    return {
      plan,
      code: null,
      detail: said || `the server refused the connection (HTTP ${res.status})`,
      status: res.status,
      error: body && typeof body.error === 'string' ? body.error : null,
    };
  }

  /** Get a ticket, then open the socket with it. Every connect, first or not, goes through here. */
  connect() {
    this.clearTimer('reconnect');
    if (this.ws || this.ticketing) return;
    // No guessing from the token's claims (the browser's clock may be wrong, the rules may change): the
    // ticket request says whether the server takes this token, and why not.
    const ticketing = new AbortController();
    const token = this.token;
    this.ticketing = ticketing;
    this.opened = false;
    this.setState(State.CONNECTING);
    this.requestTicket(ticketing.signal).then((got) => {
      if (this.ticketing !== ticketing) return; // aborted or superseded
      this.ticketing = null;
      if (got === null || this.stopped) return;
      if (got.ticket) {
        this.socketToken = token;
        this.openSocket(got.ticket);
        return;
      }
      if (got.plan.action === 'stop') this.refusedInARow = 0;
      else this.refusedInARow += 1;
      this.scheduleReconnect(got.plan, got.code, got.detail, { status: got.status, error: got.error });
    });
  }

  openSocket(ticket) {
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url(ticket));
    } catch (err) {
      this.scheduleReconnect({ action: 'backoff' }, 1006, String(err));
      return;
    }
    this.ws = ws;
    this.opened = false;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.opened = true;
      this.refusedInARow = 0;
      this.clearTimer('connect');
      this.lastHeard = Date.now();
      this.startWatchdog();
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
      for (const obj of splitFrame(ev.data)) this.handle(obj);
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this.onClosed(ev.code, ev.reason);
    };
    ws.onerror = () => {
      // always followed by close; nothing to do here
    };
    this.timers.connect = setTimeout(() => {
      if (ws === this.ws && this.state !== State.LIVE) this.abandon(1006, 'connecting timed out');
    }, CONNECT_TIMEOUT_MS);
  }

  /** Give up on the current socket without waiting for the browser to notice, and react as to `code`. */
  abandon(code, reason) {
    this.dropSocket(1000);
    this.onClosed(code, reason, true);
  }

  dropSocket(code) {
    const ws = this.ws;
    this.ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code);
    } catch {
      // already closing
    }
  }

  onClosed(code, reason, alreadyDropped = false) {
    if (!alreadyDropped) {
      const ws = this.ws;
      this.ws = null;
      if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    }
    this.clearTimer('connect');
    this.clearTimer('watchdog');
    this.clearTimer('flush');
    this.pausedUntil = 0; // a pause was for that socket; the next one's bucket starts full on the server
    this.nextSendAt = null;
    // Moderation in flight has no answer coming on this socket: say so (it may or may not have been done).
    for (const id of [...this.moderating.keys()]) {
      this.settleModeration(id, null, { message: 'The connection dropped before the server answered.' });
    }
    // An edit, delete or reaction in flight goes again (same id) on the next connection, until its timeout.
    for (const req of this.requests.values()) req.state = 'queued';
    if (!this.opened) this.refusedInARow += 1;
    if (this.liveSince && Date.now() - this.liveSince >= STABLE_AFTER_MS) this.attempt = 0;
    this.liveSince = 0;
    // Anything in flight may or may not have been stored: resend it (same id) on the next connection.
    for (const e of this.outbox.entries) {
      if (e.state === 'sending' || e.state === 'retrying') {
        e.state = 'queued';
        delete e.retryAt;
        delete e.code;
      }
    }
    this.emitOutbox();
    if (this.stopped) return;
    if (code === 4001 && this.token !== this.socketToken && !this.tokenExpired(this.token)) {
      // The old token ran out, but we already hold a newer one (renewed): carry on with it now.
      this.scheduleReconnect({ action: 'now' }, code, reason);
      return;
    }
    this.scheduleReconnect(closeAction(code), code, reason);
  }

  scheduleReconnect(plan, code, reason, refusal = {}) {
    const detail = code === null ? reason : describeClose(code, reason);
    if (plan.action === 'stop') {
      this.setState(State.OFFLINE, { reason: plan.reason, code, detail, ...refusal });
      return;
    }
    const { delay, attempt } = reconnectDelay(plan, this.attempt);
    this.attempt = attempt;
    const retryAt = Date.now() + delay;
    this.setState(State.WAITING, {
      retryAt,
      code,
      detail,
      wait: plan.wait || null,
      refused: this.refusedInARow >= REFUSED_HINT_AFTER,
      ...refusal,
    });
    this.timers.reconnect = setTimeout(() => {
      this.timers.reconnect = null;
      this.connect();
    }, delay);
  }

  tokenExpired(token) {
    const exp = tokenExpiresAt(token);
    return exp !== null && exp <= Date.now();
  }

  startWatchdog() {
    this.clearTimer('watchdog');
    this.timers.watchdog = setInterval(() => {
      if (this.ws && Date.now() - this.lastHeard > STALE_AFTER_MS) this.abandon(4010, '');
    }, 5000);
  }

  // ---- inbound objects -------------------------------------------------------------------------

  handle(obj) {
    switch (obj.type) {
      case 'welcome':
        return this.onWelcome(obj);
      case 'message':
        return this.onMessage(obj);
      case 'ack':
        return this.onAck(obj);
      case 'presence':
        return this.onPresence(obj);
      case 'ping':
        return this.sendCharged({ type: 'pong' }, LIGHT_FRAME_COST);
      case 'error':
        return this.onError(obj);
      case 'change':
        return this.onChange(obj);
      case 'read': // our marker, moved on another of our connections
        return this.onRead(obj);
      case 'moderated': // the answer to our ban (or, from some servers, to a moderator's delete)
        if (typeof obj.id !== 'string') return undefined;
        return this.settleModeration(obj.id, obj) || this.settleRequest(obj.id, obj);
      case 'typing':
        if (typeof obj.user !== 'string' || obj.user === this.user) return undefined; // our other tab
        return this.dispatch('typing', {
          user: obj.user,
          name: typeof obj.name === 'string' && obj.name ? obj.name : obj.user,
        });
      default:
        return undefined; // unknown types are ignored (the server may add some)
    }
  }

  onWelcome(w) {
    const resumed = this.resumable;
    // Another epoch: the room's history was reset under us, our seqs may name other messages
    // (docs/protocol.md, "Epochs").
    const epoch = typeof w.epoch === 'string' ? w.epoch : null;
    const reset = resumed && (w.recovered !== true || epoch !== this.epoch);
    this.epoch = epoch;
    if (reset || !resumed) {
      // A fresh history follows: forget seqs from before, they may not exist any more (data reset).
      this.lastSeq = 0;
      this.messages.clear();
      this.orphans = [];
    }
    // A server that keeps read markers says so with `read` in its welcome; to one that does not (an older
    // process during a rolling upgrade), a `read` frame would be an invalid frame, and five close the socket.
    this.readKept = Number.isSafeInteger(w.read) && w.read >= 0;
    const read = isSeq(w.read) ? w.read : 0;
    // The server's marker; ours may be ahead of it (a frame lost with the last connection): send it again.
    this.readSent = read;
    this.readSeq = reset ? read : Math.max(this.readSeq, read);
    this.resumable = true;
    this.user = w.user;
    this.name = w.name;
    this.moderator = w.moderator === true;
    const maxFiles = w.max_files_per_message;
    this.maxFiles = Number.isSafeInteger(maxFiles) && maxFiles >= 0 ? maxFiles : DEFAULT_MAX_FILES;
    this.members = Array.isArray(w.members) ? w.members.slice() : [];
    this.welcomeSeq = typeof w.seq === 'number' ? w.seq : 0;
    this.historyKind = resumed && !reset ? 'missed' : 'history';
    this.historyDone = false;
    // Where the replay ends (docs/design/rich-messages.md): a fresh join's is messages only, so its last
    // entry may sit below the welcome's seq (a change after it); a server that does not say: at that seq.
    const upto = w.replay_upto;
    const told = Number.isSafeInteger(upto) && upto >= 0 && upto <= this.welcomeSeq;
    this.replayUpto = told ? upto : this.welcomeSeq;
    // Without `replay_upto` (an older server), a fresh replay's end is guessed (HISTORY_QUIET_MS, above).
    this.guessHistoryEnd = !told && (reset || !resumed);
    this.liveSince = Date.now();
    this.clearTimer('connect');
    // Acked messages shown as "sent" were waiting for their echo; a fresh history re-delivers them.
    this.outbox.entries = this.outbox.entries.filter((e) => e.state !== 'sent');
    this.setState(State.LIVE);
    this.dispatch('welcome', { welcome: w, resumed, reset });
    if (this.lastSeq >= this.replayUpto) this.endHistory();
    this.flush();
    this.sendRead();
    this.emitOutbox();
  }

  endHistory() {
    this.clearTimer('history');
    if (this.historyDone) return;
    this.historyDone = true;
    this.dispatch('history-end', {});
  }

  /**
   * Take entry `seq` (a message's or a change's) if it is new; returns its kind ('history', 'missed' or
   * 'live'), or null for one already delivered. An entry past the welcome's seq ends the history even when
   * the replay's last entry was not the welcome's seq itself.
   */
  takeEntry(seq) {
    if (!isSeq(seq) || seq <= this.lastSeq) return null; // already shown: drop
    this.lastSeq = seq;
    if (seq > this.welcomeSeq) {
      this.endHistory();
      return 'live';
    }
    if (this.guessHistoryEnd && !this.historyDone) {
      this.clearTimer('history');
      this.timers.history = setTimeout(() => {
        this.timers.history = null;
        this.endHistory();
      }, HISTORY_QUIET_MS);
    }
    return this.historyKind;
  }

  onMessage(m) {
    const kind = this.takeEntry(m.seq);
    if (kind === null) return;
    const state = messageState(m);
    this.messages.set(state.seq, state);
    const own = this.user !== null && state.user === this.user;
    let outboxChanged = false;
    if (own && state.id) outboxChanged = this.outbox.remove(state.id);
    this.dispatch('message', { message: state, own, kind });
    if (m.seq >= this.replayUpto) this.endHistory();
    if (outboxChanged) {
      this.outbox.save();
      this.emitOutbox();
    }
  }

  onChange(c) {
    if (!isChange(c)) {
      // Still an entry of the log (an action this page does not know): its seq counts as delivered.
      if (isSeq(c.seq) && this.takeEntry(c.seq) !== null && c.seq >= this.replayUpto) this.endHistory();
      return;
    }
    const kind = this.takeEntry(c.seq);
    if (kind === null) return;
    const held = this.messages.get(c.target);
    let message = null;
    if (held) {
      message = applyChange(held, c);
      this.messages.set(c.target, message);
    } else if (this.fetchesInFlight > 0) {
      this.orphans.push(c);
      if (this.orphans.length > MAX_ORPHAN_CHANGES) this.orphans.shift();
    }
    const replies = [];
    if (c.action === 'delete') {
      // The server empties the quote of every reply to a deleted message: so does our copy.
      for (const [seq, m] of this.messages) {
        if (m.reply_to?.seq === c.target && m.reply_to.excerpt) {
          const quiet = { ...m, reply_to: { ...m.reply_to, excerpt: '' } };
          this.messages.set(seq, quiet);
          replies.push(quiet);
        }
      }
    }
    this.dispatch('change', { change: c, message, replies, kind });
    if (c.seq >= this.replayUpto) this.endHistory();
  }

  onRead(r) {
    if (!isSeq(r.seq)) return;
    this.readSent = Math.max(this.readSent, r.seq); // the server has it already
    if (r.seq <= this.readSeq) return;
    this.readSeq = r.seq;
    this.dispatch('read', { seq: r.seq });
  }

  onAck(a) {
    if (typeof a.id === 'string' && this.settleRequest(a.id, a)) return;
    const entry = a.id ? this.outbox.find(a.id) : null;
    if (!entry) return;
    if (typeof a.seq === 'number' && a.seq <= this.lastSeq) {
      // Its message was already shown (a duplicate ack, or the echo came first).
      this.outbox.remove(a.id);
    } else {
      // Stored; keep showing it as sent until its own `message` arrives right behind the ack.
      entry.state = 'sent';
      entry.seq = a.seq;
    }
    this.outbox.save();
    this.emitOutbox();
  }

  /**
   * Presence is per user, not per connection: a join of someone already listed (their other connection, or
   * two processes telling it) and a leave of someone not listed change nothing, and are not passed on.
   */
  onPresence(p) {
    if (typeof p.user !== 'string') return;
    const listed = this.members.some((m) => m.user === p.user);
    if (p.event === 'join') {
      if (listed) return;
      this.members.push({ user: p.user, name: p.name });
    } else if (p.event === 'leave') {
      if (!listed) return;
      this.members = this.members.filter((m) => m.user !== p.user);
    } else {
      return;
    }
    this.dispatch('presence', { presence: p });
  }

  onError(err) {
    // Our pacing assumed more than this server allows (it was configured stricter, or jitter): start over
    // from its empty bucket, one frame at a time.
    if (err.code === 'rate_limited') this.bucket.empty(monotonic());
    if (typeof err.id === 'string' && this.settleModeration(err.id, null, err)) return;
    if (typeof err.id === 'string' && this.settleRequest(err.id, null, err)) return;
    const entry = err.id ? this.outbox.find(err.id) : null;
    if (!entry) {
      this.dispatch('problem', { error: err });
      return;
    }
    if (err.code === 'rate_limited' || err.code === 'busy' || err.code === 'unavailable') {
      // Not stored: send it again, same id, once the server says we may.
      const waitMs = Math.max(100, (Number(err.retry_after) || 1) * 1000);
      entry.state = 'retrying';
      entry.retryAt = Date.now() + waitMs;
      entry.code = err.code;
      this.pauseSending(waitMs);
    } else {
      entry.state = 'failed';
      entry.error = err.message || err.code || 'refused';
      entry.code = err.code;
      this.outbox.save();
    }
    this.emitOutbox();
  }

  // ---- outbound --------------------------------------------------------------------------------

  sendFrame(obj) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    try {
      this.ws.send(JSON.stringify(obj));
      return true;
    } catch {
      return false;
    }
  }

  /** Send `obj` and charge `cost` to our bucket (even into debt: it must go now). */
  sendCharged(obj, cost) {
    if (!this.sendFrame(obj)) return false;
    this.bucket.charge(monotonic(), cost);
    return true;
  }

  /** The server asked us to wait `ms` before sending again (rate_limited, busy, unavailable). */
  pauseSending(ms) {
    this.pausedUntil = Math.max(this.pausedUntil, monotonic() + ms);
    this.flush();
  }

  /**
   * Send what waits (retried and queued entries, in order) while live, as fast as the server's rate allows
   * and no sooner than a pause it asked for; then wake up when the next may go.
   */
  flush() {
    this.clearTimer('flush');
    this.nextSendAt = null;
    if (this.state !== State.LIVE || !this.ws || this.ws.readyState !== 1) return;
    const now = monotonic();
    const later = (wait) => {
      this.timers.flush = setTimeout(() => {
        this.timers.flush = null;
        this.flush();
        this.emitOutbox();
      }, wait);
    };
    // Edits, deletes and reactions first: the person is watching for them, and they are few.
    for (const req of this.requests.values()) {
      if (req.state !== 'queued') continue;
      const wait = Math.max(this.pausedUntil - now, this.bucket.wait(now));
      if (wait > 0) {
        later(wait);
        return;
      }
      if (!this.sendFrame(req.frame)) return;
      this.bucket.take(now);
      req.state = 'sent';
    }
    for (const e of this.outbox.entries) {
      if (e.state !== 'queued' && e.state !== 'retrying') continue;
      const wait = Math.max(this.pausedUntil - now, this.bucket.wait(now));
      if (wait > 0) {
        this.nextSendAt = Date.now() + wait;
        later(wait);
        return;
      }
      const frame = { type: 'message', text: e.text, id: e.id };
      if (e.reply) frame.reply_to = e.reply.seq;
      if (e.mentions?.length) frame.mentions = e.mentions;
      if (e.files?.length) frame.files = e.files.map((f) => f.id);
      if (!this.sendFrame(frame)) return;
      this.bucket.take(now);
      e.state = 'sending';
      delete e.retryAt;
      delete e.code;
    }
  }

  // ---- plumbing --------------------------------------------------------------------------------

  setState(state, extra = {}) {
    this.state = state;
    this.reason = extra.reason || null;
    if (state === State.OFFLINE) this.clearTimers();
    this.dispatch('state', {
      state,
      attempt: this.attempt,
      retryAt: null,
      code: null,
      reason: null,
      detail: null,
      refused: false,
      wait: null,
      status: null,
      error: null,
      ...extra,
    });
  }

  emitOutbox() {
    const entries = this.outbox.entries.map((e) => ({ ...e }));
    const waiting = entries.filter((e) => e.state === 'queued' || e.state === 'retrying').length;
    this.dispatch('outbox', { entries, waiting, nextAt: waiting ? this.nextSendAt : null });
  }

  dispatch(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  clearTimer(name) {
    const t = this.timers[name];
    if (t !== null) {
      clearTimeout(t);
      clearInterval(t);
      this.timers[name] = null;
    }
  }

  clearTimers() {
    for (const name of Object.keys(this.timers)) this.clearTimer(name);
  }
}
