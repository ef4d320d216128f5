// @ts-check
// /admin: the district's administration (administrators only): the timetable (week view and list, a new lesson),
// importing a term's timetable from CSV/XLSX with its per-row report, users, receiving classrooms and their screens'
// credentials, and terms. Every call goes through account.js (session cookie + CSRF token).
import { byId } from "./dom.js";
import { hasText, lang, t } from "./i18n.js";
import {
  addDays, attempt, call, curriculumLine, dayLabel, el, isoDate, localPath, mondayOf, requireRole, say,
  setUpPage,
} from "./account.js";

/** @typedef {import("./account.js").User} User */
/** @typedef {import("./account.js").Occurrence} Occurrence */
/** @typedef {{id: string, name: string, start_date: string, weeks: number, end_date: string}} Term */
/** @typedef {{id: string, title: string, kind: string, date: string | null, weekday: number | null,
 *    weeks: string | null, period: number | null, start_time: string, end_time: string, term_id: string | null,
 *    teacher: {id: string, name: string}, classrooms: {id: string, name: string}[], stage: string, subject: string,
 *    grade: string, edition: string, chapter: string}} Entry */
/** @typedef {{id: string, label: string, created_at: string, last_seen_at: string | null, revoked: boolean,
 *    classroom: {id: string, name: string}}} Device */
/** @typedef {{row: number, column: string, code: string, message: string}} RowError */
/** @typedef {{rows: number, valid: number, written: number, errors: RowError[], mode: string}} ImportReport */

const state = {
  /** @type {User[]} */ users: [],
  /** @type {Term[]} */ terms: [],
  /** @type {Date} */ monday: mondayOf(new Date()),
  /** @type {string} */ me: "",
};


/** @param {HTMLFormElement} form  @returns {Record<string, string>} */
function fields(form) {
  /** @type {Record<string, string>} */
  const out = {};
  for (const [k, v] of new FormData(form)) if (typeof v === "string") out[k] = v.trim();
  return out;
}

// -- tabs ------------------------------------------------------------------------------------------------------------

/** @param {string} name */
function showTab(name) {
  for (const section of document.querySelectorAll("[data-section]")) {
    if (section instanceof HTMLElement) section.hidden = section.dataset.section !== name;
  }
  for (const button of byId("tabs").querySelectorAll("button")) {
    button.classList.toggle("current", button.dataset.tab === name);
  }
  history.replaceState(null, "", `${location.pathname}${location.search}#${name}`);
}

// -- users -------------------------------------------------------------------------------------------------------------

async function loadUsers() {
  state.users = (await call("/api/admin/users")).users;
  const body = byId("users").querySelector("tbody");
  if (!body) return;
  body.replaceChildren(...state.users.filter((u) => u.role !== "classroom").map((u) => el("tr", {},
    el("td", {}, u.name), el("td", {}, u.login), el("td", {}, t(`account.role.${u.role}`)), el("td", {}, u.school),
    el("td", {}, t(u.disabled ? "admin.disabled" : "admin.active")),
    el("td", { class: "actions" }, u.id === state.me ? "" : el("button", { type: "button", class: "small",
      onclick: () => attempt(async () => {
        await call(`/api/admin/users/${u.id}`, { method: "PATCH", body: { disabled: !u.disabled } });
        await loadUsers();
      }) }, t(u.disabled ? "admin.enable" : "admin.disable")),
    el("button", { type: "button", class: "small", onclick: (/** @type {Event} */ e) => {
      const cell = /** @type {HTMLElement} */ (e.currentTarget).parentElement;
      if (cell) cell.replaceChildren(resetPasswordForm(u));
    } }, t("admin.resetPassword"))))));
  fillTeacherChoices();
}

/** An inline form setting a new password for `user` (its sessions end).  @param {User} user */
function resetPasswordForm(user) {
  const input = el("input", { type: "password", minlength: "8", maxlength: "256", required: true,
    autocomplete: "new-password", placeholder: t("admin.newPassword"), class: "new-password" });
  return el("form", { class: "inline", onsubmit: (/** @type {Event} */ e) => {
    e.preventDefault();
    attempt(async () => {
      await call(`/api/admin/users/${user.id}`, { method: "PATCH", body: { password: input.value } });
      say(t("admin.passwordSet", { name: user.name }));
      await loadUsers();
    });
  } }, input, el("button", { type: "submit", class: "small primary" }, t("admin.save")));
}

function fillTeacherChoices() {
  const form = byId("entry-form", HTMLFormElement);
  const select = /** @type {HTMLSelectElement} */ (form.elements.namedItem("teacher_id"));
  select.replaceChildren(...state.users.filter((u) => u.role === "teacher" && !u.disabled)
    .map((u) => el("option", { value: u.id }, u.school ? `${u.name}（${u.school}）` : u.name)));
  byId("entry-rooms").replaceChildren(...state.users.filter((u) => u.role === "classroom" && !u.disabled)
    .map((u) => el("label", { class: "check" }, el("input", { type: "checkbox", name: "classroom_ids", value: u.id }),
      u.name)));
}

// -- classroom screens ---------------------------------------------------------------------------------------------------

async function loadRooms() {
  /** @type {Device[]} */
  const devices = (await call("/api/admin/devices")).devices;
  const rooms = state.users.filter((u) => u.role === "classroom");
  byId("rooms").replaceChildren(rooms.length ? el("table", { class: "list" },
    el("thead", {}, el("tr", {}, el("th", {}, t("field.roomName")), el("th", {}, t("field.school")),
      el("th", {}, t("admin.screens")), el("th", {}))),
    el("tbody", {}, rooms.map((room) => el("tr", { dataset: { room: room.id } },
      el("td", {}, room.name), el("td", {}, room.school),
      el("td", {}, el("ul", { class: "devices-list" }, devices.filter((d) => d.classroom.id === room.id).map((d) =>
        el("li", { class: d.revoked ? "revoked" : "" }, `${d.label || t("admin.screen")} · `,
          d.revoked ? t("admin.revoked") : t(d.last_seen_at ? "admin.seen" : "admin.neverSeen",
            { at: (d.last_seen_at || "").replace("T", " ").slice(0, 16) }),
          d.revoked ? "" : el("button", { type: "button", class: "danger small", onclick: () => attempt(async () => {
            await call(`/api/admin/devices/${d.id}/revoke`, { method: "POST" });
            await loadRooms();
          }) }, t("admin.revoke")))))),
      el("td", {}, el("button", { type: "button", class: "add-screen", onclick: () => attempt(() => addScreen(room)) },
        t("admin.addScreen"))))))) : el("p", { class: "muted" }, t("admin.noRooms")));
}

/** A new screen credential for a classroom: its URL shown once, to copy.  @param {User} room */
async function addScreen(room) {
  const made = await call("/api/admin/devices", { method: "POST", body: { classroom_id: room.id, label: "" } });
  await loadRooms();
  const url = `${location.origin}${made.screen_path}`;
  const input = el("input", { readonly: true, value: url, id: "screen-url", class: "screen-url" });
  const row = byId("rooms").querySelector(`tr[data-room="${room.id}"] td:nth-child(3)`);
  row?.append(el("div", { class: "new-screen" }, el("strong", {}, t("admin.screenUrl")), input,
    el("button", { type: "button", onclick: () => { input.select(); navigator.clipboard?.writeText(url); } },
      t("teacher.copy")), el("p", { class: "muted" }, t("admin.screenOnce"))));
  // the same URL as a QR code, to scan on the classroom PC or smart board (an SVG made by the server, shown as a blob)
  const { svg } = await call("/api/admin/qr", { method: "POST", body: { text: url } });
  const qr = el("img", { id: "screen-qr", class: "screen-qr", alt: t("admin.screenQr"), width: "180", height: "180",
    src: URL.createObjectURL(new Blob([svg], { type: "image/svg+xml" })) });
  row?.querySelector(".new-screen p")?.before(qr);
}

// -- terms ------------------------------------------------------------------------------------------------------------------

async function loadTerms() {
  state.terms = (await call("/api/admin/terms")).terms;
  const body = byId("terms").querySelector("tbody");
  body?.replaceChildren(...state.terms.map((term) => el("tr", {}, el("td", {}, term.name),
    el("td", {}, term.start_date), el("td", {}, String(term.weeks)), el("td", {}, term.end_date))));
  for (const id of ["tt-term", "import-term"]) {
    const select = byId(id, HTMLSelectElement);
    const was = select.value;
    select.replaceChildren(...state.terms.map((term) => el("option", { value: term.id }, term.name)));
    if (was && state.terms.some((term) => term.id === was)) select.value = was;
  }
}

// -- the timetable --------------------------------------------------------------------------------------------------------

async function loadTimetable() {
  const term = byId("tt-term", HTMLSelectElement).value;
  const first = isoDate(state.monday), last = isoDate(addDays(state.monday, 6));
  byId("tt-week").textContent = `${first} – ${last}`;
  const query = new URLSearchParams({ from: first, to: last });
  if (term) query.set("term", term);
  /** @type {Occurrence[]} */
  const lessons = (await call(`/api/admin/occurrences?${query}`)).lessons;
  const days = [...Array(7).keys()].map((i) => isoDate(addDays(state.monday, i)));
  const today = isoDate(new Date());
  byId("tt-grid").replaceChildren(...days.map((day) => el("div", { class: day === today ? "day today" : "day" },
    el("h3", {}, dayLabel(day)),
    ...lessons.filter((o) => o.date === day).map((o) => el("div", { class: "lesson", title: curriculumLine(o) },
      el("div", { class: "time" }, `${o.start_time}–${o.end_time}`), el("div", { class: "title" }, o.title),
      el("div", { class: "people" }, `${o.teacher.name} → ${o.classrooms.map((c) => c.name).join("、")}`))))));
  /** @type {Entry[]} */
  const entries = (await call(`/api/admin/timetable${term ? `?term=${encodeURIComponent(term)}` : ""}`)).entries;
  byId("tt-list").querySelector("tbody")?.replaceChildren(...entries.map((e) => el("tr", {},
    el("td", {}, e.title),
    el("td", {}, e.kind === "weekly"
      ? t("admin.weekly", { weekday: t(`weekday.${e.weekday}`), weeks: e.weeks || "", start: e.start_time, end: e.end_time })
      : `${e.date} ${e.start_time}–${e.end_time}`),
    el("td", {}, e.teacher.name), el("td", {}, e.classrooms.map((c) => c.name).join("、")),
    el("td", {}, curriculumLine(e)),
    el("td", {}, el("button", { type: "button", class: "small", onclick: () => attempt(async () => {
      await call(`/api/admin/timetable/${e.id}`, { method: "DELETE" });
      await loadTimetable();
    }) }, t("admin.delete"))))));
}

/** @param {HTMLFormElement} form */
async function createEntry(form) {
  const f = fields(form);
  const classroomIds = [...form.querySelectorAll("input[name=classroom_ids]:checked")]
    .map((input) => /** @type {HTMLInputElement} */ (input).value);
  /** @type {Record<string, unknown>} */
  const body = { title: f.title, teacher_id: f.teacher_id, classroom_ids: classroomIds, kind: f.kind,
    start_time: f.start_time, end_time: f.end_time, term_id: byId("tt-term", HTMLSelectElement).value || null };
  for (const name of ["stage", "subject", "grade", "edition", "chapter"]) body[name] = f[name] || "";
  if (f.period) body.period = Number(f.period);
  if (f.kind === "weekly") Object.assign(body, { weekday: Number(f.weekday), weeks: f.weeks || "" });
  else body.date = f.date;
  const entry = await call("/api/admin/timetable", { method: "POST", body });
  say(t("admin.created", { name: entry.title }));
  form.reset();
  await loadTimetable();
}

// -- import -------------------------------------------------------------------------------------------------------------------

/** @param {string} mode */
async function runImport(mode) {
  const file = byId("import-file", HTMLInputElement).files?.[0];
  const term = byId("import-term", HTMLSelectElement).value;
  if (!file || !term) return;
  /** @type {ImportReport} */
  let report;
  try {
    report = await call(`/api/admin/terms/${term}/import?mode=${mode}`, { method: "POST", body: file });
  } catch (err) {
    const detail = /** @type {{detail?: ImportReport}} */ (err).detail;
    if (!detail || !Array.isArray(detail.errors)) throw err;
    report = detail;  // (422: a file that cannot be read, or errors with mode=all: the same report)
  }
  showReport(report);
  if (report.written) {
    say(t("admin.import.done", { written: report.written }));
    await loadTimetable();
  }
}

/** @param {ImportReport} report */
function showReport(report) {
  byId("import-report").hidden = false;
  byId("import-summary").textContent = report.written
    ? t("admin.import.written", { written: report.written, rows: report.rows })
    : t("admin.import.summary", { rows: report.rows, valid: report.valid, errors: report.errors.length });
  const table = byId("import-errors");
  table.hidden = !report.errors.length;
  table.querySelector("tbody")?.replaceChildren(...report.errors.map((e) => el("tr", {},
    el("td", {}, e.row ? String(e.row) : ""), el("td", {}, e.column),
    // (the server's text is Chinese, with the values; in English the code's text)
    el("td", {}, lang === "en" && hasText(`import.${e.code}`) ? t(`import.${e.code}`) : e.message))));
  const all = byId("import-all", HTMLButtonElement), valid = byId("import-valid", HTMLButtonElement);
  const pending = !report.written && report.mode === "check";
  all.hidden = !pending || report.errors.length > 0 || !report.valid;
  valid.hidden = !pending || !report.errors.length || !report.valid;
  valid.textContent = t("admin.import.valid", { valid: report.valid });
}

// -- start ---------------------------------------------------------------------------------------------------------------------

async function main() {
  const me = await requireRole(["administrator"]);
  state.me = me.user.id;
  setUpPage(me.user);
  for (const button of byId("tabs").querySelectorAll("button")) {
    button.addEventListener("click", () => showTab(button.dataset.tab || "timetable"));
  }
  const entryForm = byId("entry-form", HTMLFormElement);
  const kind = /** @type {HTMLSelectElement} */ (entryForm.elements.namedItem("kind"));
  kind.addEventListener("change", () => {
    for (const label of entryForm.querySelectorAll("[data-kind]")) {
      if (label instanceof HTMLElement) label.hidden = label.dataset.kind !== kind.value;
    }
  });
  /** @param {string} id  @param {(form: HTMLFormElement) => Promise<void>} action */
  const onSubmit = (id, action) => {
    const form = byId(id, HTMLFormElement);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      attempt(() => action(form));
    });
  };
  onSubmit("entry-form", createEntry);
  onSubmit("user-form", async (form) => {
    const user = await call("/api/admin/users", { method: "POST", body: fields(form) });
    say(t("admin.created", { name: user.name }));
    form.reset();
    await loadUsers();
  });
  onSubmit("room-form", async (form) => {
    const room = await call("/api/admin/users", { method: "POST", body: { ...fields(form), role: "classroom" } });
    say(t("admin.created", { name: room.name }));
    form.reset();
    await loadUsers();
    await loadRooms();
  });
  onSubmit("term-form", async (form) => {
    const f = fields(form);
    const term = await call("/api/admin/terms", { method: "POST",
      body: { name: f.name, start_date: f.start_date, weeks: Number(f.weeks) } });
    say(t("admin.created", { name: term.name }));
    form.reset();
    await loadTerms();
    byId("tt-term", HTMLSelectElement).value = term.id;
    byId("import-term", HTMLSelectElement).value = term.id;
    await loadTimetable();
  });
  onSubmit("import-form", () => runImport("check"));
  byId("import-all").addEventListener("click", () => attempt(() => runImport("all")));
  byId("import-valid").addEventListener("click", () => attempt(() => runImport("valid")));
  byId("import-file").addEventListener("change", () => { byId("import-report").hidden = true; });
  byId("tt-term").addEventListener("change", () => attempt(loadTimetable));
  byId("tt-prev").addEventListener("click", () => { state.monday = addDays(state.monday, -7); attempt(loadTimetable); });
  byId("tt-next").addEventListener("click", () => { state.monday = addDays(state.monday, 7); attempt(loadTimetable); });
  byId("to-supervision", HTMLAnchorElement).href = localPath("/admin/supervision");
  const tab = location.hash.slice(1);
  showTab(["timetable", "import", "users", "screens", "terms"].includes(tab) ? tab : "timetable");
  await attempt(async () => {
    await Promise.all([loadUsers(), loadTerms()]);
    await Promise.all([loadRooms(), loadTimetable()]);
  });
  document.body.dataset.ready = "1";
}

main();
