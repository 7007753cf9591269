// attachments.js: files in the page (issue 23): the composer's tray (pick, paste, drop; each upload with its
// progress bar and Cancel, then a preview with Remove, or its refusal in words with Retry), a message's files
// (images as thumbnails sized before they load, other files as cards with a download link), and the lightbox.
//
// Safety rule, as in ui.js: names and everything else that came from anyone reach the DOM only through
// textContent and attribute setters. Images load from this origin only (the page's CSP: img-src 'self').

import {
  fileKind,
  fileMeta,
  fitBox,
  humanSize,
  isImage,
  limitText,
  uploadFile,
  uploadRefusal,
} from '/static/files.js';

/** The box a message's thumbnail fits in (CSS narrows it further on a small screen, keeping its ratio). */
const THUMB_BOX = { width: 320, height: 240 };
/** The box a preview in the composer fits in. */
const PREVIEW_BOX = { width: 64, height: 64 };
/** What the lightbox leaves around the image for its bar and margins. */
const LIGHTBOX_CHROME = { width: 32, height: 150 };

/** Create an element with classes, text and attributes; children are nodes or strings (as text nodes). */
export function el(tag, { cls = '', text = null, attrs = {} } = {}, ...children) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== null) node.textContent = text;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

const PAPER = 'M6 2h8l6 6v12a2 2 0 0 1-2 2H6a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2Zm7 1.5V9h5.5Z';

/** A document icon, drawn without parsing markup. */
function fileIcon(size = 28) {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  for (const [k, v] of [['viewBox', '0 0 24 24'], ['width', size], ['height', size], ['aria-hidden', 'true'],
    ['focusable', 'false']]) svg.setAttribute(k, String(v));
  const path = document.createElementNS(NS, 'path');
  path.setAttribute('fill', 'currentColor');
  path.setAttribute('d', PAPER);
  svg.append(path);
  return svg;
}

/** An image of `f` (with its width and height) drawn inside `box`: its size set now, so nothing moves later. */
function sizedImage(f, box, cls) {
  const { width, height } = fitBox(f.width, f.height, box.width, box.height);
  return el('img', { cls, attrs: { width, height, alt: '', decoding: 'async', 'data-file-id': f.id } });
}

// ---- the composer's tray --------------------------------------------------------------------------------

let nextKey = 1;

/**
 * The files attached to the message being written. `add(files)` uploads each (its chip shows a progress bar
 * and Cancel), then shows a preview with Remove; a refusal stays on its chip in words (with Retry when trying
 * again may work) and is said in the composer's note. `ready()` says what a send carries, or why it cannot go
 * yet; `clear()` empties the tray after a send.
 */
export class AttachmentTray {
  /**
   * @param {object} opts
   * @param {HTMLElement} opts.list        the <ul> of chips
   * @param {string} opts.room
   * @param {() => string} opts.token      the token to upload with
   * @param {import('/static/files.js').FileUrls} opts.urls  where an upload's URLs are kept
   * @param {() => number} opts.maxFiles   files a message may carry
   * @param {() => number|null} opts.maxFileBytes  the largest upload, when the server said
   * @param {(text: string) => void} opts.note  say something in the composer's note (announced)
   * @param {() => HTMLElement} opts.fallbackFocus  where focus goes when the focused chip leaves
   */
  constructor({ list, room, token, urls, maxFiles, maxFileBytes, note, fallbackFocus }) {
    Object.assign(this, { list, room, token, urls, maxFiles, maxFileBytes, note, fallbackFocus });
    this.items = []; // {key, file, name, state: 'uploading'|'done'|'failed', progress, upload, meta, refusal, node}
  }

  /** Attach `files` (a FileList or an array of File): those past the per-message limit are refused in words. */
  add(files) {
    const list = [...files];
    const room = Math.max(0, this.maxFiles() - this.items.length);
    const taken = list.slice(0, room);
    const left = list.slice(room);
    for (const file of taken) {
      const item = { key: nextKey++, file, name: file.name || 'pasted file', state: 'uploading', progress: 0 };
      this.items.push(item);
      this.list.append(this.chip(item));
      this.upload(item);
    }
    if (left.length && this.maxFiles() === 0) {
      this.note('This room does not take files.');
    } else if (left.length) {
      const names = left.map((f) => `“${f.name || 'pasted file'}”`).join(', ');
      this.note(`A message can carry at most ${this.maxFiles()} files: ${names} ${left.length === 1 ? 'was' : 'were'} `
        + 'not attached.');
    }
    this.list.hidden = this.items.length === 0;
  }

  /** Put files already uploaded (a failed message's, taken back to edit) on the tray again, as previews. */
  restore(metas) {
    for (const meta of metas.slice(0, Math.max(0, this.maxFiles() - this.items.length))) {
      const item = { key: nextKey++, file: null, name: meta.name, state: 'done', progress: 1, meta };
      this.items.push(item);
      this.list.append(this.chip(item));
    }
    this.list.hidden = this.items.length === 0;
  }

  upload(item) {
    const limit = this.maxFileBytes();
    if (limit && item.file.size > limit) {
      // Known too large: said at once, nothing sent.
      this.fail(item, uploadRefusal(413, { error: 'file_too_large' }, null, item.name, limit));
      return;
    }
    item.state = 'uploading';
    item.progress = 0;
    item.upload = uploadFile({
      room: this.room,
      token: this.token(),
      file: item.file,
      name: item.name,
      onProgress: (fraction) => this.progress(item, fraction),
    });
    item.upload.promise.then((meta) => {
      if (!this.items.includes(item)) return;
      item.meta = fileMeta(meta);
      this.urls.seed(item.meta.id, meta);
      item.state = 'done';
      this.redraw(item);
    }, (err) => {
      if (err.aborted || !this.items.includes(item)) return;
      let status = err.status;
      // A refusal the browser could not read (the server closed mid-body): too large if we know it is.
      if (status === 0 && limit && item.file.size > limit) status = 413;
      this.fail(item, uploadRefusal(status, err.body, err.retryAfterS, item.name, limit));
    });
  }

  fail(item, refusal) {
    item.state = 'failed';
    item.refusal = refusal;
    this.redraw(item);
    this.note(refusal.text);
  }

  progress(item, fraction) {
    item.progress = fraction;
    const bar = item.node?.querySelector('progress');
    if (!bar) return;
    bar.value = fraction;
    item.node.querySelector('.attachment-percent').textContent = `${Math.round(fraction * 100)}%`;
  }

  /** Take `item` off the tray (cancelling its upload); focus moves to the next chip, or back to the box. */
  remove(item) {
    const at = this.items.indexOf(item);
    if (at < 0) return;
    const hadFocus = item.node.contains(document.activeElement);
    item.upload?.abort();
    this.items.splice(at, 1);
    item.node.remove();
    this.list.hidden = this.items.length === 0;
    if (hadFocus) {
      const next = this.items[at] || this.items[at - 1];
      (next?.node.querySelector('button') || this.fallbackFocus()).focus();
    }
  }

  redraw(item) {
    const old = item.node;
    const hadFocus = old?.contains(document.activeElement);
    const node = this.chip(item);
    old?.replaceWith(node);
    if (hadFocus) (node.querySelector('button') || this.fallbackFocus()).focus();
  }

  /** One chip: uploading (bar, Cancel), done (preview, Remove) or failed (the refusal, Retry?, Remove). */
  chip(item) {
    const name = el('span', { cls: 'attachment-name', text: item.name, attrs: { dir: 'auto' } });
    let node;
    if (item.state === 'uploading') {
      const percent = Math.round(item.progress * 100);
      const cancel = el('button', { cls: 'btn btn-small', text: 'Cancel',
        attrs: { type: 'button', 'aria-label': `Cancel upload of ${item.name}` } });
      cancel.addEventListener('click', () => this.remove(item));
      node = el('li', { cls: 'attachment uploading', attrs: { 'data-state': 'uploading' } },
        el('span', { cls: 'attachment-icon' }, fileIcon(24)),
        el('span', { cls: 'attachment-text' },
          name,
          el('span', { cls: 'attachment-progress' },
            el('progress', { attrs: { max: 1, value: item.progress, 'aria-label': `Uploading ${item.name}` } }),
            el('span', { cls: 'attachment-percent', text: `${percent}%`, attrs: { 'aria-hidden': 'true' } }))),
        cancel);
    } else if (item.state === 'done') {
      const f = item.meta;
      const urls = this.urls.get(f.id);
      let preview;
      if (isImage(f) && urls) {
        preview = sizedImage(f, PREVIEW_BOX, 'attachment-thumb');
        preview.src = urls.thumb_url || urls.url;
      } else {
        preview = el('span', { cls: 'attachment-icon' }, fileIcon(24));
      }
      const remove = el('button', { cls: 'btn btn-small', text: 'Remove',
        attrs: { type: 'button', 'aria-label': `Remove ${item.name}` } });
      remove.addEventListener('click', () => this.remove(item));
      node = el('li', { cls: 'attachment done', attrs: { 'data-state': 'done', 'data-file-id': f.id } },
        preview,
        el('span', { cls: 'attachment-text' }, name,
          el('span', { cls: 'attachment-info', text: `${humanSize(f.size)} · ${fileKind(f.type, f.name)}` })),
        remove);
    } else {
      const retry = item.refusal.retry
        ? el('button', { cls: 'btn btn-small', text: 'Retry', attrs: { type: 'button', 'aria-label': `Retry ${item.name}` } })
        : null;
      retry?.addEventListener('click', () => {
        this.upload(item);
        this.redraw(item);
      });
      const remove = el('button', { cls: 'btn btn-small', text: 'Remove',
        attrs: { type: 'button', 'aria-label': `Remove ${item.name}` } });
      remove.addEventListener('click', () => this.remove(item));
      node = el('li', { cls: 'attachment failed', attrs: { 'data-state': 'failed' } },
        el('span', { cls: 'attachment-icon' }, fileIcon(24)),
        el('span', { cls: 'attachment-text' }, name,
          el('span', { cls: 'attachment-error', text: item.refusal.text })),
        retry, remove);
    }
    item.node = node;
    return node;
  }

  /** What a send carries: {files} (the uploaded files' metadata), or {blocked: why it cannot go yet}. */
  ready() {
    if (this.items.some((i) => i.state === 'uploading')) {
      return { blocked: 'Wait until the files have uploaded (or cancel them), then send.' };
    }
    if (this.items.some((i) => i.state === 'failed')) {
      return { blocked: 'A file could not be uploaded: retry it or remove it, then send.' };
    }
    return { files: this.items.map((i) => i.meta) };
  }

  get busy() {
    return this.items.length > 0;
  }

  clear() {
    for (const item of this.items) item.upload?.abort();
    this.items = [];
    this.list.replaceChildren();
    this.list.hidden = true;
  }
}

// ---- a message's files ----------------------------------------------------------------------------------

/**
 * The files of message `m` (its `files`): images as buttons holding a thumbnail sized before it loads (a click
 * opens `lightbox` on it), others as cards with name, size, type and a download link. URLs come from `urls`.
 */
export function filesNode(m, urls, lightbox) {
  const images = m.files.filter(isImage);
  const others = m.files.filter((f) => !isImage(f));
  const node = el('div', { cls: 'files' });
  if (images.length) {
    const row = el('div', { cls: 'file-images', attrs: { role: 'group', 'aria-label': images.length === 1
      ? 'Image' : `${images.length} images` } });
    images.forEach((f, i) => {
      const img = sizedImage(f, THUMB_BOX, 'file-thumb-img');
      const label = images.length === 1 ? `View image ${f.name}` : `View image ${f.name} (${i + 1} of ${images.length})`;
      const button = el('button', { cls: 'file-thumb', attrs: { type: 'button', 'aria-label': label,
        'aria-haspopup': 'dialog', 'data-file-id': f.id } }, img);
      button.addEventListener('click', () => lightbox.open(images, i, button));
      row.append(button);
    });
    node.append(row);
  }
  for (const f of others) {
    const link = el('a', { cls: 'btn btn-small file-download', text: 'Download',
      attrs: { download: f.name, 'aria-label': `Download ${f.name}`, 'aria-disabled': 'true' } });
    link.addEventListener('click', (ev) => {
      if (urls.get(f.id)) return; // a fresh URL is in href: the browser downloads it
      ev.preventDefault(); // the URL lapsed (or never came): get one, then go
      urls.want([f.id]).then((got) => {
        const u = got.get(f.id);
        if (!u) return;
        link.href = u.url;
        link.click();
      });
    });
    node.append(el('div', { cls: 'file-card', attrs: { 'data-file-id': f.id } },
      el('span', { cls: 'file-card-icon' }, fileIcon(28)),
      el('span', { cls: 'file-card-text' },
        el('span', { cls: 'file-name', text: f.name, attrs: { dir: 'auto' } }),
        el('span', { cls: 'file-info', text: `${humanSize(f.size)} · ${fileKind(f.type, f.name)}` })),
      link));
  }
  loadUrls(node, m.files.map((f) => f.id), urls);
  return node;
}

/** Put the URLs of `ids` into the images and links under `node` once they come. */
function loadUrls(node, ids, urls) {
  urls.want(ids).then((got) => {
    for (const img of node.querySelectorAll('img[data-file-id]')) {
      const u = got.get(img.dataset.fileId);
      if (u) showImage(img, u.thumb_url || u.url, urls, (v) => v.thumb_url || v.url);
      else img.closest('.file-thumb')?.classList.add('broken');
    }
    for (const card of node.querySelectorAll('.file-card')) {
      const u = got.get(card.dataset.fileId);
      const link = card.querySelector('a');
      if (u) {
        link.href = u.url;
        link.removeAttribute('aria-disabled');
      }
    }
  });
}

/**
 * Load `src` into `img`. When it fails (a 403: the URL expired or was refused) the URLs are asked for again,
 * once: an image that fails with fresh ones too is shown as unavailable.
 */
function showImage(img, src, urls, pick) {
  const id = img.dataset.fileId;
  let retried = false;
  const broken = () => img.closest('.file-thumb')?.classList.add('broken');
  img.addEventListener('error', () => {
    if (!img.getAttribute('src')) return;
    if (retried) {
      broken();
      return;
    }
    retried = true;
    urls.stale(id);
    urls.want([id]).then((got) => {
      const u = got.get(id);
      if (u) img.src = pick(u);
      else broken();
    });
  });
  img.src = src;
}

// ---- the lightbox ---------------------------------------------------------------------------------------

/**
 * The full-size view of a message's images: a modal dialog (the page behind is inert and Tab stays inside),
 * Escape closes it, the arrow keys move between the message's images, and focus returns to the thumbnail
 * that opened it.
 */
export class Lightbox {
  constructor(dialog, urls) {
    this.dialog = dialog;
    this.urls = urls;
    this.images = [];
    this.index = 0;
    this.opener = null;
    this.img = dialog.querySelector('#lightbox-img');
    this.title = dialog.querySelector('#lightbox-title');
    this.count = dialog.querySelector('#lightbox-count');
    this.prev = dialog.querySelector('#lightbox-prev');
    this.next = dialog.querySelector('#lightbox-next');
    this.download = dialog.querySelector('#lightbox-download');
    this.prev.addEventListener('click', () => this.show(this.index - 1));
    this.next.addEventListener('click', () => this.show(this.index + 1));
    dialog.querySelector('#lightbox-close').addEventListener('click', () => dialog.close());
    dialog.addEventListener('keydown', (ev) => this.key(ev));
    dialog.addEventListener('close', () => {
      this.img.removeAttribute('src');
      const back = this.opener;
      this.opener = null;
      if (back?.isConnected) back.focus();
    });
    // A click on the backdrop (outside the dialog's box) closes it, as Escape does.
    dialog.addEventListener('click', (ev) => {
      if (ev.target === dialog) dialog.close();
    });
    this.img.addEventListener('error', () => this.retry());
    window.addEventListener('resize', () => {
      if (dialog.open) this.size();
    });
  }

  open(images, index, opener) {
    this.images = images;
    this.retried = null;
    this.opener = opener;
    if (!this.dialog.open) this.dialog.showModal();
    this.show(index);
    this.dialog.querySelector('#lightbox-close').focus();
  }

  show(index) {
    if (index < 0 || index >= this.images.length) return;
    this.index = index;
    const f = this.images[index];
    const many = this.images.length > 1;
    this.title.textContent = f.name;
    this.count.textContent = many ? `Image ${index + 1} of ${this.images.length}` : '';
    this.count.hidden = !many;
    this.prev.hidden = !many;
    this.next.hidden = !many;
    this.prev.disabled = index === 0;
    this.next.disabled = index === this.images.length - 1;
    this.img.alt = f.name;
    this.img.dataset.fileId = f.id;
    this.img.removeAttribute('src');
    this.size();
    this.download.removeAttribute('href');
    this.download.setAttribute('aria-disabled', 'true');
    this.download.setAttribute('download', f.name);
    this.urls.want([f.id]).then((got) => {
      const u = got.get(f.id);
      if (!u || this.images[this.index] !== f) return;
      this.img.src = u.url;
      this.download.href = u.url;
      this.download.removeAttribute('aria-disabled');
    });
  }

  /** The image drawn as large as the window allows, at its aspect ratio (set before it loads). */
  size() {
    const f = this.images[this.index];
    if (!f) return;
    const box = fitBox(f.width, f.height, Math.max(40, window.innerWidth - LIGHTBOX_CHROME.width),
      Math.max(40, window.innerHeight - LIGHTBOX_CHROME.height));
    this.img.width = box.width;
    this.img.height = box.height;
  }

  /** The full image failed to load (an expired or refused URL): ask for its URLs again, once per image shown. */
  retry() {
    const f = this.images[this.index];
    if (!f || !this.img.getAttribute('src') || this.retried === f) return;
    this.retried = f;
    this.urls.stale(f.id);
    this.urls.want([f.id]).then((got) => {
      const u = got.get(f.id);
      if (u && this.images[this.index] === f) {
        this.img.src = u.url;
        this.download.href = u.url;
      }
    });
  }

  key(ev) {
    if (ev.key === 'ArrowLeft' || ev.key === 'ArrowRight') {
      ev.preventDefault();
      this.show(this.index + (ev.key === 'ArrowRight' ? 1 : -1));
      // A button that became disabled cannot keep the focus.
      if (document.activeElement?.disabled || !this.dialog.contains(document.activeElement)) {
        this.dialog.querySelector('#lightbox-close').focus();
      }
    } else if (ev.key === 'Tab') {
      // Keep Tab inside (the modal makes the page inert; this also keeps it from the browser's own UI).
      const stops = [...this.dialog.querySelectorAll('button, a[href]')]
        .filter((n) => !n.hidden && !n.disabled && n.getClientRects().length > 0);
      if (!stops.length) return;
      const at = stops.indexOf(document.activeElement);
      const next = ev.shiftKey ? (at <= 0 ? stops.length - 1 : at - 1) : (at + 1) % stops.length;
      ev.preventDefault();
      stops[next].focus();
    }
  }
}

/** The limit in words for the hint under the composer ("up to 10 files of 25 MB each"). */
export function limitHint(maxFiles, maxFileBytes) {
  const size = maxFileBytes ? ` of up to ${limitText(maxFileBytes)} each` : '';
  return `Attach up to ${maxFiles} files${size}: pick them, paste an image, or drop files on the room.`;
}
