// @ts-check
// What the account pages (/login, /admin, /me) share: the accounts API with the session cookie and its CSRF token,
// who is signed in, the page header (name, 退出登录, language), and saying an error in the reader's language.
import { applyText, errorText, lang, otherLanguageHref, otherLanguageLabel, t } from "./i18n.js";
import { el } from "./library/api.js";

export { el };

/** @typedef {{id: string, login: string, name: string, role: string, school: string, disabled: boolean}} User */
/** @typedef {{user: User, csrf: string, home: string}} Me */

/** A refused API call: its HTTP status, the server's error code and details (field, retry_after_s, clashes…). */
export class AccountApiError extends Error {
  /** @param {number} status  @param {string} code  @param {Record<string, unknown>} detail */
  constructor(status, code, detail) { super(code); this.status = status; this.code = code; this.detail = detail; }
}

let csrf = "";

/** Remember the session's CSRF token (from sign-in or GET /api/me): sent on every call that changes something.
 *  @param {string} token */
export function setCsrf(token) { csrf = token; }

/** One call of the accounts API: its JSON answer (null for 204), or an AccountApiError. A body that is a File or
 *  Blob is sent as it is (an import's sheet), anything else as JSON.
 *  @param {string} path  @param {{method?: string, body?: unknown}} [options]  @returns {Promise<any>} */
export async function call(path, { method = "GET", body } = {}) {
  /** @type {Record<string, string>} */
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = csrf;
  /** @type {BodyInit | undefined} */
  let payload;
  if (body instanceof Blob) {
    payload = body;
    if (body instanceof File) headers["X-Filename"] = encodeURIComponent(body.name);
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const resp = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new AccountApiError(resp.status, data.code || `http_${resp.status}`, data);
  return data;
}

/** A path of this site keeping ?lang=en.
 *  @param {string} path */
export function localPath(path) {
  return lang === "en" ? `${path}${path.includes("?") ? "&" : "?"}lang=en` : path;
}

/** Who is signed in, or null (not signed in). The CSRF token is remembered.
 *  @returns {Promise<Me | null>} */
export async function whoAmI() {
  try {
    const me = /** @type {Me} */ (await call("/api/me"));
    setCsrf(me.csrf);
    return me;
  } catch (err) {
    if (err instanceof AccountApiError && err.status === 401) return null;
    throw err;
  }
}

/** The signed-in account if its role is one of `roles`; otherwise it goes to the sign-in page (nobody signed in)
 *  or to its own home page (another role) and never returns.
 *  @param {string[]} roles  @returns {Promise<Me>} */
export async function requireRole(roles) {
  const me = await whoAmI();
  if (!me) {
    location.replace(localPath("/login"));
  } else if (!roles.includes(me.user.role)) {
    location.replace(localPath(me.home));
  } else {
    return me;
  }
  return new Promise(() => {});
}

/** Fill the page's texts and its header: the account's name and role, 退出登录, the other language.
 *  @param {User | null} user */
export function setUpPage(user) {
  applyText();
  const header = document.querySelector("header");
  if (!header) return;
  if (user) {
    // teachers find their recorded lessons there, reviewers the lessons waiting for them (signed in: no token)
    if (user.role === "teacher" || user.role === "reviewer") {
      header.append(el("a", { class: "header-link", id: "to-library", href: localPath("/library") }, t("account.library")));
    }
    header.append(el("span", { class: "who", id: "who" }, `${user.name}（${t(`account.role.${user.role}`)}）`),
      el("button", { type: "button", id: "logout", onclick: signOut }, t("account.logout")));
  }
  header.append(el("a", { class: "lang", href: otherLanguageHref() }, otherLanguageLabel));
}

async function signOut() {
  try { await call("/api/logout", { method: "POST" }); } finally { location.assign(localPath("/login")); }
}

/** A line at the top of an account page (#status; an error in red).  @param {string} text  @param {boolean} [error] */
export function say(text, error = false) {
  const status = document.getElementById("status");
  if (!status) return;
  status.textContent = text;
  status.classList.toggle("error", error);
  status.hidden = !text;
}

/** Run an action of the page; its failure is said at the top.  @param {() => Promise<void>} action */
export async function attempt(action) {
  try {
    await action();
  } catch (err) {
    say(accountErrorText(err), true);
  }
}

/** What to say for an error of the accounts API, in the page's language, with what to do.
 *  @param {unknown} err  @returns {string} */
export function accountErrorText(err) {
  if (err instanceof AccountApiError) {
    const d = err.detail;
    if (err.code === "login_locked") {
      const until = new Date(String(d.until));
      const time = until.toLocaleTimeString(lang === "en" ? "en-GB" : "zh-CN", { hour: "2-digit", minute: "2-digit" });
      return t("error.login_locked", { time, minutes: Math.max(1, Math.ceil(Number(d.retry_after_s) / 60)) });
    }
    if (err.code === "clash" && Array.isArray(d.clashes) && d.clashes.length) {
      const c = /** @type {{title: string, date: string, start_time: string, end_time: string, teacher: boolean}} */
        (d.clashes[0]);
      return t(c.teacher ? "error.clash.teacher" : "error.clash.classroom",
        { title: c.title, date: c.date, start: c.start_time, end: c.end_time });
    }
    if (err.code === "invalid" && typeof d.field === "string" && d.field) {
      return t("error.invalid.field", { field: t(`field.${d.field}`) });
    }
  }
  return errorText(err, "admin");
}

/** A date as YYYY-MM-DD in the browser's own time zone (the school's).
 *  @param {Date} d */
export function isoDate(d) {
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

/** The Monday of `d`'s week.  @param {Date} d */
export function mondayOf(d) {
  const m = new Date(d.getFullYear(), d.getMonth(), d.getDate());
  m.setDate(m.getDate() - ((m.getDay() + 6) % 7));
  return m;
}

/** @param {Date} d  @param {number} days */
export function addDays(d, days) {
  const out = new Date(d.getFullYear(), d.getMonth(), d.getDate());
  out.setDate(out.getDate() + days);
  return out;
}

/** "周三 9月3日" / "Wed 3 Sep" for a YYYY-MM-DD.  @param {string} iso */
export function dayLabel(iso) {
  const [y, m, d] = iso.split("-").map(Number);
  const day = new Date(y, m - 1, d);
  return t("date.day", { weekday: t(`weekday.${((day.getDay() + 6) % 7) + 1}`), month: m, day: d });
}

/** A lesson of the timetable as the API gives it (an occurrence: one date of an entry).
 *  @typedef {{lesson: string, entry: string, date: string, title: string, start_time: string, end_time: string,
 *    period: number | null, teacher: {id: string, name: string}, classrooms: {id: string, name: string}[],
 *    stage: string, subject: string, grade: string, edition: string, chapter: string}} Occurrence */

/** The curriculum fields of a lesson in one line: 初中 · 数学 · 七年级 · 人教版 · 一元一次方程.
 *  @param {{stage?: string, subject?: string, grade?: string, edition?: string, chapter?: string}} o */
export function curriculumLine(o) {
  return [o.stage, o.subject, o.grade, o.edition, o.chapter].filter(Boolean).join(" · ");
}
