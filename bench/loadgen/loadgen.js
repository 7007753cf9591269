'use strict';
// WebSocket load generator for the roomchat benchmark.
//
// One process, one clock: senders put their (scheduled) send time from performance.now() in the
// message text, receivers in the same process subtract it on arrival, so latency needs no clock
// sync. Clients behave like browsers: `ws` client defaults, which offer permessage-deflate.
//
// Driven by the Python runner (bench/run.py): the spec file given as argv[2] says where to connect
// and how clients are laid out in rooms; commands arrive as JSON lines on stdin and every answer
// is one JSON line on stdout (logs go to stderr). At each measurement window's edges the loadgen
// itself reads /proc/<pid>/stat of the server processes and /proc/self/stat, so CPU and delivery
// counts cover exactly the same interval.
//
// Commands:
//   {"cmd":"connect"}                          open every client of the spec, then wait until quiet
//   {"cmd":"closed","window":W,"warmup_s":..,"measure_s":..}   closed loop: each sender keeps W
//                                              messages outstanding (its own echo completes one)
//   {"cmd":"open","rate":R,"warmup_s":..,"measure_s":..}       open loop: R messages/s in total,
//                                              round-robin over senders, on a fixed schedule
//   {"cmd":"handshakes","count":N,"concurrency":C,"room_size":S,"first_frame":F,"deflate":D}
//                                              open N extra raw-socket clients as fast as C in
//                                              flight allow (kept open), time them; F: a handshake
//                                              ends at the first frame after the 101 (the welcome),
//                                              not at the 101; D (default true): offer
//                                              permessage-deflate; "token_seq":K reuses the
//                                              tokens of the handshakes after the K-th
//   {"cmd":"close"}                            close every client
//   {"cmd":"quit"}

const crypto = require('crypto');
const fs = require('fs');
const net = require('net');
const readline = require('readline');
const { performance, monitorEventLoopDelay, PerformanceObserver } = require('perf_hooks');
const { WebSocket } = require('ws');

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
// spec: {url, rooms: [{name, size, senders}], tokens: [..], cpu_pids: [..], clk_tck,
//        text_pad, connect_concurrency, settle_quiet_ms, settle_max_ms, drain_max_ms,
//        urls?: [..], cpu_groups?: {name: [pids]}, change_mix?: 0..1}
// With `change_mix` (roomchat only), that fraction of what a sender sends is a change instead of
// a message (issue 21): half edits of its own last message, half reactions to the last message
// it saw, each emoji toggled on and off in turn (never a no-op). A change is an entry of the
// room's log, delivered to every member like a message: deliveries count both, and a sender's
// own change (recognised by its id) completes one outstanding send.
// With `urls` (several server processes), member k of every room connects to urls[k % n], so a
// room's members and its senders are spread evenly; latency is also recorded apart for
// deliveries that crossed from the sender's process to another one. `cpu_groups` are reported
// as group_cpu_s beside server_cpu_s. Both count the process trees below their pids as they
// are at each edge of a window, and the CPU of the processes those trees reaped (treeCpuTicks).
const URLS = spec.urls && spec.urls.length ? spec.urls : [spec.url];

const CLIENT_OPTS = {
  // Browser-like: permessage-deflate is offered (the ws client default, spelled out here).
  perMessageDeflate: true,
  // Chat text is ours and ASCII: skip validating it again on the receiving side (client CPU only).
  skipUTF8Validation: true,
  handshakeTimeout: 60000,
  maxPayload: 64 * 1024 * 1024,
};

// ---------------------------------------------------------------- output

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function log(...args) {
  process.stderr.write(`[loadgen] ${args.join(' ')}\n`);
}

// ---------------------------------------------------------------- CPU accounting

function pidCpuTicks(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state); utime is field 14, stime field 15.
    return Number(f[11]) + Number(f[12]);
  } catch {
    return NaN;
  }
}

function cpuBusyTicks() {
  // Busy ticks (all but idle and iowait) of every cpuN line in /proc/stat.
  const out = {};
  for (const line of fs.readFileSync('/proc/stat', 'latin1').split('\n')) {
    const m = /^cpu(\d+) (.*)$/.exec(line);
    if (!m) continue;
    const v = m[2].trim().split(/\s+/).map(Number);
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    out[m[1]] = total - v[3] - v[4];
  }
  return out;
}

function processTable() {
  // Every live process: its parent, and its CPU ticks (utime + stime) plus those of its
  // children it has reaped (cutime + cstime, fields 16-17).
  const table = new Map();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const s = fs.readFileSync(`/proc/${entry}/stat`, 'latin1');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      table.set(Number(entry), {
        parent: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]),
      });
    } catch {
      // gone meanwhile
    }
  }
  return table;
}

function treeCpuTicks(table, roots) {
  // CPU of `roots` and of every live descendant, and of the descendants that exited and were
  // reaped within the trees: a PostgreSQL backend started after the spec was written counts,
  // and one that exits mid-window leaves its CPU in the postmaster's cutime, not nowhere.
  const children = new Map();
  for (const [pid, p] of table) {
    if (!children.has(p.parent)) children.set(p.parent, []);
    children.get(p.parent).push(pid);
  }
  const seen = new Set();
  const stack = roots.filter((pid) => table.has(pid));
  let total = 0;
  while (stack.length) {
    const pid = stack.pop();
    if (seen.has(pid)) continue;
    seen.add(pid);
    total += table.get(pid).ticks;
    for (const child of children.get(pid) || []) stack.push(child);
  }
  return total;
}

function cpuSnapshot() {
  const table = processTable();
  const server = treeCpuTicks(table, spec.cpu_pids);
  const groups = {};
  for (const [name, pids] of Object.entries(spec.cpu_groups || {})) {
    groups[name] = treeCpuTicks(table, pids);
  }
  return {
    t: performance.now(), server, groups, self: pidCpuTicks(process.pid), cores: cpuBusyTicks(),
  };
}

function cpuDelta(a, b) {
  const tck = spec.clk_tck;
  const cores = {};
  for (const k of Object.keys(b.cores)) cores[k] = (b.cores[k] - (a.cores[k] ?? 0)) / tck;
  const groups = {};
  for (const k of Object.keys(b.groups)) groups[k] = (b.groups[k] - a.groups[k]) / tck;
  return {
    wall_s: (b.t - a.t) / 1000,
    server_cpu_s: (b.server - a.server) / tck,
    group_cpu_s: groups,
    loadgen_cpu_s: (b.self - a.self) / tck,
    core_busy_s: cores,
  };
}

// ---------------------------------------------------------------- latency histogram

// 10 µs buckets up to 20 s, exact max kept aside.
const BUCKET_MS = 0.01;
const NBUCKETS = 2000000;

function makeHist() {
  const h = { buckets: new Uint32Array(NBUCKETS), count: 0, max: 0 };
  h.reset = () => {
    h.buckets.fill(0);
    h.count = 0;
    h.max = 0;
  };
  h.record = (ms) => {
    if (!(ms >= 0)) ms = 0;
    let b = Math.floor(ms / BUCKET_MS);
    if (b >= NBUCKETS) b = NBUCKETS - 1;
    h.buckets[b] += 1;
    h.count += 1;
    if (ms > h.max) h.max = ms;
  };
  h.summary = () => {
    const qs = [0.5, 0.9, 0.99, 0.999];
    const out = { count: h.count, max_ms: h.max };
    if (h.count === 0) {
      for (const q of qs) out[`p${q * 100}`] = null;
      return out;
    }
    let qi = 0;
    let seen = 0;
    const targets = qs.map((q) => Math.max(1, Math.ceil(q * h.count)));
    for (let b = 0; b < NBUCKETS && qi < qs.length; b++) {
      seen += h.buckets[b];
      while (qi < qs.length && seen >= targets[qi]) {
        out[`p${qs[qi] * 100}`] = Math.min((b + 1) * BUCKET_MS, h.max);
        qi += 1;
      }
    }
    return out;
  };
  return h;
}

const hist = makeHist();
// Only with several urls: deliveries to a member on another process than the sender's.
const histCross = URLS.length > 1 ? makeHist() : null;

// ---------------------------------------------------------------- clients

const rooms = spec.rooms.map((r, i) => ({ idx: i, name: r.name, size: r.size, senders: r.senders }));
/** every connected client */
const clients = [];
/** the subset that send */
const senders = [];

const stats = {
  deliveriesTotal: 0, // message objects received, since start
  expectedTotal: 0, // sum over sent messages of the room size
  sentTotal: 0,
  measuring: false,
  winDeliveries: 0,
  winSent: 0,
  errors: {}, // server error codes and client-side failures
  closes: {}, // close code -> count (unexpected closes only)
  lastRecv: 0,
};

let mode = 'idle'; // idle | closed | open
let closedWindow = 1;
let closing = false;
let handshakeSeq = 0; // extra clients opened by `handshakes`, for distinct users

const TEXT_PAD = spec.text_pad || 'lorem ipsum dolor sit amet, consectetur adipiscing elit';
const MSG_RE = /"type"\s*:\s*"message"/;
const CHANGE_RE = /"type"\s*:\s*"change"/;
const CHANGE_MIX = spec.change_mix || 0;
// JSON escapes: every frame the load generator sends stays ASCII.
const EMOJI = ['\\ud83d\\udc4d', '\\ud83c\\udf89', '\\u2764\\ufe0f'];

function countError(code) {
  stats.errors[code] = (stats.errors[code] || 0) + 1;
}

function sendMessage(c, schedMs) {
  c.counter += 1;
  c.outstanding += 1;
  const room = rooms[c.room];
  stats.sentTotal += 1;
  stats.expectedTotal += room.size;
  if (stats.measuring) stats.winSent += 1;
  const id = `${c.senderIdx}-${c.counter}`;
  if (CHANGE_MIX > 0 && c.ownSeq > 0 && Math.random() < CHANGE_MIX) {
    if (Math.random() < 0.5) {
      const text = `${schedMs.toFixed(3)}|${c.senderIdx}|edited ${TEXT_PAD}`;
      c.ws.send(`{"type":"edit","seq":${c.ownSeq},"text":"${text}","id":"${id}"}`);
    } else {
      const target = c.seenSeq;
      const emoji = EMOJI[c.counter % EMOJI.length];
      let mine = c.reacted.get(target);
      if (mine === undefined) {
        mine = new Set();
        c.reacted.set(target, mine);
        if (c.reacted.size > 64) c.reacted.delete(c.reacted.keys().next().value);
      }
      const on = !mine.has(emoji);
      if (on) mine.add(emoji);
      else mine.delete(emoji);
      c.ws.send(`{"type":"react","seq":${target},"emoji":"${emoji}","on":${on},"id":"${id}"}`);
    }
    return;
  }
  const text = `${schedMs.toFixed(3)}|${c.senderIdx}|${TEXT_PAD}`;
  c.ws.send(`{"type":"message","text":"${text}","id":"${id}"}`);
}

function seqOf(line) {
  const i = line.indexOf('"seq":');
  return i < 0 ? 0 : parseInt(line.slice(i + 6), 10);
}

function completeOne(c) {
  c.outstanding -= 1;
  if (mode === 'closed' && c.outstanding < closedWindow && c.ws.readyState === WebSocket.OPEN) {
    sendMessage(c, performance.now());
  }
}

function handleMessageLine(c, line, now) {
  stats.deliveriesTotal += 1;
  stats.lastRecv = now;
  let ti = line.indexOf('"text":');
  if (ti < 0) return;
  ti += 7;
  if (line.charCodeAt(ti) === 32) ti += 1;
  ti += 1; // opening quote
  const bar = line.indexOf('|', ti);
  if (bar < 0) return;
  const t0 = Number(line.slice(ti, bar));
  const bar2 = line.indexOf('|', bar + 1);
  const from = bar2 > 0 ? Number(line.slice(bar + 1, bar2)) : -1;
  if (CHANGE_MIX > 0 && c.senderIdx >= 0 && !CHANGE_RE.test(line)) {
    // Only a message may be edited or reacted to (an edit's line comes through here too).
    const seq = seqOf(line);
    c.seenSeq = seq;
    if (from === c.senderIdx) c.ownSeq = seq;
  }
  if (stats.measuring) {
    stats.winDeliveries += 1;
    hist.record(now - t0);
    if (histCross !== null && from >= 0 && from < senders.length && senders[from].urlIdx !== c.urlIdx) {
      histCross.record(now - t0);
    }
  }
  if (c.senderIdx >= 0 && from === c.senderIdx) completeOne(c);
}

function handleChangeLine(c, line, now) {
  // An edit carries the sender's timestamp like a message; a reaction is known by its id.
  if (line.indexOf('"action":"edit"') >= 0) {
    handleMessageLine(c, line, now);
    return;
  }
  stats.deliveriesTotal += 1;
  stats.lastRecv = now;
  if (stats.measuring) stats.winDeliveries += 1;
  if (c.senderIdx < 0) return;
  const i = line.indexOf('"id":"');
  if (i >= 0 && line.startsWith(`${c.senderIdx}-`, i + 6)) completeOne(c);
}

function handleOtherLine(c, line, now) {
  stats.lastRecv = now;
  let obj;
  try {
    obj = JSON.parse(line);
  } catch {
    countError('client_bad_json');
    return;
  }
  switch (obj.type) {
    case 'ping':
      c.ws.send('{"type":"pong"}');
      break;
    case 'welcome':
      c.welcomed = true;
      break;
    case 'error': {
      countError(`server_${obj.code}`);
      if (c.senderIdx >= 0 && typeof obj.id === 'string' && obj.id.startsWith(`${c.senderIdx}-`)) {
        // The message was refused: nothing will be delivered for it.
        stats.expectedTotal -= rooms[c.room].size;
        completeOne(c);
      }
      break;
    }
    default:
      break; // ack, presence, unknown types: ignored, as the protocol asks
  }
}

function onData(c, data) {
  const now = performance.now();
  const s = typeof data === 'string' ? data : data.toString();
  let start = 0;
  for (;;) {
    const nl = s.indexOf('\n', start);
    const line = nl < 0 ? (start === 0 ? s : s.slice(start)) : s.slice(start, nl);
    if (line.length > 0) {
      if (line.startsWith('{"type":"message"') || MSG_RE.test(line)) handleMessageLine(c, line, now);
      else if (CHANGE_MIX > 0 && CHANGE_RE.test(line)) handleChangeLine(c, line, now);
      else handleOtherLine(c, line, now);
    }
    if (nl < 0) break;
    start = nl + 1;
  }
}

function roomUrl(base, roomName, token) {
  return `${base}/rooms/${roomName}/ws?token=${encodeURIComponent(token)}`;
}

function openClient(c) {
  return new Promise((resolve) => {
    const ws = new WebSocket(roomUrl(URLS[c.urlIdx], rooms[c.room].name, c.token), CLIENT_OPTS);
    c.ws = ws;
    let opened = false;
    ws.on('open', () => {
      opened = true;
      resolve(true);
    });
    ws.on('message', (data) => onData(c, data));
    ws.on('error', (err) => {
      countError(`client_${err.code || err.message}`.slice(0, 80));
      if (!opened) resolve(false);
    });
    ws.on('unexpected-response', (req, res) => {
      countError(`http_${res.statusCode}`);
      res.resume();
      ws.terminate();
      if (!opened) resolve(false);
    });
    ws.on('close', (code) => {
      if (!closing) stats.closes[code] = (stats.closes[code] || 0) + 1;
      if (!opened) resolve(false);
    });
  });
}

async function runPool(items, concurrency, fn) {
  let next = 0;
  const results = new Array(items.length);
  async function worker() {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]);
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  return results;
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitQuiet(quietMs, maxMs) {
  // Wait until nothing has arrived for quietMs (presence storms, welcomes), at most maxMs.
  const t0 = performance.now();
  for (;;) {
    const now = performance.now();
    if (now - stats.lastRecv >= quietMs || now - t0 >= maxMs) return now - t0;
    await sleep(Math.min(50, quietMs));
  }
}

async function cmdConnect() {
  closing = false;
  const t0 = performance.now();
  const todo = [];
  let tokenIdx = 0;
  for (const room of rooms.slice(0, spec.rooms.length)) {
    for (let k = 0; k < room.size; k++) {
      const c = {
        room: room.idx, token: spec.tokens[tokenIdx % spec.tokens.length], ws: null,
        urlIdx: k % URLS.length, senderIdx: -1, counter: 0, outstanding: 0, welcomed: false,
        ownSeq: 0, seenSeq: 0, reacted: new Map(),
      };
      tokenIdx += 1;
      if (k < room.senders) {
        c.senderIdx = senders.length;
        senders.push(c);
      }
      todo.push(c);
    }
  }
  const ok = await runPool(todo, spec.connect_concurrency || 100, openClient);
  let failed = 0;
  const opened = [];
  for (let i = 0; i < todo.length; i++) {
    if (ok[i]) opened.push(todo[i]);
    else failed += 1;
  }
  clients.push(...opened);
  const connectMs = performance.now() - t0;
  stats.lastRecv = performance.now();
  const settleMs = await waitQuiet(spec.settle_quiet_ms || 500, spec.settle_max_ms || 60000);
  const welcomed = opened.filter((c) => c.welcomed).length;
  // How many connections the server let compress (it accepted the permessage-deflate offer).
  const deflate = opened.filter((c) => /permessage-deflate/.test(c.ws.extensions)).length;
  const perUrl = URLS.map((_, i) => opened.filter((c) => c.urlIdx === i).length);
  emit({
    event: 'connected', ok: opened.length, failed, connect_ms: connectMs, settle_ms: settleMs,
    welcomed, deflate, per_url: perUrl, errors: stats.errors, closes: stats.closes,
  });
}

async function drain(maxMs) {
  const t0 = performance.now();
  while (stats.deliveriesTotal < stats.expectedTotal && performance.now() - t0 < maxMs) {
    await sleep(20);
  }
  return { drain_ms: performance.now() - t0, undelivered: stats.expectedTotal - stats.deliveriesTotal };
}

function liveSenders() {
  return senders.filter((c) => c.ws && c.ws.readyState === WebSocket.OPEN);
}

async function measured(warmupS, measureS, phase, extra) {
  stats.measuring = false;
  await sleep(warmupS * 1000);
  hist.reset();
  if (histCross !== null) histCross.reset();
  stats.winDeliveries = 0;
  stats.winSent = 0;
  const a = cpuSnapshot();
  // The load generator's own event-loop delay in the window: a latency tail that shows up
  // here is the client side's, not the server's.
  const loopDelay = monitorEventLoopDelay({ resolution: 1 });
  loopDelay.enable();
  // ... and its own garbage collections (V8 pauses the loop for each).
  const gc = { count: 0, total_ms: 0, max_ms: 0, over_10ms: 0 };
  const gcObserver = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gc.count += 1;
      gc.total_ms += e.duration;
      gc.max_ms = Math.max(gc.max_ms, e.duration);
      if (e.duration >= 10) gc.over_10ms += 1;
    }
  });
  gcObserver.observe({ entryTypes: ['gc'] });
  stats.measuring = true;
  await sleep(measureS * 1000);
  const b = cpuSnapshot();
  stats.measuring = false;
  loopDelay.disable();
  gcObserver.disconnect();
  const loadgenLoop = {
    p99_ms: loopDelay.percentile(99) / 1e6, max_ms: loopDelay.max / 1e6, gc,
  };
  const windowDeliveries = stats.winDeliveries;
  const windowSent = stats.winSent;
  const lat = hist.summary();
  const extraLat = histCross !== null ? { latency_cross: histCross.summary() } : {};
  mode = 'idle';
  const d = await drain(spec.drain_max_ms || 20000);
  const cpu = cpuDelta(a, b);
  emit({
    event: 'result', phase, ...extra, ...cpu, sent: windowSent, deliveries: windowDeliveries,
    deliveries_per_s: windowDeliveries / cpu.wall_s, sent_per_s: windowSent / cpu.wall_s,
    latency: lat, ...extraLat, ...d, errors: stats.errors, closes: stats.closes,
    loadgen_loop_delay: loadgenLoop,
  });
}

async function cmdClosed(cmd) {
  closedWindow = cmd.window;
  mode = 'closed';
  for (const c of liveSenders()) {
    while (c.outstanding < closedWindow) sendMessage(c, performance.now());
  }
  await measured(cmd.warmup_s, cmd.measure_s, 'closed', { window: cmd.window });
}

async function cmdOpen(cmd) {
  const live = liveSenders();
  if (live.length === 0) {
    emit({ event: 'result', phase: 'open', error: 'no live senders' });
    return;
  }
  mode = 'open';
  const rate = cmd.rate;
  const start = performance.now();
  let k = 0;
  const tick = () => {
    if (mode !== 'open') return;
    const now = performance.now();
    const due = Math.floor(((now - start) * rate) / 1000);
    while (k < due) {
      const c = live[k % live.length];
      // Latency counts from the scheduled time, so a late loop shows up (no coordinated omission).
      if (c.ws.readyState === WebSocket.OPEN) sendMessage(c, start + (k * 1000) / rate);
      k += 1;
    }
    setTimeout(tick, 1);
  };
  tick();
  await measured(cmd.warmup_s, cmd.measure_s, 'open', { rate });
}

function tokenFromEnd(k) {
  // Handshake clients take tokens from the end, connect() from the start: distinct users.
  const n = spec.tokens.length;
  return (((n - k) % n) + n) % n;
}

// Handshake clients are raw TCP sockets that send a browser-like upgrade request (offering
// permessage-deflate) and wait for the 101: the ws client's own handshake costs ~350 µs of CPU,
// enough to make the load generator, not the server, the limit of this test.
const rawSockets = [];
const serverUrl = new URL(spec.url);
// A masked close frame with code 1000 (an all-zero mask leaves the payload as it is).
const CLOSE_FRAME = Buffer.from([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);

function rawHandshake(c) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: serverUrl.hostname, port: Number(serverUrl.port) });
    const key = crypto.randomBytes(16).toString('base64');
    const path = `/rooms/${rooms[c.room].name}/ws?token=${encodeURIComponent(c.token)}`;
    let done = false;
    let head = '';
    const finish = (ok) => {
      if (done) return;
      done = true;
      if (ok) rawSockets.push(sock);
      else sock.destroy();
      resolve(ok);
    };
    sock.setNoDelay(true);
    sock.on('connect', () => {
      sock.write(
        `GET ${path} HTTP/1.1\r\nHost: ${serverUrl.host}\r\nUpgrade: websocket\r\n` +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
        (c.deflate === false ? '\r\n'
          : 'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n'),
      );
    });
    sock.on('data', (chunk) => {
      // After the 101 (and, with first_frame, the first byte of a frame after it) the socket
      // stays open and whatever the server sends is read and dropped.
      if (done) return;
      head += chunk.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      if (head.startsWith('HTTP/1.1 101')) {
        if (!c.firstFrame || head.length > end + 4) finish(true);
      } else {
        countError(`http_${head.slice(9, 12)}`);
        finish(false);
      }
    });
    sock.on('error', (err) => {
      countError(`client_${err.code || err.message}`.slice(0, 80));
      finish(false);
    });
    sock.on('close', () => finish(false));
  });
}

async function cmdHandshakes(cmd) {
  // Open `count` raw clients, `concurrency` in flight, in rooms of `room_size`; keep them open.
  const size = cmd.room_size || 10;
  const base = rooms.length;
  // token_seq: start again from that token (a reconnect with tokens the server has seen).
  if (Number.isInteger(cmd.token_seq)) handshakeSeq = cmd.token_seq;
  const todo = [];
  for (let i = 0; i < cmd.count; i++) {
    const r = base + Math.floor(i / size);
    if (rooms.length <= r) rooms.push({ idx: r, name: `hs-${r}`, size: 0, senders: 0 });
    rooms[r].size += 1;
    handshakeSeq += 1;
    todo.push({
      room: r, token: spec.tokens[tokenFromEnd(handshakeSeq)],
      firstFrame: Boolean(cmd.first_frame), deflate: cmd.deflate !== false,
    });
  }
  const a = cpuSnapshot();
  const ok = await runPool(todo, cmd.concurrency, rawHandshake);
  const b = cpuSnapshot();
  const failed = ok.filter((x) => !x).length;
  const cpu = cpuDelta(a, b);
  const okCount = todo.length - failed;
  emit({
    event: 'result', phase: 'handshakes', ...cpu, ok: okCount, failed,
    handshakes_per_s: okCount / cpu.wall_s, errors: stats.errors,
  });
}

function closeRawSockets() {
  const socks = rawSockets.splice(0);
  return Promise.all(socks.map((sock) => new Promise((resolve) => {
    if (sock.destroyed) return resolve();
    const timer = setTimeout(() => { sock.destroy(); resolve(); }, 5000);
    sock.once('close', () => { clearTimeout(timer); resolve(); });
    sock.end(CLOSE_FRAME);
  })));
}

async function cmdClose() {
  closing = true;
  mode = 'idle';
  const n = clients.length;
  await Promise.all(clients.map((c) => new Promise((resolve) => {
    if (!c.ws || c.ws.readyState === WebSocket.CLOSED) return resolve();
    const timer = setTimeout(() => { c.ws.terminate(); resolve(); }, 5000);
    c.ws.once('close', () => { clearTimeout(timer); resolve(); });
    c.ws.close(1000);
  })));
  clients.length = 0;
  senders.length = 0;
  const raw = rawSockets.length;
  await closeRawSockets();
  emit({ event: 'closed', count: n + raw });
}

const handlers = {
  connect: cmdConnect,
  closed: cmdClosed,
  open: cmdOpen,
  handshakes: cmdHandshakes,
  close: cmdClose,
  quit: async () => {
    for (const c of clients) if (c.ws) c.ws.terminate();
    for (const sock of rawSockets) sock.destroy();
    emit({ event: 'bye' });
    process.exit(0);
  },
};

// Commands run one at a time, in order.
let chain = Promise.resolve();
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch {
    emit({ event: 'error', error: `bad command: ${line}` });
    return;
  }
  const h = handlers[cmd.cmd];
  if (!h) {
    emit({ event: 'error', error: `unknown command ${cmd.cmd}` });
    return;
  }
  chain = chain.then(() => h(cmd)).catch((err) => {
    emit({ event: 'error', error: String(err && err.stack ? err.stack : err) });
  });
}).on('close', () => {
  // The runner went away: do not linger.
  for (const c of clients) if (c.ws) c.ws.terminate();
  process.exit(0);
});

emit({ event: 'ready', pid: process.pid });
