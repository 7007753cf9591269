// picker.js: the reaction picker: the emoji used most on this browser, and the whole set, searchable by name.
//
// The set is static/emoji.json (written by scripts/build-emoji-data.py from the `emoji` package's data: every
// fully-qualified RGI emoji, default skin tone), fetched from this server the first time the picker opens:
// nothing comes from a CDN. Each grid is one Tab stop; the arrow keys, Home and End move inside it.

const DATA_URL = '/static/emoji.json';
const FREQUENT_KEY = 'roomchat:emoji-frequent';
const FREQUENT_SHOWN = 16;
const QUICK_SHOWN = 6; // the reactions offered in a message's menu
const MAX_REMEMBERED = 64; // emoji whose use counts are kept in localStorage
const MAX_QUERY = 60;

/** What the picker offers before this browser has reacted with anything (names until the set is loaded). */
const DEFAULTS = [
  ['👍', 'thumbs up'], ['❤️', 'red heart'], ['😂', 'face with tears of joy'], ['🎉', 'party popper'],
  ['😮', 'face with open mouth'], ['😢', 'crying face'], ['🙏', 'folded hands'], ['👀', 'eyes'],
  ['🔥', 'fire'], ['✅', 'check mark button'], ['👏', 'clapping hands'], ['😄', 'grinning face with smiling eyes'],
  ['🤔', 'thinking face'], ['💯', 'hundred points'], ['🚀', 'rocket'], ['🙌', 'raising hands'],
];

const names = new Map(DEFAULTS); // emoji -> name, completed when the set loads
let loaded = null; // a promise of [[emoji, name, aliases?], ...]

/** The whole set (loaded once). Rejects when it cannot be fetched. */
export function loadEmoji() {
  if (!loaded) {
    loaded = fetch(DATA_URL, { headers: { accept: 'application/json' } })
      .then((res) => {
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        return res.json();
      })
      .then((doc) => {
        const list = Array.isArray(doc?.emoji) ? doc.emoji.filter((e) => Array.isArray(e)
          && typeof e[0] === 'string' && typeof e[1] === 'string') : [];
        for (const [emoji, name] of list) names.set(emoji, name);
        return list;
      })
      .catch((err) => {
        loaded = null; // try again next time
        throw err;
      });
  }
  return loaded;
}

/** The name of `emoji` for people ("thumbs up"), or the emoji itself when unknown. */
export function emojiName(emoji) {
  return names.get(emoji) || emoji;
}

function counts() {
  try {
    const saved = JSON.parse(localStorage.getItem(FREQUENT_KEY) || '{}');
    return saved && typeof saved === 'object' && !Array.isArray(saved) ? saved : {};
  } catch {
    return {};
  }
}

/** The `n` emoji this browser reacted with most, topped up with DEFAULTS. */
export function frequentEmoji(n = FREQUENT_SHOWN) {
  const used = Object.entries(counts())
    .filter(([e, c]) => typeof e === 'string' && Number.isFinite(c))
    .sort((a, b) => b[1] - a[1])
    .map(([e]) => e);
  return [...new Set([...used, ...DEFAULTS.map(([e]) => e)])].slice(0, n);
}

/** The reactions a message's menu offers at once. */
export const quickEmoji = () => frequentEmoji(QUICK_SHOWN);

/** Count one use of `emoji` (what "frequently used" is made of). */
export function notePicked(emoji) {
  const all = counts();
  all[emoji] = (Number(all[emoji]) || 0) + 1;
  const kept = Object.entries(all).sort((a, b) => b[1] - a[1]).slice(0, MAX_REMEMBERED);
  try {
    localStorage.setItem(FREQUENT_KEY, JSON.stringify(Object.fromEntries(kept)));
  } catch {
    // storage disabled: the defaults stay
  }
}

function emojiButton(emoji, name) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'emoji-choice';
  b.textContent = emoji;
  b.dataset.emoji = emoji;
  b.tabIndex = -1;
  nameButton(b, name);
  return b;
}

/** Name an emoji button for search, screen readers and the hover tip. */
function nameButton(b, name) {
  b.dataset.search = name;
  b.setAttribute('aria-label', name);
  b.title = name;
}

/**
 * The picker, in the `<dialog>` of index.html (#emoji-dialog). open() shows it for one message; the choice
 * goes to `onPick(emoji)`; Escape or Cancel closes it with nothing picked; focus returns to `opener` (an
 * element, or a function returning the one to focus then: the message may have been redrawn meanwhile).
 */
export class EmojiPicker {
  constructor() {
    this.dialog = document.getElementById('emoji-dialog');
    this.search = document.getElementById('emoji-search');
    this.frequent = document.getElementById('emoji-frequent');
    this.all = document.getElementById('emoji-all');
    this.status = document.getElementById('emoji-status');
    this.onPick = null;
    this.opener = null;
    this.built = false;
    this.search.maxLength = MAX_QUERY;
    this.search.addEventListener('input', () => this.filter());
    this.search.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') {
        // A search box would take the first Escape to clear itself: here it closes the picker.
        ev.preventDefault();
        this.dialog.close();
        return;
      }
      if (ev.key === 'ArrowDown' || (ev.key === 'Enter' && !ev.isComposing)) {
        const first = this.visible(this.search.value.trim() ? this.all : this.frequent)[0];
        if (first) {
          ev.preventDefault();
          if (ev.key === 'Enter') this.pick(first.dataset.emoji);
          else this.focusIn(first.parentElement, first);
        }
      }
    });
    for (const grid of [this.frequent, this.all]) {
      grid.addEventListener('click', (ev) => {
        const b = ev.target.closest('button.emoji-choice');
        if (b) this.pick(b.dataset.emoji);
      });
      grid.addEventListener('keydown', (ev) => this.move(grid, ev));
    }
    document.getElementById('emoji-cancel').addEventListener('click', () => this.dialog.close());
    this.dialog.addEventListener('close', () => {
      const opener = typeof this.opener === 'function' ? this.opener() : this.opener;
      this.onPick = null;
      this.opener = null;
      if (opener && opener.isConnected) opener.focus();
    });
  }

  get isOpen() {
    return this.dialog.open;
  }

  /** Show the picker; `title` names what it reacts to (for its heading). */
  open({ title = 'Add a reaction', onPick, opener = null }) {
    if (this.dialog.open) this.dialog.close();
    document.getElementById('emoji-title').textContent = title;
    this.onPick = onPick;
    this.opener = opener;
    this.search.value = '';
    this.fillFrequent();
    this.filter();
    this.dialog.showModal();
    this.search.focus();
    if (!this.built) {
      this.status.textContent = 'Loading emoji…';
      loadEmoji().then((list) => {
        this.build(list);
        this.nameFrequent();
        this.filter();
      }, () => {
        this.status.textContent = 'Could not load the full set of emoji; the frequently used ones still work.';
      });
    }
  }

  pick(emoji) {
    const onPick = this.onPick;
    notePicked(emoji);
    this.dialog.close();
    if (onPick) onPick(emoji);
  }

  fillFrequent() {
    this.frequent.replaceChildren(...frequentEmoji().map((e) => emojiButton(e, emojiName(e))));
    this.resetRoving(this.frequent);
  }

  /**
   * Give the frequent emoji the names the whole set brought, on the buttons already shown: someone who
   * arrowed into the grid while it loaded keeps their focus (replacing the buttons dropped it).
   */
  nameFrequent() {
    for (const b of this.frequent.children) nameButton(b, emojiName(b.dataset.emoji));
  }

  build(list) {
    if (this.built) return;
    this.built = true;
    const fragment = document.createDocumentFragment();
    for (const [emoji, name, aliases] of list) {
      const b = emojiButton(emoji, name);
      b.dataset.search = aliases ? `${name} ${aliases}` : name;
      fragment.append(b);
    }
    this.all.replaceChildren(fragment);
  }

  /** Show the emoji whose names hold every word of the query (all of them when it is empty). */
  filter() {
    const words = this.search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const searching = words.length > 0;
    document.getElementById('emoji-frequent-section').hidden = searching;
    let shown = 0;
    for (const b of this.all.children) {
      const hit = words.every((w) => b.dataset.search.includes(w) || b.dataset.emoji === w);
      b.hidden = !hit;
      if (hit) shown += 1;
    }
    this.resetRoving(this.all);
    if (!this.built) return;
    if (!searching) this.status.textContent = '';
    else if (shown === 0) this.status.textContent = `No emoji match “${this.search.value.trim()}”`;
    else this.status.textContent = shown === 1 ? '1 emoji matches' : `${shown} emoji match`;
  }

  visible(grid) {
    return [...grid.children].filter((b) => !b.hidden);
  }

  /** One Tab stop per grid: the first visible emoji. */
  resetRoving(grid) {
    let first = true;
    for (const b of grid.children) {
      b.tabIndex = !b.hidden && first ? 0 : -1;
      if (!b.hidden) first = false;
    }
  }

  focusIn(grid, button) {
    for (const b of grid.children) if (b.tabIndex === 0) b.tabIndex = -1;
    button.tabIndex = 0;
    button.focus();
  }

  /** Arrow keys move in the grid as laid out (rows as wide as the dialog allows), Home and End to its ends. */
  move(grid, ev) {
    const keys = ['ArrowLeft', 'ArrowRight', 'ArrowUp', 'ArrowDown', 'Home', 'End'];
    if (!keys.includes(ev.key)) return;
    const shown = this.visible(grid);
    const at = shown.indexOf(document.activeElement);
    if (at < 0 || !shown.length) return;
    ev.preventDefault();
    const top = shown[0].offsetTop;
    let columns = shown.findIndex((b) => b.offsetTop !== top);
    if (columns <= 0) columns = shown.length;
    const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns, ArrowDown: columns }[ev.key];
    let next;
    if (ev.key === 'Home') next = 0;
    else if (ev.key === 'End') next = shown.length - 1;
    else next = at + step;
    if (next < 0 && ev.key === 'ArrowUp') {
      this.search.focus(); // up from the first row goes back to the search box
      return;
    }
    next = Math.max(0, Math.min(shown.length - 1, next));
    this.focusIn(grid, shown[next]);
  }
}
