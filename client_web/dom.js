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
