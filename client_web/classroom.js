// Classroom page: one click to enter, the teacher large (or the courseware large with the teacher small),
// a connection-quality indicator from this page's own getStats, full screen, and a visible note while
// the session rebuilds itself after a drop. Protocol work is in protocol.js.
import { ClassroomSession, fragmentParams, readClaims } from "./protocol.js";
import { applyText, otherLanguageHref, otherLanguageLabel, t } from "./i18n.js";

const QUALITY_INTERVAL_MS = 2000;
const RECONNECTED_NOTE_MS = 4000;

const $ = (id) => document.getElementById(id);
const token = fragmentParams().get("token");
const claims = token ? readClaims(token) : null;

let session = null;
let lastQuality = null;
let layout = "none"; // what is on screen: none | camera | screen

window.ketang = {
  get session() { return session; },
  get pc() { return session && session.pc; },
  get layout() { return layout; },
};

function banner(text, cls = "") {
  $("banner").textContent = text;
  $("banner").className = `banner ${cls}`;
  $("banner").hidden = !text;
}

function message(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function attach(el, track) {
  const current = el.srcObject && el.srcObject.getTracks()[0];
  if (current === track) return;
  el.srcObject = track ? new MediaStream([track]) : null;
  if (track) el.play().catch(() => {});
}

/** Courseware large with the teacher small while it is shared; otherwise the teacher large. */
function showMedia() {
  const media = session ? session.media() : [];
  const screen = media.find((m) => m.kind === "video" && m.source === "screen");
  const camera = media.find((m) => m.kind === "video" && m.source !== "screen");
  const audio = media.find((m) => m.kind === "audio");
  attach($("main-video"), (screen || camera)?.receiverTrack || null);
  attach($("pip-video"), screen && camera ? camera.receiverTrack : null);
  $("pip-video").hidden = !(screen && camera);
  attach($("audio"), audio ? audio.receiverTrack : null);
  layout = screen ? "screen" : camera ? "camera" : "none";
  document.body.dataset.layout = layout;
  $("main-video").title = screen ? t("classroom.courseware") : t("classroom.teacher");
  if (!session.ended) message(layout === "none" ? t("classroom.waiting") : "");
}

async function updateQuality() {
  if (!session || !session.pc || session.ended) return;
  const q = await session.quality(lastQuality);
  lastQuality = q;
  const el = $("quality");
  el.className = `quality ${q.level}`;
  $("quality-text").textContent = t(`quality.${q.level}`);
  const detail = t("quality.detail", {
    loss: `${(q.loss * 100).toFixed(1)} %`,
    fps: q.video ? Math.round(q.video.fps) : "—",
    jitter: q.audio ? `${Math.round(q.audio.jitter * 1000)} ms` : "—",
    rtt: q.rtt !== null ? `${Math.round(q.rtt * 1000)} ms` : "—",
  });
  el.title = detail;
  $("quality-detail").textContent = detail;
}

async function enter() {
  $("overlay").hidden = true;
  session = new ClassroomSession(token);
  $("audio-only").disabled = false;
  session.addEventListener("lesson", (e) => {
    $("lesson-title").textContent = e.detail.lesson.title || claims.lesson;
  });
  session.addEventListener("media", showMedia);
  let reconnecting = false;
  session.addEventListener("status", (e) => {
    const { state } = e.detail;
    if (state === "connecting") banner(t("classroom.connecting"));
    else if (state === "reconnecting") {
      reconnecting = true;
      banner(t("classroom.reconnecting"), "warn");
    } else if (state === "connected") {
      if (reconnecting) {
        banner(t("classroom.reconnected"), "ok");
        setTimeout(() => { if (!reconnecting) banner(""); }, RECONNECTED_NOTE_MS);
        reconnecting = false;
      } else {
        banner("");
      }
    } else if (state === "replaced") {
      banner(t("classroom.replaced"), "warn");
    }
  });
  session.addEventListener("ended", () => {
    banner("");
    message(t("lesson.ended"));
    document.body.dataset.layout = "ended";
    for (const id of ["main-video", "pip-video", "audio"]) $(id).srcObject = null;
  });
  // audio plays only after this click (browsers' autoplay rule): the audio element is started here
  $("audio").play().catch(() => {});
  try {
    await session.start();
  } catch (err) {
    banner(t("error", { error: err.message }), "warn");
    return;
  }
  showMedia();
  setInterval(updateQuality, QUALITY_INTERVAL_MS);
}

async function toggleAudioOnly() {
  if (!session) return;
  const audioOnly = session.video; // the click switches
  $("audio-only").disabled = true;
  try {
    await session.setVideo(!audioOnly);
    const key = audioOnly ? "classroom.videoBack" : "classroom.audioOnly";
    $("audio-only").dataset.i18n = key;
    $("audio-only").textContent = t(key);
    $("audio-only").classList.toggle("active", audioOnly);
    banner(audioOnly ? t("classroom.audioOnlyOn") : "");
  } finally {
    $("audio-only").disabled = false;
  }
}

function toggleFullscreen() {
  if (document.fullscreenElement) document.exitFullscreen();
  else document.documentElement.requestFullscreen().catch(() => {});
}

function main() {
  applyText();
  $("lang").textContent = otherLanguageLabel;
  $("lang").href = otherLanguageHref();
  $("quality-text").textContent = t("quality.none");
  if (!token || !claims) {
    $("overlay").hidden = true;
    message(t("token.missing"));
    return;
  }
  $("lesson-title").textContent = claims.title || claims.lesson;
  $("classroom-name").textContent = claims.name;
  document.title = `${t("app.name")} · ${claims.name}`;
  $("enter").addEventListener("click", enter);
  $("fullscreen").addEventListener("click", toggleFullscreen);
  $("audio-only").addEventListener("click", toggleAudioOnly);
  document.addEventListener("fullscreenchange", () => {
    const key = document.fullscreenElement ? "classroom.exitFullscreen" : "classroom.fullscreen";
    $("fullscreen").dataset.i18n = key;
    $("fullscreen").textContent = t(key);
  });
}

main();
