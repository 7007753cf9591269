// format.js: a message's raw text as DOM nodes, with a small safe subset of formatting.
//
//   `inline code`, ```fenced code blocks```, *bold*, _italic_, ~strike~, "> " quote lines, http(s) and
//   www. links, and @mentions of the users a message names in its `mentions`.
//
// The stored text stays raw (other clients, search and exports see exactly what was typed). Rendering never
// parses HTML: every piece of text becomes a text node, and the only elements ever made are those in
// ALLOWED_TAGS, with attributes set from fixed values (a link's href only after URL() says it is http(s)).
// Bidirectional control characters cannot reorder a link's visible address: they are taken out of the text a
// link shows, and links, code and mentions are bidi-isolated (style.css) so an override around them does
// not reach into them.

/** Every element renderText can create (tests/e2e/test_formatting.py holds it to this). */
export const ALLOWED_TAGS = Object.freeze(['A', 'BLOCKQUOTE', 'CODE', 'EM', 'PRE', 'S', 'SPAN', 'STRONG']);

// http(s) URLs, and bare `www.` addresses (not inside a word, an e-mail address or a path).
const URL_RE = /(?:\bhttps?:\/\/|(?<![\w@./-])www\.)[^\s<>"'`]+/gi;
// A sentence often ends right after a link, and formatting markers close around one: keep them out of it.
const URL_TRAIL_RE = /[.,;:!?)\]}*_~]+$/;
const BIDI_CONTROLS_RE = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;
const FENCE_RE = /^ {0,3}```/;
const QUOTE_RE = /^>(?: |$)/;
const MARKERS = { '*': 'strong', _: 'em', '~': 's' };
const WORD_RE = /[\p{L}\p{N}]/u;
const SPACE_RE = /\s/u;

const make = (tag, cls = '') => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  return node;
};

/** The http(s) address `raw` (a URL or a `www.` address, as matched) links to, or null if none. */
function linkTarget(raw) {
  const bare = /^www\./i.test(raw); // "www.example.org": the web address everyone means, over https
  try {
    const parsed = new URL(bare ? `https://${raw}` : raw);
    const named = !bare || /^www\.[^.]+\.[^.]/i.test(parsed.hostname); // www.<name>.<tld>, not "www."
    if ((parsed.protocol === 'http:' || parsed.protocol === 'https:') && named) return parsed.href;
  } catch {
    // not a URL after all: stays text
  }
  return null;
}

function linkNode(shown, href) {
  const a = make('a');
  a.href = href;
  a.target = '_blank';
  a.rel = 'noopener noreferrer nofollow';
  a.dir = 'ltr';
  a.textContent = shown.replace(BIDI_CONTROLS_RE, '');
  return a;
}

/**
 * `text` as a list of pieces: strings, and atoms ({node}) that formatting markers neither open nor close in:
 * code spans, links, mentions. `mentions` is a list of {pattern, me} (pattern: the "@name" text to mark).
 */
function atomize(text, mentions) {
  const pieces = [];
  const pushText = (s) => {
    if (!s) return;
    const last = pieces[pieces.length - 1];
    if (typeof last === 'string') pieces[pieces.length - 1] = last + s;
    else pieces.push(s);
  };
  const links = (s) => {
    let last = 0;
    for (const match of s.matchAll(URL_RE)) {
      let url = match[0];
      const trail = URL_TRAIL_RE.exec(url);
      if (trail) url = url.slice(0, url.length - trail[0].length);
      const href = url ? linkTarget(url) : null;
      if (!href) continue;
      names(s.slice(last, match.index));
      pieces.push({ node: linkNode(url, href) });
      last = match.index + url.length;
    }
    names(s.slice(last));
  };
  const names = (s) => {
    if (!mentions.length || !s.includes('@')) {
      pushText(s);
      return;
    }
    let last = 0;
    for (let i = s.indexOf('@'); i >= 0; i = s.indexOf('@', i + 1)) {
      if (i < last || (i > 0 && WORD_RE.test(s[i - 1]))) continue; // inside a word: an e-mail address
      const hit = mentions.find(({ pattern }) => {
        if (!s.startsWith(pattern, i)) return false;
        const after = s.slice(i + pattern.length, i + pattern.length + 2);
        return !after || !WORD_RE.test(Array.from(after)[0]);
      });
      if (!hit) continue;
      pushText(s.slice(last, i));
      const span = make('span', hit.me ? 'mention mention-me' : 'mention');
      span.textContent = hit.pattern;
      pieces.push({ node: span });
      last = i + hit.pattern.length;
      i = last - 1;
    }
    pushText(s.slice(last));
  };
  // Code spans first: nothing inside one is a link, a mention or a marker.
  let last = 0;
  for (const match of text.matchAll(/```([^`]+?)```|`([^`\n]+)`/g)) {
    links(text.slice(last, match.index));
    const code = make('code');
    code.textContent = match[1] ?? match[2];
    pieces.push({ node: code });
    last = match.index + match[0].length;
  }
  links(text.slice(last));
  return pieces;
}

const isSpace = (c) => typeof c === 'string' && SPACE_RE.test(c);
const isWordChar = (c) => typeof c === 'string' && WORD_RE.test(c);

/**
 * Append `units` (single characters and atoms) from `start` to `end` to `parent`, turning marker pairs into
 * elements. A marker opens after a space, a punctuation mark or the start, before something that is not a
 * space; it closes after something that is not a space, before a space, a punctuation mark or the end; so
 * snake_case, 2*3*4 and a lone * stay text. A marker already open is not opened again inside itself.
 */
function emphasize(parent, units, start, end, open) {
  let text = '';
  const flush = () => {
    if (text) parent.append(document.createTextNode(text));
    text = '';
  };
  for (let i = start; i < end; i += 1) {
    const u = units[i];
    if (typeof u !== 'string') {
      flush();
      parent.append(u.node);
      continue;
    }
    const tag = MARKERS[u];
    const prev = units[i - 1];
    const next = units[i + 1];
    const canOpen = tag && !open.has(u) && i + 1 < end && !isSpace(next) && next !== u
      && (i === start || (typeof prev === 'string' && !isWordChar(prev) && prev !== u));
    let close = -1;
    if (canOpen) {
      for (let j = i + 2; j < end; j += 1) {
        if (units[j] !== u) continue;
        const before = units[j - 1];
        const after = units[j + 1];
        if (!isSpace(before) && before !== u && (j + 1 >= end || (typeof after === 'string' && !isWordChar(after)))) {
          close = j;
          break;
        }
      }
    }
    if (close < 0) {
      text += u;
      continue;
    }
    flush();
    const node = make(tag);
    emphasize(node, units, i + 1, close, new Set([...open, u]));
    parent.append(node);
    i = close;
  }
  flush();
}

/** Append one run of inline text (no block structure) to `parent`. */
function inline(parent, text, mentions) {
  const units = [];
  for (const piece of atomize(text, mentions)) {
    if (typeof piece === 'string') units.push(...Array.from(piece));
    else units.push(piece);
  }
  emphasize(parent, units, 0, units.length, new Set());
}

/**
 * Append `text` to `parent` as formatted DOM nodes. `mentions`: [{pattern: '@Name', me: bool}, ...], the
 * names to mark as mentions (longest first wins). Blocks: a line starting with ``` opens a code block that
 * runs to the next such line (or to the end, when never closed); consecutive lines starting with "> " (or
 * a lone ">") are one quote; everything else is inline text, its line breaks kept (the CSS keeps them).
 */
export function renderText(parent, text, { mentions = [] } = {}) {
  const sorted = [...mentions].sort((a, b) => b.pattern.length - a.pattern.length);
  const lines = String(text).split('\n');
  let para = [];
  const flushPara = () => {
    if (!para.length) return;
    inline(parent, para.join('\n'), sorted);
    para = [];
  };
  for (let i = 0; i < lines.length;) {
    const line = lines[i];
    const info = FENCE_RE.test(line) ? line.replace(FENCE_RE, '') : null;
    if (info !== null && !info.includes('`')) {
      flushPara();
      let j = i + 1;
      while (j < lines.length && !/^ {0,3}```\s*$/.test(lines[j])) j += 1;
      const pre = make('pre');
      const code = make('code');
      code.textContent = lines.slice(i + 1, j).join('\n');
      pre.append(code);
      parent.append(pre);
      i = j + 1;
      continue;
    }
    if (QUOTE_RE.test(line)) {
      flushPara();
      const quoted = [];
      while (i < lines.length && QUOTE_RE.test(lines[i])) {
        quoted.push(lines[i].replace(QUOTE_RE, ''));
        i += 1;
      }
      const quote = make('blockquote');
      inline(quote, quoted.join('\n'), sorted);
      parent.append(quote);
      continue;
    }
    para.push(line);
    i += 1;
  }
  flushPara();
}
