// @ts-check
// The library page: search box + curriculum filters -> /api/library, one card per lesson, paging; reviewers get a
// 待审核 filter. The query lives in the URL (?q=…&subject=…&state=…&page=…) so a search can be bookmarked and shared.
// While a lesson's composite 课例 is being made, its card shows the progress (the list is asked again every few s).
import { byId } from "../dom.js";
import { api, composeText, composing, el, formatDuration, pageLink, signInLink, TOKEN } from "./api.js";
import { applyText, errorText, incompleteText, t } from "../i18n.js";

const PER_PAGE = 24;
const FILTERS = ["q", "stage", "subject", "grade", "edition", "chapter"];
const PENDING = "awaiting_review";
const COMPOSE_POLL_MS = 3000;
/** @type {ReturnType<typeof setTimeout> | undefined} */
let pollTimer;

/** @param {import("./api.js").LibraryItem} rec */
export function card(rec) {
  const curriculum = [rec.stage, rec.subject, rec.grade, rec.chapter].filter(Boolean).join(" · ");
  const poster = rec.urls.poster ? el("img", { src: rec.urls.poster, alt: "", loading: "lazy" }) : el("div", { class: "noposter" });
  const compose = composeText(rec, t);
  return el("li", { class: "card" }, el("a", { href: pageLink(rec.urls.play) }, poster,
    el("div", { class: "body" },
      el("div", { class: "title" }, rec.title),
      el("div", { class: "meta" }, [rec.teacher, rec.school].filter(Boolean).join(" · ")),
      el("div", { class: "meta" }, curriculum),
      rec.date ? el("div", { class: "meta date" }, t("lessonDate", { d: rec.date })) : null,
      compose && rec.compose?.state !== "done"
        ? el("div", { class: `meta compose ${rec.compose?.state}` }, compose) : null,
      el("div", { class: "meta" }, formatDuration(rec.duration_s), " ",
        rec.state === "published" ? null : el("span", { class: `badge ${rec.state}` }, t(`state.${rec.state}`)), " ",
        // the recording stopped early (a full disk): the player page says what that means
        rec.incomplete
          ? el("span", { class: "badge incomplete", title: incompleteText(rec.incomplete) }, t("incomplete")) : null))));
}

function currentParams() {
  return new URLSearchParams(location.search);
}

async function load() {
  const params = currentParams();
  const form = byId("search", HTMLFormElement);
  for (const name of FILTERS) {
    const field = form.elements.namedItem(name);
    if (field instanceof HTMLInputElement || field instanceof HTMLSelectElement) field.value = params.get(name) || "";
  }
  const query = new URLSearchParams();
  for (const name of FILTERS) {
    const value = params.get(name);
    if (value) query.set(name, value);
  }
  const pending = params.get("state") === PENDING;
  if (pending) query.set("state", PENDING);
  const page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);
  query.set("page", String(page)); query.set("per_page", String(PER_PAGE));
  const status = byId("status");
  const results = byId("results");
  const pager = byId("pager");
  try {
    const data = /** @type {import("./api.js").LibraryPage} */ (await api(`/api/library?${query}`));
    results.replaceChildren(...data.items.map(card));
    status.replaceChildren(data.total ? t("results", { n: data.total }) : t("noResults"), ...whoText(data.viewer));
    renderPendingFilter(Boolean(data.viewer?.reviewer), pending);
    clearTimeout(pollTimer);
    if (data.items.some(composing)) pollTimer = setTimeout(load, COMPOSE_POLL_MS);
    const pages = Math.max(1, Math.ceil(data.total / PER_PAGE));
    pager.replaceChildren(
      el("button", { disabled: page <= 1, onclick: () => go({ page: page - 1 }) }, t("prev")),
      el("span", {}, t("page", { p: page, n: pages })),
      el("button", { disabled: page >= pages, onclick: () => go({ page: page + 1 }) }, t("next")));
  } catch (err) {
    status.replaceChildren(el("span", { class: "error" }, errorText(err)));
  }
}

/** After the count: who is signed in (an account's session), or 未登录 with a link to sign in; nothing with a token.
 *  @param {import("./api.js").LibraryPage["viewer"]} viewer  @returns {(Node | string)[]} */
function whoText(viewer) {
  if (TOKEN) return [];
  if (viewer?.role && viewer.name) {
    return ["  ", el("span", { class: "who" }, t("signedInAs", { name: viewer.name, role: t(`account.role.${viewer.role}`) }))];
  }
  return ["  ", t("signIn"), " ", el("a", { href: signInLink() }, t("signInLink"))];
}

/** Reviewers: 只看待审核 / 全部课例, a toggle of the state filter.
 *  @param {boolean} reviewer  @param {boolean} pending */
function renderPendingFilter(reviewer, pending) {
  const bar = byId("states");
  bar.hidden = !reviewer;
  if (!reviewer) return;
  bar.replaceChildren(
    el("button", { type: "button", "aria-pressed": String(!pending), class: pending ? "" : "on",
      onclick: () => go({ state: "", page: "" }) }, t("allStates")),
    el("button", { type: "button", id: "pending", "aria-pressed": String(pending), class: pending ? "on" : "",
      onclick: () => go({ state: PENDING, page: "" }) }, t("pendingOnly")));
}

/** The subject and grade suggestions from the library's curriculum lists (one list, on the server). */
async function loadVocabulary() {
  try {
    const words = /** @type {import("./api.js").Vocabulary} */ (await api("/api/library/curriculum"));
    byId("subjects").replaceChildren(...words.subjects.map((s) => el("option", {}, s)));
    byId("grades").replaceChildren(...Object.values(words.grades).flat().map((g) => el("option", {}, g)));
  } catch { /* the suggestions are a help only: typing works without them */ }
}

/** @param {Record<string, string | number>} changes */
function go(changes) {
  const params = currentParams();
  for (const [k, v] of Object.entries(changes)) v ? params.set(k, String(v)) : params.delete(k);
  history.pushState(null, "", `${location.pathname}?${params}${location.hash}`);
  load();
}

function init() {
  applyText();
  const form = byId("search", HTMLFormElement);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    /** @type {Record<string, string>} */
    const changes = { page: "" };
    for (const name of FILTERS) {
      const field = form.elements.namedItem(name);
      if (field instanceof HTMLInputElement || field instanceof HTMLSelectElement) changes[name] = field.value.trim();
    }
    go(changes);
  });
  window.addEventListener("popstate", load);
  loadVocabulary();
  load();
}

init();
