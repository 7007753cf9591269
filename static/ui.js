// ui.js: the page. Reads the room and token, drives a ChatClient (chat.js) and renders what it reports.
//
// Safety rule for this file: text that came from anyone (messages, names, server errors) reaches the DOM only
// through textContent / createTextNode / attribute setters, never through HTML parsing.

import {
  ChatClient,
  State,
  StopReason,
  WaitReason,
  FINAL_REASONS,
  decodeToken,
  tokenExpiresAt,
  codePointLength,
  parseBanDetail,
  refusalText,
  MAX_TEXT_CHARS,
} from '/static/chat.js';
import { renderText } from '/static/format.js';
import { EmojiPicker, emojiName, quickEmoji, notePicked, loadEmoji } from '/static/picker.js';
import { MentionAutocomplete } from '/static/mentions.js';
import { FileUrls } from '/static/files.js';
import { AttachmentTray, Lightbox, el, filesNode, limitHint } from '/static/attachments.js';
import { SearchBox } from '/static/search.js';

const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
const GROUP_WINDOW_MS = 5 * 60 * 1000; // consecutive messages of one person within this are grouped
const NEAR_BOTTOM_PX = 80;
const LOAD_OLDER_PX = 200; // scrolled this close to the top: load the page of messages before
const OLDER_PAGE = 50;
const OLDER_RETRY_MS = 5000; // after a failed load, scrolling up tries again no sooner than this
const HUES = 12;
const TYPING_SHOWN_MS = 5000; // "Alice is typing…" stays this long after her last typing signal
const QUOTE_CHARS = 140; // how much of a message the actions dialog and the reply bar quote
const HIGHLIGHT_MS = 2500; // a message jumped to (a link, a reply's quote) stays highlighted this long
const JUMP_PAGE = 200; // older pages are this long while looking for a message far back (the server's cap)
const NOTIFY_CHARS = 200; // how much of a message a notification shows
const NOTIFY_MODES = ['mentions', 'all', 'off'];
const TRAY_NOTE_MS = 10000; // a refused file is said under the composer this long (its chip keeps it)
const MOD_STEPS = ['mod-choose', 'mod-confirm-delete', 'mod-confirm-ban'];
// A member's "left" waits this long before it is shown: one whose connection dropped (a server restart, a
// worker replaced, a network blip) is usually back within it, and then neither line is news.
const LEAVE_HOLD_MS = 5000;
// After our own reconnect, those who were here before and are not back yet are most likely reconnecting from
// the same drop: their join within this long is not news either.
const REJOIN_QUIET_MS = 10000;

const $ = (id) => document.getElementById(id);

// ---- small DOM helpers -------------------------------------------------------------------------

function hueClass(user) {
  let h = 0;
  for (const ch of String(user)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `hue-${h % HUES}`;
}

function initials(name) {
  // First letter (or digit) of the first and last words; punctuation does not make a good avatar.
  const firstChar = (word) => (word.match(/[\p{L}\p{N}]/u) || [''])[0];
  const words = String(name || '').trim().split(/\s+/).map(firstChar).filter(Boolean);
  if (!words.length) return '?';
  return (words[0] + (words.length > 1 ? words[words.length - 1] : '')).toUpperCase();
}

function avatar(user, name, extra = '') {
  return el('span', {
    cls: `avatar ${hueClass(user)} ${extra}`.trim(),
    text: initials(name),
    attrs: { 'aria-hidden': 'true' },
  });
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });
const untilFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

function dayKey(ts) {
  const d = new Date(ts);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

function dayLabel(ts) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayKey(ts) === dayKey(today.getTime())) return 'Today';
  if (dayKey(ts) === dayKey(yesterday.getTime())) return 'Yesterday';
  return dayFmt.format(new Date(ts));
}

/** Whole seconds (at least 1) until `at`, ms since the epoch: for countdowns. */
function secondsUntil(at) {
  return Math.max(1, Math.ceil((at - Date.now()) / 1000));
}

function timeElement(ts) {
  const d = new Date(ts);
  return el('time', {
    cls: 'time',
    text: timeFmt.format(d),
    attrs: { datetime: d.toISOString(), title: fullFmt.format(d) },
  });
}

/** A day separator line ("Today", "Yesterday", a date); decorative for screen readers. */
function daySeparator(ts) {
  return el('li', { cls: 'day', attrs: { 'aria-hidden': 'true', 'data-day': dayKey(ts) } },
    el('span', { text: dayLabel(ts) }));
}

/** The author line of a bubble: name (`author`, a node or a string) and time. */
function meta(author, ts) {
  const name = typeof author === 'string'
    ? el('span', { cls: 'author', text: author, attrs: { dir: 'auto' } }) : author;
  return el('div', { cls: 'meta' }, name, ' ', timeElement(ts));
}

/** A display name's key for telling people apart: names that look the same on screen count as one. */
function nameKey(name) {
  return String(name).normalize('NFKC').trim().toLowerCase();
}

/** The muted "@id" shown beside a display name that two people use. */
function handleNode(user) {
  return el('span', { cls: 'handle', text: `@${user}`, attrs: { dir: 'ltr' } });
}

/** The start of `text`, at most `chars` code points (with "…" when cut), on one line. */
function excerpt(text, chars) {
  const flat = String(text).replace(/\s+/g, ' ').trim();
  const points = Array.from(flat);
  return points.length > chars ? `${points.slice(0, chars).join('')}…` : flat;
}

/** What a message says, for a quote or a notification: its text, or for files alone, their names. */
function saidText(m) {
  if (m.text || !m.files?.length) return m.text;
  const names = m.files.map((f) => f.name).join(', ');
  return m.files.length === 1 ? `Shared a file: ${names}` : `Shared ${m.files.length} files: ${names}`;
}

/** A 24x24 icon from one SVG path, drawn without parsing markup. */
function pathIcon(d, size = 18) {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  for (const [k, v] of [['viewBox', '0 0 24 24'], ['width', size], ['height', size], ['aria-hidden', 'true'],
    ['focusable', 'false']]) svg.setAttribute(k, String(v));
  const path = document.createElementNS(NS, 'path');
  path.setAttribute('fill', 'currentColor');
  path.setAttribute('d', d);
  svg.append(path);
  return svg;
}

const SMILE_PLUS = 'M11 3a8 8 0 1 0 8 8h-2a6 6 0 1 1-6-6Zm-3 6.5A1.5 1.5 0 1 0 8 12.5a1.5 1.5 0 0 0 0-3Zm6 0a1.5 1.5 0 1 0 0 3 '
  + '1.5 1.5 0 0 0 0-3ZM7.5 14a3.8 3.8 0 0 0 7 0ZM18 2v3h-3v2h3v3h2V7h3V5h-3V2Z';
const REPLY_ARROW = 'M10 9V5l-7 7 7 7v-4.1c5 0 8.5 1.6 11 5.1-1-5-4-10-11-11Z';
const PENCIL = 'M3 17.25V21h3.75L17.81 9.94l-3.75-3.75Zm17.71-10.21a1 1 0 0 0 0-1.41l-2.34-2.34a1 1 0 0 0-1.41 0'
  + 'l-1.83 1.83 3.75 3.75Z';

/** Three dots, drawn without parsing markup. */
function dotsIcon() {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  for (const [k, v] of [['viewBox', '0 0 24 24'], ['width', '18'], ['height', '18'], ['aria-hidden', 'true'],
    ['focusable', 'false']]) svg.setAttribute(k, v);
  for (const cx of [5, 12, 19]) {
    const dot = document.createElementNS(NS, 'circle');
    for (const [k, v] of [['cx', cx], ['cy', 12], ['r', 2], ['fill', 'currentColor']]) dot.setAttribute(k, String(v));
    svg.append(dot);
  }
  return svg;
}

/** What a 403 `banned` said, in the person's words: until when (local time), and why. */
function banWords(detail) {
  const ban = parseBanDetail(detail);
  if (!ban) return `The server said: ${detail}.`;
  const until = ban.until === null
    ? 'The ban lasts until a moderator lifts it.'
    : `The ban ends on ${untilFmt.format(new Date(ban.until))}.`;
  return ban.reason ? `${until} Reason given: ${ban.reason}` : until;
}

// ---- page setup: room and token ----------------------------------------------------------------

function roomFromPath(pathname) {
  const m = /^\/rooms\/([^/]+)\/?$/.exec(pathname);
  if (!m) return null;
  let room;
  try {
    room = decodeURIComponent(m[1]);
  } catch {
    return null;
  }
  return ROOM_RE.test(room) ? room : null;
}

const tokenKey = (room) => `roomchat:token:${room}`;
const refreshKey = (room) => `roomchat:refresh:${room}`;
const REFRESH_LEAD_MAX_MS = 60_000; // renew this long before `exp` (a third of the lifetime if shorter)
const REFRESH_RETRY_MS = 5_000;

const notifyKey = (room) => `roomchat:notify:${room}`;

/** This browser's notification choice for `room` (localStorage): 'mentions', 'all' or 'off' (the default). */
function notifyModeFor(room) {
  try {
    const mode = localStorage.getItem(notifyKey(room));
    return NOTIFY_MODES.includes(mode) ? mode : 'off';
  } catch {
    return 'off';
  }
}

/** The message a link points at: `#msg=<seq>` among the fragment's key=value pairs (or null). */
function messageFromFragment() {
  const hash = location.hash.startsWith('#') ? location.hash.slice(1) : '';
  const raw = new URLSearchParams(hash).get('msg');
  const seq = raw !== null && /^[1-9]\d{0,15}$/.test(raw) ? Number(raw) : null;
  return seq !== null && Number.isSafeInteger(seq) ? seq : null;
}

/** A refresh URL as given in the fragment, if it is a path on this page's own origin; else null. */
function sameOriginPath(raw) {
  if (!raw || !raw.startsWith('/') || raw.startsWith('//')) return null;
  try {
    const url = new URL(raw, location.origin);
    return url.origin === location.origin ? url.pathname + url.search : null;
  } catch {
    return null;
  }
}

/**
 * Ask the embedding app for a new token: `window.roomchatRefresh()` when the app set that hook (it
 * returns a token or a promise of one), else `POST <refresh URL>` with the app's cookies, answered with
 * `{"token": "..."}`. Resolves to the token, or null when there is no way to renew or it failed.
 */
async function renewToken(refreshUrl) {
  try {
    if (typeof window.roomchatRefresh === 'function') {
      const token = await window.roomchatRefresh();
      return typeof token === 'string' && token ? token : null;
    }
    if (!refreshUrl) return null;
    const res = await fetch(refreshUrl, {
      method: 'POST',
      headers: { accept: 'application/json' },
      credentials: 'same-origin',
      cache: 'no-store',
    });
    if (!res.ok) return null;
    const body = await res.json();
    return body && typeof body.token === 'string' && body.token ? body.token : null;
  } catch {
    return null;
  }
}

function storageGet(key) {
  try {
    return sessionStorage.getItem(key);
  } catch {
    return null;
  }
}

function storageSet(key, value) {
  try {
    if (value === null) sessionStorage.removeItem(key);
    else sessionStorage.setItem(key, value);
  } catch {
    // storage disabled: the token lives only in memory for this page
  }
}

/**
 * Take `#token=...&refresh=...` out of the address bar (so it is not bookmarked, shared or kept in
 * history) and return {token, refresh}: `refresh` is the embedding app's same-origin path that renews
 * the token (see docs/integration.md), or null.
 */
function takeTokenFromFragment() {
  const hash = location.hash.startsWith('#') ? location.hash.slice(1) : '';
  if (!hash) return { token: null, refresh: null };
  const params = new URLSearchParams(hash);
  const token = params.get('token');
  if (!token) return { token: null, refresh: null };
  const refresh = sameOriginPath(params.get('refresh'));
  params.delete('token');
  params.delete('refresh');
  const rest = params.toString();
  history.replaceState(history.state, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
  return { token, refresh };
}

async function fetchInfo() {
  try {
    const res = await fetch('/api/info', { headers: { accept: 'application/json' }, cache: 'no-store' });
    if (!res.ok) return { dev_login: false };
    const info = await res.json();
    return info && typeof info === 'object' ? info : { dev_login: false };
  } catch {
    return { dev_login: false };
  }
}

async function devLogin(name, room) {
  let res;
  try {
    res = await fetch('/api/dev-login', {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({ name, room }),
    });
  } catch {
    throw new Error('Could not reach the server. Try again in a moment.');
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (!res.ok || !body || typeof body.token !== 'string') {
    const detail = body && (body.detail || body.error);
    throw new Error(detail ? String(detail) : `Sign-in failed (HTTP ${res.status}).`);
  }
  return body.token;
}

// ---- the view ----------------------------------------------------------------------------------

class ChatView {
  constructor(room) {
    this.room = room;
    this.client = null;
    this.info = null; // /api/info, fetched when first needed
    this.me = null;
    this.members = new Map();
    this.lastEntry = null; // {user, ts} of the last message line, for grouping
    this.lastDay = null;
    this.newBelow = 0;
    this.countdown = null;
    this.noteTimer = null;
    this.historyTimer = null;
    this.everLive = false;
    this.tokenNote = '';
    this.stickyNote = false; // the composer note stays until the connection is live again
    this.noteIsCounter = false;
    this.outbox = { entries: [] }; // the client's last `outbox` event
    this.queue = { waiting: 0, nextAt: null }; // the outbox's messages waiting their turn
    this.headStatus = null; // {node, entry}: the status text of the next message to go (it counts down)
    this.pendingTick = null;
    this.oldestSeq = null; // the lowest seq in the log
    this.atBeginning = false; // the log starts at the room's first stored message
    this.olderLoad = null; // the older page being loaded (a promise), if any
    this.olderRetryAt = 0;
    this.historyReady = false; // the join's history is in: older pages may be loaded
    this.logGeneration = 0; // bumped when the log is cleared, so a late page is dropped
    this.typists = new Map(); // user -> {name, timer}: who is typing now
    this.namesSeen = new Map(); // nameKey -> Set of users shown under that name (members and messages)
    this.sharedNames = new Set(); // nameKeys two or more of them use: shown with "@id" everywhere
    this.heldLeaves = new Map(); // user -> timer: a "left" line held back for LEAVE_HOLD_MS
    this.rejoinQuiet = new Map(); // user -> ms since the epoch: their join until then is not shown
    this.refreshUrl = null; // the embedding app's renewal path (or window.roomchatRefresh), if any
    this.refreshTimer = null;
    this.moderator = false; // the welcome said this connection moderates the room: messages get a menu
    this.modTarget = null; // {seq, user, name, own} of the message the actions dialog is open for
    this.modOpener = null; // the menu button that opened it (focus returns there)
    this.knownNames = new Map(); // user -> the name last seen for them (members, authors, quotes)
    this.recentAuthors = new Map(); // user -> name, the most recent author last
    this.editing = null; // {seq, form, input, error, item}: the message being edited in place
    this.replyTo = null; // {seq, user, name, excerpt}: the message the next one answers
    this.reacting = new Set(); // "seq emoji" of reactions sent and not answered yet
    this.pendingJump = null; // a message to show once the history is in (#msg=<seq>)
    this.highlightTimer = null;
    // Unread: the read marker as the welcome gave it, and where the "New since you left" line goes.
    this.joinRead = 0; // the marker when this page joined (0: never read here)
    this.joinSeq = 0; // the welcome's seq then
    this.joinUnread = 0; // the server's count of unread messages then
    this.unreadCapped = false;
    this.unreadLine = null; // the line's <li>, once placed
    this.unreadSeen = false; // the line was on screen (the jump button is no longer needed)
    this.readCheck = 0; // a requestAnimationFrame pending for checkRead

    this.picker = new EmojiPicker();

    this.log = $('log');
    this.pending = $('pending');
    this.scroller = $('scroller');
    this.input = $('message-input');
    this.baseTitle = `#${room} · roomchat`;

    document.title = this.baseTitle;
    $('room-name').textContent = room;
    this.input.placeholder = `Message #${room}`;
    this.log.setAttribute('aria-label', `Messages in #${room}`);
    this.mentions = new MentionAutocomplete(this.input, $('mention-list'), () => this.mentionCandidates());
    // Files (issue 23): signed URLs for showing them, the composer's tray, the full-size view.
    this.urls = new FileUrls({ room, token: () => this.client?.token || '' });
    this.tray = new AttachmentTray({
      list: $('attachments'),
      room,
      token: () => this.client?.token || '',
      urls: this.urls,
      maxFiles: () => this.client?.maxFiles ?? 10,
      maxFileBytes: () => (Number.isSafeInteger(this.info?.max_file_bytes) ? this.info.max_file_bytes : null),
      note: (text) => this.trayNote(text),
      fallbackFocus: () => this.input,
    });
    this.lightbox = new Lightbox($('lightbox'), this.urls);
    this.bindControls();
    this.bindFiles();
    this.bindModeration();
    this.bindNotifications();
  }

  // ---- wiring

  bindControls() {
    document.querySelector('.skip-link').addEventListener('click', (ev) => {
      ev.preventDefault(); // focus without putting "#message-input" in the address bar
      this.input.focus();
    });
    $('composer').addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.submit();
    });
    this.input.addEventListener('keydown', (ev) => {
      if (this.mentions.key(ev)) {
        ev.preventDefault();
        return;
      }
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        this.submit();
      } else if (ev.key === 'ArrowUp' && !this.input.value && !ev.shiftKey && !ev.altKey && !ev.ctrlKey
          && !ev.metaKey) {
        // As in Slack and Discord: Up in an empty box edits your last message.
        const last = [...this.log.querySelectorAll('li.msg.own:not(.deleted)')].pop();
        if (last) {
          ev.preventDefault();
          this.startEdit(last);
        }
      } else if (ev.key === 'Escape' && this.replyTo) {
        ev.preventDefault();
        this.setReply(null);
      }
    });
    $('reply-cancel').addEventListener('click', () => {
      this.setReply(null);
      this.input.focus();
    });
    $('unread-jump').addEventListener('click', () => this.jumpToFirstUnread());
    window.addEventListener('hashchange', () => {
      const seq = messageFromFragment();
      if (seq !== null) this.jumpTo(seq);
    });
    window.addEventListener('focus', () => this.scheduleReadCheck());
    // Leaving: the marker goes now, not at the next READ_EVERY_MS (the next visit's unread line starts there).
    window.addEventListener('pagehide', () => this.client?.flushRead());
    this.input.addEventListener('input', () => {
      if (this.input.value.trim()) this.client?.typing();
      const n = codePointLength(this.input.value);
      if (n > MAX_TEXT_CHARS - 200) this.note(`${n} / ${MAX_TEXT_CHARS} characters`, 0);
      else if (this.noteIsCounter) this.note('', 0);
      this.noteIsCounter = n > MAX_TEXT_CHARS - 200;
    });
    this.scroller.addEventListener('scroll', () => {
      if (this.isNearBottom()) this.clearNewBelow();
      if (this.scroller.scrollTop < LOAD_OLDER_PX) this.loadOlder();
      this.scheduleReadCheck();
    }, { passive: true });
    $('jump').addEventListener('click', () => {
      this.scrollToBottom(true);
      this.input.focus();
    });
    $('reconnect-now').addEventListener('click', () => this.client?.reconnectNow());
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) {
        this.scheduleReadCheck();
        if (this.client?.state === State.WAITING) this.client.reconnectNow();
      } else {
        this.client?.flushRead();
      }
    });
    window.addEventListener('online', () => this.client?.reconnectNow());

    const toggle = $('members-toggle');
    const wide = window.matchMedia('(min-width: 820px)');
    const applyDefault = () => this.showMembers(wide.matches);
    wide.addEventListener('change', applyDefault);
    applyDefault();
    toggle.addEventListener('click', () => this.showMembers($('members').hidden));
    document.addEventListener('keydown', (ev) => {
      // (An open dialog takes its own Escape.)
      if (ev.key === 'Escape' && !wide.matches && !$('members').hidden && !document.querySelector('dialog[open]')) {
        this.showMembers(false);
        toggle.focus();
      }
    });

    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.login();
    });
    const copy = $('copy-command');
    if (navigator.clipboard && window.isSecureContext) {
      copy.addEventListener('click', async () => {
        try {
          await navigator.clipboard.writeText($('howto-command').textContent);
          copy.textContent = 'Copied';
        } catch {
          copy.textContent = 'Copy failed';
        }
      });
    } else {
      copy.hidden = true;
    }
  }

  /** Attach files by the button (a file picker), by pasting, or by dropping them anywhere on the room. */
  bindFiles() {
    const picker = $('file-input');
    $('attach').addEventListener('click', () => picker.click());
    picker.addEventListener('change', () => {
      if (picker.files?.length) this.attach(picker.files);
      picker.value = ''; // the same file may be picked again
      this.input.focus();
    });
    // A paste in the message box that holds files (a screenshot) attaches them; text pastes as usual.
    this.input.addEventListener('paste', (ev) => {
      const files = ev.clipboardData?.files;
      if (!files?.length) return;
      ev.preventDefault();
      this.attach(files);
    });
    const zone = $('drop-zone');
    const app = $('app');
    let depth = 0; // dragenter/dragleave come for every child crossed: count them
    const carriesFiles = (ev) => [...(ev.dataTransfer?.types || [])].includes('Files');
    const show = (on) => {
      zone.hidden = !on;
      app.classList.toggle('dropping', on);
    };
    app.addEventListener('dragenter', (ev) => {
      if (!carriesFiles(ev) || !this.takesFiles()) return;
      ev.preventDefault();
      depth += 1;
      show(true);
    });
    app.addEventListener('dragover', (ev) => {
      if (!carriesFiles(ev) || !this.takesFiles()) return;
      ev.preventDefault(); // without it the browser opens the file instead of letting us take it
      ev.dataTransfer.dropEffect = 'copy';
    });
    app.addEventListener('dragleave', () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) show(false);
    });
    app.addEventListener('drop', (ev) => {
      depth = 0;
      show(false);
      if (!carriesFiles(ev) || !this.takesFiles()) return;
      ev.preventDefault();
      if (ev.dataTransfer.files.length) this.attach(ev.dataTransfer.files);
    });
  }

  /**
   * Say a refusal of the tray in the composer's note. Several come together (a drop of files, some refused):
   * each joins those still shown rather than replacing them (each chip keeps its own words too).
   */
  trayNote(text) {
    const line = $('composer-note');
    const now = Date.now();
    const joined = this.trayNoteShown && line.textContent === this.trayNoteShown.text && now < this.trayNoteShown.until
      ? `${line.textContent} ${text}` : text;
    this.note(joined, TRAY_NOTE_MS);
    this.trayNoteShown = { text: joined, until: now + TRAY_NOTE_MS };
  }

  /** Whether files can be attached now: in the room, able to write, and the room takes files. */
  takesFiles() {
    return this.client !== null && !this.input.disabled && this.client.maxFiles !== 0;
  }

  /** Attach `files` to the message being written (the tray uploads them). */
  attach(files) {
    if (!this.client || this.input.disabled) {
      this.note('Join the room first.');
      return;
    }
    this.tray.add(files);
  }

  showMembers(show) {
    $('members').hidden = !show;
    const toggle = $('members-toggle');
    toggle.setAttribute('aria-expanded', String(show));
    toggle.setAttribute('aria-label', show ? 'Hide online members' : 'Show online members');
  }

  /** Start a client with `token` (or hand the new token to the running one). */
  connect(token) {
    storageSet(tokenKey(this.room), token);
    this.hideAuth();
    const claims = decodeToken(token);
    if (claims && !this.me) this.setSubtitle(claims.name || claims.sub || '');
    const exp = tokenExpiresAt(token);
    this.tokenNote = exp ? `Your token is valid until ${fullFmt.format(new Date(exp))}` : '';
    $('status').title = this.tokenNote;
    this.scheduleRefresh(token);
    if (!this.info) fetchInfo().then((info) => { this.info = this.info || info; this.hintFiles(); });
    if (this.client) {
      this.client.setToken(token);
      return;
    }
    const client = new ChatClient({
      room: this.room,
      token,
      location: window.location,
      storage: sessionStorage,
    });
    this.client = client;
    client.addEventListener('state', (ev) => this.onState(ev.detail));
    client.addEventListener('welcome', (ev) => this.onWelcome(ev.detail));
    client.addEventListener('message', (ev) => this.onMessage(ev.detail));
    client.addEventListener('history-end', () => this.onHistoryEnd());
    client.addEventListener('presence', (ev) => this.onPresence(ev.detail.presence));
    client.addEventListener('outbox', (ev) => this.renderPending(ev.detail));
    client.addEventListener('problem', (ev) => this.onProblem(ev.detail.error));
    client.addEventListener('typing', (ev) => this.onTyping(ev.detail));
    client.addEventListener('change', (ev) => this.onChange(ev.detail));
    client.addEventListener('read', () => this.onReadMoved());
    client.start();
  }

  /** The attach button's description: how many files, and how large, when the server says. */
  hintFiles() {
    const bytes = Number.isSafeInteger(this.info?.max_file_bytes) ? this.info.max_file_bytes : null;
    const maxFiles = this.client?.maxFiles ?? 10;
    $('attach-hint').textContent = limitHint(maxFiles, bytes);
    $('attach').hidden = maxFiles === 0; // a server that takes no files: nothing to pick
  }

  // ---- token renewal (docs/integration.md, "Refreshing tokens")

  canRefresh() {
    return Boolean(this.refreshUrl) || typeof window.roomchatRefresh === 'function';
  }

  /** Renew `token` a little before its `exp` (nothing to do without a refresh URL or hook). */
  scheduleRefresh(token) {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    const exp = tokenExpiresAt(token);
    if (!exp || !this.canRefresh()) return;
    const claims = decodeToken(token);
    const life = typeof claims?.iat === 'number' ? exp - claims.iat * 1000 : exp - Date.now();
    const lead = Math.min(REFRESH_LEAD_MAX_MS, Math.max(0, life) / 3);
    const delay = Math.max(0, exp - lead - Date.now());
    this.refreshTimer = setTimeout(() => this.refresh(exp), delay);
  }

  /**
   * Get a new token from the embedding app and carry on with it. Until the old one's `exp` a failure is
   * retried; returns whether we got one.
   */
  async refresh(exp) {
    this.refreshTimer = null;
    const token = await renewToken(this.refreshUrl);
    if (token) {
      this.connect(token);
      return true;
    }
    if (exp && exp - Date.now() > REFRESH_RETRY_MS) {
      this.refreshTimer = setTimeout(() => this.refresh(exp), REFRESH_RETRY_MS);
    }
    return false;
  }

  // ---- auth panel

  /**
   * Show the panel that explains why the person is not in the room and what they can do. `kind` is
   * 'none' (no link), 'invalid', 'expired', 'revoked', 'forbidden' or 'badroom'. Only 'none' shows the
   * operator's command for making a link: everyone else is told, in plain words, whom to ask.
   */
  async needAuth(kind, detail = '') {
    const wasIn = this.everLive;
    const ask = 'Ask whoever sent it to you for a new link.';
    const title = {
      none: 'Join this room',
      invalid: 'This link is not valid',
      expired: wasIn ? 'Your session ended' : 'This link has expired',
      ended: 'Your session ended',
      revoked: 'Your access was revoked',
      forbidden: 'Not allowed in this room',
      badroom: 'This is not a room',
      banned: wasIn ? 'You were banned from this room' : 'You are banned from this room',
    }[kind];
    const text = {
      none: 'You need an invitation link to join this room.',
      invalid: `This link is not valid: it may be incomplete, or made for another server. ${ask}`,
      expired: wasIn
        ? 'Your session ended because your link expired. To get back in, ask whoever sent it to you '
          + 'for a new link and open it. Messages not sent yet are kept until you are back.'
        : `This link has expired. ${ask}`,
      ended: 'Your session ended and could not be renewed. To get back in, reload the page you opened '
        + 'this chat from (you may have to sign in there again). Messages not sent yet are kept until you '
        + 'are back.',
      revoked: 'Your access to this room was revoked, so you were disconnected. If you think this is a '
        + 'mistake, ask whoever runs this room for a new link.',
      forbidden: `This link does not allow you into #${this.room}: you are not allowed in this room. `
        + 'Ask for a link to this room.',
      badroom: 'Room names are 1 to 64 letters, digits, "-" or "_". Check the address.',
      banned: `A moderator banned you from #${this.room}, so you cannot take part here until the ban ends. `
        + 'If you think this is a mistake, ask whoever runs this room.',
    }[kind];
    const cannot = {
      none: 'join the room first',
      invalid: 'this link is not valid',
      expired: 'your link expired',
      ended: 'your session ended',
      revoked: 'your access was revoked',
      forbidden: 'you are not allowed in this room',
      badroom: 'this is not a room',
      banned: 'you are banned from this room',
    }[kind];
    this.setComposer(false, cannot); // nothing typed now could be sent: say so instead of queueing it
    $('auth').dataset.kind = kind;
    $('auth-title').textContent = title;
    $('auth-text').textContent = detail ? `${text} ${detail}` : text;
    // Over an empty conversation the card sits in the middle; once there was a conversation it docks
    // below it, so the history stays readable and scrollable.
    $('auth').classList.toggle('docked', wasIn);
    $('auth').hidden = false;
    $('app').classList.add('needs-auth');
    $('app').classList.toggle('signed-out', !this.client);
    $('howto').hidden = true;
    $('login-form').hidden = true;
    if (kind === 'badroom' || kind === 'banned') return; // no link or name can help here

    this.info = this.info || (await fetchInfo());
    if ($('auth').hidden || $('auth').dataset.kind !== kind) return; // moved on while we asked
    const devLoginOn = this.info.dev_login === true;
    $('login-form').hidden = !devLoginOn;
    $('howto').hidden = devLoginOn || kind !== 'none';
    if (devLoginOn) {
      $('auth-text').textContent =
        kind === 'none' ? 'Pick a display name to join.' : `${text} Or join by name below.`;
      const name = $('login-name');
      if (!name.value && this.me?.name) name.value = this.me.name;
      name.focus();
    } else {
      $('howto-command').textContent =
        `roomchat token --user ID --room ${this.room} --link ${location.protocol}//${location.host}`;
    }
  }

  hideAuth() {
    $('auth').hidden = true;
    $('app').classList.remove('needs-auth', 'signed-out');
    this.setComposer(true);
  }

  /** Let the person type and send, or not, saying why in the box (`reason` completes "Can’t send messages: "). */
  setComposer(enabled, reason = '') {
    this.input.disabled = !enabled;
    $('send').disabled = !enabled;
    $('attach').disabled = !enabled;
    this.input.placeholder = enabled ? `Message #${this.room}` : `Can’t send messages: ${reason}`;
  }

  async login() {
    const nameInput = $('login-name');
    const name = nameInput.value.trim();
    const error = $('login-error');
    if (!name) {
      error.textContent = 'Please enter a name.';
      nameInput.focus();
      return;
    }
    $('login-submit').disabled = true;
    error.textContent = '';
    try {
      const token = await devLogin(name, this.room);
      this.connect(token);
      this.input.focus();
    } catch (err) {
      error.textContent = err.message;
    } finally {
      $('login-submit').disabled = false;
    }
  }

  // ---- connection status

  /** Tell screen readers about a change of state (never about a countdown's tick). */
  announce(text) {
    const live = $('status-live');
    if (live.textContent !== text) live.textContent = text;
  }

  onState(s) {
    const status = $('status');
    const text = $('status-text');
    const again = $('reconnect-now');
    clearInterval(this.countdown);
    this.countdown = null;
    again.hidden = true;
    // Who is online is only known while connected: grey the list out meanwhile.
    $('app').classList.toggle('disconnected', s.state !== State.LIVE);
    // The close code behind the current state, for the curious (and for tests).
    if (s.code) status.dataset.code = String(s.code);
    else delete status.dataset.code;
    if (s.state === State.OFFLINE && s.reason) status.dataset.reason = s.reason;
    else delete status.dataset.reason;
    if (s.state !== State.WAITING) delete status.dataset.wait;
    this.renderPending(this.outbox); // what a waiting message says depends on the connection
    this.markMembers(s.state);

    if (s.state === State.CONNECTING) {
      status.dataset.state = 'connecting';
      text.textContent = this.everLive ? 'Reconnecting…' : 'Connecting…';
      this.announce(text.textContent);
    } else if (s.state === State.LIVE) {
      status.dataset.state = 'live';
      text.textContent = 'Live';
      if (this.stickyNote) this.note('', 0);
      this.announce('Connected');
      status.title = this.tokenNote || '';
      this.everLive = true;
    } else if (s.state === State.WAITING) {
      status.dataset.state = 'reconnecting';
      again.hidden = false;
      if (s.wait) status.dataset.wait = s.wait;
      else delete status.dataset.wait;
      const tick = () => {
        const secs = Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000));
        if (s.wait === WaitReason.BUSY) text.textContent = `Server busy; retrying in ${secs}s`;
        else if (s.wait === WaitReason.UNAVAILABLE) {
          text.textContent = `Service temporarily unavailable; retrying in ${secs}s`;
        } else if (s.wait === WaitReason.RESTARTING) {
          text.textContent = `Server restarting · reconnecting in ${secs}s`;
        } else if (s.wait === WaitReason.TOO_FAST) {
          text.textContent = `Sent too fast · reconnecting in ${secs}s`;
        } else {
          const lead = s.refused ? 'Can’t connect' : 'Offline';
          text.textContent = `${lead} · reconnecting in ${secs}s`;
        }
      };
      tick();
      this.countdown = setInterval(tick, 1000);
      this.announce({
        [WaitReason.BUSY]: 'Server busy; will retry',
        [WaitReason.UNAVAILABLE]: 'Service temporarily unavailable; will retry',
        [WaitReason.RESTARTING]: 'Server restarting; will reconnect',
        [WaitReason.TOO_FAST]: 'Disconnected for sending too fast; will reconnect',
      }[s.wait] || (s.refused ? 'Can’t connect; will retry' : 'Offline; will reconnect'));
      status.title = s.refused && !s.wait
        ? 'The server keeps refusing the connection. It may be down, or your link may no longer be valid.'
        : `Disconnected: ${s.detail || 'connection lost'}`;
      if (s.wait === WaitReason.TOO_FAST) {
        // The page paces its sends, so this is another tab of ours, or a server set stricter than the
        // defaults: say what happened and what becomes of the messages.
        this.note('The server disconnected this page for sending too many messages too fast. Messages not '
          + 'sent yet are kept and go out, at the pace the room allows, once reconnected.', 0);
        this.stickyNote = true;
      }
    } else if (s.state === State.OFFLINE) {
      this.onOffline(s);
    }
  }

  /**
   * Who is online is only known while connected: the list is greyed and says so while reconnecting, and
   * emptied once offline (nobody there would know if we were still listed).
   */
  markMembers(state) {
    const note = $('members-note');
    if (state === State.LIVE) {
      note.hidden = true;
      return;
    }
    if (state === State.OFFLINE) {
      this.members.clear();
      this.renderMembers();
      this.setSubtitle(this.me?.name);
      for (const user of [...this.typists.keys()]) this.stopTyping(user);
      for (const user of [...this.heldLeaves.keys()]) this.dropHeldLeave(user);
      note.textContent = 'Not connected';
    } else {
      note.textContent = 'Reconnecting: this list may be out of date';
    }
    note.hidden = !this.everLive && state !== State.OFFLINE;
  }

  onOffline(s) {
    const status = $('status');
    const text = $('status-text');
    status.title = '';
    queueMicrotask(() => this.announce(text.textContent));
    if (s.reason === StopReason.BANNED) {
      // Not a token problem (it stays: a ban may end), and retrying is refused until the ban ends.
      status.dataset.state = 'offline';
      text.textContent = 'Offline · banned from this room';
      this.closeModeration();
      this.needAuth('banned', s.status ? banWords(s.detail) : '');
      return;
    }
    if (FINAL_REASONS.has(s.reason)) {
      // Retrying cannot help: say why in the person's words and what they can do.
      const [kind, said] = {
        [StopReason.EXPIRED]: ['expired', 'link expired'],
        [StopReason.INVALID]: ['invalid', 'link not valid'],
        [StopReason.REVOKED]: ['revoked', 'access revoked'],
        [StopReason.FORBIDDEN]: ['forbidden', 'not allowed in this room'],
        [StopReason.BAD_ROOM]: ['badroom', 'no such room'],
      }[s.reason];
      status.dataset.state = s.reason === StopReason.EXPIRED ? 'expired' : 'offline';
      storageSet(tokenKey(this.room), null); // never reuse it, not even after a reload
      if (s.reason === StopReason.EXPIRED && this.canRefresh()) {
        // The embedding app can renew it: one last try before telling the person.
        text.textContent = 'Renewing your session…';
        clearTimeout(this.refreshTimer);
        this.refresh(null).then((ok) => {
          if (ok || this.client?.state !== State.OFFLINE) return;
          text.textContent = 'Offline · session ended';
          this.needAuth('ended');
        });
        return;
      }
      text.textContent = `Offline · ${said}`;
      this.needAuth(kind);
    } else {
      status.dataset.state = 'offline';
      text.textContent = s.reason === StopReason.POLICY
        ? `Offline · ${s.detail || 'closed by the server'}`
        : 'Offline';
      status.title = s.detail || '';
      $('reconnect-now').hidden = false;
    }
  }

  // ---- conversation

  onWelcome({ welcome, resumed, reset }) {
    this.me = { user: welcome.user, name: welcome.name };
    this.knownNames.set(welcome.user, welcome.name);
    if (reset) this.clearLog();
    if (!resumed || reset) {
      // A fresh history: the "New since you left" line goes where the read marker was.
      const count = (v) => (Number.isSafeInteger(v) && v > 0 ? v : 0);
      this.joinRead = count(welcome.read);
      this.joinSeq = count(welcome.seq);
      this.joinUnread = count(welcome.unread);
      this.unreadCapped = welcome.unread_capped === true;
      this.unreadLine?.remove();
      this.unreadLine = null;
      this.unreadSeen = false;
    }
    this.setModerator(welcome.moderator === true);
    this.hintFiles();
    const before = this.members;
    this.members = new Map();
    for (const m of welcome.members || []) {
      this.noteName(m.user, m.name);
      this.members.set(m.user, m.name);
      this.knownNames.set(m.user, m.name);
    }
    // After our own reconnect: those not back yet are most likely on their way back from the same drop.
    const quietUntil = Date.now() + REJOIN_QUIET_MS;
    for (const user of before.keys()) if (!this.members.has(user)) this.rejoinQuiet.set(user, quietUntil);
    for (const user of [...this.heldLeaves.keys()]) {
      if (this.members.has(user)) this.dropHeldLeave(user); // back already: the leave was not news
    }
    this.renderMembers();
    this.setSubtitle(welcome.name);
    $('log-region').setAttribute('aria-busy', 'true');
    clearTimeout(this.historyTimer);
    // If the server sends less history than the welcome promised, do not stay busy forever.
    this.historyTimer = setTimeout(() => this.onHistoryEnd(), 3000);
    this.updateEmpty();
  }

  onHistoryEnd() {
    clearTimeout(this.historyTimer);
    $('log-region').setAttribute('aria-busy', 'false');
    this.historyReady = true;
    this.updateEmpty();
    this.placeUnreadLine();
    this.updateTitle();
    if (this.pendingJump !== null) {
      const seq = this.pendingJump;
      this.pendingJump = null;
      this.jumpTo(seq);
    } else {
      this.loadOlderIfShort();
    }
    this.scheduleReadCheck();
  }

  setSubtitle(name) {
    const online = this.members.size;
    const parts = [];
    if (name) parts.push(`You are ${name}`);
    if (online) parts.push(`${online} online`);
    $('room-sub').textContent = parts.join(' · ') || '\u00a0';
  }

  clearLog() {
    if (this.editing) this.endEdit(false);
    this.log.replaceChildren();
    this.lastEntry = null;
    this.lastDay = null;
    this.oldestSeq = null;
    this.atBeginning = false;
    this.historyReady = false;
    this.logGeneration += 1;
    this.unreadLine = null;
    this.clearNewBelow();
    this.namesSeen.clear(); // "in view" starts over (the members are noted again from the welcome)
    this.sharedNames.clear();
  }

  itemFor(seq) {
    return this.log.querySelector(`li.msg[data-seq="${Number(seq)}"]`);
  }

  /** One message line; `continued` when it follows the same person's within GROUP_WINDOW_MS. */
  messageItem(m, own, continued, ts) {
    const name = m.name;
    if (!own) this.noteName(m.user, name);
    this.knownNames.set(m.user, name);
    if (m.reply_to && !this.knownNames.has(m.reply_to.user)) this.knownNames.set(m.reply_to.user, m.reply_to.name);
    const bubble = el('div', { cls: 'bubble' }, meta(own ? 'You' : this.nameNode('author', m.user, name), ts));
    const item = el(
      'li',
      {
        cls: `msg ${own ? 'own' : 'other'}${continued ? ' continued' : ''}`,
        // tabindex -1: a message jumped to (a link, a quote) takes the focus, so it is read out.
        attrs: { 'data-seq': m.seq, 'data-user': m.user, 'data-name': name, 'data-ts': ts, tabindex: '-1' },
      },
      own ? null : avatar(m.user, name),
      el('div', { cls: 'msg-body' }, bubble),
    );
    this.fillMessage(item, m);
    return item;
  }

  /**
   * Draw what a change can alter in message `item` from its current state `m`: the quote it answers, its text
   * and "(edited)", its reactions, its actions; the "mentions you" mark. A tombstone keeps only "message
   * deleted". The text of a message being edited here stays the editor until the edit ends.
   */
  fillMessage(item, m) {
    // A redraw (anyone's reaction, an edit) must not take the keyboard focus away: note what had it.
    const active = document.activeElement;
    let refocus = null;
    if (active && active !== item && item.contains(active)) {
      if (active.classList.contains('msg-menu')) refocus = '.msg-menu';
      else if (active.classList.contains('reply-quote')) refocus = '.reply-quote';
      else if (active.classList.contains('chip')) refocus = active.dataset.emoji || '';
      else if (active.dataset.fileId) refocus = `.file-thumb[data-file-id="${active.dataset.fileId}"]`;
      else if (active.classList.contains('file-download')) {
        refocus = `.file-card[data-file-id="${active.closest('.file-card')?.dataset.fileId}"] a`;
      }
    }
    this.drawMessage(item, m);
    if (refocus !== null) {
      let target;
      if (refocus.startsWith('.')) target = item.querySelector(refocus);
      else {
        target = [...item.querySelectorAll('.chip[data-emoji]')].find((c) => c.dataset.emoji === refocus)
          || item.querySelector('.chip-add') || item.querySelector('.msg-menu');
      }
      (target || item).focus({ preventScroll: true });
    }
  }

  drawMessage(item, m) {
    const body = item.querySelector('.msg-body');
    const bubble = body.querySelector('.bubble');
    if (m.deleted && this.editing?.item === item) {
      this.endEdit(true);
      this.note('The message you were editing was deleted.');
    }
    const editingThis = this.editing?.item === item;
    for (const old of bubble.querySelectorAll(':scope > .reply-quote, :scope > .content, :scope > .files, :scope > .edit-form')) {
      if (!(editingThis && old.classList.contains('edit-form'))) old.remove();
    }
    body.querySelector(':scope > .reactions')?.remove();
    item.querySelector(':scope > .msg-tools')?.remove();
    item.classList.toggle('deleted', m.deleted === true);
    const me = this.me?.user;
    item.classList.toggle('mentions-me', !m.deleted && !!me && (m.mentions || []).includes(me));
    if (m.deleted) {
      bubble.append(el('div', { cls: 'content' }, el('div', { cls: 'text deleted', text: 'message deleted' })));
      return;
    }
    if (m.reply_to) bubble.querySelector('.meta').after(this.replyQuote(m.reply_to));
    // A message of files only has no text to show (nor to edit).
    if (!editingThis && (m.text || !m.files)) bubble.append(this.contentNode(m));
    if (m.files) bubble.append(filesNode(m, this.urls, this.lightbox));
    if (m.reactions?.length) body.append(this.reactionsNode(m));
    item.append(this.toolsNode(item));
  }

  /** The text, formatted, then "(edited)" with the time of the edit on hover, focus and for screen readers. */
  contentNode(m) {
    // dir=auto: Arabic or Hebrew text lays out right to left, whatever the page's direction.
    const text = el('div', { cls: 'text', attrs: { dir: 'auto' } });
    renderText(text, m.text, { mentions: this.mentionPatterns(m) });
    const content = el('div', { cls: 'content', attrs: { dir: 'auto' } }, text);
    if (typeof m.edited === 'number') {
      const d = new Date(m.edited);
      content.append(' ', el(
        'span',
        { cls: 'edited', attrs: { title: `Edited ${fullFmt.format(d)}` } },
        el('span', { text: '(edited)', attrs: { 'aria-hidden': 'true' } }),
        el('span', { cls: 'edited-when', text: ` ${timeFmt.format(d)}`, attrs: { 'aria-hidden': 'true' } }),
        el('span', { cls: 'visually-hidden', text: `(edited at ${timeFmt.format(d)})` }),
      ));
    }
    return content;
  }

  /** What "@name" the text of `m` mentions, for highlighting: the names known for its `mentions`, and their ids. */
  mentionPatterns(m) {
    const out = [];
    for (const user of m.mentions || []) {
      const me = this.me !== null && user === this.me.user;
      const name = this.knownNames.get(user);
      if (name) out.push({ pattern: `@${name}`, me });
      out.push({ pattern: `@${user}`, me });
    }
    return out;
  }

  /** The quote of the message a reply answers: who and what; a click shows the original. */
  replyQuote(r) {
    const name = r.name || r.user;
    const said = r.excerpt || 'message deleted';
    const quote = el(
      'button',
      {
        cls: 'reply-quote',
        // (Named as a whole: its two lines are blocks, which would put a space before the colon.)
        attrs: { type: 'button', title: 'Show the message this answers', 'aria-label': `In reply to ${name}: ${said}` },
      },
      el('span', { cls: 'reply-name', text: name, attrs: { dir: 'auto' } }),
      el('span', { cls: `reply-excerpt${r.excerpt ? '' : ' gone'}`, text: said, attrs: { dir: 'auto' } }),
    );
    quote.addEventListener('click', () => this.jumpTo(r.seq));
    return quote;
  }

  /** Who reacted, in words: "Bob, Carol and you". */
  reactorsText(users) {
    const me = this.me?.user;
    const named = users.filter((u) => u !== me).map((u) => this.displayName(u, this.knownNames.get(u) || u));
    if (me && users.includes(me)) named.push('you');
    if (named.length <= 1) return named.join('');
    return `${named.slice(0, -1).join(', ')} and ${named[named.length - 1]}`;
  }

  /** The chips under a message: one per emoji, with its count; pressed when we reacted; click toggles. */
  reactionsNode(m) {
    const row = el('div', { cls: 'reactions', attrs: { role: 'group', 'aria-label': 'Reactions' } });
    for (const r of m.reactions) {
      const mine = this.me !== null && r.users.includes(this.me.user);
      const who = `${this.reactorsText(r.users)} reacted with ${emojiName(r.emoji)}`;
      const chip = el(
        'button',
        {
          cls: `chip${mine ? ' mine' : ''}`,
          attrs: {
            type: 'button',
            'aria-pressed': String(mine),
            'aria-label': `${r.emoji} ${r.users.length}: ${who}`,
            'data-emoji': r.emoji,
          },
        },
        el('span', { cls: 'chip-emoji', text: r.emoji, attrs: { 'aria-hidden': 'true' } }),
        el('span', { cls: 'chip-count', text: String(r.users.length), attrs: { 'aria-hidden': 'true' } }),
        el('span', { cls: 'chip-who', text: who, attrs: { 'aria-hidden': 'true' } }),
      );
      chip.addEventListener('click', () => this.toggleReaction(m.seq, r.emoji));
      row.append(chip);
    }
    const add = el('button', { cls: 'chip chip-add', attrs: { type: 'button', 'aria-label': 'Add reaction',
      title: 'Add reaction' } }, pathIcon(SMILE_PLUS, 16));
    add.addEventListener('click', () => this.openPicker(m.seq, add));
    row.append(add);
    return row;
  }

  /**
   * Beside the bubble: react, reply (and edit one's own) for the mouse (the menu has them all for the
   * keyboard), and the menu.
   */
  toolsNode(item) {
    const seq = Number(item.dataset.seq);
    const menu = el('button', { cls: 'msg-menu', attrs: { type: 'button', 'aria-haspopup': 'dialog' } }, dotsIcon());
    this.labelModButton(item, menu);
    menu.addEventListener('click', () => this.openModeration(item, menu));
    const react = el('button', { cls: 'msg-tool', attrs: { type: 'button', tabindex: '-1', 'aria-label': 'Add reaction',
      title: 'Add reaction' } }, pathIcon(SMILE_PLUS));
    react.addEventListener('click', () => this.openPicker(seq, menu));
    const reply = el('button', { cls: 'msg-tool', attrs: { type: 'button', tabindex: '-1', 'aria-label': 'Reply',
      title: 'Reply' } }, pathIcon(REPLY_ARROW));
    reply.addEventListener('click', () => this.startReply(seq));
    let edit = null;
    if (this.me !== null && item.dataset.user === this.me.user) {
      edit = el('button', { cls: 'msg-tool', attrs: { type: 'button', tabindex: '-1', 'aria-label': 'Edit',
        title: 'Edit' } }, pathIcon(PENCIL));
      edit.addEventListener('click', () => this.startEdit(item));
    }
    return el('div', { cls: 'msg-tools' }, react, reply, edit, menu);
  }

  // ---- reactions

  toggleReaction(seq, emoji) {
    const m = this.client?.messages.get(seq);
    if (!m || m.deleted || !this.me) return;
    const on = !(m.reactions || []).some((r) => r.emoji === emoji && r.users.includes(this.me.user));
    this.react(seq, emoji, on);
  }

  /** Send one reaction (or its removal); a second click while the first is unanswered does nothing. */
  react(seq, emoji, on) {
    const key = `${seq} ${emoji}`;
    if (!this.client || this.reacting.has(key)) return;
    this.reacting.add(key);
    if (on) notePicked(emoji);
    this.client.react(seq, emoji, on)
      .catch((err) => this.note(err.message))
      .finally(() => this.reacting.delete(key));
  }

  /**
   * The picker, for message `seq`; focus goes back to `opener` (a chip's "Add reaction", or the menu
   * button) when it closes, or to its successor if the message was redrawn meanwhile.
   */
  openPicker(seq, opener) {
    const m = this.client?.messages.get(seq);
    if (!m || m.deleted) return;
    const whose = this.me !== null && m.user === this.me.user ? 'your message' : this.displayName(m.user, m.name);
    const addChip = opener.classList.contains('chip-add');
    this.picker.open({
      title: `React to ${whose === 'your message' ? whose : `${whose}’s message`}`,
      opener: () => {
        if (opener.isConnected) return opener;
        const item = this.itemFor(seq);
        return (addChip && item?.querySelector('.chip-add')) || item?.querySelector('.msg-menu') || this.input;
      },
      onPick: (emoji) => {
        const held = this.client?.messages.get(seq);
        const mine = held?.reactions?.some((r) => r.emoji === emoji && r.users.includes(this.me?.user));
        if (!mine) this.react(seq, emoji, true);
      },
    });
  }

  // ---- replies

  startReply(seq) {
    const m = this.client?.messages.get(seq);
    if (!m || m.deleted) return;
    this.setReply({ seq, user: m.user, name: m.name, excerpt: excerpt(saidText(m), QUOTE_CHARS) });
    this.input.focus();
  }

  /** The message the next one answers (null: none), shown above the message box. */
  setReply(reply) {
    this.replyTo = reply;
    const bar = $('reply-bar');
    bar.hidden = !reply;
    if (!reply) {
      $('reply-bar-text').replaceChildren();
      return;
    }
    $('reply-bar-text').replaceChildren(
      'Replying to ',
      el('strong', { text: this.displayName(reply.user, reply.name), attrs: { dir: 'auto' } }),
      ': ',
      el('span', { cls: 'reply-bar-excerpt', text: reply.excerpt, attrs: { dir: 'auto' } }),
    );
  }

  // ---- editing one's own message, in place

  /** Turn our message `item`'s text into an editor: Enter saves, Shift+Enter adds a line, Escape cancels. */
  startEdit(item) {
    const seq = Number(item.dataset.seq);
    const m = this.client?.messages.get(seq);
    if (!m || m.deleted || !this.me || m.user !== this.me.user) return;
    if (this.editing) this.endEdit(false);
    const content = item.querySelector('.bubble > .content');
    if (!content) return;
    const id = `edit-${seq}`;
    const input = el('textarea', { cls: 'edit-input', attrs: { id, rows: '2', maxlength: MAX_TEXT_CHARS,
      'aria-describedby': `${id}-hint` } });
    input.value = m.text;
    const error = el('p', { cls: 'form-error', attrs: { role: 'alert' } });
    const save = el('button', { cls: 'btn btn-small btn-primary', text: 'Save', attrs: { type: 'submit' } });
    const cancel = el('button', { cls: 'btn btn-small', text: 'Cancel', attrs: { type: 'button' } });
    const form = el(
      'form',
      { cls: 'edit-form' },
      el('label', { cls: 'visually-hidden', text: 'Edit message', attrs: { for: id } }),
      input,
      el('div', { cls: 'edit-row' },
        el('p', { cls: 'edit-hint', text: 'Enter saves · Escape cancels', attrs: { id: `${id}-hint` } }),
        cancel, save),
      error,
    );
    content.replaceWith(form);
    this.editing = { seq, item, form, input, error, save };
    item.classList.add('editing');
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.saveEdit();
    });
    cancel.addEventListener('click', () => this.endEdit(true));
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        this.saveEdit();
      } else if (ev.key === 'Escape') {
        ev.preventDefault();
        ev.stopPropagation();
        this.endEdit(true);
      }
    });
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
    form.scrollIntoView({ block: 'nearest' }); // its buttons too, not only the text
  }

  async saveEdit() {
    const e = this.editing;
    if (!e || e.save.disabled) return;
    const m = this.client?.messages.get(e.seq);
    if (m && e.input.value.trim() === m.text) {
      this.endEdit(true); // nothing changed: nothing to send
      return;
    }
    let pending;
    try {
      pending = this.client.edit(e.seq, e.input.value);
    } catch (err) {
      e.error.textContent = err.message;
      return;
    }
    e.save.disabled = true;
    e.error.textContent = '';
    try {
      await pending;
      if (this.editing === e) this.endEdit(true);
    } catch (err) {
      if (this.editing === e) {
        e.error.textContent = err.message;
        e.save.disabled = false;
      }
    }
  }

  /** Close the editor; the message shows its current text again. */
  endEdit(focusComposer) {
    const e = this.editing;
    if (!e) return;
    this.editing = null;
    e.item.classList.remove('editing');
    const m = this.client?.messages.get(e.seq);
    if (m && e.item.isConnected) this.fillMessage(e.item, m);
    else e.form.remove();
    if (focusComposer) this.input.focus();
  }

  // ---- the message's menu: react, reply, edit, copy its link, delete; for moderators, ban (docs/protocol.md)

  /** The welcome says whether we moderate this room (deleting anyone's message, banning). */
  setModerator(on) {
    if (on === this.moderator) return;
    this.moderator = on;
    if (!on) this.closeModeration();
  }

  /** Name a message's menu button for the message it acts on (whose, and when). */
  labelModButton(item, button) {
    const own = this.me !== null && item.dataset.user === this.me.user;
    const when = timeFmt.format(new Date(Number(item.dataset.ts)));
    const whose = own ? 'your message' : `message from ${this.displayName(item.dataset.user, item.dataset.name)}`;
    button.setAttribute('aria-label', `Actions for ${whose} at ${when}`);
  }

  bindModeration() {
    const dialog = $('mod-dialog');
    $('mod-delete').addEventListener('click', () => this.modStep('mod-confirm-delete'));
    $('mod-ban').addEventListener('click', () => this.modStep('mod-confirm-ban'));
    for (const back of dialog.querySelectorAll('.mod-back')) {
      back.addEventListener('click', () => this.modStep('mod-choose'));
    }
    $('mod-cancel').addEventListener('click', () => dialog.close());
    $('mod-delete-confirm').addEventListener('click', () => this.confirmDelete());
    $('mod-ban-confirm').addEventListener('click', () => this.confirmBan());
    $('act-reply').addEventListener('click', () => this.fromMenu((t) => this.startReply(t.seq)));
    $('act-edit').addEventListener('click', () => this.fromMenu((t) => this.startEdit(t.item)));
    $('act-link').addEventListener('click', () => {
      const target = this.modTarget;
      dialog.close(); // the focus goes back to the menu button
      if (target) this.copyLink(target.seq);
    });
    $('mod-reason').addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.isComposing) {
        ev.preventDefault();
        this.confirmBan();
      }
    });
    // Escape closes a modal dialog by itself; focus then goes back to the menu button it came from, unless
    // what was chosen takes it elsewhere (an editor, the message box, the picker).
    dialog.addEventListener('close', () => {
      const opener = this.modOpener;
      const target = this.modTarget;
      this.modTarget = null;
      this.modOpener = null;
      if (this.modKeepFocus) {
        this.modKeepFocus = false;
        return;
      }
      // The message may have been redrawn while the dialog was open (a reaction): its new menu button.
      const current = opener?.isConnected ? opener : target && this.itemFor(target.seq)?.querySelector('.msg-menu');
      (current || this.input).focus();
    });
    // Up and Down move between the first step's choices, as in a menu.
    $('mod-choose').addEventListener('keydown', (ev) => {
      if (ev.key !== 'ArrowDown' && ev.key !== 'ArrowUp') return;
      const choices = [...$('mod-choose').querySelectorAll('button:not([hidden])')];
      const at = choices.indexOf(document.activeElement);
      const next = choices[(at + (ev.key === 'ArrowDown' ? 1 : choices.length - 1)) % choices.length];
      if (next) {
        ev.preventDefault();
        next.focus();
      }
    });
  }

  /** Close the menu and do what was chosen, which takes the focus (the menu must not give it back). */
  fromMenu(action) {
    const target = this.modTarget;
    if (!target) return;
    this.modKeepFocus = true;
    $('mod-dialog').close();
    action(target);
  }

  openModeration(item, opener) {
    const dialog = $('mod-dialog');
    if (dialog.open) return;
    const seq = Number(item.dataset.seq);
    const m = this.client?.messages.get(seq);
    if (!m || m.deleted) return;
    const own = this.me !== null && m.user === this.me.user;
    // The ban names the account, not only the display name, when two people use that name.
    const name = this.displayName(m.user, m.name);
    this.modTarget = { seq, user: m.user, name, own, item };
    this.modOpener = opener;
    this.modKeepFocus = false;
    $('mod-title').textContent = own ? 'Your message' : `Message from ${name}`;
    $('mod-quote').textContent = excerpt(saidText(m), QUOTE_CHARS);
    this.fillQuickReactions(m);
    $('act-edit').hidden = !own;
    $('mod-delete').hidden = !own && !this.moderator;
    $('mod-ban').hidden = own || !this.moderator; // a moderator cannot ban themself
    $('mod-ban').textContent = `Ban ${name} from this room`;
    $('mod-delete-question').textContent = own
      ? 'Delete your message for everyone? This cannot be undone.'
      : 'Delete this message for everyone? This cannot be undone.';
    $('mod-ban-question').textContent = `Ban ${name} from #${this.room}? Their connections to this room `
      + 'close, and they cannot come back until the ban ends.';
    $('mod-reason').value = '';
    $('mod-duration').value = '1440';
    this.modStep('mod-choose');
    dialog.showModal();
    $('act-reply').focus();
  }

  /** The menu's row of reactions: the most used here, pressed when ours, and a way to the whole set. */
  fillQuickReactions(m) {
    const row = $('quick-reactions');
    const mine = new Set((m.reactions || []).filter((r) => r.users.includes(this.me?.user)).map((r) => r.emoji));
    const buttons = quickEmoji().map((emoji) => {
      const b = el('button', { cls: 'quick-reaction', text: emoji, attrs: { type: 'button',
        'aria-label': `React with ${emojiName(emoji)}`, 'aria-pressed': String(mine.has(emoji)),
        title: emojiName(emoji) } });
      b.addEventListener('click', () => this.fromMenu((t) => {
        this.react(t.seq, emoji, !mine.has(emoji));
        if (t.item.isConnected) t.item.querySelector('.msg-menu')?.focus();
        else this.input.focus();
      }));
      return b;
    });
    const more = el('button', { cls: 'quick-reaction quick-more', attrs: { type: 'button',
      'aria-label': 'More reactions…', title: 'More reactions…' } }, pathIcon(SMILE_PLUS));
    more.addEventListener('click', () => this.fromMenu((t) => {
      this.openPicker(t.seq, t.item.querySelector('.msg-menu'));
    }));
    row.replaceChildren(...buttons, more);
    loadEmoji().then(() => {
      // The names came: say them (the picker's data has every emoji's name).
      for (const b of row.querySelectorAll('.quick-reaction:not(.quick-more)')) {
        b.setAttribute('aria-label', `React with ${emojiName(b.textContent)}`);
        b.title = emojiName(b.textContent);
      }
    }, () => {});
  }

  modStep(step) {
    for (const id of MOD_STEPS) $(id).hidden = id !== step;
    $('mod-error').textContent = '';
    if (step === 'mod-choose') $('act-reply').focus();
    else if (step === 'mod-confirm-delete') $('mod-delete-confirm').focus();
    else $('mod-reason').focus();
  }

  closeModeration() {
    const dialog = $('mod-dialog');
    if (dialog.open) dialog.close();
  }

  /** Send one request from the dialog; close it when done, show the server's refusal if not. */
  async moderate(button, request, done) {
    const target = this.modTarget;
    if (!target || !this.client) return;
    button.disabled = true;
    try {
      await request(target);
      if (this.modTarget === target) this.closeModeration();
      this.note(done(target), 6000, 'success');
    } catch (err) {
      if (this.modTarget === target) $('mod-error').textContent = err.message || 'Refused by the server.';
    } finally {
      button.disabled = false;
    }
  }

  confirmDelete() {
    return this.moderate($('mod-delete-confirm'), (t) => this.client.deleteMessage(t.seq), () => 'Message deleted');
  }

  confirmBan() {
    const reason = $('mod-reason').value.trim();
    const minutes = Number($('mod-duration').value) || null;
    return this.moderate(
      $('mod-ban-confirm'),
      (t) => this.client.ban(t.user, reason, minutes),
      (t) => `${t.name} was banned from #${this.room}`,
    );
  }

  // ---- message links: /rooms/<room>#msg=<seq>

  async copyLink(seq) {
    const link = `${location.origin}/rooms/${encodeURIComponent(this.room)}#msg=${seq}`;
    try {
      await navigator.clipboard.writeText(link);
      this.note('Link copied', 4000, 'success');
    } catch {
      // No clipboard here (not a secure context, or refused): show it to copy by hand.
      this.note(`Link to the message: ${link}`, 0, 'success');
    }
  }

  /**
   * Scroll to message `seq` and highlight it, loading older pages until it is there (or the history ends).
   * Says so when the room no longer holds it. Resolves to whether it was shown.
   */
  async jumpTo(seq) {
    if (!this.historyReady) {
      this.pendingJump = seq; // once the history is in
      return false;
    }
    let item = this.itemFor(seq);
    while (!item && this.canLoadOlder() && seq < this.oldestSeq) {
      if (!(await this.loadOlder(JUMP_PAGE))) break;
      item = this.itemFor(seq);
    }
    if (!item) {
      this.note(this.canLoadOlder() && seq < this.oldestSeq
        ? 'Could not load the history to show that message; try again in a moment.'
        : 'That message is not in this room’s history (deleted from it, or never stored).');
      return false;
    }
    this.showItem(item);
    return true;
  }

  /** Scroll `item` into the middle of the view, highlight it for a moment, and give it the focus. */
  showItem(item) {
    item.scrollIntoView({ block: 'center' });
    for (const old of this.log.querySelectorAll('li.msg.highlight')) old.classList.remove('highlight');
    item.classList.add('highlight');
    clearTimeout(this.highlightTimer);
    // The highlight stays while the message has the focus, and at least HIGHLIGHT_MS.
    const fade = () => {
      if (item.contains(document.activeElement)) item.addEventListener('focusout', fade, { once: true });
      else item.classList.remove('highlight');
    };
    this.highlightTimer = setTimeout(fade, HIGHLIGHT_MS);
    item.focus({ preventScroll: true });
    this.scheduleReadCheck();
  }

  // ---- unread: the read marker, the "New since you left" line, the count in the title

  /**
   * Put "New since you left" above the first message from someone else after the marker this page joined
   * with: once every message since then is loaded (else the jump button loads them). Nothing when the
   * person never read this room (marker 0: everything would be "new") or nothing is unread.
   */
  placeUnreadLine() {
    if (!this.unreadLine && this.joinRead && this.joinUnread && this.historyReady && this.unreadLoaded()) {
      const first = [...this.log.querySelectorAll('li.msg.other:not(.deleted)')]
        .find((li) => Number(li.dataset.seq) > this.joinRead);
      if (first) {
        first.classList.remove('continued');
        this.unreadLine = el('li', { cls: 'unread-line', attrs: { id: 'unread-line' } },
          el('span', { text: 'New since you left' }));
        first.before(this.unreadLine);
      }
    }
    this.updateUnreadJump();
  }

  /** Every message after the join's marker is in the log (the oldest shown is not after it). */
  unreadLoaded() {
    return this.atBeginning || (this.oldestSeq !== null && this.oldestSeq <= this.joinRead);
  }

  /** "Jump to first unread" shows until the line has been on screen. */
  updateUnreadJump() {
    const button = $('unread-jump');
    const waiting = this.joinRead > 0 && this.joinUnread > 0 && this.historyReady && !this.unreadSeen;
    if (waiting && this.unreadLine && this.inView(this.unreadLine)) this.unreadSeen = true;
    const pending = !this.unreadLine && !this.unreadLoaded();
    button.hidden = !(waiting && !this.unreadSeen && (this.unreadLine || pending));
  }

  inView(node) {
    const r = node.getBoundingClientRect();
    const s = this.scroller.getBoundingClientRect();
    return r.bottom > s.top && r.top < s.bottom;
  }

  async jumpToFirstUnread() {
    while (!this.unreadLine && this.canLoadOlder() && !this.unreadLoaded()) {
      if (!(await this.loadOlder(JUMP_PAGE))) break;
    }
    this.placeUnreadLine();
    this.unreadSeen = true;
    this.updateUnreadJump();
    if (!this.unreadLine) {
      this.note('Could not load the history back to your first unread message; try again in a moment.');
      return;
    }
    this.unreadLine.scrollIntoView({ block: 'start' });
    const first = this.unreadLine.nextElementSibling;
    if (first) first.focus({ preventScroll: true });
    this.scheduleReadCheck();
  }

  scheduleReadCheck() {
    if (this.readCheck) return;
    this.readCheck = requestAnimationFrame(() => {
      this.readCheck = 0;
      this.checkRead();
    });
  }

  /**
   * Move the read marker to the last message on screen while the person can see it (the tab shown and
   * focused): at the bottom, to the last entry of the room.
   */
  checkRead() {
    this.updateUnreadJump();
    const client = this.client;
    if (!client || !this.historyReady || document.hidden || !document.hasFocus()) return;
    if (!$('auth').hidden && !$('auth').classList.contains('docked')) return; // the card covers the log
    let seq = 0;
    if (this.isNearBottom()) {
      seq = client.lastSeq;
    } else {
      const bottom = this.scroller.getBoundingClientRect().bottom;
      const items = this.log.querySelectorAll('li.msg');
      for (let i = items.length - 1; i >= 0; i -= 1) {
        const r = items[i].getBoundingClientRect();
        if (r.top >= bottom) continue; // below the view
        if (r.bottom <= bottom + 1 || r.height >= this.scroller.clientHeight) {
          seq = Number(items[i].dataset.seq);
          break;
        }
      }
    }
    if (seq > client.readSeq) {
      client.markRead(seq);
      this.updateTitle();
    }
  }

  onReadMoved() {
    this.updateTitle();
  }

  /**
   * Messages from others not deleted after the read marker: those the page holds, plus, while the marker is
   * below them, those older than the oldest held that the server counted at the join. Someone who never read
   * the room (marker 0) has nothing unread from before they came, as the server counts it: only what came
   * after the join.
   */
  unreadCount() {
    const client = this.client;
    if (!client || !this.me) return 0;
    const read = Math.max(client.readSeq, this.joinRead === 0 ? this.joinSeq : 0);
    let count = 0;
    let held = 0;
    for (const m of client.messages.values()) {
      if (m.user === this.me.user || m.deleted) continue;
      if (m.seq > read) count += 1;
      if (m.seq > this.joinRead && m.seq <= this.joinSeq) held += 1;
    }
    if (!this.atBeginning && this.oldestSeq !== null && read < this.oldestSeq - 1) {
      count += Math.max(0, this.joinUnread - held);
    }
    return count;
  }

  // ---- notifications (a mention, or every message, while the tab is hidden)

  bindNotifications() {
    const dialog = $('notify-dialog');
    this.notifyMode = notifyModeFor(this.room);
    this.labelNotify();
    $('notify-toggle').addEventListener('click', () => {
      this.renderNotify();
      dialog.showModal();
      const first = [$('notify-enable'), ...dialog.querySelectorAll('input:checked'), $('notify-close')]
        .find((n) => !n.hidden && !n.disabled && !n.closest('[hidden], :disabled'));
      first?.focus();
    });
    $('notify-enable').addEventListener('click', async () => {
      if (typeof Notification === 'undefined') return;
      // The one place the page asks (a click on this button): the browser answers at once when it
      // was decided before.
      let permission;
      try {
        permission = await Notification.requestPermission();
      } catch {
        permission = Notification.permission;
      }
      if (permission === 'granted' && this.notifyMode === 'off') this.setNotifyMode('mentions');
      this.renderNotify();
      dialog.querySelector('input:checked')?.focus();
    });
    for (const radio of dialog.querySelectorAll('input[name="notify"]')) {
      radio.addEventListener('change', () => {
        if (radio.checked) this.setNotifyMode(radio.value);
      });
    }
    $('notify-close').addEventListener('click', () => dialog.close());
    dialog.addEventListener('close', () => $('notify-toggle').focus());
  }

  setNotifyMode(mode) {
    this.notifyMode = mode;
    try {
      localStorage.setItem(notifyKey(this.room), mode);
    } catch {
      // storage disabled: the choice lasts as long as the page
    }
    this.labelNotify();
  }

  /** What notifications do now: the choice, if the browser lets us show them. */
  effectiveNotify() {
    if (typeof Notification === 'undefined' || Notification.permission !== 'granted') return 'off';
    return this.notifyMode;
  }

  labelNotify() {
    const mode = this.effectiveNotify();
    const words = { mentions: 'mentions of you', all: 'all messages', off: 'off' }[mode];
    const toggle = $('notify-toggle');
    toggle.setAttribute('aria-label', `Notifications: ${words}`);
    toggle.title = `Notifications: ${words}`;
    toggle.dataset.mode = mode;
  }

  renderNotify() {
    const text = $('notify-text');
    const enable = $('notify-enable');
    const choice = $('notify-choice');
    $('notify-title').textContent = `Notifications for #${this.room}`;
    const supported = typeof Notification !== 'undefined';
    const permission = supported ? Notification.permission : 'unsupported';
    enable.hidden = permission !== 'default';
    choice.hidden = !supported;
    choice.disabled = permission !== 'granted';
    if (!supported) {
      text.textContent = 'This browser cannot show notifications for this page.';
    } else if (permission === 'denied') {
      text.textContent = 'Notifications are blocked for this site in your browser’s settings. Allow them there, '
        + 'then come back here.';
    } else if (permission === 'default') {
      text.textContent = 'Get a notification when someone mentions you while this tab is in the background. '
        + 'Your browser will ask you first.';
    } else {
      text.textContent = 'Shown while this tab is in the background. This choice is kept for this room on this '
        + 'browser.';
    }
    for (const radio of choice.querySelectorAll('input')) radio.checked = radio.value === this.notifyMode;
    this.labelNotify();
  }

  /** A new message while the tab is hidden: notify, if it mentions us (or the choice is every message). */
  maybeNotify(m, own, kind) {
    if (kind === 'history' || own || !document.hidden) return; // (missed while reconnecting: news too)
    const mode = this.effectiveNotify();
    const mentioned = this.me !== null && (m.mentions || []).includes(this.me.user);
    if (mode === 'off' || (mode === 'mentions' && !mentioned)) return;
    const who = this.displayName(m.user, m.name);
    const title = mentioned ? `${who} mentioned you in #${this.room}` : `${who} in #${this.room}`;
    try {
      const n = new Notification(title, { body: excerpt(saidText(m), NOTIFY_CHARS), tag: `roomchat:${this.room}:${m.seq}` });
      n.addEventListener('click', () => {
        window.focus();
        n.close();
        this.jumpTo(m.seq);
      });
    } catch {
      // Some browsers show notifications only from a service worker: nothing to do here then.
    }
  }

  // ---- mentions

  /** Who "@" offers: the members online (by name), then the most recent authors; never ourselves. */
  mentionCandidates() {
    const me = this.me?.user;
    const out = new Map();
    const online = [...this.members].sort((a, b) => a[1].localeCompare(b[1]));
    for (const [user, name] of online) if (user !== me) out.set(user, name);
    for (const [user, name] of [...this.recentAuthors].reverse()) if (user !== me && !out.has(user)) out.set(user, name);
    return [...out].map(([user, name]) => ({ user, name }));
  }

  onMessage({ message: m, own, kind }) {
    const stick = own || kind === 'history' || this.isNearBottom();
    const ts = m.ts;
    this.addDaySeparator(ts);
    const prev = this.lastEntry;
    const continued = prev !== null && prev.user === m.user && ts - prev.ts < GROUP_WINDOW_MS;
    this.log.append(this.messageItem(m, own, continued, ts));
    this.lastEntry = { user: m.user, ts };
    this.recentAuthors.delete(m.user);
    this.recentAuthors.set(m.user, m.name);
    if (kind === 'live') this.stopTyping(m.user); // their message is here: no longer typing
    if (this.oldestSeq === null || m.seq < this.oldestSeq) this.oldestSeq = m.seq;
    if (m.seq === 1) this.showBeginning();
    this.updateEmpty();
    this.maybeNotify(m, own, kind);
    if (stick) this.scrollToBottom();
    else if (kind !== 'history') this.bumpNewBelow();
    if (this.historyReady) {
      if (!this.unreadLine) this.placeUnreadLine(); // (a replay's message after its end was guessed)
      this.updateTitle();
      this.scheduleReadCheck();
    }
  }

  /** A change was folded into a message: draw it again (and the replies whose quote it emptied). */
  onChange({ change, message, replies }) {
    const stick = this.isNearBottom();
    if (message) {
      const item = this.itemFor(change.target);
      if (item) this.fillMessage(item, message);
      if (change.action === 'delete' && this.replyTo?.seq === change.target) {
        this.setReply(null);
        this.note('The message you were replying to was deleted.');
      }
    }
    for (const r of replies) {
      const item = this.itemFor(r.seq);
      if (item) this.fillMessage(item, r);
    }
    if (stick) this.scrollToBottom();
    if (this.historyReady) this.updateTitle();
  }

  // ---- typing indicators

  onTyping({ user, name }) {
    const known = this.typists.get(user);
    if (known) clearTimeout(known.timer);
    const timer = setTimeout(() => this.stopTyping(user), TYPING_SHOWN_MS);
    this.typists.set(user, { user, name, timer });
    this.renderTyping();
  }

  stopTyping(user) {
    const known = this.typists.get(user);
    if (!known) return;
    clearTimeout(known.timer);
    this.typists.delete(user);
    this.renderTyping();
  }

  renderTyping() {
    const names = [...this.typists.values()].map((t) => this.displayName(t.user, t.name));
    const line = $('typing');
    if (names.length === 0) line.textContent = '';
    else if (names.length === 1) line.textContent = `${names[0]} is typing…`;
    else if (names.length === 2) line.textContent = `${names[0]} and ${names[1]} are typing…`;
    else line.textContent = 'Several people are typing…';
    line.hidden = names.length === 0;
  }

  /**
   * A member joined or left (the client already dropped a join of someone listed and a leave of someone not).
   * The list changes at once; the line in the conversation skips what is not news: a leave followed by the
   * same member's join within LEAVE_HOLD_MS, and, after our own reconnect, the return of someone who was here.
   */
  onPresence(p) {
    const name = typeof p.name === 'string' && p.name ? p.name : String(p.user);
    if (p.event === 'join') {
      this.noteName(p.user, name);
      this.knownNames.set(p.user, name);
      this.members.set(p.user, name);
    } else if (p.event === 'leave') {
      this.stopTyping(p.user);
      this.members.delete(p.user);
    } else {
      return;
    }
    this.renderMembers();
    this.setSubtitle(this.me?.name);
    if (p.event === 'leave') {
      this.holdLeave(p, name, LEAVE_HOLD_MS);
      return;
    }
    const quiet = this.rejoinQuiet.get(p.user);
    this.rejoinQuiet.delete(p.user);
    if (this.dropHeldLeave(p.user) || (quiet !== undefined && quiet > Date.now())) return;
    this.presenceLine(p, name);
  }

  /** Show "<name> left" in `ms` unless they are back by then (held on while we are not live ourselves). */
  holdLeave(p, name, ms) {
    this.dropHeldLeave(p.user);
    this.heldLeaves.set(p.user, setTimeout(() => {
      this.heldLeaves.delete(p.user);
      if (this.client?.state === State.LIVE) this.presenceLine(p, name);
      else if (this.client?.state !== State.OFFLINE) this.holdLeave(p, name, LEAVE_HOLD_MS);
    }, ms));
  }

  /** Forget a held "left" of `user`; returns whether there was one. */
  dropHeldLeave(user) {
    const timer = this.heldLeaves.get(user);
    if (timer === undefined) return false;
    clearTimeout(timer);
    this.heldLeaves.delete(user);
    return true;
  }

  presenceLine(p, name) {
    const stick = this.isNearBottom();
    const ts = typeof p.ts === 'number' ? p.ts : Date.now();
    this.addDaySeparator(ts);
    this.log.append(
      el(
        'li',
        { cls: `system presence ${p.event}` },
        el(
          'span',
          { cls: 'system-text' },
          this.nameNode('who', p.user, name),
          p.event === 'join' ? ' joined' : ' left',
        ),
        ' ',
        timeElement(ts),
      ),
    );
    this.lastEntry = null; // a presence line breaks a group of messages
    if (stick) this.scrollToBottom();
  }

  // ---- telling people apart: a display name two people use gets each one's "@id" beside it

  /** `user` is shown under `name` (a member, or a message's author): note it, and mark a name now shared. */
  noteName(user, name) {
    const key = nameKey(name);
    let users = this.namesSeen.get(key);
    if (!users) {
      users = new Set();
      this.namesSeen.set(key, users);
    }
    users.add(user);
    if (users.size > 1 && !this.sharedNames.has(key)) {
      this.sharedNames.add(key);
      this.refreshHandles();
    }
  }

  /** `name` as text, with "(@user)" when two people use it. */
  displayName(user, name) {
    return this.sharedNames.has(nameKey(name)) ? `${name} (@${user})` : name;
  }

  /** A name (class `cls`), followed by its "@id" when two people use it (and later, if they come to). */
  nameNode(cls, user, name) {
    const key = nameKey(name);
    const node = el('span', { cls, text: name, attrs: { dir: 'auto', 'data-name-key': key, 'data-name-user': user } });
    if (!this.sharedNames.has(key)) return node;
    const both = document.createDocumentFragment();
    both.append(node, ' ', handleNode(user));
    return both;
  }

  /** A name became shared: give every place that shows it its "@id" (names never stop being shared). */
  refreshHandles() {
    for (const node of document.querySelectorAll('[data-name-key]')) {
      if (!this.sharedNames.has(node.dataset.nameKey)) continue;
      if (node.nextElementSibling?.classList.contains('handle')) continue;
      node.after(' ', handleNode(node.dataset.nameUser));
    }
    for (const item of this.log.querySelectorAll('li.msg')) {
      const button = item.querySelector('.msg-menu');
      if (button) this.labelModButton(item, button);
    }
    this.renderTyping();
  }

  addDaySeparator(ts) {
    const key = dayKey(ts);
    if (key === this.lastDay) return;
    this.lastDay = key;
    this.log.append(daySeparator(ts));
    this.lastEntry = null;
  }

  // ---- older history (GET /rooms/<room>/history, docs/protocol.md)

  /** Put the "beginning of the room" marker at the top of the log (once). */
  showBeginning() {
    this.atBeginning = true;
    if (!this.log.querySelector('li.beginning')) this.log.prepend(this.beginningItem());
  }

  beginningItem() {
    return el(
      'li',
      { cls: 'beginning' },
      el('span', { cls: 'beginning-title', text: `This is the beginning of #${this.room}` }),
    );
  }

  /** When the log does not fill the screen (no scrollbar to scroll up with), load more now. */
  loadOlderIfShort() {
    const s = this.scroller;
    if (s.scrollHeight <= s.clientHeight + LOAD_OLDER_PX) this.loadOlder();
  }

  /** Older pages may be loaded: the join's history is in, and the log does not start at the room's beginning. */
  canLoadOlder() {
    return !this.atBeginning && this.historyReady && this.client !== null && this.oldestSeq !== null;
  }

  /**
   * Load the page of messages before the oldest shown and put it on top, the view kept still; one load at a
   * time (a caller during one gets that one). Resolves to whether a page was put on top.
   */
  loadOlder(limit = OLDER_PAGE) {
    if (this.olderLoad) return this.olderLoad;
    if (!this.canLoadOlder() || Date.now() < this.olderRetryAt) return Promise.resolve(false);
    this.olderLoad = this.loadOlderPage(limit).then((loaded) => {
      this.olderLoad = null;
      if (loaded && !this.atBeginning) this.loadOlderIfShort();
      return loaded;
    });
    return this.olderLoad;
  }

  async loadOlderPage(limit) {
    const generation = this.logGeneration;
    const before = this.oldestSeq;
    let got = null;
    try {
      got = await this.client.fetchOlder(before, limit);
    } catch {
      this.olderRetryAt = Date.now() + OLDER_RETRY_MS;
      return false;
    }
    if (generation !== this.logGeneration || before !== this.oldestSeq) return false;
    const older = got.messages.filter((m) => m.seq < before);
    const start = older.length ? older[0].seq : before;
    // (History pages hold messages only: their seqs have gaps where changes sit, so no `seq === 1` test.)
    if (!older.length || got.oldest >= start) this.atBeginning = true;
    this.prependMessages(older, this.atBeginning);
    if (this.atBeginning) this.showBeginning();
    this.placeUnreadLine();
    return true;
  }

  /**
   * Put `messages` (oldest first, all older than the log's first) above the log's first line, under
   * the "beginning" marker when `beginning`.
   */
  prependMessages(messages, beginning) {
    if (!messages.length) return;
    const s = this.scroller;
    // Keep what the person was reading where it was (scroll anchoring is off for the scroller).
    const anchor = this.log.querySelector('li.msg');
    const anchorTop = anchor ? anchor.getBoundingClientRect().top : 0;
    const block = document.createDocumentFragment();
    if (beginning) block.append(this.beginningItem());
    let prev = null;
    let day = null;
    for (const m of messages) {
      const ts = typeof m.ts === 'number' ? m.ts : 0;
      if (dayKey(ts) !== day) {
        day = dayKey(ts);
        block.append(daySeparator(ts));
        prev = null;
      }
      const continued = prev !== null && prev.user === m.user && ts - prev.ts < GROUP_WINDOW_MS;
      block.append(this.messageItem(m, this.me !== null && m.user === this.me.user, continued, ts));
      prev = { user: m.user, ts };
    }
    // Join the two blocks: one day separator per day, and a group may continue across the join.
    let first = this.log.firstElementChild;
    if (first && first.classList.contains('day') && first.dataset.day === day) {
      first.remove();
      first = this.log.firstElementChild;
      if (first && first.classList.contains('msg') && prev && first.dataset.user === prev.user
          && Number(first.dataset.ts) - prev.ts < GROUP_WINDOW_MS) {
        first.classList.add('continued');
      }
    }
    this.log.prepend(block);
    this.oldestSeq = messages[0].seq;
    if (anchor) s.scrollTop += anchor.getBoundingClientRect().top - anchorTop;
  }

  onProblem(err) {
    if (err && err.code === 'unavailable') {
      this.note('Service temporarily unavailable; will resend');
      return;
    }
    const said = err && (err.message || err.code);
    const text = said ? String(said) : 'The server refused a message.';
    this.note(text);
  }

  /** A line under the composer: `kind` 'error' (the default) or 'success' (a moderator's action done). */
  note(text, ms = 6000, kind = 'error') {
    const note = $('composer-note');
    this.stickyNote = false;
    note.dataset.kind = kind;
    note.textContent = text;
    clearTimeout(this.noteTimer);
    if (text && ms) this.noteTimer = setTimeout(() => { note.textContent = ''; }, ms);
  }

  updateEmpty() {
    const hasMessages = this.log.querySelector('li.msg') !== null || this.pending.childElementCount > 0;
    $('empty').hidden = hasMessages || !this.me;
  }

  /** "(3) #room · roomchat" while 3 messages are unread ("+" when the server stopped counting). */
  updateTitle() {
    const n = this.unreadCount();
    const more = this.unreadCapped && n >= this.joinUnread ? '+' : '';
    document.title = n > 0 ? `(${n}${more}) ${this.baseTitle}` : this.baseTitle;
  }

  renderMembers() {
    const list = $('member-list');
    const sorted = [...this.members.entries()]
      .sort((a, b) => a[1].localeCompare(b[1]) || a[0].localeCompare(b[0]));
    list.replaceChildren(
      ...sorted.map(([user, name]) => {
        const you = this.me && user === this.me.user;
        return el(
          'li',
          { cls: `member${you ? ' you' : ''}`, attrs: { 'data-user': user } },
          avatar(user, name, 'avatar-small'),
          this.nameNode('member-name', user, name),
          you ? el('span', { cls: 'member-you', text: '(you)' }) : null,
        );
      }),
    );
    $('member-count').textContent = String(this.members.size);
    $('members-total').textContent = `· ${this.members.size}`;
  }

  // ---- outbox

  submit() {
    if (!this.client) {
      this.note('Join the room first.');
      return;
    }
    let entry;
    const text = this.input.value;
    const attached = this.tray.ready();
    if (attached.blocked) {
      this.note(attached.blocked);
      return;
    }
    try {
      entry = this.client.send(text, {
        reply: this.replyTo, mentions: this.mentions.mentionsIn(text), files: attached.files,
      });
    } catch (err) {
      this.note(err.message);
      return;
    }
    if (entry) {
      this.tray.clear();
      this.input.value = '';
      this.mentions.reset();
      this.setReply(null);
      this.note('', 0);
      this.scrollToBottom(true);
    }
    this.input.focus();
  }

  /**
   * What a pending bubble says. Only the `head` (the next to go) tells a countdown: the queue goes one at a
   * time at the server's pace, so nobody else's would be true.
   */
  pendingStatus(e, live, head, nextAt) {
    if (e.state === 'failed') {
      const words = refusalText(e.code, e.reply ? 'reply' : 'message', e.error);
      const ours = ['not_found', 'already_deleted', 'forbidden', 'file_not_found', 'file_not_attachable',
        'too_many_files'];
      return `Not sent: ${ours.includes(e.code) ? words : e.error}`;
    }
    if (e.state === 'sent') return 'Sent';
    if (e.state === 'sending') return 'Sending…';
    if (this.client?.state === State.OFFLINE) return 'Not sent yet: kept until you are back in the room';
    if (!live) return 'Waiting for connection';
    if (e.state === 'retrying' && e.code === 'unavailable') return 'Service temporarily unavailable; will resend';
    if (e.state === 'retrying' && e.code === 'busy') return 'Server busy, retrying…';
    if (!head || nextAt === null) return 'Queued';
    const secs = secondsUntil(nextAt);
    return e.state === 'retrying' ? `You're sending too fast; sending in ${secs}s` : `Sending in ${secs}s`;
  }

  /** The outbox changed: draw its bubbles, and the line saying how many wait and when the next goes. */
  renderPending(outbox) {
    const { entries, waiting = 0, nextAt = null } = outbox;
    const stick = this.isNearBottom();
    const live = this.client?.state === State.LIVE;
    this.outbox = outbox;
    this.queue = { waiting, nextAt };
    const head = live && nextAt !== null
      ? entries.find((e) => e.state === 'queued' || e.state === 'retrying') : null;
    this.headStatus = null;
    this.pending.replaceChildren(
      ...entries.map((e) => {
        const status = document.createTextNode(this.pendingStatus(e, live, e === head, nextAt));
        if (e === head) this.headStatus = { node: status, entry: e };
        const state = e.state === 'queued' && !live ? 'waiting' : e.state;
        const actions = e.state === 'failed'
          ? el(
            'span',
            { cls: 'pending-actions' },
            this.actionButton('Edit', () => {
              this.input.value = e.text;
              for (const user of e.mentions || []) {
                const name = this.knownNames.get(user);
                if (name) this.mentions.chosen.set(user, name);
              }
              // A reply to a message since deleted goes as a plain message.
              const original = e.reply ? this.client.messages.get(e.reply.seq) : null;
              if (e.reply && e.code !== 'not_found' && e.code !== 'already_deleted' && !original?.deleted) {
                this.setReply(e.reply);
              }
              // Its files go back on the tray, but those the server said are gone or taken.
              if (e.files && e.code !== 'file_not_found' && e.code !== 'file_not_attachable') {
                this.tray.restore(e.files);
              }
              this.client.discard(e.id);
              this.input.focus();
            }),
            this.actionButton('Dismiss', () => this.client.discard(e.id)),
          )
          : null;
        const text = el('div', { cls: 'text', attrs: { dir: 'auto' } });
        renderText(text, e.text, { mentions: this.mentionPatterns(e) });
        return el(
          'li',
          {
            cls: `msg own pending ${state}`,
            attrs: { 'data-id': e.id, 'data-state': state, 'data-code': e.state === 'retrying' && e.code },
          },
          el(
            'div',
            { cls: 'bubble' },
            meta('You', e.createdAt),
            e.reply ? this.replyQuote(e.reply) : null,
            e.text ? el('div', { cls: 'content', attrs: { dir: 'auto' } }, text) : null,
            e.files ? filesNode(e, this.urls, this.lightbox) : null,
          ),
          el(
            'p',
            { cls: 'pending-status' },
            el('span', { cls: 'pending-icon', attrs: { 'aria-hidden': 'true' } }),
            status,
            actions,
          ),
        );
      }),
    );
    this.renderQueue();
    this.updateEmpty();
    if (stick) this.scrollToBottom();
  }

  /** "N queued, next in Xs" while messages wait their turn; ticks each second (not a live region). */
  renderQueue() {
    clearTimeout(this.pendingTick);
    const line = $('queue-status');
    const { waiting, nextAt } = this.queue;
    const show = this.client?.state === State.LIVE && waiting > 0 && nextAt !== null;
    line.hidden = !show;
    if (!show) {
      line.textContent = '';
      return;
    }
    line.textContent = `${waiting} queued, next in ${secondsUntil(nextAt)}s`;
    if (this.headStatus) {
      this.headStatus.node.data = this.pendingStatus(this.headStatus.entry, true, true, nextAt);
    }
    this.pendingTick = setTimeout(() => this.renderQueue(), 1000);
  }

  actionButton(label, onClick) {
    const b = el('button', { cls: 'link-button', text: label, attrs: { type: 'button' } });
    b.addEventListener('click', onClick);
    return b;
  }

  // ---- scrolling

  isNearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM_PX;
  }

  scrollToBottom(smooth = false) {
    const s = this.scroller;
    const reduce = window.matchMedia('(prefers-reduced-motion: reduce)').matches;
    s.scrollTo({ top: s.scrollHeight, behavior: smooth && !reduce ? 'smooth' : 'auto' });
    this.clearNewBelow();
  }

  bumpNewBelow() {
    this.newBelow += 1;
    $('jump-text').textContent = this.newBelow === 1 ? '1 new message' : `${this.newBelow} new messages`;
    $('jump').hidden = false;
  }

  clearNewBelow() {
    this.newBelow = 0;
    $('jump').hidden = true;
  }
}

// ---- boot --------------------------------------------------------------------------------------

function boot() {
  const fragment = takeTokenFromFragment(); // first, so the token leaves the address bar at once
  const room = roomFromPath(location.pathname);
  if (!room) {
    const view = new ChatView('?');
    view.needAuth('badroom');
    $('status').dataset.state = 'offline';
    $('status-text').textContent = 'Offline';
    return;
  }
  const view = new ChatView(room);
  window.roomchat = view; // handy in the console; the page works without it
  view.pendingJump = messageFromFragment(); // a message link: shown once the history is in
  // Ctrl/Cmd+K or /: results jump to their message the way a message link does.
  new SearchBox({ room, token: () => view.client?.token ?? null, jump: (seq) => view.jumpTo(seq),
    composer: view.input });
  if (fragment.token) storageSet(refreshKey(room), fragment.refresh);
  view.refreshUrl = fragment.token ? fragment.refresh : storageGet(refreshKey(room));
  const token = fragment.token || storageGet(tokenKey(room));
  if (token) {
    view.connect(token);
    view.input.focus(); // ready to type (the auth panel takes the focus instead when it shows)
  } else {
    $('status').dataset.state = 'offline';
    $('status-text').textContent = 'Not signed in';
    view.needAuth('none');
  }
}

boot();
