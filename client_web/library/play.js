// @ts-check
// The player page: the recording (WebM, or the MP4 once exported) in a seekable <video>, its details,
// download links, an edit form for its teacher and reviewers, and the publish/reject form for reviewers.
import { byId } from "../dom.js";
import { ApiError, api, el, formatDuration, formatSize, pageLink } from "./api.js";
import { applyText, errorText, incompleteText, t } from "../i18n.js";

const EXPORT_POLL_MS = 1000;
/** @typedef {import("./api.js").LibraryItem} LibraryItem */
/** The item's text fields: shown, and edited.
 *  @typedef {"title" | "description" | "teacher" | "school" | "stage" | "subject" | "grade" | "edition" | "volume"
 *    | "unit" | "chapter" | "date" | "language" | "license"} TextField */

/** @type {TextField[]} */
const SHOWN = ["teacher", "school", "stage", "subject", "grade", "edition", "volume", "unit", "chapter", "date",
  "language", "license", "description"];
/** @type {TextField[]} */
const EDITABLE = ["title", "description", "school", "stage", "subject", "grade", "edition", "volume", "unit",
  "chapter", "date", "language", "license"];

const recId = decodeURIComponent(location.pathname.split("/").pop() ?? "");
const $ = byId;

/** @param {unknown} err an ApiError, or what fetch threw */
function showError(err) {
  $("error").hidden = false;
  $("error").textContent = err instanceof ApiError && err.status === 404
    ? t("notFound") : errorText(err);
}

/** @param {LibraryItem} rec */
function renderDetails(rec) {
  document.title = `${rec.title} · ${t("library")}`;
  $("title").textContent = rec.title;
  // an incomplete recording (it stops where the disk filled): a badge by the state, one line above the video
  const state = rec.incomplete
    ? [t(`state.${rec.state}`), " ", el("span", { class: "badge incomplete" }, t("incomplete"))] : t(`state.${rec.state}`);
  $("incomplete").hidden = !rec.incomplete;
  $("incomplete").textContent = rec.incomplete ? incompleteText(rec.incomplete) : "";
  $("incomplete").title = rec.incomplete || "";  // the server's own words, for a reviewer
  /** @type {[string, string | undefined | (string | Node)[]][]} */
  const rows = [["state", state], ["duration", formatDuration(rec.duration_s)],
    ["size", formatSize(rec.size_bytes)], ...SHOWN.map(/** @returns {[string, string | undefined]} */ (k) => [k, rec[k]])];
  $("fields").replaceChildren(...rows.filter(([, v]) => v).flatMap(([k, v]) => [el("dt", {}, t(k)), el("dd", {}, v)]));
  $("reviewnote").textContent = rec.review_note ? t("reviewNote", { note: rec.review_note, who: rec.reviewer || "" }) : "";
}

/** @param {LibraryItem} rec */
function renderVideo(rec) {
  const video = $("video", HTMLVideoElement);
  const src = rec.urls.mp4 || rec.urls.webm;
  if (video.dataset.src === src) return;  // keep the playback position on re-render
  const resumeAt = video.dataset.src ? video.currentTime : 0;  // switching WebM -> MP4 keeps the place
  video.dataset.src = src;
  if (rec.urls.poster) video.poster = rec.urls.poster;
  video.src = src;
  if (resumeAt) video.addEventListener("loadedmetadata", () => { video.currentTime = resumeAt; }, { once: true });
}

/** @param {LibraryItem} rec */
function renderDownloads(rec) {
  /** @type {(string | Node)[]} */
  const links = [el("a", { href: rec.urls.webm_download }, t("downloadWebm"))];
  const job = rec.export;
  if (rec.urls.mp4_download) links.push(" · ", el("a", { href: rec.urls.mp4_download }, t("downloadMp4")));
  else if (job && (job.state === "queued" || job.state === "running")) {
    links.push(" · ", el("span", {}, t("exporting", { p: `${Math.round(job.progress * 100)}%` })));
    setTimeout(refresh, EXPORT_POLL_MS);
  } else if (rec.can.export) {
    if (job && job.state === "failed") {
      links.push(" · ", el("span", { class: "error" }, t("exportFailed")));
    }
    links.push(" · ", el("button", { onclick: startExport }, t("makeMp4")));
  }
  $("links").replaceChildren(...links);
}

/** @param {LibraryItem} rec */
function renderEdit(rec) {
  $("editbox").hidden = !rec.can.edit;
  if (!rec.can.edit) return;
  const form = $("edit", HTMLFormElement);
  if (form.dataset.ready) return;  // never overwrite what someone is typing
  form.dataset.ready = "1";
  const inputs = EDITABLE.map((k) => {
    const input = k === "description" ? el("textarea", { name: k }) : el("input", { name: k, type: k === "date" ? "date" : "text" });
    input.value = rec[k] || "";
    return [el("label", { for: `f-${k}` }, t(k)), Object.assign(input, { id: `f-${k}` })];
  });
  const status = el("span");
  const buttons = [el("button", { type: "submit" }, t("save")), status];
  if (rec.can.resubmit) {
    buttons.push(el("button", { type: "button", onclick: async () => {
      try { await api(`/api/library/${recId}/resubmit`, { method: "POST" }); refresh(); } catch (err) { showError(err); }
    } }, t("resubmit")));
  }
  form.replaceChildren(...inputs.flat(), el("span"), el("div", {}, ...buttons));
  form.onsubmit = async (event) => {
    event.preventDefault();
    const body = Object.fromEntries(EDITABLE.map((k) => [k, fieldValue(form, k)]));
    try {
      const updated = /** @type {LibraryItem} */ (await api(`/api/library/${recId}`, { method: "PATCH", body }));
      status.textContent = t("saved");
      renderDetails(updated);
    } catch (err) { status.textContent = errorText(err); }
  };
}

/** The value of the form's field `name` (an input, a textarea or a select).
 *  @param {HTMLFormElement} form  @param {string} name */
function fieldValue(form, name) {
  const field = form.elements.namedItem(name);
  if (field instanceof HTMLInputElement || field instanceof HTMLTextAreaElement || field instanceof HTMLSelectElement) {
    return field.value;
  }
  throw new Error(`the form has no field ${name}`);
}

/** @param {LibraryItem} rec */
function renderReview(rec) {
  $("reviewbox").hidden = !rec.can.review;
  const form = $("review", HTMLFormElement);
  // a published lesson can only be taken down (reject) — publishing it again would be refused
  const publish = form.querySelector("button[value=publish]");
  if (publish instanceof HTMLButtonElement) publish.hidden = rec.state === "published";
  form.onsubmit = async (event) => {
    event.preventDefault();
    const submitter = event.submitter;
    const decision = submitter instanceof HTMLButtonElement ? submitter.value : undefined;
    try {
      await api(`/api/library/${recId}/review`, { method: "POST", body: { decision, note: fieldValue(form, "note") } });
      $("reviewstatus").textContent = t(`state.${decision === "publish" ? "published" : "rejected"}`);
      refresh();
    } catch (err) { $("reviewstatus").textContent = errorText(err); }
  };
}

async function startExport() {
  try { await api(`/api/library/${recId}/export`, { method: "POST" }); } catch (err) { showError(err); }
  refresh();
}

async function refresh() {
  try {
    const rec = /** @type {LibraryItem} */ (await api(`/api/library/${encodeURIComponent(recId)}`));
    renderDetails(rec); renderVideo(rec); renderDownloads(rec); renderEdit(rec); renderReview(rec);
  } catch (err) { showError(err); }
}

applyText();
$("back", HTMLAnchorElement).href = pageLink("/library");
refresh();
