// @ts-check
// The library's HTTP API. The token comes in the URL fragment (#token=…): fragments never reach server
// logs or Referer headers. It is sent as a Bearer header, and carried along on links between pages. Without a token,
// a signed-in account's session cookie goes with every call (same origin) and its CSRF token with every change.
const fragment = new URLSearchParams(location.hash.slice(1));
export const TOKEN = fragment.get("token") || "";

/** A library item (one lesson) or one of its sources, as the API gives it (GET /api/library, /api/library/<id>).
 *  @typedef {{id: string, title: string, state: string, incomplete?: string | null, duration_s?: number,
 *    size_bytes?: number, teacher?: string, school?: string, stage?: string, subject?: string, grade?: string,
 *    edition?: string, volume?: string, unit?: string, chapter?: string, date?: string, language?: string,
 *    license?: string, description?: string, review_note?: string | null, reviewer?: string | null,
 *    item_id?: string | null, role?: string, label?: string,
 *    urls: {play: string, poster?: string | null, webm: string, mp4?: string | null, webm_download: string,
 *      mp4_download?: string | null, composite?: string | null, composite_download?: string | null,
 *      chapters?: string | null},
 *    export?: {state: string, progress: number, error?: string} | null,
 *    hls?: {master: string | null, state: string, progress: number} | null,
 *    compose?: {state: string, progress: number, error?: string | null},
 *    sources?: LibraryItem[], lesson_files?: Record<string, string>, item?: {id: string, title: string, play: string},
 *    can: {edit?: boolean, review?: boolean, resubmit?: boolean, export?: boolean, take_down?: boolean,
 *      republish?: boolean, lesson_files?: boolean}}} LibraryItem */
/** @typedef {{items: LibraryItem[], total: number,
 *    viewer?: {role: string | null, reviewer: boolean, name?: string | null}}} LibraryPage */
/** The curriculum lists (GET /api/library/curriculum).
 *  @typedef {{stages: string[], subjects: string[], grades: Record<string, string[]>, editions: string[]}} Vocabulary */

/** A refused API call: its HTTP status and the server's error code. */
export class ApiError extends Error {
  /** @param {number} status  @param {string} code  @param {string} message */
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

/** @type {Promise<string> | null} */
let csrfToken = null;

/** The signed-in session's CSRF token ("" when nobody is signed in), asked once. */
function csrf() {
  csrfToken ??= fetch("/api/me").then((r) => (r.ok ? r.json() : {}))
    .then((/** @type {{csrf?: string}} */ me) => String(me.csrf || "")).catch(() => "");
  return csrfToken;
}

/** A call of the library's API: its JSON reply (what the caller expects), or an ApiError.
 *  @param {string} path  @param {{method?: string, body?: unknown}} [options]
 *  @returns {Promise<unknown>} */
export async function api(path, { method = "GET", body } = {}) {
  /** @type {Record<string, string>} */
  const headers = {};
  if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
  else if (method !== "GET") {
    const token = await csrf();
    if (token) headers["X-CSRF-Token"] = token;
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new ApiError(resp.status, data.code || "http_" + resp.status, data.message || resp.statusText);
  return data;
}

/** A link to another library page keeping ?lang and the #token.
 *  @param {string} path */
export function pageLink(path) {
  const lang = new URLSearchParams(location.search).get("lang");
  const url = lang ? `${path}?lang=${encodeURIComponent(lang)}` : path;
  return TOKEN ? `${url}#token=${encodeURIComponent(TOKEN)}` : url;
}

/** The sign-in page, coming back to this one after.  */
export function signInLink() {
  const lang = new URLSearchParams(location.search).get("lang");
  return `/login?${lang ? `lang=${encodeURIComponent(lang)}&` : ""}next=${encodeURIComponent(location.pathname + location.search)}`;
}

/** @typedef {Node | string | null | undefined} Child */

/** An element: `props` are attributes (true: present, false/null: absent), `class`, `dataset`, or `on<event>`
 *  listeners.
 *  @template {keyof HTMLElementTagNameMap} K
 *  @param {K} tag  @param {Record<string, unknown>} [props]  @param {...(Child | Child[])} children
 *  @returns {HTMLElementTagNameMap[K]} */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = String(v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), /** @type {EventListener} */ (v));
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

/** @param {number | undefined} seconds */
export function formatDuration(seconds) {
  if (!seconds) return "";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`) + `:${String(r).padStart(2, "0")}`;
}

/** @param {number | undefined} bytes */
export function formatSize(bytes) {
  if (!bytes) return "";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0, v = bytes;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** The composite 课例's job on an item, in words (排队中 / 合成中 42% / 已完成 / 失败: why), or "" when there is none.
 *  @param {LibraryItem} rec  @param {(key: string, vars?: Record<string, string | number>) => string} t */
export function composeText(rec, t) {
  const job = rec.compose;
  if (!job || job.state === "none") return "";
  if (job.state === "failed") return t("compose.failed", { why: job.error || "" });
  return t(`compose.${job.state}`, { p: job.progress });
}

/** Whether the item's composite is still being made (the page polls until it is not).
 *  @param {LibraryItem} rec */
export function composing(rec) {
  return Boolean(rec.compose && (rec.compose.state === "queued" || rec.compose.state === "running"));
}
