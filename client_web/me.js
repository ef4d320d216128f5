// @ts-check
// /me: 我的课程 for a teacher: today's lessons (with 开始上课: the teacher page opens with a lesson token minted for
// that lesson and starts it) and a week's list. A reviewer is pointed to the library.
import { byId } from "./dom.js";
import { t } from "./i18n.js";
import {
  accountErrorText, addDays, call, curriculumLine, dayLabel, el, isoDate, mondayOf, requireRole, setUpPage,
} from "./account.js";

/** @typedef {import("./account.js").Occurrence} Occurrence */

let monday = mondayOf(new Date());
const status = byId("status");

/** @param {unknown} err */
function fail(err) {
  status.textContent = accountErrorText(err);
  status.classList.add("error");
  status.hidden = false;
}

/** Open the teacher page for one of my lessons.  @param {Occurrence} o  @param {HTMLButtonElement} button */
async function start(o, button) {
  button.disabled = true;
  try {
    const made = await call(`/api/me/lessons/${encodeURIComponent(o.lesson)}/start`, { method: "POST" });
    const lang = new URLSearchParams(location.search).get("lang");
    const [path, fragment] = made.teacher_url.split("#");
    // start=1: the teacher page starts the lesson as soon as the camera is open (this click was the one click)
    location.assign(`${path}${lang ? `?lang=${lang}` : ""}#${fragment}&start=1`);
  } catch (err) {
    fail(err);
    button.disabled = false;
  }
}

/** @param {Occurrence} o */
function card(o) {
  const button = el("button", { type: "button", class: "primary start" }, t("me.start"));
  button.addEventListener("click", () => start(o, button));
  return el("article", { class: "lesson-card" },
    el("div", { class: "time" }, `${o.start_time}–${o.end_time}`, o.period ? ` · ${t("me.period", { n: o.period })}` : ""),
    el("h3", {}, o.title),
    el("p", { class: "muted" }, curriculumLine(o)),
    el("p", {}, `${t("field.classroom_ids")}：${o.classrooms.map((c) => c.name).join("、")}`),
    button);
}

async function load() {
  const first = isoDate(monday), last = isoDate(addDays(monday, 6));
  byId("week").textContent = `${first} – ${last}`;
  const today = isoDate(new Date());
  const [week, todays] = await Promise.all([
    call(`/api/me/lessons?from=${first}&to=${last}`),
    call(`/api/me/lessons?from=${today}&to=${today}`),
  ]);
  /** @type {Occurrence[]} */
  const lessons = week.lessons, now = todays.lessons;
  byId("today").replaceChildren(...(now.length ? now.map(card) : [el("p", { class: "muted" }, t("me.noneToday"))]));
  byId("lessons").querySelector("tbody")?.replaceChildren(...(lessons.length ? lessons.map((o) => el("tr",
    { class: o.date === today ? "today" : "" },
    el("td", {}, dayLabel(o.date)), el("td", {}, `${o.start_time}–${o.end_time}`), el("td", {}, o.title),
    el("td", {}, o.classrooms.map((c) => c.name).join("、")), el("td", {}, curriculumLine(o))))
    : [el("tr", {}, el("td", { colspan: "5", class: "muted" }, t("me.noneWeek")))]));
}

async function main() {
  const me = await requireRole(["teacher", "reviewer"]);
  setUpPage(me.user);
  if (me.user.role === "reviewer") {
    byId("reviewer").hidden = false;
    return;
  }
  byId("teacher").hidden = false;
  byId("prev").addEventListener("click", () => { monday = addDays(monday, -7); load().catch(fail); });
  byId("next").addEventListener("click", () => { monday = addDays(monday, 7); load().catch(fail); });
  await load().catch(fail);
  document.body.dataset.ready = "1";
}

main();
