// @ts-check
// /screen: a receiving classroom's standing screen (a classroom PC or smart board nobody there configures). Opened
// once with its credential (`/screen#device=<id>.<secret>`, kept in localStorage so a reboot reopens it), it shows
// 今日课表 with a countdown to the next lesson; at a lesson's start it asks the server for the classroom's lesson
// token (`POST /api/screen/lessons/{lesson}/token`, only within the lesson's window) and frames the classroom page
// (`/classroom?screen=1#token=…`, which enters by itself); when that page says the lesson is over it goes back to the
// timetable and the next lesson. A large 「点击开启声音」 shows while the browser blocks sound without a click.
import { byId, countdown, stopCountdown } from "./dom.js";
import { applyText, errorCode, errorText, lang, otherLanguageHref, otherLanguageLabel, t } from "./i18n.js";
import { AccountApiError, curriculumLine, el } from "./account.js";

/** @typedef {import("./account.js").Occurrence} Occurrence */

const DEVICE_KEY = "ketang.screen.device"; // the credential, kept across reboots
const DONE_KEY = "ketang.screen.done"; // today's lessons this screen saw end (not entered again after a reboot)
const RETRY_S = 10; // the server cannot be reached: ask again after this many seconds
const REFUSED_RETRY_MS = 30_000; // the lesson refused this screen for a passing reason: try again after this
const RELOAD_MS = 5 * 60_000; // the timetable is asked again this often (an administrator's change shows; a
// revoked or disabled screen too: re-enabled, it works again)

const $ = byId;
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("device")) {
  localStorage.setItem(DEVICE_KEY, fragment.get("device") || "");
  history.replaceState(null, "", location.pathname + location.search); // the secret off the address bar
}
const credential = localStorage.getItem(DEVICE_KEY) || "";

/** @type {Occurrence[]} */
let lessons = [];
let earlyMs = 5 * 60_000, lateMs = 30 * 60_000;
let skewMs = 0; // the server's wall clock minus this screen's
let today = "";
let loadedAt = 0;
let loading = false;
/** @type {{lesson: string, closes: number, frame: HTMLIFrameElement} | null} */
let current = null;
let entering = false;
let notBefore = 0; // no lesson is entered before this (a refusal or an unreachable server just now)
let blocked = ""; // the screen's credential was refused: what to say

/** @type {AudioContext | null} */
let audio = null;

/** The server's wall clock now, in ms. */
function now() { return Date.now() + skewMs; }

/** A date and HH:MM of the school's wall clock, in ms.  @param {string} day  @param {string} hhmm */
function at(day, hhmm) { return new Date(`${day}T${hhmm}:00`).getTime(); }

/** @param {Occurrence} o */
function startsAt(o) { return at(o.date, o.start_time); }
/** @param {Occurrence} o */
function endsAt(o) { return at(o.date, o.end_time); }

/** @returns {Set<string>} */
function done() {
  try {
    return new Set(JSON.parse(localStorage.getItem(DONE_KEY) || "[]"));
  } catch {
    return new Set();
  }
}

/** @param {string} lesson */
function markDone(lesson) {
  const ids = [...done(), lesson].filter((id) => lessons.some((o) => o.lesson === id)); // today's only
  localStorage.setItem(DONE_KEY, JSON.stringify([...new Set(ids)]));
}

/** One call of the screens' API with the device credential.
 *  @param {string} path  @param {string} [method]  @returns {Promise<any>} */
async function api(path, method = "GET") {
  const resp = await fetch(path, { method, cache: "no-store", headers: { Authorization: `Device ${credential}` } });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new AccountApiError(resp.status, data.code || `http_${resp.status}`, data);
  return data;
}

/** @param {string} text  @param {string} [cls] */
function status(text, cls = "") {
  $("status").textContent = text;
  $("status").className = `screen-status ${cls}`;
  $("status").hidden = !text;
}

/** What the screen says when its credential is refused (it asks again now and then: a classroom re-enabled).
 *  @param {unknown} err */
function refusedText(err) {
  const code = errorCode(err);
  return code === "device_revoked" ? errorText(code) : t("screen.badDevice");
}

async function load() {
  if (loading) return;
  loading = true;
  try {
    const data = await api("/api/screen/lessons");
    skewMs = new Date(data.now).getTime() - Date.now();
    earlyMs = data.early_s * 1000;
    lateMs = data.late_s * 1000;
    today = data.today;
    lessons = data.lessons;
    loadedAt = Date.now();
    blocked = "";
    $("room").textContent = data.classroom.name;
    document.title = `${t("screen.title")} · ${data.classroom.name}`;
    status("");
    document.body.dataset.ready = "1";
  } catch (err) {
    if (err instanceof AccountApiError && err.status === 401) {
      blocked = refusedText(err);
      loadedAt = Date.now(); // asked again in RELOAD_MS
      lessons = [];
      if (current) leave();
    } else {
      unreachable(load);
    }
  } finally {
    loading = false;
    render();
  }
}

/** The server cannot be reached: say so with a countdown, then `then()`.  @param {() => void} then */
function unreachable(then) {
  notBefore = Date.now() + RETRY_S * 1000;
  countdown(RETRY_S, (left) => status(t("error.unreachable", { seconds: left }), "warn"), () => {
    status("");
    then();
  });
}

/** h:mm:ss (or m:ss) until a time.  @param {number} ms */
function duration(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const two = (/** @type {number} */ n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(sec)}` : `${m}:${two(sec)}`;
}

/** The lesson to be in now (started, not seen to end, its window open), or undefined. */
function dueLesson() {
  const seen = done(), time = now();
  return lessons.find((o) => !seen.has(o.lesson) && startsAt(o) <= time && time < endsAt(o) + lateMs);
}

/** The next lesson still to start today, or undefined. */
function nextLesson() {
  const seen = done(), time = now();
  return lessons.find((o) => !seen.has(o.lesson) && o.date === today && startsAt(o) > time);
}

function render() {
  const time = now();
  $("clock").textContent = new Date(time).toLocaleTimeString(lang === "en" ? "en-GB" : "zh-CN",
    { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  if (blocked) {
    status(blocked, "error");
    $("next").hidden = true;
    $("lessons").replaceChildren();
    document.body.dataset.state = "blocked";
    return;
  }
  if (current) return;
  document.body.dataset.state = "board";
  const seen = done();
  const next = dueLesson() || nextLesson();
  $("next").hidden = !loadedAt;
  if (next) {
    const live = startsAt(next) <= time;
    $("next-label").textContent = t(live ? "screen.now" : "screen.next");
    $("next-title").textContent = next.title;
    $("next-meta").textContent = [`${next.start_time}–${next.end_time}`, t("screen.teacher", { name: next.teacher.name }),
      curriculumLine(next)].filter(Boolean).join(" · ");
    $("countdown").textContent = live ? t("screen.entering") : t("screen.startsIn", { time: duration(startsAt(next) - time) });
    $("next").dataset.lesson = next.lesson;
  } else {
    $("next-label").textContent = "";
    $("next-title").textContent = t(lessons.length ? "screen.noMore" : "screen.none");
    $("next-meta").textContent = "";
    $("countdown").textContent = "";
    delete $("next").dataset.lesson;
  }
  $("lessons").replaceChildren(...lessons.map((o) => {
    const over = seen.has(o.lesson) || time >= endsAt(o) + lateMs || (time >= endsAt(o) && o !== next);
    const state = over ? "done" : startsAt(o) <= time ? "live" : o === next ? "next" : "later";
    return el("li", { class: state, "data-lesson": o.lesson },
      el("span", { class: "time" }, `${o.start_time}–${o.end_time}`),
      el("span", { class: "title" }, o.title),
      el("span", { class: "teacher" }, o.teacher.name),
      el("span", { class: "state" }, state === "done" || state === "live" ? t(`screen.state.${state}`) : ""));
  }));
}

/** Ask for this classroom's lesson token and frame the classroom page with it.  @param {Occurrence} o */
async function enter(o) {
  entering = true;
  try {
    const made = await api(`/api/screen/lessons/${encodeURIComponent(o.lesson)}/token`, "POST");
    const frame = document.createElement("iframe");
    frame.title = o.title;
    frame.allow = "autoplay; fullscreen; camera; microphone";
    frame.src = `/classroom?screen=1${lang === "en" ? "&lang=en" : ""}#token=${encodeURIComponent(made.token)}`;
    current = { lesson: o.lesson, closes: new Date(made.closes_at).getTime(), frame };
    $("lesson").replaceChildren(frame);
    $("lesson").hidden = false;
    $("board").hidden = true;
    document.body.dataset.state = "lesson";
    document.body.dataset.lesson = o.lesson;
  } catch (err) {
    if (err instanceof AccountApiError && err.status === 401) {
      blocked = refusedText(err);
    } else if (err instanceof AccountApiError && err.code === "not_now") {
      // this screen's clock is ahead of the timetable's or the lesson is over: ask again, and see
      if (now() >= new Date(String(err.detail.closes_at)).getTime()) markDone(o.lesson);
      notBefore = Date.now() + REFUSED_RETRY_MS;
      load();
    } else if (err instanceof AccountApiError && err.status < 500) { // (taken off the timetable meanwhile)
      notBefore = Date.now() + REFUSED_RETRY_MS;
      load();
    } else {
      unreachable(() => {});
    }
  } finally {
    entering = false;
    render();
  }
}

/** Back to the timetable (the lesson ended, or its window closed). */
function leave() {
  if (!current) return;
  current.frame.remove();
  current = null;
  $("lesson").hidden = true;
  $("board").hidden = false;
  delete document.body.dataset.lesson;
  render();
}

function tick() {
  const time = now();
  if (current && time >= current.closes) {
    markDone(current.lesson);
    leave();
  }
  if (!loading && (Date.now() - loadedAt >= RELOAD_MS || (today && dayOf(time) !== today))) {
    load();
  }
  if (!current && !entering && !blocked && Date.now() >= notBefore) {
    const due = dueLesson();
    if (due) enter(due);
  }
  render();
}

/** YYYY-MM-DD of a time on the school's wall clock.  @param {number} ms */
function dayOf(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

/** The classroom page in the frame says the lesson is over for it.  @param {MessageEvent} e */
function fromClassroom(e) {
  if (!current || e.origin !== location.origin || e.source !== current.frame.contentWindow) return;
  if (e.data?.type !== "ketang-classroom") return;
  const { state, code } = e.data;
  if (state === "ended" || state === "removed" || (state === "refused" && code === "lesson_ended")) {
    markDone(current.lesson);
  } else {
    notBefore = Date.now() + REFUSED_RETRY_MS; // a link refused for another reason: a fresh token in a while
  }
  leave();
}

/** Sound needs one click on most browsers: a large button until the browser lets sound play. */
function setUpSound() {
  try {
    audio = new AudioContext();
  } catch {
    return;
  }
  const show = () => { $("sound").hidden = audio?.state === "running"; };
  audio.addEventListener("statechange", show);
  show();
  $("sound").addEventListener("click", () => {
    audio?.resume().then(show).catch(() => {});
    $("sound").hidden = true;
    current?.frame.contentWindow?.postMessage({ type: "ketang-screen", sound: true }, location.origin);
  });
}

function main() {
  applyText();
  $("lang", HTMLAnchorElement).textContent = otherLanguageLabel;
  $("lang", HTMLAnchorElement).href = otherLanguageHref();
  window.addEventListener("message", fromClassroom);
  if (!credential) {
    status(t("screen.noDevice"), "error");
    document.body.dataset.state = "blocked";
    return;
  }
  setUpSound();
  load();
  setInterval(tick, 1000);
  window.addEventListener("online", () => { stopCountdown(); status(""); load(); });
}

main();
