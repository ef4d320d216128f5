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

// hls.js (npm, vendored with its licence in client_web/library/vendor/, served as it is: no build step), loaded only for an item
// with HLS renditions. A path in a variable: the type checker does not read the vendored bundle.
const HLS_MODULE = "/library/vendor/hls.min.mjs";
// the player starts on the lowest rendition (it estimates the link as this until a segment has been measured),
// so a weak link plays within a segment's download; a good link climbs after the first segment
const HLS_START_ESTIMATE_BPS = 200_000;
/** The hls.js player of this page, if any (tests read its levels).
 *  @type {{destroy: () => void, currentLevel: number, levels: {height: number, bitrate: number}[]} | null} */
let hlsPlayer = null;

/** Plays `master` (an HLS master playlist) in `video`: hls.js over Media Source Extensions, or the browser's
 *  own HLS where there is no MSE (Safari on an older iPhone). False when neither can.
 *  @param {HTMLVideoElement} video  @param {string} master  @param {() => void} fallback on a fatal error */
async function playHls(video, master, fallback) {
  const mse = "MediaSource" in window || "ManagedMediaSource" in window;
  if (!mse && video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = master;
    return true;
  }
  /** @type {any} */
  let Hls;
  try { Hls = (await import(HLS_MODULE)).default; } catch { return false; }
  if (!Hls.isSupported()) return false;
  hlsPlayer?.destroy();
  // no worker: the page's policy allows scripts from this server only (fMP4 segments need little work anyway)
  const player = new Hls({ enableWorker: false, abrEwmaDefaultEstimate: HLS_START_ESTIMATE_BPS,
    capLevelToPlayerSize: true, startFragPrefetch: true });
  player.on(Hls.Events.ERROR, (/** @type {string} */ _event, /** @type {{fatal: boolean}} */ data) => {
    if (data.fatal) { player.destroy(); hlsPlayer = null; fallback(); }
  });
  player.loadSource(master);
  player.attachMedia(video);
  hlsPlayer = player;
  Object.assign(window, { ketangHls: player });
  return true;
}

/** The progressive file (MP4 once exported, else the WebM) in `video`, keeping the playback position.
 *  @param {HTMLVideoElement} video  @param {LibraryItem} rec */
function playFile(video, rec) {
  const src = rec.urls.mp4 || rec.urls.webm;
  const resumeAt = video.dataset.src ? video.currentTime : 0;  // switching WebM -> MP4 keeps the place
  video.dataset.src = src;
  video.src = src;
  if (resumeAt) video.addEventListener("loadedmetadata", () => { video.currentTime = resumeAt; }, { once: true });
}

/** @param {LibraryItem} rec */
function renderVideo(rec) {
  const video = $("video", HTMLVideoElement);
  if (rec.urls.poster && !video.poster) video.poster = rec.urls.poster;
  const master = rec.hls && rec.hls.master;
  if (master) {
    if (video.dataset.src === "hls") return;  // renditions once chosen stay (a signed URL changes each refresh)
    video.dataset.src = "hls";
    playHls(video, master, () => playFile(video, rec)).then((ok) => { if (!ok) playFile(video, rec); });
    return;
  }
  if (video.dataset.src === "hls" || video.dataset.src === (rec.urls.mp4 || rec.urls.webm)) return;
  playFile(video, rec);
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
