// Live admin view: rooms, members and message rates, from /admin/ws (admin tokens only).
// Renders with DOM APIs and textContent only.
import { backoffDelay } from "/static/backoff.js";

const SVG = "http://www.w3.org/2000/svg";
const HISTORY = 60;

function takeToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const fromHash = hash.get("token");
  if (fromHash) {
    sessionStorage.setItem("roomchat.admin.token", fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("roomchat.admin.token");
}

/**
 * Draw `values` (at most HISTORY samples, oldest first) across the whole width: until a minute of samples is
 * in, the line spans what there is (drawn at its true place in a minute's width, the first seconds were a few
 * pixels at the right edge); one sample is a flat line.
 */
function spark(svg, values) {
  const max = Math.max(1, ...values);
  const shown = values.length === 1 ? [values[0], values[0]] : values;
  const step = 120 / Math.max(1, shown.length - 1);
  const points = shown.map((v, i) => `${(i * step).toFixed(1)},${(29 - (v / max) * 28).toFixed(1)}`);
  let line = svg.querySelector("polyline");
  if (!line) {
    line = document.createElementNS(SVG, "polyline");
    svg.append(line);
  }
  line.setAttribute("points", points.join(" "));
}

function push(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

const totals = { conn: [], rooms: [], rate: [] };
const perRoom = new Map(); // room -> {seq, ts, rates: []}
const status = document.getElementById("status");
const rows = document.getElementById("room-rows");

function setStatus(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

function render(stats) {
  let totalRate = 0;
  const seen = new Set();
  const fragment = document.createDocumentFragment();
  for (const room of stats.rooms) {
    seen.add(room.room);
    let entry = perRoom.get(room.room);
    if (!entry) {
      entry = { seq: room.seq ?? 0, ts: stats.ts, rates: [] };
      perRoom.set(room.room, entry);
    }
    const dt = Math.max(0.001, (stats.ts - entry.ts) / 1000);
    const rate = entry.ts === stats.ts ? 0 : Math.max(0, ((room.seq ?? 0) - entry.seq) / dt);
    entry.seq = room.seq ?? 0;
    entry.ts = stats.ts;
    push(entry.rates, rate);
    totalRate += rate;

    const tr = document.createElement("tr");
    const cells = [room.room, room.members ?? 0, room.sessions ?? 0, room.seq ?? 0, room.inbox ?? 0,
      rate.toFixed(1)];
    for (const value of cells) {
      const td = document.createElement("td");
      td.textContent = String(value);
      tr.append(td);
    }
    const td = document.createElement("td");
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 120 30");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.classList.add("spark");
    spark(svg, entry.rates);
    td.append(svg);
    tr.append(td);
    fragment.append(tr);
  }
  for (const name of perRoom.keys()) if (!seen.has(name)) perRoom.delete(name);
  rows.replaceChildren(fragment);

  push(totals.conn, stats.connections);
  push(totals.rooms, stats.rooms_active);
  push(totals.rate, totalRate);
  document.getElementById("t-conn").textContent = String(stats.connections);
  document.getElementById("t-rooms").textContent = String(stats.rooms_active);
  document.getElementById("t-rate").textContent = totalRate.toFixed(1);
  spark(document.getElementById("s-conn"), totals.conn);
  spark(document.getElementById("s-rooms"), totals.rooms);
  spark(document.getElementById("s-rate"), totals.rate);
}

// A refused upgrade (a bad, expired or non-admin token gets HTTP 401/403 before it) reaches a browser only
// as close code 1006, indistinguishable from a server that is down: after this many connects in a row that
// never opened, stop and say what is most likely wrong instead of retrying forever.
const GIVE_UP_AFTER = 3;
const NOT_ADMIN = "Not an admin token, or it expired";

/** The token's claims, decoded without verifying (the server verifies), or null if it is not a JWT. */
function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part + "=".repeat((4 - (part.length % 4)) % 4)), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** Why this token cannot open the admin view, judged from its claims alone, or null if it might. */
function obviousRefusal(token) {
  const claims = claimsOf(token);
  if (!claims) return "Not a valid token: check the link";
  if (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now()) {
    return "Token expired: get a new admin token (roomchat token --admin ...)";
  }
  if (claims.admin !== true) return "Not an admin token: get one with roomchat token --admin ...";
  return null;
}

function stop(text) {
  setStatus("offline", text);
  sessionStorage.removeItem("roomchat.admin.token");
}

function connect(token, attempt = 0, refusedInARow = 0) {
  const obvious = obviousRefusal(token);
  if (obvious) {
    stop(obvious);
    return;
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/admin/ws?token=${encodeURIComponent(token)}`);
  let opened = false;
  ws.onopen = () => {
    opened = true;
    setStatus("live", "Live");
  };
  ws.onmessage = (event) => {
    for (const line of String(event.data).split("\n")) {
      const obj = JSON.parse(line);
      if (obj.type === "stats") render(obj);
      else if (obj.type === "ping") ws.send(JSON.stringify({ type: "pong" }));
    }
    attempt = 0;
  };
  ws.onclose = (event) => {
    if (event.code === 4001) {
      stop("Token expired: get a new admin token (roomchat token --admin ...)");
      return;
    }
    if (event.code === 4003) {
      stop("Access revoked: get a new admin token (roomchat token --admin ...)");
      return;
    }
    const refused = opened ? 0 : refusedInARow + 1;
    if (refused >= GIVE_UP_AFTER) {
      setStatus("offline", `${NOT_ADMIN} (or the server is down): stopped retrying; reload to try again`);
      return;
    }
    const delay = backoffDelay(attempt, { baseMs: 1000, maxMs: 30000, jitter: 0.5 });
    const lead = refused ? NOT_ADMIN : "Disconnected";
    setStatus("offline", `${lead}; retrying in ${Math.round(delay / 1000)} s`);
    setTimeout(() => connect(token, attempt + 1, refused), delay);
  };
}

const token = takeToken();
if (token) {
  connect(token);
} else {
  setStatus("offline", "No token");
  const hint = document.getElementById("hint");
  hint.hidden = false;
  hint.textContent = "Open this page with an admin token: roomchat token --user you --all-rooms --admin --link http://HOST:PORT prints the link.";
}
