// chat.js: the roomchat wire protocol (docs/protocol.md) from the browser's side.
//
// One ChatClient owns one WebSocket to one room: it connects, answers pings, splits coalesced server
// frames, resumes with `after=<last seq>` after every drop, drops duplicates by seq, and keeps an outbox of
// typed messages in sessionStorage until the server acknowledges them. It knows nothing about the DOM:
// the page listens to its events (see ChatClient) and calls send()/reconnectNow()/setToken().

export const MAX_TEXT_CHARS = 2000; // the server's default max_text_chars, counted in code points
const BACKOFF_BASE_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const CONNECT_TIMEOUT_MS = 15000; // a connect that neither opens nor fails by then is abandoned
// The server pings every 25 s and drops us after 35 s of silence; if we hear nothing for longer than that,
// the connection is dead even if the browser has not noticed yet.
const STALE_AFTER_MS = 60000;
const STABLE_AFTER_MS = 10000; // a connection live this long resets the backoff
const REFUSED_HINT_AFTER = 3; // consecutive connects that never opened before we suspect the token

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
  POLICY: 'policy', // 1008 / 1003: the server refused our frames; do not loop
  CLOSED: 'closed', // 1000, or stop() was called
});

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

/** Exponential backoff with jitter: 1 s doubling to 30 s, each delay drawn from [d/2, d]. */
export function backoffDelay(attempt, random = Math.random) {
  const full = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.max(0, attempt));
  return Math.round(full / 2 + (random() * full) / 2);
}

/** The number of Unicode code points in a string (what the server's length limit counts). */
export function codePointLength(text) {
  return Array.from(text).length;
}

/** A random client message id, unique enough for the server's (user, id) dedup. */
export function newMessageId() {
  const bytes = new Uint8Array(9);
  crypto.getRandomValues(bytes); // works outside secure contexts, unlike crypto.randomUUID
  return 'c-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
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
    case 1003:
    case 1008:
      return { action: 'stop', reason: StopReason.POLICY };
    case 1000:
      return { action: 'stop', reason: StopReason.CLOSED };
    case 4008: // rate-limit abuse: wait a while before coming back
      return { action: 'backoff', minAttempt: 3 };
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
  4001: 'your token expired',
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
          if (e && typeof e.id === 'string' && typeof e.text === 'string') {
            const createdAt = e.createdAt || Date.now();
            this.entries.push({ id: e.id, text: e.text, createdAt, state: 'queued' });
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
      .map(({ id, text, createdAt }) => ({ id, text, createdAt }));
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
 * - `state`    {state, retryAt, attempt, code, reason, detail, refused}: status changes; `refused` is true
 *              when several connects in a row never opened (the server may be refusing this token).
 * - `welcome`  {welcome, resumed, reset}: a connection went live. `reset` means the server could not
 *              replay gaplessly: the page must drop what it shows and treat what follows as fresh history.
 * - `message`  {message, own, kind}: a new message, in seq order, never twice. `kind` is 'history'
 *              (initial history), 'missed' (replayed after a reconnect) or 'live'.
 * - `history-end` {}: every message up to the welcome's seq has been delivered.
 * - `presence` {presence}: a member joined or left.
 * - `outbox`   {entries}: the pending messages changed; entries have {id, text, createdAt, state, error?,
 *              retryAt?} with state 'queued' | 'sending' | 'retrying' | 'sent' | 'failed'.
 * - `problem`  {error}: an `error` frame that did not belong to a pending message.
 */
export class ChatClient extends EventTarget {
  /**
   * @param {object} opts
   * @param {string} opts.room      the room name
   * @param {string} opts.token     the JWT
   * @param {{protocol: string, host: string}} opts.location  where the server is (the page's location)
   * @param {Storage} [opts.storage] where the outbox is kept (sessionStorage)
   * @param {typeof WebSocket} [opts.WebSocketImpl]
   */
  constructor({ room, token, location, storage = null, WebSocketImpl = WebSocket }) {
    super();
    this.room = room;
    this.token = token;
    this.location = location;
    this.WebSocketImpl = WebSocketImpl;
    this.outbox = new Outbox(storage, `roomchat:outbox:${room}`);

    this.state = null;
    this.reason = null; // a StopReason while OFFLINE
    this.user = null; // from welcome
    this.name = null;
    this.members = [];
    this.lastSeq = 0; // the highest seq delivered to the page
    this.welcomeSeq = 0;
    this.resumable = false; // true once a welcome was seen: later connects send after=lastSeq
    this.historyKind = 'history';

    this.ws = null;
    this.opened = false;
    this.attempt = 0;
    this.refusedInARow = 0;
    this.liveSince = 0;
    this.lastHeard = 0;
    this.pausedUntil = 0; // sending paused after rate_limited/busy
    this.timers = { reconnect: null, connect: null, flush: null, watchdog: null };
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
    this.dropSocket(1000);
    this.setState(State.OFFLINE, { reason: StopReason.CLOSED });
  }

  /** Skip the backoff wait (the person pressed "Reconnect now", or the network came back). */
  reconnectNow() {
    if (this.state === State.LIVE || this.state === State.CONNECTING) return;
    if (this.state === State.OFFLINE && this.reason === StopReason.EXPIRED) return;
    this.stopped = false;
    this.connect();
  }

  /** Use a new token (e.g. after the old one expired) and connect with it, resuming where we were. */
  setToken(token) {
    this.token = token;
    this.refusedInARow = 0;
    this.attempt = 0;
    this.stopped = false;
    if (this.state !== State.LIVE && this.state !== State.CONNECTING) this.connect();
  }

  /**
   * Queue `text` for sending; it is sent now if we are live, else when we are. Returns the outbox entry,
   * or null when the text is empty after trimming. Throws RangeError when it is too long.
   */
  send(text) {
    const trimmed = String(text).trim();
    if (!trimmed) return null;
    if (codePointLength(trimmed) > MAX_TEXT_CHARS) {
      throw new RangeError(`A message can have at most ${MAX_TEXT_CHARS} characters.`);
    }
    const entry = { id: newMessageId(), text: trimmed, createdAt: Date.now(), state: 'queued' };
    this.outbox.entries.push(entry);
    this.outbox.save();
    this.flush();
    this.emitOutbox();
    return entry;
  }

  /** Forget a failed (or still pending) message. */
  discard(id) {
    if (this.outbox.remove(id)) {
      this.outbox.save();
      this.emitOutbox();
    }
  }

  // ---- connection lifecycle --------------------------------------------------------------------

  url() {
    const scheme = this.location.protocol === 'https:' ? 'wss' : 'ws';
    const params = new URLSearchParams({ token: this.token });
    if (this.resumable) params.set('after', String(this.lastSeq));
    return `${scheme}://${this.location.host}/rooms/${encodeURIComponent(this.room)}/ws?${params}`;
  }

  connect() {
    this.clearTimer('reconnect');
    if (this.ws) return;
    // An expired token is refused before the upgrade, which a browser only sees as 1006; say so up front.
    const exp = tokenExpiresAt(this.token);
    if (exp !== null && exp <= Date.now()) {
      this.setState(State.OFFLINE, { reason: StopReason.EXPIRED, code: 4001 });
      return;
    }
    const rooms = decodeToken(this.token)?.rooms;
    if (Array.isArray(rooms) && !rooms.includes(this.room) && !rooms.includes('*')) {
      this.setState(State.OFFLINE, { reason: StopReason.FORBIDDEN });
      return;
    }

    let ws;
    try {
      ws = new this.WebSocketImpl(this.url());
    } catch (err) {
      this.scheduleReconnect({ action: 'backoff' }, 1006, String(err));
      return;
    }
    this.ws = ws;
    this.opened = false;
    this.setState(State.CONNECTING);
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
    this.pausedUntil = 0;
    if (!this.opened) this.refusedInARow += 1;
    if (this.liveSince && Date.now() - this.liveSince >= STABLE_AFTER_MS) this.attempt = 0;
    this.liveSince = 0;
    // Anything in flight may or may not have been stored: resend it (same id) on the next connection.
    for (const e of this.outbox.entries) {
      if (e.state === 'sending' || e.state === 'retrying') {
        e.state = 'queued';
        delete e.retryAt;
      }
    }
    this.emitOutbox();
    if (this.stopped) return;
    this.scheduleReconnect(closeAction(code), code, reason);
  }

  scheduleReconnect(plan, code, reason) {
    const detail = describeClose(code, reason);
    if (plan.action === 'stop') {
      this.setState(State.OFFLINE, { reason: plan.reason, code, detail });
      return;
    }
    let delay;
    if (plan.action === 'soon') {
      this.attempt = 0;
      delay = 500 + Math.round(Math.random() * 1000);
    } else {
      this.attempt = Math.max(this.attempt, plan.minAttempt || 0);
      delay = backoffDelay(this.attempt);
    }
    this.attempt += 1;
    const retryAt = Date.now() + delay;
    this.setState(State.WAITING, {
      retryAt,
      code,
      detail,
      refused: this.refusedInARow >= REFUSED_HINT_AFTER,
    });
    this.timers.reconnect = setTimeout(() => {
      this.timers.reconnect = null;
      this.connect();
    }, delay);
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
        return this.sendFrame({ type: 'pong' });
      case 'error':
        return this.onError(obj);
      default:
        return undefined; // unknown types are ignored (the server may add some)
    }
  }

  onWelcome(w) {
    const resumed = this.resumable;
    const reset = resumed && w.recovered !== true;
    if (reset || !resumed) {
      // A fresh history follows: forget seqs from before, they may not exist any more (data reset).
      this.lastSeq = 0;
    }
    this.resumable = true;
    this.user = w.user;
    this.name = w.name;
    this.members = Array.isArray(w.members) ? w.members.slice() : [];
    this.welcomeSeq = typeof w.seq === 'number' ? w.seq : 0;
    this.historyKind = resumed && !reset ? 'missed' : 'history';
    this.liveSince = Date.now();
    this.clearTimer('connect');
    // Acked messages shown as "sent" were waiting for their echo; a fresh history re-delivers them.
    this.outbox.entries = this.outbox.entries.filter((e) => e.state !== 'sent');
    this.setState(State.LIVE);
    this.dispatch('welcome', { welcome: w, resumed, reset });
    if (this.lastSeq >= this.welcomeSeq) this.dispatch('history-end', {});
    this.flush();
    this.emitOutbox();
  }

  onMessage(m) {
    if (typeof m.seq !== 'number' || m.seq <= this.lastSeq) return; // already shown: drop
    this.lastSeq = m.seq;
    const own = this.user !== null && m.user === this.user;
    let outboxChanged = false;
    if (own && m.id) outboxChanged = this.outbox.remove(m.id);
    const kind = m.seq <= this.welcomeSeq ? this.historyKind : 'live';
    this.dispatch('message', { message: m, own, kind });
    if (kind !== 'live' && m.seq === this.welcomeSeq) this.dispatch('history-end', {});
    if (outboxChanged) {
      this.outbox.save();
      this.emitOutbox();
    }
  }

  onAck(a) {
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

  onPresence(p) {
    if (p.event === 'join' && !this.members.some((m) => m.user === p.user)) {
      this.members.push({ user: p.user, name: p.name });
    } else if (p.event === 'leave') {
      this.members = this.members.filter((m) => m.user !== p.user);
    }
    this.dispatch('presence', { presence: p });
  }

  onError(err) {
    const entry = err.id ? this.outbox.find(err.id) : null;
    if (!entry) {
      this.dispatch('problem', { error: err });
      return;
    }
    if (err.code === 'rate_limited' || err.code === 'busy') {
      // Not stored: send it again, same id, once the server says we may.
      const waitMs = Math.max(100, (Number(err.retry_after) || 1) * 1000);
      entry.state = 'retrying';
      entry.retryAt = Date.now() + waitMs;
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

  pauseSending(ms) {
    const until = Date.now() + ms;
    if (until <= this.pausedUntil) return;
    this.pausedUntil = until;
    this.clearTimer('flush');
    this.timers.flush = setTimeout(() => {
      this.timers.flush = null;
      this.pausedUntil = 0;
      for (const e of this.outbox.entries) {
        if (e.state === 'retrying') {
          e.state = 'queued';
          delete e.retryAt;
        }
      }
      this.flush();
      this.emitOutbox();
    }, ms);
  }

  /** Send every queued entry, in order, if live and not paused by a rate limit. */
  flush() {
    if (this.state !== State.LIVE || Date.now() < this.pausedUntil) return;
    for (const e of this.outbox.entries) {
      if (e.state !== 'queued') continue;
      if (!this.sendFrame({ type: 'message', text: e.text, id: e.id })) return;
      e.state = 'sending';
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
      ...extra,
    });
  }

  emitOutbox() {
    this.dispatch('outbox', { entries: this.outbox.entries.map((e) => ({ ...e })) });
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
