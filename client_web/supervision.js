// @ts-check
// /admin/supervision (督导, administrators only): lessons live now (classrooms expected vs connected, quality bands,
// rung/layer mix), today's and this term's figures per school and per teacher (开课率, attendance rate, minutes with
// video, average loss and RTT) with bar charts drawn as inline SVG, a school's weekly report (CSV, XLSX) and the
// webhooks. Every call goes through account.js (session cookie + CSRF token).
import { byId } from "./dom.js";
import { lang, t } from "./i18n.js";
import { attempt, call, el, isoDate, localPath, requireRole, say, setUpPage } from "./account.js";

/** @typedef {{id: string, name: string}} Named */
/** @typedef {Named & {loss_avg: number | null, rtt_ms_avg: number | null, band: string | null, rung: string | null,
 *    layer: string | null}} Connected */
/** @typedef {{lesson: string, title: string, teacher: string, teacher_connected: boolean, expected: Named[],
 *    connected: Connected[], missing: Named[], bands: Record<string, number>, rungs: Record<string, number>,
 *    layers: Record<string, number>}} LiveLesson */
/** @typedef {{name: string, scheduled: number, held: number, held_rate: number | null, classroom_places: number,
 *    classrooms_present: number, attendance_rate: number | null, video_min: number, loss_avg: number | null,
 *    rtt_ms_avg: number | null}} Tally */
/** @typedef {{from?: string, to?: string, total: Tally | null, schools: Tally[], teachers: Tally[],
 *    term?: {name: string} | null}} Figures */
/** @typedef {{id: string, url: string, events: string[]}} Webhook */

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 10000;
const state = { period: "today" };

/** @param {number | null | undefined} rate */
const pct = (rate) => (rate === null || rate === undefined ? "—" : `${Math.round(rate * 1000) / 10}%`);
/** @param {number | null | undefined} loss */
const lossText = (loss) => (loss === null || loss === undefined ? "—" : `${(loss * 100).toFixed(2)}%`);
/** @param {number | null | undefined} ms */
const msText = (ms) => (ms === null || ms === undefined ? "—" : `${Math.round(ms)} ms`);

/** An SVG element.  @param {string} tag  @param {Record<string, string | number>} attrs  @param {...Node} children */
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  node.append(...children);
  return node;
}

/** A small bar for a rate 0..1 in a table cell.  @param {number | null} rate  @param {string} kind */
function rateBar(rate, kind) {
  const width = 80;
  return svg("svg", { class: "bars", width, height: 10, role: "img", "aria-label": pct(rate) },
    svg("rect", { class: "track", x: 0, y: 0, width, height: 10, rx: 3 }),
    svg("rect", { class: kind, x: 0, y: 0, width: Math.round((rate ?? 0) * width), height: 10, rx: 3 }));
}

/** Grouped bars per school: 开课率 and 出勤率.  @param {Tally[]} rows */
function schoolChart(rows) {
  const label = 150, barW = 360, rowH = 34, width = label + barW + 60;
  const height = Math.max(1, rows.length) * rowH + 24;
  const chart = svg("svg", { class: "bars", viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img",
    "aria-label": t("sup.chart") });
  rows.forEach((r, i) => {
    const y = i * rowH + 4;
    chart.append(svg("text", { x: 0, y: y + 18 }, document.createTextNode(r.name || t("sup.noSchool"))));
    [["held", r.held_rate, 0], ["attended", r.attendance_rate, 13]].forEach(([kind, rate, dy]) => {
      const w = Math.round(Number(rate ?? 0) * barW);
      chart.append(svg("rect", { class: "track", x: label, y: y + Number(dy), width: barW, height: 11, rx: 2 }),
        svg("rect", { class: String(kind), x: label, y: y + Number(dy), width: w, height: 11, rx: 2 }),
        svg("text", { x: label + barW + 6, y: y + Number(dy) + 10 }, document.createTextNode(pct(/** @type {number} */ (rate)))));
    });
  });
  const ly = height - 8;
  chart.append(svg("rect", { class: "held legend", x: label, y: ly - 9, width: 10, height: 10 }),
    svg("text", { x: label + 14, y: ly }, document.createTextNode(t("sup.heldRate"))),
    svg("rect", { class: "attended legend", x: label + 90, y: ly - 9, width: 10, height: 10 }),
    svg("text", { x: label + 104, y: ly }, document.createTextNode(t("sup.attendanceRate"))));
  return chart;
}

// -- live ------------------------------------------------------------------------------------------------------------

/** @param {Record<string, number>} counts  @param {string} prefix */
function chips(counts, prefix) {
  return Object.entries(counts).map(([k, n]) => el("span", { class: `chip ${k}` }, `${t(`${prefix}.${k}`)} ${n}`));
}

async function loadLive() {
  const { lessons } = /** @type {{lessons: LiveLesson[]}} */ (await call("/api/admin/supervision/live"));
  byId("live-empty").hidden = lessons.length > 0;
  byId("live").replaceChildren(...lessons.map((l) => {
    const expected = l.expected.length || l.connected.length;
    return el("div", { class: "live-card", dataset: { lesson: l.lesson } },
      el("h3", {}, l.title || l.lesson),
      el("div", { class: "muted" }, `${t("sup.teacher")}：${l.teacher}${l.teacher_connected ? "" : ` · ${t("sup.teacherAway")}`}`),
      el("div", { class: `count${l.missing.length ? " short" : ""}`, dataset: { count: "" } },
        t("sup.connectedOf", { n: l.connected.length, m: expected })),
      el("div", {}, ...chips(l.bands, "band")),
      el("div", {}, ...chips(l.rungs, "rung"), ...chips(l.layers, "sup.layer")),
      l.missing.length ? el("ul", { class: "missing" }, ...l.missing.map((c) => el("li", {}, t("sup.missing", { name: c.name })))) : "");
  }));
  byId("live-updated").textContent = t("sup.updated", {
    time: new Date().toLocaleTimeString(lang === "en" ? "en-GB" : "zh-CN", { hour: "2-digit", minute: "2-digit", second: "2-digit" }) });
}

// -- figures ---------------------------------------------------------------------------------------------------------

/** @param {Tally} r */
function tallyRow(r) {
  return el("tr", {}, el("td", {}, r.name || t("sup.noSchool")),
    el("td", { class: "bar" }, rateBar(r.held_rate, "held"), `${pct(r.held_rate)} (${r.held}/${r.scheduled})`),
    el("td", { class: "bar" }, rateBar(r.attendance_rate, "attended"),
      `${pct(r.attendance_rate)} (${r.classrooms_present}/${r.classroom_places})`),
    el("td", {}, String(r.video_min)), el("td", {}, lossText(r.loss_avg)), el("td", {}, msText(r.rtt_ms_avg)));
}

async function loadFigures() {
  const query = state.period === "term" ? "?period=term" : "";
  const f = /** @type {Figures} */ (await call(`/api/admin/supervision/figures${query}`));
  const total = f.total;
  byId("span").textContent = state.period === "term"
    ? (f.term ? `${f.term.name}：${f.from} – ${f.to}` : t("sup.noTerm")) : (f.from || "");
  byId("tiles").replaceChildren(...[
    ["sup.heldRate", total ? `${pct(total.held_rate)}` : "—", total ? `${total.held}/${total.scheduled}` : ""],
    ["sup.attendanceRate", total ? pct(total.attendance_rate) : "—",
      total ? `${total.classrooms_present}/${total.classroom_places}` : ""],
    ["sup.videoMin", total ? String(total.video_min) : "—", ""],
    ["sup.loss", total ? lossText(total.loss_avg) : "—", ""],
    ["sup.rtt", total ? msText(total.rtt_ms_avg) : "—", ""],
  ].map(([key, value, sub]) => el("div", { class: "tile", dataset: { tile: key } },
    el("div", { class: "value" }, value), el("div", { class: "label" }, t(key), sub ? ` · ${sub}` : ""))));
  byId("school-chart").replaceChildren(f.schools.length ? schoolChart(f.schools) : el("p", { class: "muted" }, t("sup.none")));
  byId("schools").querySelector("tbody")?.replaceChildren(...f.schools.map(tallyRow));
  byId("teachers").querySelector("tbody")?.replaceChildren(...f.teachers.map(tallyRow));
}

// -- the weekly report -------------------------------------------------------------------------------------------------

async function loadSchools() {
  const { users } = /** @type {{users: {school: string}[]}} */ (await call("/api/admin/users?role=classroom"));
  const schools = [...new Set(users.map((u) => u.school).filter(Boolean))].sort();
  const select = byId("report-school", HTMLSelectElement);
  select.replaceChildren(...schools.map((s) => el("option", { value: s }, s)));
  updateReportLinks();
}

function updateReportLinks() {
  const school = byId("report-school", HTMLSelectElement).value;
  const week = byId("report-week", HTMLInputElement).value;
  for (const ext of ["csv", "xlsx"]) {
    const link = byId(`report-${ext}`, HTMLAnchorElement);
    const query = new URLSearchParams({ school, week });
    link.href = `/api/admin/supervision/report.${ext}?${query}`;
    link.toggleAttribute("hidden", !school);
  }
}

// -- webhooks ----------------------------------------------------------------------------------------------------------

async function loadWebhooks() {
  const { webhooks, events } = /** @type {{webhooks: Webhook[], events: string[]}} */ (await call("/api/admin/webhooks"));
  byId("webhooks").querySelector("tbody")?.replaceChildren(...webhooks.map((w) => el("tr", {},
    el("td", {}, w.url), el("td", {}, w.events.map((e) => t(`event.${e}`)).join("、")),
    el("td", { class: "actions" }, el("button", { type: "button", class: "small", onclick: () => attempt(async () => {
      await call(`/api/admin/webhooks/${w.id}`, { method: "DELETE" });
      await loadWebhooks();
    }) }, t("sup.remove"))))));
  const box = byId("webhook-events");
  if (!box.childElementCount) {
    box.append(...events.map((e) => el("label", { class: "check" },
      el("input", { type: "checkbox", name: "events", value: e, checked: true }), t(`event.${e}`))));
  }
}

async function addWebhook(/** @type {HTMLFormElement} */ form) {
  const data = new FormData(form);
  const made = await call("/api/admin/webhooks", { method: "POST", body: {
    url: String(data.get("url") || "").trim(), events: data.getAll("events").map(String) } });
  byId("webhook-secret-value", HTMLInputElement).value = made.secret;
  byId("webhook-secret").hidden = false;
  form.reset();
  await loadWebhooks();
}

async function main() {
  const me = await requireRole(["administrator"]);
  setUpPage(me.user);
  byId("to-admin", HTMLAnchorElement).href = localPath("/admin");
  byId("report-week", HTMLInputElement).value = isoDate(new Date());
  for (const button of byId("period").querySelectorAll("button")) {
    button.addEventListener("click", () => {
      state.period = button.dataset.period || "today";
      for (const b of byId("period").querySelectorAll("button")) b.classList.toggle("current", b === button);
      attempt(loadFigures);
    });
  }
  byId("report-school").addEventListener("change", updateReportLinks);
  byId("report-week").addEventListener("change", updateReportLinks);
  byId("webhook-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    attempt(() => addWebhook(/** @type {HTMLFormElement} */ (ev.currentTarget)));
  });
  await attempt(() => Promise.all([loadLive(), loadFigures(), loadSchools(), loadWebhooks()]).then(() => {}));
  setInterval(() => attempt(async () => { await loadLive(); say(""); }), REFRESH_MS);
  document.body.dataset.ready = "1";
}

main();
