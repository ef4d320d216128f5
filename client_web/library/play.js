// @ts-check
// The player page of a lesson item: its composite 课例 once made (the teacher's camera until then) in a seekable
// <video>, the composite's progress, its details, its sources (each with a player link and a download), the lesson's
// record files for its teacher and reviewers, an edit form (curriculum fields from the library's lists), and the
// reviewer's forms: publish / send back, 下架 / 重新上架. A source's page plays that file and links to its item.
import { byId } from "../dom.js";
import { ApiError, api, composeText, composing, el, formatDuration, formatSize, pageLink } from "./api.js";
import { applyText, errorText, incompleteText, languageName, t } from "../i18n.js";

const EXPORT_POLL_MS = 1000;
const COMPOSE_POLL_MS = 2000;
/** @type {Promise<import("./api.js").Vocabulary | null> | null} */
let vocabulary = null;
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
    ["size", formatSize(rec.size_bytes)],
    ...SHOWN.map(/** @returns {[string, string | undefined]} */ (k) => [k, k === "language" ? languageName(rec[k]) : rec[k]])];
  $("fields").replaceChildren(...rows.filter(([, v]) => v).flatMap(([k, v]) => [el("dt", {}, t(k)), el("dd", {}, v)]));
  // (the API gives the note to the lesson's teacher and reviewers only)
  $("reviewnote").textContent = rec.review_note ? t("reviewNote", { note: rec.review_note, who: rec.reviewer || "" }) : "";
  $("partof").hidden = !rec.item;
  if (rec.item) {
    $("partof").replaceChildren(t("partOf", { title: rec.item.title }), " ",
      el("a", { href: pageLink(rec.item.play) }, t("openItem")));
  }
}

/** The composite's job on the item: 排队中 / 合成中 42% / 已完成 / 失败, asked again while it runs.
 *  @param {LibraryItem} rec */
function renderCompose(rec) {
  const text = composeText(rec, t);
  $("compose").hidden = !text;
  $("compose").textContent = text;
  $("compose").className = `compose ${rec.compose?.state || ""}`;
  if (composing(rec)) setTimeout(refresh, COMPOSE_POLL_MS);
}

/** The item's files: the teacher's camera, each courseware share, each class on stage; each plays on its own page.
 *  @param {LibraryItem} rec */
function renderSources(rec) {
  const sources = rec.sources || [];
  $("sourcesbox").hidden = sources.length === 0;
  $("sources").replaceChildren(...sources.map((s) => el("li", { dataset: { role: s.role || "" } },
    el("span", { class: "role" }, t(`role.${s.role || "teacher"}`)), " ",
    s.label && s.role !== "teacher" ? el("span", {}, s.label) : null, " ",
    el("span", { class: "meta" }, formatDuration(s.duration_s)), " ",
    el("a", { href: pageLink(s.urls.play), class: "play" }, t("play")), " · ",
    el("a", { href: s.urls.webm_download }, t("download")))));
}

/** What the page plays: the lesson's composite 课例 once made; until then the teacher's camera (an MP4 export
 *  before the WebM); a source's page its own file.
 *  @param {LibraryItem} rec */
function mainUrls(rec) {
  if (rec.urls.composite) return rec.urls;
  const camera = (rec.sources || []).find((s) => s.role === "teacher") || rec;
  return camera.urls;
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
// a link at least this fast (the page's own downloads say) gets every rendition through hls.js (its 180 KB arrive
// within 1.5 s; 360p fits twice over); a slower one stays on the start playlist
const HLS_UPGRADE_BPS = 1_000_000;
const LINK_SAMPLE_BYTES = 16384;  // (smaller ones arrive in a burst or two: no measure)

/** Plays `master` (an HLS master playlist) in `video`: hls.js over Media Source Extensions, or the browser's
 *  own HLS where there is no MSE (Safari on an older iPhone). False when neither can.
 *  @param {HTMLVideoElement} video  @param {string} master  @param {() => void} fallback on a fatal error */
async function playHls(video, master, fallback) {
  const mse = "MediaSource" in window || "ManagedMediaSource" in window;
  if (!mse && video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = master;
    return true;
  }
  return playHlsJs(video, master, fallback, -1, HLS_START_ESTIMATE_BPS);
}

/** hls.js over MSE from `startAt` s (-1: the start), its first estimate of the link `estimate`. False when it
 *  cannot play here.
 *  @param {HTMLVideoElement} video  @param {string} master  @param {() => void} fallback on a fatal error
 *  @param {number} startAt  @param {number} estimate */
async function playHlsJs(video, master, fallback, startAt, estimate) {
  if (!("MediaSource" in window || "ManagedMediaSource" in window)) return false;
  /** @type {any} */
  let Hls;
  try { Hls = (await import(HLS_MODULE)).default; } catch { return false; }
  if (!Hls.isSupported()) return false;
  hlsPlayer?.destroy();
  // no worker: the page's policy allows scripts from this server only (fMP4 segments need little work anyway)
  const player = new Hls({ enableWorker: false, abrEwmaDefaultEstimate: estimate, startPosition: startAt,
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

/** The link's rate as this page has seen it (bit/s): the fastest of its downloads of some size over the network
 *  (Resource Timing: the preloaded first segments, the page's modules; bytes over the time they took to arrive,
 *  at least 1 ms); 0 when there is none (all from the cache). */
function linkBps() {
  let best = 0;
  for (const e of /** @type {PerformanceResourceTiming[]} */ (performance.getEntriesByType("resource"))) {
    if (e.encodedBodySize >= LINK_SAMPLE_BYTES && e.transferSize >= e.encodedBodySize) {
      best = Math.max(best, e.encodedBodySize * 8000 / Math.max(1, e.responseEnd - e.responseStart));
    }
  }
  return best;
}

/** play.html's own script started the item's start playlist (the lowest rendition, and audio alone for a link
 *  too weak for it) in the browser's own HLS player. A link fast enough for more goes over to hls.js and every
 *  rendition, at the same place; a weak one stays (the browser's player chooses between the two). The browser's
 *  player failing, hls.js; hls.js failing, the file.
 *  @param {HTMLVideoElement} video  @param {string} master  @param {() => void} fallback */
function continueStarted(video, master, fallback) {
  const toHlsJs = () => {
    const at = video.error ? -1 : video.currentTime, playing = !video.paused;
    playHlsJs(video, master, fallback, at, Math.max(linkBps(), HLS_START_ESTIMATE_BPS)).then((ok) => {
      if (!ok) { fallback(); return; }
      if (playing) video.play().catch(() => {});
    });
  };
  if (video.error) { toHlsJs(); return; }
  video.addEventListener("error", toHlsJs, { once: true });
  if (linkBps() >= HLS_UPGRADE_BPS && ("MediaSource" in window || "ManagedMediaSource" in window)) {
    video.removeEventListener("error", toHlsJs);
    toHlsJs();
  }
}

/** The progressive file the page plays without renditions: the composite, else an MP4 export, else the WebM.
 *  @param {LibraryItem} rec */
function fileOf(rec) {
  const urls = mainUrls(rec);
  return urls.composite || urls.mp4 || urls.webm;
}

/** The progressive file in `video`, keeping the playback position.
 *  @param {HTMLVideoElement} video  @param {LibraryItem} rec */
function playFile(video, rec) {
  const src = fileOf(rec);
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
    if (video.dataset.hls) return;  // renditions once chosen stay (a signed URL changes each refresh)
    video.dataset.hls = "1";
    if (video.dataset.src === "hls" && video.dataset.start) {  // play.html's script has started them
      continueStarted(video, master, () => playFile(video, rec));
      return;
    }
    video.dataset.src = "hls";
    playHls(video, master, () => playFile(video, rec)).then((ok) => { if (!ok) playFile(video, rec); });
    return;
  }
  if (video.dataset.src === "hls" || video.dataset.src === fileOf(rec)) return;  // keep the playback position
  playFile(video, rec);
}

/** @param {LibraryItem} rec */
function renderDownloads(rec) {
  /** @type {(string | Node)[]} */
  const links = rec.urls.composite_download
    ? [el("a", { href: rec.urls.composite_download }, t("downloadComposite")), " · "] : [];
  links.push(el("a", { href: rec.urls.webm_download }, t("downloadWebm")));
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
  const files = Object.entries(rec.lesson_files || {});
  $("lessonfiles").hidden = files.length === 0;
  $("lessonfiles").replaceChildren(el("span", {}, t("lessonFiles")), " ",
    ...files.flatMap(([name, url], i) => [i ? " · " : "", el("a", { href: url }, t(`lessonFile.${name}`))]));
}

/** The curriculum lists, asked once. */
function loadVocabulary() {
  vocabulary ??= api("/api/library/curriculum").then(
    (v) => /** @type {import("./api.js").Vocabulary} */ (v), () => null);
  return vocabulary;
}

/** A form control for field `k`: a list for 学段/学科/年级 (the grades of the chosen stage first), a text box with
 *  suggestions for 教材版本, a text box otherwise.
 *  @param {TextField} k  @param {string} value  @param {import("./api.js").Vocabulary | null} words */
function fieldInput(k, value, words) {
  if (k === "description") return el("textarea", { name: k });
  /** @type {Record<string, string[]>} */
  const lists = words ? { stage: words.stages, subject: words.subjects, grade: Object.values(words.grades).flat() } : {};
  const list = lists[k];
  if (list) {
    // a value filed before the lists existed stays choosable (saving it again is refused with a clear message)
    const options = value && !list.includes(value) ? [value, ...list] : list;
    return el("select", { name: k }, el("option", { value: "" }, t("choose")), ...options.map((o) => el("option", {}, o)));
  }
  if (k === "edition" && words) return el("input", { name: k, type: "text", list: "editions" });
  return el("input", { name: k, type: k === "date" ? "date" : "text" });
}

/** @param {LibraryItem} rec */
async function renderEdit(rec) {
  $("editbox").hidden = !rec.can.edit;
  if (!rec.can.edit) return;
  const form = $("edit", HTMLFormElement);
  if (form.dataset.ready) return;  // never overwrite what someone is typing
  form.dataset.ready = "1";
  const words = await loadVocabulary();
  if (words) $("editions").replaceChildren(...words.editions.map((e) => el("option", {}, e)));
  const inputs = EDITABLE.map((k) => {
    const input = fieldInput(k, rec[k] || "", words);
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

/** 下架 (a note saying why, for the teacher) and 重新上架: a reviewer's own steps on a published lesson.
 *  @param {LibraryItem} rec */
function renderTakeDown(rec) {
  $("takedownbox").hidden = !(rec.can.take_down || rec.can.republish);
  const form = $("takedown", HTMLFormElement);
  $("takedown-note").hidden = !rec.can.take_down;
  $("takedown-go").hidden = !rec.can.take_down;
  $("republish-go").hidden = !rec.can.republish;
  form.onsubmit = async (event) => {
    event.preventDefault();
    const down = event.submitter === $("takedown-go");
    const note = fieldValue(form, "note").trim();
    if (down && !note) { $("takedownstatus").textContent = t("takeDownNote"); return; }
    try {
      await api(`/api/library/${recId}/${down ? "take-down" : "republish"}`, { method: "POST", body: { note } });
      $("takedownstatus").textContent = t(`state.${down ? "taken_down" : "published"}`);
      refresh();
    } catch (err) { $("takedownstatus").textContent = errorText(err); }
  };
}

async function startExport() {
  try { await api(`/api/library/${recId}/export`, { method: "POST" }); } catch (err) { showError(err); }
  refresh();
}

async function refresh() {
  try {
    const rec = /** @type {LibraryItem} */ (await api(`/api/library/${encodeURIComponent(recId)}`));
    renderDetails(rec); renderVideo(rec); renderCompose(rec); renderSources(rec); renderDownloads(rec);
    renderEdit(rec); renderReview(rec); renderTakeDown(rec);
  } catch (err) { showError(err); }
}

applyText();
$("back", HTMLAnchorElement).href = pageLink("/library");
refresh();
