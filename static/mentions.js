// mentions.js: "@" in the message box offers the room's members (online, then recent authors); the one picked
// is written as "@Name" and remembered, so the message can list the user ids it mentions (the ids of the
// people picked whose "@Name" is still in the text when it is sent).
//
// The box keeps the focus throughout (a combobox-like listbox: aria-activedescendant points at the option
// the arrow keys chose); Enter or Tab takes it, Escape closes the list.

const MAX_OPTIONS = 8;
const MAX_MENTIONS = 20; // the server's max_mentions
// "@" at the start or after a space, then what is typed so far (no space, no second "@"), up to the caret.
const QUERY_RE = /(?:^|\s)@([^\s@]{0,64})$/u;

/**
 * Whether `text` holds `@name` as a whole mention: not inside a word before it, not followed by a letter
 * or digit (so "@Al" is not found in "@Alice").
 */
export function mentionIn(text, name) {
  const pattern = `@${name}`;
  for (let i = text.indexOf(pattern); i >= 0; i = text.indexOf(pattern, i + 1)) {
    const before = i > 0 ? text[i - 1] : '';
    const after = Array.from(text.slice(i + pattern.length, i + pattern.length + 2))[0] || '';
    if (!/[\p{L}\p{N}]/u.test(before) && !/[\p{L}\p{N}]/u.test(after)) return true;
  }
  return false;
}

export class MentionAutocomplete {
  /**
   * @param {HTMLTextAreaElement} input  the message box
   * @param {HTMLElement} list           an (empty) element to hold the options
   * @param {() => {user: string, name: string}[]} candidates  who may be mentioned, in order of preference
   */
  constructor(input, list, candidates) {
    this.input = input;
    this.list = list;
    this.candidates = candidates;
    this.chosen = new Map(); // user -> name: the people picked for the text in the box
    this.options = []; // [{user, name}] shown
    this.active = 0;
    this.start = -1; // where the "@" being completed is in the box's value
    list.setAttribute('role', 'listbox');
    list.hidden = true;
    input.setAttribute('aria-autocomplete', 'list');
    input.setAttribute('aria-controls', list.id);
    input.addEventListener('input', () => this.update());
    input.addEventListener('click', () => this.update());
    input.addEventListener('blur', () => setTimeout(() => this.close(), 150));
    // A pointer press must not take the focus from the box (the option is picked on click).
    list.addEventListener('mousedown', (ev) => ev.preventDefault());
    list.addEventListener('click', (ev) => {
      const option = ev.target.closest('[role="option"]');
      if (option) this.take(Number(option.dataset.index));
    });
  }

  get isOpen() {
    return !this.list.hidden;
  }

  /** Look at what is typed before the caret: open, narrow or close the list. */
  update() {
    const caret = this.input.selectionStart;
    if (caret !== this.input.selectionEnd) {
      this.close();
      return;
    }
    const before = this.input.value.slice(0, caret);
    const match = QUERY_RE.exec(before);
    if (!match) {
      this.close();
      return;
    }
    const query = match[1].toLowerCase();
    this.start = caret - match[1].length - 1;
    const matches = (c) => {
      if (!query) return true;
      const name = c.name.toLowerCase();
      return name.startsWith(query) || c.user.toLowerCase().startsWith(query)
        || name.split(/\s+/).some((w) => w.startsWith(query));
    };
    this.options = this.candidates().filter(matches).slice(0, MAX_OPTIONS);
    if (!this.options.length) {
      this.close();
      return;
    }
    this.active = Math.min(this.active, this.options.length - 1);
    this.render();
  }

  render() {
    const id = this.list.id;
    this.list.replaceChildren(...this.options.map((c, i) => {
      const li = document.createElement('li');
      li.id = `${id}-${i}`;
      li.setAttribute('role', 'option');
      li.setAttribute('aria-selected', String(i === this.active));
      li.dataset.index = String(i);
      li.dataset.user = c.user;
      const name = document.createElement('span');
      name.className = 'mention-option-name';
      name.dir = 'auto';
      name.textContent = c.name;
      const handle = document.createElement('span');
      handle.className = 'mention-option-handle';
      handle.dir = 'ltr';
      handle.textContent = `@${c.user}`;
      li.append(name, ' ', handle);
      return li;
    }));
    this.list.hidden = false;
    this.input.setAttribute('aria-activedescendant', `${id}-${this.active}`);
  }

  close() {
    if (this.list.hidden) return;
    this.list.hidden = true;
    this.list.replaceChildren();
    this.options = [];
    this.active = 0;
    this.input.removeAttribute('aria-activedescendant');
  }

  /** Handle a key pressed in the box; returns true when it was the list's (the caller must not act on it). */
  key(ev) {
    if (!this.isOpen || ev.isComposing) return false;
    if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
      const n = this.options.length;
      this.active = (this.active + (ev.key === 'ArrowDown' ? 1 : n - 1)) % n;
      this.render();
      return true;
    }
    if ((ev.key === 'Enter' && !ev.shiftKey) || ev.key === 'Tab') {
      this.take(this.active);
      return true;
    }
    if (ev.key === 'Escape') {
      this.close();
      return true;
    }
    return false;
  }

  /** Put option `i` in the box as "@Name " in place of the "@query" typed. */
  take(i) {
    const c = this.options[i];
    if (!c || this.start < 0) return;
    const value = this.input.value;
    const caret = this.input.selectionStart;
    const insert = `@${c.name} `;
    this.input.value = value.slice(0, this.start) + insert + value.slice(caret);
    const at = this.start + insert.length;
    this.input.setSelectionRange(at, at);
    this.chosen.set(c.user, c.name);
    this.close();
    this.input.dispatchEvent(new Event('input', { bubbles: true }));
    this.input.focus();
  }

  /** The user ids picked whose "@Name" is still in `text` (at most the server's max_mentions). */
  mentionsIn(text) {
    return [...this.chosen].filter(([, name]) => mentionIn(text, name)).map(([user]) => user)
      .slice(0, MAX_MENTIONS);
  }

  /** The message went: start over. */
  reset() {
    this.chosen.clear();
    this.close();
  }
}
