'use strict';
// Reconnect-storm clients for bench/storm.py: many WebSocket clients that reconnect the way the page does.
//
// Every reconnect decision is static/chat.js's own code (closeAction, ticketRefusalAction, reconnectDelay,
// loaded from the file as an ES module), with Math.random (`jitter`) or a constant 0.5 (no jitter: every
// client waits the same). Clients are raw TCP sockets with a minimal WebSocket client (no compression
// offered, as roomchat's default refuses it anyway): the `ws` client's own handshake costs ~350 µs of CPU,
// which would make this process, not the server, the limit of a storm. Clients connect with the token in
// the URL (one request per connect, like a bot; the page's ticket request would be a second one).
//
// Commands (JSON lines on stdin; each answer one JSON line on stdout, logs on stderr):
//   {"cmd":"connect"}                 open every client, wait for all (welcome, or 101 without welcomes)
//   {"cmd":"traffic"}                 one sender per room sends every send_interval_ms while it is live
//   {"cmd":"arm"}                     from now on, closes are the storm: record them and every reconnect
//   {"cmd":"await","ready_ms":..,"cpu_pids":[..],"timeout_s":..}   wait until every client is back
//                                     (101, welcome, and replayed up to the welcome's seq), then report
//   {"cmd":"finish","after_s":..}     keep traffic after_s more, stop it, settle, check every seq list
//   {"cmd":"quit"}

const fs = require('fs');
const net = require('net');
const path = require('path');
const crypto = require('crypto');
const readline = require('readline');
const { performance } = require('perf_hooks');

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
// spec: {host, port, rooms: [{name, size}], tokens, resume, welcome, jitter, send_interval_ms,
//        connect_concurrency, chat_js, clk_tck}

const CONNECT_TIMEOUT_MS = 15000; // as the page (static/chat.js)
const STABLE_AFTER_MS = 10000; // as the page: a connection live this long resets the backoff
const EMPTY = Buffer.alloc(0);
const PONG = textFrame('{"type":"pong"}');
const random = spec.jitter ? Math.random : () => 0.5;
let chat = null; // static/chat.js

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function log(...args) {
  process.stderr.write(`[storm] ${args.join(' ')}\n`);
}

/** Wall-clock ms, comparable with Python's time.time() * 1000 in bench/storm.py. */
function wall() {
  return performance.timeOrigin + performance.now();
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------- CPU

function pidTicks(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]);
  } catch {
    return 0;
  }
}

function cpuSnap(pids) {
  let server = 0;
  for (const pid of pids) server += pidTicks(pid);
  return { t: wall(), server, self: pidTicks(process.pid) };
}

function cpuDelta(a, b) {
  const wallS = (b.t - a.t) / 1000;
  const loadgen = (b.self - a.self) / spec.clk_tck;
  return {
    wall_s: wallS, server_cpu_s: (b.server - a.server) / spec.clk_tck, loadgen_cpu_s: loadgen,
    loadgen_core: wallS > 0 ? loadgen / wallS : null,
  };
}

// ---------------------------------------------------------------- frames

function textFrame(text) {
  // Client frames are masked; an all-zero mask leaves the payload as it is.
  const p = Buffer.from(text);
  let h;
  if (p.length < 126) {
    h = Buffer.from([0x81, 0x80 | p.length, 0, 0, 0, 0]);
  } else {
    h = Buffer.alloc(8);
    h[0] = 0x81;
    h[1] = 0x80 | 126;
    h.writeUInt16BE(p.length, 2);
  }
  return Buffer.concat([h, p]);
}

function closeFrame(code) {
  return Buffer.from([0x88, 0x82, 0, 0, 0, 0, code >> 8, code & 0xff]);
}

// ---------------------------------------------------------------- clients

const clients = [];
const rooms = spec.rooms.map((r, idx) => ({ idx, name: r.name, members: [] }));
let armed = false;
let trafficOn = false;
let stopping = false;
const storm = {
  armedAt: 0, connects: 0, opened: 0, refusals: {}, errors: {}, timeouts: 0, stopped: 0, closes: {},
};

function bump(map, key) {
  map[key] = (map[key] || 0) + 1;
}

{
  let t = 0;
  for (const room of rooms) {
    for (let k = 0; k < spec.rooms[room.idx].size; k++) {
      const c = {
        i: clients.length, room: room.idx, token: spec.tokens[t++ % spec.tokens.length], sender: k === 0,
        sock: null, phase: 'idle', welcomed: false, error: null, buf: EMPTY, frag: [], head: '', refusal: null, closeCode: null,
        attempt: 0, timer: null, connectTimer: null, liveSince: 0, lastSeq: null, counter: 0,
        // the storm, per client (wall ms; 0 = not yet)
        downAt: 0, openAt: 0, welcomeAt: 0, caughtUpAt: 0, target: null, connects: 0,
        gaps: 0, missing: 0, dups: 0, notRecovered: 0, ahead: 0, received: 0, replayed: 0,
      };
      clients.push(c);
      room.members.push(c);
    }
  }
}

function roomPath(c) {
  let q = `token=${encodeURIComponent(c.token)}`;
  if (spec.resume && c.lastSeq !== null) q += `&after=${c.lastSeq}`;
  return `/rooms/${rooms[c.room].name}/ws?${q}`;
}

function connect(c) {
  c.timer = null;
  if (stopping) return;
  c.phase = 'connecting';
  c.buf = EMPTY;
  c.frag = [];
  c.head = '';
  c.refusal = null;
  c.closeCode = null;
  c.welcomed = false;
  if (armed) {
    c.connects += 1;
    storm.connects += 1;
  }
  const sock = net.connect({ host: spec.host, port: spec.port });
  c.sock = sock;
  sock.setNoDelay(true);
  c.connectTimer = setTimeout(() => {
    if (c.sock === sock && c.phase === 'connecting') {
      if (armed) storm.timeouts += 1;
      sock.destroy();
    }
  }, CONNECT_TIMEOUT_MS);
  sock.on('connect', () => {
    const key = crypto.randomBytes(16).toString('base64');
    sock.write(`GET ${roomPath(c)} HTTP/1.1\r\nHost: ${spec.host}:${spec.port}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  });
  sock.on('data', (chunk) => {
    if (c.sock === sock) onData(c, sock, chunk);
  });
  sock.on('error', (err) => {
    if (c.sock === sock) c.error = err.code || err.message;
  });
  sock.on('close', () => {
    if (c.sock === sock) onClose(c);
  });
}

function onData(c, sock, chunk) {
  if (c.phase === 'connecting' || c.phase === 'refused') {
    c.head += chunk.toString('latin1');
    const end = c.head.indexOf('\r\n\r\n');
    if (end < 0) return;
    const status = Number(c.head.slice(9, 12));
    if (status === 101) {
      clearTimeout(c.connectTimer);
      c.phase = 'open';
      c.liveSince = wall();
      if (armed && c.downAt > 0 && c.openAt === 0) {
        c.openAt = wall();
        storm.opened += 1;
      }
      const rest = Buffer.from(c.head.slice(end + 4), 'latin1');
      c.head = '';
      if (rest.length) {
        c.buf = rest;
        frames(c);
      }
      return;
    }
    // A refusal: read its JSON body (Content-Length), then decide as the page does.
    c.phase = 'refused';
    const lenMatch = /\r\ncontent-length:\s*(\d+)/i.exec(c.head.slice(0, end));
    const body = c.head.slice(end + 4);
    if (lenMatch && Buffer.byteLength(body, 'latin1') < Number(lenMatch[1])) return;
    let parsed = null;
    try {
      parsed = JSON.parse(body);
    } catch {
      parsed = null;
    }
    const retry = /\r\nretry-after:\s*(\d+)/i.exec(c.head.slice(0, end));
    const retryMs = retry ? Math.min(30000, Number(retry[1]) * 1000) : null;
    c.refusal = chat.ticketRefusalAction(status, parsed, retryMs);
    if (armed) bump(storm.refusals, `${status} ${(parsed && parsed.error) || ''}`.trim());
    sock.destroy();
    return;
  }
  c.buf = c.buf.length ? Buffer.concat([c.buf, chunk]) : chunk;
  frames(c);
}

function frames(c) {
  const buf = c.buf;
  let off = 0;
  while (buf.length - off >= 2) {
    const b0 = buf[off];
    const b1 = buf[off + 1];
    let len = b1 & 0x7f;
    let hdr = 2;
    if (len === 126) {
      if (buf.length - off < 4) break;
      len = buf.readUInt16BE(off + 2);
      hdr = 4;
    } else if (len === 127) {
      if (buf.length - off < 10) break;
      len = Number(buf.readBigUInt64BE(off + 2));
      hdr = 10;
    }
    if (b1 & 0x80) hdr += 4; // servers never mask; skip a mask if one came
    if (buf.length - off < hdr + len) break;
    const payload = buf.subarray(off + hdr, off + hdr + len);
    off += hdr + len;
    const op = b0 & 0x0f;
    if (op === 0x8) {
      c.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      if (c.sock) {
        c.sock.end(closeFrame(1000));
      }
      continue;
    }
    if (op === 0x9) {
      c.sock.write(Buffer.concat([Buffer.from([0x8a, 0x80 | payload.length, 0, 0, 0, 0]), payload]));
      continue;
    }
    if (op === 0xa) continue;
    c.frag.push(Buffer.from(payload));
    if (b0 & 0x80) {
      const text = c.frag.length === 1 ? c.frag[0].toString() : Buffer.concat(c.frag).toString();
      c.frag = [];
      onText(c, text);
    }
  }
  c.buf = off >= buf.length ? EMPTY : buf.subarray(off);
}

const SEQ_RE = /"seq":(\d+)/;

function onText(c, text) {
  for (const line of text.split('\n')) {
    if (!line) continue;
    if (line.startsWith('{"type":"message"') || line.includes('"type":"message"')) {
      const m = SEQ_RE.exec(line);
      if (m) onMessage(c, Number(m[1]));
      continue;
    }
    let obj;
    try {
      obj = JSON.parse(line);
    } catch {
      continue;
    }
    if (obj.type === 'ping') c.sock.write(PONG);
    else if (obj.type === 'welcome') onWelcome(c, obj);
  }
}

function onWelcome(c, w) {
  c.welcomed = true;
  const seq = Number(w.seq);
  if (c.lastSeq === null) {
    c.lastSeq = seq; // the first join: no history in the bench (history_on_join 0)
    return;
  }
  if (!armed || c.downAt === 0) return;
  if (c.welcomeAt === 0) c.welcomeAt = wall();
  if (w.recovered === false) c.notRecovered += 1;
  if (seq < c.lastSeq) c.ahead += 1;
  c.target = seq;
  if (c.lastSeq >= seq && c.caughtUpAt === 0) c.caughtUpAt = wall();
}

function onMessage(c, seq) {
  c.received += 1;
  if (!c.welcomed && spec.welcome) return; // cannot happen: welcome comes first
  if (!spec.resume) {
    c.lastSeq = seq; // the baselines start their seqs over after a restart: nothing to check
    return;
  }
  if (c.lastSeq === null) {
    c.lastSeq = seq;
  } else if (seq <= c.lastSeq) {
    c.dups += 1;
  } else {
    if (seq > c.lastSeq + 1) {
      c.gaps += 1;
      c.missing += seq - c.lastSeq - 1;
    }
    c.lastSeq = seq;
  }
  if (c.target !== null && c.caughtUpAt === 0) {
    c.replayed += 1; // at or below the welcome's seq: missed while away
    if (c.lastSeq >= c.target) c.caughtUpAt = wall();
  }
}

function onClose(c) {
  clearTimeout(c.connectTimer);
  const wasOpen = c.phase === 'open';
  c.sock = null;
  c.phase = 'waiting';
  if (stopping) return;
  let plan;
  if (c.refusal) {
    plan = c.refusal;
  } else if (wasOpen) {
    const code = c.closeCode ?? 1006;
    if (armed) bump(storm.closes, String(code));
    if (c.liveSince && wall() - c.liveSince >= STABLE_AFTER_MS) c.attempt = 0;
    plan = chat.closeAction(code);
    if (armed && c.downAt === 0) c.downAt = wall();
  } else {
    if (armed) bump(storm.errors, c.error || 'closed before 101');
    plan = { action: 'backoff' }; // as the page when its request fails outright
  }
  c.liveSince = 0;
  c.error = null;
  if (plan.action === 'stop') {
    if (armed) storm.stopped += 1;
    c.phase = 'stopped';
    return;
  }
  const { delay, attempt } = chat.reconnectDelay(plan, c.attempt, random);
  c.attempt = attempt;
  c.timer = setTimeout(() => connect(c), delay);
}

// ---------------------------------------------------------------- traffic

let trafficTimers = [];
let sent = 0;

function startTraffic() {
  trafficOn = true;
  for (const room of rooms) {
    const c = room.members[0];
    const tick = () => {
      if (!trafficOn) return;
      if (c.phase === 'open' && (c.welcomed || !spec.welcome)) {
        c.counter += 1;
        sent += 1;
        c.sock.write(textFrame(`{"type":"message","text":"storm ${c.i} ${c.counter}","id":"s${c.i}-${c.counter}"}`));
      }
    };
    // Random phases: the rooms' messages are spread over the interval, not sent together.
    const start = setTimeout(() => {
      tick();
      trafficTimers.push(setInterval(tick, spec.send_interval_ms));
    }, Math.random() * spec.send_interval_ms);
    trafficTimers.push(start);
  }
}

function stopTraffic() {
  trafficOn = false;
  for (const t of trafficTimers) {
    clearTimeout(t);
    clearInterval(t);
  }
  trafficTimers = [];
}

// ---------------------------------------------------------------- commands

function quantiles(values) {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return { count: 0 };
  const q = (p) => v[Math.min(v.length - 1, Math.max(0, Math.ceil(p * v.length) - 1))];
  return { count: v.length, p50: q(0.5), p90: q(0.9), p99: q(0.99), max: v[v.length - 1] };
}

async function cmdConnect() {
  const t0 = wall();
  let next = 0;
  const ready = (c) => c.phase === 'open' && (!spec.welcome || c.welcomed);
  async function worker() {
    while (next < clients.length) {
      const c = clients[next++];
      connect(c);
      const deadline = wall() + CONNECT_TIMEOUT_MS;
      while (!ready(c) && c.phase !== 'stopped' && wall() < deadline) await sleep(2);
    }
  }
  await Promise.all(Array.from({ length: spec.connect_concurrency || 100 }, worker));
  // A client that was not in within its 15 s keeps retrying with the page's backoff: wait for it.
  const deadline = wall() + 60000;
  while (clients.some((c) => !ready(c) && c.phase !== 'stopped') && wall() < deadline) await sleep(20);
  const ok = clients.filter(ready).length;
  emit({ event: 'connected', ok, failed: clients.length - ok, connect_ms: wall() - t0 });
}

let cpuArm = null;

async function cmdAwait(cmd) {
  const a = cpuSnap(cmd.cpu_pids);
  const deadline = wall() + cmd.timeout_s * 1000;
  const done = (c) => c.phase === 'stopped' ||
    (c.openAt > 0 && (!spec.welcome || (c.welcomeAt > 0 && c.caughtUpAt > 0)));
  let remaining = clients.length;
  while (wall() < deadline) {
    remaining = clients.filter((c) => !done(c)).length;
    if (remaining === 0) break;
    await sleep(10);
  }
  const b = cpuSnap(cmd.cpu_pids);
  const fromReady = (key) => quantiles(clients.filter((c) => c[key] > 0).map((c) => (c[key] - cmd.ready_ms) / 1000));
  const back = clients.filter((c) => c.openAt > 0);
  const downtime = quantiles(clients.filter((c) => c.downAt > 0 && (spec.welcome ? c.caughtUpAt : c.openAt) > 0)
    .map((c) => ((spec.welcome ? c.caughtUpAt : c.openAt) - c.downAt) / 1000));
  const firstDown = Math.min(...clients.filter((c) => c.downAt > 0).map((c) => c.downAt));
  const lastDown = Math.max(...clients.filter((c) => c.downAt > 0).map((c) => c.downAt));
  emit({
    event: 'storm', clients: clients.length, incomplete: remaining, back: back.length,
    open_s: fromReady('openAt'), welcome_s: fromReady('welcomeAt'), caught_up_s: fromReady('caughtUpAt'),
    downtime_s: downtime,
    closes_spread_s: Number.isFinite(firstDown) ? (lastDown - firstDown) / 1000 : null,
    first_close_ms: Number.isFinite(firstDown) ? firstDown : null,
    connects: storm.connects, refusals: storm.refusals, errors: storm.errors, closes: storm.closes,
    timeouts: storm.timeouts, stopped: storm.stopped,
    connects_per_client: quantiles(clients.map((c) => c.connects)),
    cpu_from_ready: cpuDelta(a, b),
    // The new process's CPU from its start (imports included) to now; the loadgen's since the SIGTERM.
    server_cpu_since_start_s: b.server / spec.clk_tck,
    loadgen_since_arm: (({ wall_s, loadgen_cpu_s, loadgen_core }) => ({ wall_s, loadgen_cpu_s, loadgen_core }))(
      cpuDelta(cpuArm, b)),
  });
}

async function cmdFinish(cmd) {
  await sleep((cmd.after_s || 0) * 1000);
  stopTraffic();
  // Settle: until nothing new arrives for 500 ms (at most 10 s).
  let last = -1;
  for (let i = 0; i < 100; i++) {
    const total = clients.reduce((s, c) => s + c.received, 0);
    if (total === last) break;
    last = total;
    await sleep(500);
  }
  let behind = 0;
  let behindBy = 0;
  for (const room of rooms) {
    const top = Math.max(...room.members.map((c) => c.lastSeq ?? 0));
    for (const c of room.members) {
      if ((c.lastSeq ?? 0) < top) {
        behind += 1;
        behindBy += top - (c.lastSeq ?? 0);
      }
    }
  }
  const sum = (key) => clients.reduce((s, c) => s + c[key], 0);
  emit({
    event: 'result', sent, received: sum('received'), replayed: sum('replayed'), checked: spec.resume,
    gaps: sum('gaps'), missing: sum('missing'), duplicates: sum('dups'),
    not_recovered: sum('notRecovered'), ahead: sum('ahead'), behind_at_end: behind, behind_by: behindBy,
    clients_with_gaps: clients.filter((c) => c.gaps > 0).length,
    clients_with_duplicates: clients.filter((c) => c.dups > 0).length,
  });
}

const handlers = {
  connect: cmdConnect,
  traffic: async () => {
    startTraffic();
    emit({ event: 'traffic' });
  },
  arm: async () => {
    armed = true;
    storm.armedAt = wall();
    cpuArm = cpuSnap([]);
    emit({ event: 'armed', at_ms: storm.armedAt });
  },
  await: cmdAwait,
  finish: cmdFinish,
  quit: async () => {
    stopping = true;
    stopTraffic();
    for (const c of clients) {
      clearTimeout(c.timer);
      if (c.sock) c.sock.destroy();
    }
    emit({ event: 'bye' });
    process.exit(0);
  },
};

let chain = Promise.resolve();
function onLine(line) {
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
}

// static/chat.js is an ES module for the browser; a data: URL loads it as one here, its import of
// /static/backoff.js (a path only the server resolves) pointed at that file's own data: URL.
const dataUrl = (text) => `data:text/javascript;base64,${Buffer.from(text).toString('base64')}`;
const helper = dataUrl(fs.readFileSync(path.join(path.dirname(spec.chat_js), 'backoff.js'), 'utf8'));
const source = fs.readFileSync(spec.chat_js, 'utf8').replace("'/static/backoff.js'", JSON.stringify(helper));
import(dataUrl(source)).then((mod) => {
  chat = mod;
  readline.createInterface({ input: process.stdin }).on('line', onLine).on('close', () => process.exit(0));
  emit({ event: 'ready', pid: process.pid });
}, (err) => {
  log(`cannot load ${spec.chat_js}: ${err}`);
  process.exit(2);
});
