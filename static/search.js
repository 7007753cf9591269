// search.js: searching the room (GET /rooms/<room>/search), in a modal dialog opened with Ctrl/Cmd+K or `/`.
//
// The dialog is a combobox (the search field) that controls a listbox of results: arrows move the active
// result (aria-activedescendant, so the focus stays in the field and typing goes on), Enter or a click jumps
// to the message in the room (the page's own jump: older pages are loaded as needed), Esc closes and gives
// the focus back to where it was. A status line (role=status) says how many results there are.
//
// Safety rule, as in ui.js: text from anyone reaches the DOM only through textContent and createElement.
// The server sends a message's matching pieces as data ({text, hit}); the hits become <mark> elements here.

const DEBOUNCE_MS = 250; // a search starts this long after the last keystroke
const PAGE = 20; // results per request (the server caps it to ROOMCHAT_SEARCH_PAGE_LIMIT)
const MAX_QUERY_CHARS = 256; // the server's default ROOMCHAT_SEARCH_QUERY_MAX_CHARS; longer is refused

function make(tag, { cls, text, attrs } = {}, ...children) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) if (child) node.append(child);
  return node;
}

/** Whether a key press is typing into something (then `/` is a character, not a shortcut). */
function typingInto(target) {
  if (!(target instanceof Element)) return false;
  return target.closest('input, textarea, select, [contenteditable=""], [contenteditable="true"]') !== null;
}

/** "3 results", "1 result", "20 results (more below)". */
export function countText(count, more) {
  if (count === 0) return 'No messages match';
  return `${count} result${count === 1 ? '' : 's'}${more ? ' (more: Load older results)' : ''}`;
}

/** A result's text: its fragments, hits as <mark> elements (never HTML parsing). */
export function fragmentNodes(fragments) {
  const nodes = [];
  for (const piece of Array.isArray(fragments) ? fragments : []) {
    if (!piece || typeof piece.text !== 'string') continue;
    nodes.push(piece.hit ? make('mark', { text: piece.text }) : document.createTextNode(piece.text));
  }
  return nodes;
}

/**
 * The search dialog of one room page. `room`: the room's name; `token()`: the bearer token now (or null);
 * `jump(seq)`: show message `seq` in the conversation; `composer`: the message box (`/` there is text).
 */
export class SearchBox {
  constructor({ room, token, jump, composer }) {
    this.room = room;
    this.token = token;
    this.jump = jump;
    this.composer = composer;
    this.results = []; // [{message, fragments}] shown, newest first
    this.before = null; // the next page's `before`, or null
    this.active = -1; // index of the active option
    this.query = '';
    this.timer = null;
    this.controller = null; // the request in flight (aborted by a newer one)
    this.returnFocus = null;
    this.build();
    document.addEventListener('keydown', (event) => this.onGlobalKey(event));
  }

  build() {
    this.button = make('button', {
      cls: 'btn btn-icon search-open',
      attrs: { type: 'button', id: 'search-open', 'aria-haspopup': 'dialog', 'aria-label': 'Search messages',
        'aria-keyshortcuts': 'Control+K Meta+K /', title: 'Search (Ctrl+K or /)' },
    });
    const svgNs = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(svgNs, 'svg');
    for (const [k, v] of Object.entries({ 'aria-hidden': 'true', viewBox: '0 0 24 24', width: '20', height: '20' })) {
      svg.setAttribute(k, v);
    }
    const path = document.createElementNS(svgNs, 'path');
    path.setAttribute('fill', 'currentColor');
    path.setAttribute('d', 'M10 3a7 7 0 0 1 5.6 11.2l5.1 5.1-1.4 1.4-5.1-5.1A7 7 0 1 1 10 3Zm0 2a5 5 0 1 0 0 10 5 5 0 0 0 0-10Z');
    svg.append(path);
    this.button.append(svg);
    this.button.addEventListener('click', () => this.open());
    const actions = document.querySelector('.topbar-actions');
    if (actions) actions.prepend(this.button);

    this.input = make('input', {
      cls: 'search-input',
      attrs: { id: 'search-input', type: 'search', role: 'combobox', 'aria-expanded': 'false',
        'aria-controls': 'search-results', 'aria-autocomplete': 'list', autocomplete: 'off',
        spellcheck: 'false', enterkeyhint: 'search', maxlength: String(MAX_QUERY_CHARS),
        placeholder: 'Search this room' },
    });
    this.status = make('p', { cls: 'search-status', attrs: { id: 'search-status', role: 'status' } });
    this.list = make('ul', {
      cls: 'search-results',
      attrs: { id: 'search-results', role: 'listbox', 'aria-label': 'Results, newest first' },
    });
    this.more = make('button', { cls: 'btn btn-small search-more', text: 'Load older results',
      attrs: { type: 'button' } });
    this.more.hidden = true;
    this.more.addEventListener('click', () => this.search(this.query, this.before));
    const close = make('button', { cls: 'btn btn-small search-close', text: 'Close',
      attrs: { type: 'button' } });
    close.addEventListener('click', () => this.close());
    const title = make('h2', { cls: 'visually-hidden', text: `Search #${this.room}`, attrs: { id: 'search-title' } });
    const label = make('label', { cls: 'visually-hidden', text: `Search messages in #${this.room}`,
      attrs: { for: 'search-input' } });
    const hint = make('p', { cls: 'search-hint', attrs: { id: 'search-hint' },
      text: 'Words and "phrases", all of them; word* for words it begins. ↑↓ to choose, Enter to go, Esc to close.' });
    this.input.setAttribute('aria-describedby', 'search-hint');
    const form = make('form', { cls: 'search-form', attrs: { role: 'search' } }, label, this.input, close);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.pick(this.active >= 0 ? this.active : 0);
    });
    this.dialog = make('dialog', { cls: 'search-dialog', attrs: { id: 'search-dialog', 'aria-labelledby': 'search-title' } },
      title, form, hint, this.status, this.list, this.more);
    document.body.append(this.dialog);

    this.input.addEventListener('input', () => this.schedule());
    this.input.addEventListener('keydown', (event) => this.onFieldKey(event));
    this.dialog.addEventListener('close', () => this.closed());
    this.dialog.addEventListener('click', (event) => { // a click on the backdrop closes
      if (event.target === this.dialog) this.close();
    });
  }

  onGlobalKey(event) {
    const k = event.key;
    const ctrlK = (event.ctrlKey || event.metaKey) && !event.altKey && (k === 'k' || k === 'K');
    const slash = k === '/' && !event.ctrlKey && !event.metaKey && !event.altKey && !typingInto(event.target);
    if ((ctrlK || slash) && !document.querySelector('dialog[open]:not(#search-dialog)')) {
      event.preventDefault();
      if (this.dialog.open) this.input.select();
      else this.open();
    }
  }

  open() {
    if (this.dialog.open) return;
    const focused = document.activeElement;
    this.returnFocus = focused instanceof HTMLElement && focused !== document.body ? focused : this.composer;
    this.dialog.showModal();
    this.input.focus();
    this.input.select();
  }

  close() {
    if (this.dialog.open) this.dialog.close();
  }

  /** After the dialog closed (Esc, Close, a pick): the focus goes back where it was, unless a jump took it. */
  closed() {
    clearTimeout(this.timer);
    this.controller?.abort();
    const back = this.returnFocus;
    this.returnFocus = null;
    if (this.picked) { // the jump gives the message the focus
      this.picked = false;
      return;
    }
    if (back && back.isConnected) back.focus();
  }

  schedule() {
    clearTimeout(this.timer);
    const query = this.input.value.trim();
    if (!query) {
      this.controller?.abort();
      this.show([], null, false);
      this.status.textContent = '';
      return;
    }
    this.timer = setTimeout(() => this.search(query, null), DEBOUNCE_MS);
  }

  /** Ask the server for `query`'s results older than `before` (null: the newest), and show them. */
  async search(query, before) {
    const token = this.token();
    if (!token) {
      this.status.textContent = 'Sign in to search this room.';
      return;
    }
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.query = query;
    const params = new URLSearchParams({ q: query, limit: String(PAGE) });
    if (before !== null) params.set('before', String(before));
    this.status.textContent = 'Searching…';
    let response;
    let body = null;
    try {
      response = await fetch(`/rooms/${encodeURIComponent(this.room)}/search?${params}`, {
        headers: { authorization: `Bearer ${token}`, accept: 'application/json' },
        signal: controller.signal,
        cache: 'no-store',
      });
      body = await response.json().catch(() => null);
    } catch (error) {
      if (controller.signal.aborted) return; // a newer search took over
      this.status.textContent = 'Search failed: the server cannot be reached. Try again in a moment.';
      return;
    }
    if (controller.signal.aborted) return;
    if (!response.ok || !body || !Array.isArray(body.results)) {
      const detail = body && typeof body.detail === 'string' ? body.detail : `HTTP ${response.status}`;
      this.show([], null, false);
      this.status.textContent = response.status === 501
        ? `Search is not available on this server: ${detail}.`
        : `Search failed: ${detail}.`;
      return;
    }
    const next = Number.isSafeInteger(body.before) ? body.before : null;
    this.show(body.results, next, before !== null);
  }

  /** Show `results` (appended to those shown when `append`), and say how many there are. */
  show(results, before, append) {
    const start = append ? this.results.length : 0;
    this.results = append ? this.results.concat(results) : results.slice();
    this.before = before;
    if (!append) {
      this.list.replaceChildren();
      this.setActive(-1);
    }
    results.forEach((result, offset) => this.list.append(this.option(result, start + offset)));
    this.input.setAttribute('aria-expanded', this.results.length ? 'true' : 'false');
    this.more.hidden = before === null;
    this.status.textContent = this.input.value.trim() ? countText(this.results.length, before !== null) : '';
    if (append && results.length) this.setActive(start);
  }

  option(result, index) {
    const m = result && result.message ? result.message : {};
    const when = Number.isFinite(m.ts) ? new Date(m.ts) : null;
    const li = make('li', {
      cls: 'search-result',
      attrs: { id: `search-result-${index}`, role: 'option', 'aria-selected': 'false', 'data-seq': String(m.seq) },
    },
    make('span', { cls: 'search-meta' },
      make('span', { cls: 'search-name', text: typeof m.name === 'string' ? m.name : '' }),
      when ? make('time', { cls: 'search-time', text: when.toLocaleString(),
        attrs: { datetime: when.toISOString() } }) : null),
    make('span', { cls: 'search-text', attrs: { dir: 'auto' } }, ...fragmentNodes(result.fragments)));
    li.addEventListener('click', () => this.pick(index));
    li.addEventListener('mousemove', () => { if (this.active !== index) this.setActive(index); });
    return li;
  }

  setActive(index) {
    const options = this.list.querySelectorAll('[role=option]');
    if (this.active >= 0 && options[this.active]) options[this.active].setAttribute('aria-selected', 'false');
    this.active = index;
    if (index >= 0 && options[index]) {
      options[index].setAttribute('aria-selected', 'true');
      this.input.setAttribute('aria-activedescendant', options[index].id);
      options[index].scrollIntoView({ block: 'nearest' });
    } else {
      this.input.removeAttribute('aria-activedescendant');
    }
  }

  onFieldKey(event) {
    const count = this.results.length;
    if (event.key === 'Escape') { // closes at once (a search field's own Esc would only clear it)
      event.preventDefault();
      this.close();
    } else if (event.key === 'ArrowDown' && count) {
      event.preventDefault();
      this.setActive(Math.min(count - 1, this.active + 1));
    } else if (event.key === 'ArrowUp' && count) {
      event.preventDefault();
      this.setActive(Math.max(0, this.active - 1));
    } else if (event.key === 'Home' && count && event.ctrlKey) {
      event.preventDefault();
      this.setActive(0);
    } else if (event.key === 'End' && count && event.ctrlKey) {
      event.preventDefault();
      this.setActive(count - 1);
    }
  }

  /** Go to result `index`'s message in the conversation (the dialog closes; the message gets the focus). */
  pick(index) {
    const result = this.results[index];
    const seq = result && result.message ? result.message.seq : null;
    if (!Number.isSafeInteger(seq)) return;
    this.picked = true;
    this.close();
    Promise.resolve(this.jump(seq)).then((shown) => {
      if (!shown) this.composer?.focus(); // the page said why; typing can go on
    });
  }
}
