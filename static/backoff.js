// backoff.js: retry delays for the pages (exponential backoff and jitter), pure: `random` is passed in and
// nothing here waits. The server's retry loops use the same two functions (rooms/backoff.py); unlike those, a
// negative attempt counts as 0 here rather than throwing, since a page's reconnect must never stop on it.

/** A point of [low, low + span] drawn with `random()` (uniform in [0, 1)): spreads clients that failed
 * together over a window instead of bringing them back at the same instant. */
export function jittered(low, span, random = Math.random) {
  return low + span * random();
}

/**
 * The wait before retry number `attempt` (0 for the first): `baseMs` doubling per attempt up to `maxMs`, of
 * which the share `jitter` is drawn with `random()`, rounded to whole ms. `jitter` 0: exactly the doubling;
 * 0.5: from half of it to all of it ("equal jitter"); 1: from 0 to all of it ("full jitter": clients that
 * failed together spread over the whole window).
 */
export function backoffDelay(attempt, { baseMs, maxMs, jitter = 1, random = Math.random }) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(0, attempt), 1023));
  return Math.round(jitter === 0 ? ceiling : jittered(ceiling * (1 - jitter), ceiling * jitter, random));
}
