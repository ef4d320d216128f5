// @ts-check
// What both lesson pages do to find their elements.

/** The page's element with this `id`, checked to be a `kind` (HTMLElement unless said): a page and its script
 *  out of step fail here, by name, rather than later on a property of null.
 *  @template {HTMLElement} [T=HTMLElement]
 *  @param {string} id
 *  @param {{new (): T, name: string}} [kind]
 *  @returns {T} */
export function byId(id, kind) {
  const el = document.getElementById(id);
  const want = kind || HTMLElement;
  if (!(el instanceof want)) throw new Error(`#${id} is not a ${want.name} on this page`);
  return /** @type {T} */ (el);
}

/** A countdown to the next try (a server that cannot be reached): `show(left)` each second from `seconds` down
 *  to 1, then `then()`. Starting one stops the one running; the returned function stops it (a try made at once).
 *  @param {number} seconds  @param {(left: number) => void} show  @param {() => void} then
 *  @returns {() => void} */
export function countdown(seconds, show, then) {
  stopCountdown();
  let left = seconds;
  const tick = () => {
    if (left <= 0) {
      stopCountdown();
      then();
      return;
    }
    show(left);
    left -= 1;
  };
  tick();
  running = setInterval(tick, 1000);
  return stopCountdown;
}

/** @type {ReturnType<typeof setInterval> | null} */
let running = null;

/** Stop the countdown running, if any. */
export function stopCountdown() {
  if (running !== null) clearInterval(running);
  running = null;
}
