// files.js: attachments (issue 23) without the DOM: sizes and kinds in words, an upload with progress and
// cancel, what an upload's refusal means, and the signed URLs a page needs to show or download a file.
//
// A message carries its files' public metadata only ({id, name, size, type, width?, height?, thumb?}): the
// URLs are signed for a short while (gateway/files.py), so the page asks for them (POST /rooms/<room>/files/urls,
// in batches) and keeps them until shortly before they expire. Like chat.js, this module touches no DOM.

import { fileMeta } from '/static/chat.js';

export { DEFAULT_MAX_FILES, fileMeta, fileList } from '/static/chat.js';

const positiveInt = (v) => Number.isSafeInteger(v) && v > 0;

/** Ids per `POST /files/urls` request. */
export const URL_BATCH = 100;
/** A signed URL is asked for again this long before it expires (a view or download must not start on one
 * about to lapse). */
export const URL_MARGIN_MS = 60_000;
/** Ids asked for within this long go in one request (a page of history asks for all its files at once). */
const URL_BATCH_WAIT_MS = 15;
/** After a failed URL request (or an id the server did not know), the same id is not asked again sooner. */
const URL_RETRY_MS = 10_000;

const MIB = 1024 * 1024;

/** `bytes` in human units: "512 B", "1.4 KB", "25 MB", "1.2 GB" (powers of 1024, as file managers show). */
export function humanSize(bytes) {
  const n = Number(bytes);
  if (!Number.isFinite(n) || n < 0) return '';
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  const shown = v < 10 ? Math.round(v * 10) / 10 : Math.round(v);
  return `${shown} ${units[u]}`;
}

/** A limit in whole megabytes, for refusals: 26214400 -> "25 MB" (at least one decimal below 10 MB). */
export function limitText(bytes) {
  const mb = bytes / MIB;
  if (mb >= 1024) return `${Math.round((mb / 1024) * 10) / 10} GB`;
  return mb >= 10 ? `${Math.round(mb)} MB` : `${Math.round(mb * 10) / 10} MB`;
}

const KINDS = {
  'image/jpeg': 'JPEG image',
  'image/png': 'PNG image',
  'image/webp': 'WebP image',
  'image/gif': 'GIF image',
  'image/svg+xml': 'SVG image',
  'application/pdf': 'PDF document',
  'application/zip': 'ZIP archive',
  'application/gzip': 'Gzip archive',
  'text/plain': 'Text file',
  'text/html': 'HTML file',
  'text/csv': 'CSV file',
  'application/json': 'JSON file',
  'audio/mpeg': 'MP3 audio',
  'video/mp4': 'MP4 video',
};

/**
 * A file's type in words ("PDF document"), from its sniffed MIME type; for bytes the server could not name
 * (application/octet-stream), from the name's extension ("TXT file"); else the MIME type itself, else "File".
 */
export function fileKind(type, name = '') {
  if (typeof type === 'string' && KINDS[type]) return KINDS[type];
  if (typeof type === 'string' && type && type !== 'application/octet-stream') return type;
  const ext = /\.([A-Za-z0-9]{1,8})$/.exec(typeof name === 'string' ? name : '');
  return ext ? `${ext[1].toUpperCase()} file` : 'File';
}

/** The types a page shows inline (what the server re-encodes as images; anything else is a download). */
export const IMAGE_TYPES = Object.freeze(new Set(['image/jpeg', 'image/png', 'image/webp', 'image/gif']));

/** Whether a file is shown as an image (a known image type with its size known), not as a card. */
export function isImage(f) {
  return IMAGE_TYPES.has(f.type) && positiveInt(f.width) && positiveInt(f.height);
}

/**
 * The size to draw an image of `width` x `height` at, inside `maxWidth` x `maxHeight`: its aspect ratio kept,
 * never enlarged, at least 1 px each way.
 */
export function fitBox(width, height, maxWidth, maxHeight) {
  const scale = Math.min(1, maxWidth / width, maxHeight / height);
  return { width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale)) };
}

/** The number in a server sentence such as "... the limit of 26214400 bytes", or null. */
function limitIn(detail) {
  const m = /(\d+) bytes/.exec(typeof detail === 'string' ? detail : '');
  return m ? Number(m[1]) : null;
}

/**
 * What an upload's failure means, in the person's words: {text, retry, retryAfterMs}. `status` is the HTTP
 * status (0: the server could not be reached), `body` the JSON refusal ({error, detail}) or null,
 * `retryAfterS` the Retry-After header's seconds (or null), `name` the file's name, `maxFileBytes` the limit
 * when the page knows it. `retry`: trying the same file again may work (a Retry button is offered).
 */
export function uploadRefusal(status, body, retryAfterS, name, maxFileBytes = null) {
  const error = body && typeof body.error === 'string' ? body.error : '';
  const detail = body && typeof body.detail === 'string' ? body.detail : '';
  const q = `“${name}”`;
  const wait = Number.isFinite(retryAfterS) && retryAfterS > 0 ? Math.ceil(retryAfterS) : null;
  const no = (text) => ({ text, retry: false, retryAfterMs: null });
  const again = (text, ms = null) => ({ text, retry: true, retryAfterMs: ms });
  if (status === 413 && error === 'quota_exceeded') {
    const limit = limitIn(detail);
    return no(`${q} was not uploaded: your storage quota${limit ? ` of ${limitText(limit)}` : ''} is full. `
      + 'Files you shared before count towards it.');
  }
  if (status === 413 && error === 'image_too_large') {
    return no(`${q} is not allowed: the image has too many pixels to be shown here.`);
  }
  if (status === 413) {
    const limit = limitIn(detail) || maxFileBytes;
    return no(`${q} is too large: files can be at most ${limit ? limitText(limit) : 'the server’s limit'}.`);
  }
  if (status === 415) return no(`${q} is not allowed: files of this type cannot be shared here.`);
  if (status === 422) return no(`${q} is not allowed: it looks like an image but cannot be read (damaged or `
    + 'not the type its name says).');
  if (status === 400 && error === 'empty_file') return no(`${q} is empty: there is nothing to share.`);
  if (status === 400) return no(`${q} is not allowed: ${detail || 'the server refused its name'}.`);
  if (status === 429) {
    return again(`Too many uploads in a short time: ${q} can be tried again in ${wait || 5} s.`,
      (wait || 5) * 1000);
  }
  if (status === 401) return no(`${q} was not uploaded: your session has ended. Open a new link first.`);
  if (status === 403) return no(`${q} was not uploaded: you may not share files in this room.`);
  if (status === 408) return again(`Upload of ${q} failed: the connection stalled.`);
  if (status === 0) return again(`Upload of ${q} failed: the server could not be reached.`);
  return again(`Upload of ${q} failed (${status === 503 ? 'file storage is unavailable' : `HTTP ${status}`}).`);
}

/**
 * Upload `file` (a File or Blob) to `room` as its raw body, with `token` as the bearer (gateway/files.py).
 * XMLHttpRequest, because fetch() reports no upload progress. `onProgress(fraction)` gets 0..1 as bytes go.
 * Returns {promise, abort}: the promise resolves to the server's answer (the file's metadata with `url`,
 * `thumb_url`?, `expires`) or rejects with an Error carrying {status, body, retryAfterS} (status 0: never
 * reached the server); after abort() it rejects with {aborted: true}.
 */
export function uploadFile({ base = '', room, token, file, name, onProgress = () => {}, XHR = XMLHttpRequest }) {
  const xhr = new XHR();
  const url = `${base}/rooms/${encodeURIComponent(room)}/files?name=${encodeURIComponent(name)}`;
  const promise = new Promise((resolve, reject) => {
    const fail = (status, body = null, retryAfterS = null, aborted = false) => reject(
      Object.assign(new Error(aborted ? 'cancelled' : `upload failed (${status})`),
        { status, body, retryAfterS, aborted }),
    );
    xhr.open('POST', url);
    xhr.setRequestHeader('authorization', `Bearer ${token}`);
    xhr.setRequestHeader('accept', 'application/json');
    // The server sniffs the type from the bytes; say nothing that could be mistaken for it.
    xhr.setRequestHeader('content-type', 'application/octet-stream');
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable && ev.total > 0) onProgress(Math.min(1, ev.loaded / ev.total));
    };
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status === 201 && body && fileMeta(body)) {
        onProgress(1);
        resolve(body);
        return;
      }
      const after = Number(xhr.getResponseHeader('retry-after'));
      fail(xhr.status, body, Number.isFinite(after) && after > 0 ? after : null);
    };
    // A refusal mid-stream (413 as soon as the body passes the limit) may reach the browser as an error
    // when the server closes before the whole body went: status 0 then, unless a response was read.
    xhr.onerror = () => fail(xhr.status || 0);
    xhr.ontimeout = () => fail(0);
    xhr.onabort = () => fail(0, null, null, true);
    xhr.send(file);
  });
  return { promise, abort: () => xhr.abort() };
}

/**
 * The signed URLs of a room's files, asked for in batches and kept until URL_MARGIN_MS before they expire.
 * `want(ids)` resolves to a Map id -> {url, thumb_url?, expires} holding those the server knows (others are
 * absent: deleted, or never in this room); `seed(id, obj)` keeps URLs already in hand (an upload's answer);
 * `stale(id)` forgets one (its image failed to load: the URL may have expired or been refused). The caller
 * asks again once per failure it sees, not in a loop: a file that fails with fresh URLs is broken.
 */
export class FileUrls {
  /**
   * @param {object} opts
   * @param {string} opts.room
   * @param {() => string} opts.token   the token to ask with (read at each request: it may be renewed)
   * @param {string} [opts.base]        the server's origin ('' for this page's)
   * @param {typeof fetch} [opts.fetchImpl]
   * @param {() => number} [opts.now]   ms since the epoch
   */
  constructor({ room, token, base = '', fetchImpl = (...a) => fetch(...a), now = () => Date.now() }) {
    this.room = room;
    this.token = token;
    this.base = base;
    this.fetchImpl = fetchImpl;
    this.now = now;
    this.cache = new Map(); // id -> {url, thumb_url?, expires (ms)}
    this.waiting = new Map(); // id -> {promise, resolve}: asked for, not answered yet
    this.queued = new Set(); // ids to go in the next request
    this.missingUntil = new Map(); // id -> ms: not known to the server (or the request failed) until then
    this.timer = null;
  }

  /** A held URL set for `id` that is fresh enough to use, or null. */
  get(id) {
    const got = this.cache.get(id);
    if (!got) return null;
    if (got.expires - URL_MARGIN_MS <= this.now()) {
      this.cache.delete(id);
      return null;
    }
    return got;
  }

  seed(id, obj) {
    const urls = FileUrls.parse(obj);
    if (urls) this.cache.set(id, urls);
  }

  /** Forget `id`'s URLs (an image failed to load with them: expired, or refused); the next want() asks anew. */
  stale(id) {
    this.cache.delete(id);
  }

  /** {url, thumb_url?, expires (ms)} from the server's object, or null when it has no usable `url`. */
  static parse(obj) {
    if (!obj || typeof obj.url !== 'string' || !obj.url.startsWith('/')) return null;
    if (obj.url.startsWith('//')) return null; // same origin only: a path, never another host
    const out = { url: obj.url, expires: Number(obj.expires) * 1000 };
    if (!Number.isFinite(out.expires)) out.expires = 0;
    if (typeof obj.thumb_url === 'string' && obj.thumb_url.startsWith('/') && !obj.thumb_url.startsWith('//')) {
      out.thumb_url = obj.thumb_url;
    }
    return out;
  }

  /** Resolves to a Map id -> URLs for the `ids` the server knows (see the class). */
  async want(ids) {
    const out = new Map();
    const asks = [];
    for (const id of new Set(ids)) {
      const got = this.get(id);
      if (got) {
        out.set(id, got);
        continue;
      }
      if ((this.missingUntil.get(id) || 0) > this.now()) continue;
      let wait = this.waiting.get(id);
      if (!wait) {
        let resolve;
        const promise = new Promise((r) => { resolve = r; });
        wait = { promise, resolve };
        this.waiting.set(id, wait);
        this.queued.add(id);
      }
      asks.push(wait.promise.then((urls) => { if (urls) out.set(id, urls); }));
    }
    if (this.queued.size && this.timer === null) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.flush();
      }, URL_BATCH_WAIT_MS);
    }
    await Promise.all(asks);
    return out;
  }

  flush() {
    const ids = [...this.queued];
    this.queued.clear();
    for (let i = 0; i < ids.length; i += URL_BATCH) this.ask(ids.slice(i, i + URL_BATCH));
  }

  async ask(ids) {
    let files = null;
    try {
      const res = await this.fetchImpl(`${this.base}/rooms/${encodeURIComponent(this.room)}/files/urls`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${this.token()}`,
          'content-type': 'application/json',
          accept: 'application/json',
        },
        body: JSON.stringify({ ids }),
        cache: 'no-store',
        credentials: 'omit',
      });
      const body = res.ok ? await res.json() : null;
      if (body && body.files && typeof body.files === 'object') files = body.files;
    } catch {
      files = null;
    }
    const now = this.now();
    for (const id of ids) {
      const urls = files ? FileUrls.parse(files[id]) : null;
      if (urls) {
        this.cache.set(id, urls);
        this.missingUntil.delete(id);
      } else {
        this.missingUntil.set(id, now + URL_RETRY_MS);
      }
      const wait = this.waiting.get(id);
      this.waiting.delete(id);
      wait?.resolve(urls);
    }
  }
}
