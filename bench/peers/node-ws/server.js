'use strict';
// Baseline peer: the chat server the classic Node.js `ws` tutorial builds, at its best settings.
//
// Per room: parse the client's JSON, stamp the next seq, JSON.stringify once and send the same
// bytes to every member (the sender included, as roomchat does). No auth (the token is ignored),
// no storage, no presence, no acks: this is the floor a Node chat server can reach.
// "Best settings": compression off (perMessageDeflate: false), the frame payload encoded to a
// Buffer once per broadcast instead of once per recipient, bufferutil installed for (un)masking.
//
// Usage: node server.js --port <port> [--host 127.0.0.1]

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = arg('--host', '127.0.0.1');
const port = Number(arg('--port', '8080'));
const ROOM_PATH = /^\/rooms\/([A-Za-z0-9_-]{1,64})\/ws$/;

/** @type {Map<string, {seq: number, members: Set<WebSocket>}>} */
const rooms = new Map();
let nextUser = 0;

const server = http.createServer((req, res) => {
  res.writeHead(404, { 'content-type': 'application/json' });
  res.end('{"error":"not_found"}');
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });

server.on('upgrade', (req, socket, head) => {
  const q = req.url.indexOf('?');
  const m = ROOM_PATH.exec(q >= 0 ? req.url.slice(0, q) : req.url);
  if (!m) {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => join(ws, m[1]));
});

function join(ws, roomName) {
  let room = rooms.get(roomName);
  if (room === undefined) {
    room = { seq: 0, members: new Set() };
    rooms.set(roomName, room);
  }
  room.members.add(ws);
  nextUser += 1;
  const user = `u${nextUser}`;

  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg === null || msg.type !== 'message' || typeof msg.text !== 'string') return;
    room.seq += 1;
    const out = Buffer.from(JSON.stringify({
      type: 'message', room: roomName, seq: room.seq, id: msg.id ?? null,
      user, name: user, text: msg.text, ts: Date.now(),
    }));
    for (const member of room.members) {
      if (member.readyState === WebSocket.OPEN) member.send(out, { binary: false });
    }
  });
  ws.on('close', () => {
    room.members.delete(ws);
    if (room.members.size === 0) rooms.delete(roomName);
  });
  ws.on('error', () => {});
}

server.listen(port, host, 4096, () => {
  process.stdout.write(`listening ${host}:${port}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
