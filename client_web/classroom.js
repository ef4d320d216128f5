// @ts-check
// Classroom page: one click to enter, the teacher large (or the courseware large with the teacher small),
// a connection-quality indicator from this page's own getStats, full screen, and a visible note while
// the session rebuilds itself after a drop. The interactive classroom: this classroom's small camera view and
// microphone go to the teacher (the microphone off until the classroom speaks), a raise-hand button with the
// place in the queue, a classroom on stage seen and heard, and the lesson's chat. Protocol work is in
// protocol.js.
import { ClassroomSession, fragmentParams, readClaims } from "./protocol.js";
import { applyText, errorCode, errorText, otherLanguageHref, otherLanguageLabel, t } from "./i18n.js";
import { byId, countdown, stopCountdown } from "./dom.js";
import { attach, capture, createdTracks, liveTrack, stopAll, syncAudio } from "./media.js";
import { submitChat } from "./chat.js";
import { setupPrecheck } from "./precheck.js";

const QUALITY_INTERVAL_MS = 2000;
const RECONNECTED_NOTE_MS = 4000;
const HAND_REFRESH_MS = 5000; // while the hand is up, ask for our place again (others' hands go down)
const RETRY_S = 10; // a server that cannot be reached: enter again after this many seconds
const params = new URLSearchParams(location.search);
// the camera view the teacher sees: small (the server caps a classroom's uplink at ~150 kbit/s)
const [CAMERA_W, CAMERA_H] = (params.get("video") || "320x180").split("x").map(Number);
const CAMERA_FPS = 15;

// ?screen=1 in a frame of /screen (a classroom's standing screen): enter by itself, and tell the screen when the
// lesson is over for this page (it goes back to its timetable); the screen's 「点击开启声音」 starts the sound here
const onScreen = params.get("screen") === "1" && window.parent !== window;

const $ = byId;
const token = fragmentParams().get("token");
const claims = token ? readClaims(token) : null;

/** @typedef {import("./protocol.js").ReceivedMedia} ReceivedMedia */

/** @type {ClassroomSession | null} */
let session = null;
/** @type {MediaStream | null} */
let localStream = null;
/** @type {import("./protocol.js").Quality | null} */
let lastQuality = null;
/** @type {ReturnType<typeof setInterval> | undefined} */
let qualityTimer;
/** @type {ReturnType<typeof setInterval> | null} */
let handTimer = null;
let layout = "none"; // what is on screen: none | camera | screen
let swapped = false; // the classroom's choice while the courseware is shared: the teacher large, the slides small
let pipHidden = false; // ... or the small picture hidden
let lastFrameAt = 0; // performance.now() of the large video's last frame painted
let lastPipFrameAt = 0; // ... and of the small one
const STALLED_MS = 2500; // no new frame for this long: the picture is paused (a weak link), say so
/** What this classroom's camera or microphone could not do (no camera, denied, http://): shown whenever the
 *  banner has nothing more pressing to say. */
let deviceNote = "";

/** @type {ReturnType<typeof setupPrecheck> | null} */
let precheck = null;

window.ketang = {
  get precheck() { return precheck; },
  get session() { return session; },
  get pc() { return session && session.pc; },
  get sendPc() { return session && session.sendPc; },
  get layout() { return layout; },
  get swapped() { return swapped; },
  get stream() { return localStream; },
  get tracks() { return createdTracks; }, // every camera and microphone track this page opened
};

/** Tell the standing screen framing this page how the lesson went for it: `ended` (the teacher ended it),
 *  `removed`, or `refused` with the server's code (a lesson already over, a token the screen should not retry).
 *  @param {string} state  @param {string} [code] */
function tellScreen(state, code = "") {
  if (onScreen) window.parent.postMessage({ type: "ketang-classroom", state, code }, location.origin);
}

/** @param {HTMLElement} el  @param {string} key  @param {Record<string, string | number>} [vars] */
function label(el, key, vars) {
  el.dataset.i18n = key;
  el.textContent = t(key, vars);
}

/** @param {string} text  @param {string} [cls] */
function banner(text, cls = "") {
  $("banner").textContent = text;
  $("banner").className = `banner ${cls}`;
  $("banner").hidden = !text;
}

/** @param {string} text */
function message(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

/** The overlay over the lesson (it takes clicks, #message does not): a note of what happened, and either the
 *  进入课堂 button or one action of its own (「在此处继续」); `note` "" and no action: the usual 进入课堂.
 *  @param {string} note  @param {{key: string, run: () => void} | null} [action] */
function overlay(note, action = null) {
  const box = $("overlay");
  const found = box.querySelector("p.overlay-note");
  const p = found instanceof HTMLElement ? found : document.createElement("p");
  if (!found) {
    p.className = "overlay-note";
    box.prepend(p);
  }
  p.textContent = note;
  p.hidden = !note;
  const hint = box.querySelector("p[data-i18n]");
  if (hint instanceof HTMLElement) hint.hidden = Boolean(note);
  box.querySelector("button.overlay-action")?.remove();
  $("enter").hidden = Boolean(action);
  if (action) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "primary big overlay-action";
    b.dataset.i18n = action.key;
    b.textContent = t(action.key);
    b.addEventListener("click", action.run);
    box.append(b);
  }
  box.hidden = false;
}

/** A live mark in the header whenever this classroom's camera or microphone is on: nobody is watched unknowingly. */
function renderLive() {
  const found = document.querySelector(".live-indicator");
  const el = found instanceof HTMLElement ? found : document.createElement("span");
  if (!found) {
    el.className = "live-indicator";
    el.setAttribute("role", "status");
    $("quality").before(el);
  }
  const parts = [];
  if (liveTrack("video", true)) parts.push(t("live.camera"));
  if (liveTrack("audio", true)) parts.push(t("live.mic"));
  el.textContent = parts.length ? `● ${parts.join(" · ")}` : "";
  el.hidden = !parts.length;
  el.dataset.camera = String(liveTrack("video", true));
  el.dataset.microphone = String(liveTrack("audio", true));
}

/** The server cannot be reached: say so with a countdown, then enter again (or at once, with the button). */
function retryLater() {
  countdown(RETRY_S, (left) => overlay(t("error.unreachable", { seconds: left })), enter);
}


/** Whose track an `offer`/`tracks` entry is: the teacher's, or a classroom's on stage.
 *  @param {ReceivedMedia} m */
function fromTeacher(m) {
  if (!m.participant) return true;
  const p = session?.participants.get(m.participant);
  return Boolean(p && p.role === "teacher");
}

/** Courseware large with the teacher small while it is shared; otherwise the teacher large. A classroom on
 *  stage is shown at the top right, and heard. */
function showMedia() {
  const media = session ? session.media() : [];
  const teacher = media.filter(fromTeacher);
  const screen = teacher.find((m) => m.kind === "video" && m.source === "screen");
  // 只看课件: the server sends no camera, so its slot shows nothing worth a picture
  const camera = session && !session.camera ? undefined
    : teacher.find((m) => m.kind === "video" && m.source !== "screen");
  const audio = teacher.find((m) => m.kind === "audio");
  const both = Boolean(screen && camera);
  const large = both && swapped ? camera : (screen || camera);
  const small = both ? (swapped ? screen : camera) : undefined;
  attach($("main-video", HTMLVideoElement), large ? large.receiverTrack : null);
  attach($("pip-video", HTMLVideoElement), small && !pipHidden ? small.receiverTrack : null);
  $("pip-video", HTMLVideoElement).hidden = !small || pipHidden;
  $("pip-controls").hidden = !small || pipHidden;
  $("pip-show").hidden = !small || !pipHidden;
  attach($("audio", HTMLAudioElement), audio ? audio.receiverTrack : null);
  layout = screen ? "screen" : camera ? "camera" : "none";
  document.body.dataset.layout = layout;
  $("main-video", HTMLVideoElement).title = large === screen && screen ? t("classroom.courseware") : t("classroom.teacher");
  const waiting = !teacher.some((m) => m.kind === "video") && !audio;
  if (session && !session.ended && !session.removed) message(waiting ? t("classroom.waiting") : "");
  renderNoVideo();
  showGuests(media.filter((m) => !fromTeacher(m)));
}

/** Why no picture shows while the sound plays ("" when a picture does): the classroom's own choice, courseware
 *  only with no courseware shared, or a paused picture (the server stopped the video for a weak link). */
function noVideoReason() {
  if (!session || session.ended || session.removed) return "";
  const media = session.media().filter(fromTeacher);
  if (!media.length) return "";
  if (!session.video) return t("classroom.noVideo.audioOnly");
  if (!media.some((m) => m.kind === "video")) return t("classroom.noVideo.noCamera");
  const screen = media.some((m) => m.kind === "video" && m.source === "screen");
  if (!session.camera && !screen) return t("classroom.noVideo.noSlides");
  const main = $("main-video", HTMLVideoElement);
  if (main.srcObject && performance.now() - lastFrameAt > STALLED_MS) return t("classroom.noVideo.paused");
  return "";
}

function renderNoVideo() {
  const pip = $("pip-video", HTMLVideoElement);
  pip.classList.toggle("stalled", Boolean(pip.srcObject) && performance.now() - lastPipFrameAt > STALLED_MS);
  const reason = noVideoReason();
  $("no-video-text").textContent = reason;
  $("no-video").hidden = !reason;
  document.body.dataset.noVideo = String(Boolean(reason));
}

/** Count painted frames of the large and the small video, so a frozen picture is noticed. */
function watchFrames() {
  /** @param {HTMLVideoElement} el  @param {(at: number) => void} seen */
  const watch = (el, seen) => {
    /** @type {VideoFrameRequestCallback} */
    const painted = (at) => {
      seen(at);
      el.requestVideoFrameCallback(painted);
    };
    if (typeof el.requestVideoFrameCallback === "function") el.requestVideoFrameCallback(painted);
    else el.addEventListener("timeupdate", () => seen(performance.now()));
    el.addEventListener("emptied", () => seen(performance.now())); // a new track: give it time
  };
  watch($("main-video", HTMLVideoElement), (at) => {
    lastFrameAt = at;
    if (!$("no-video").hidden) renderNoVideo();
  });
  watch($("pip-video", HTMLVideoElement), (at) => {
    lastPipFrameAt = at;
    if ($("pip-video").classList.contains("stalled")) renderNoVideo();
  });
  setInterval(renderNoVideo, 1000);
}

/** @param {ReceivedMedia[]} guestMedia */
function showGuests(guestMedia) {
  const names = new Map((session ? session.onStage : []).map((p) => [p.id, p.name]));
  const videos = guestMedia.filter((m) => m.kind === "video");
  const box = $("guests");
  const figures = videos.map((m) => {
    const participant = m.participant || "";
    const found = box.querySelector(`figure[data-participant="${CSS.escape(participant)}"]`);
    let fig = found instanceof HTMLElement ? found : null;
    if (!fig) {
      fig = document.createElement("figure");
      fig.dataset.participant = participant;
      const video = document.createElement("video");
      video.autoplay = true;
      video.muted = true; // its sound plays through #guest-audio
      video.playsInline = true;
      fig.append(video, document.createElement("figcaption"));
    }
    const caption = fig.querySelector("figcaption");
    const video = fig.querySelector("video");
    if (!caption || !video) throw new Error("a guest figure without its caption or video");
    caption.textContent = t("classroom.stageGuest", { name: names.get(participant) || "" });
    attach(video, m.receiverTrack);
    return fig;
  });
  if (figures.length !== box.children.length || figures.some((f, i) => box.children[i] !== f)) {
    box.replaceChildren(...figures);
    for (const f of figures) f.querySelector("video")?.play().catch(() => {});
  }
  const sound = $("guest-audio");
  syncAudio(sound, guestMedia.filter((m) => m.kind === "audio"));
}

async function updateQuality() {
  if (!session || !session.pc || session.ended || session.removed) return;
  const q = await session.quality(lastQuality);
  if (!session || session.ended || session.removed || session.closedByUs) return; // ended meanwhile: stays reset
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

/** Whether this page is in the lesson now: joined, and not ended, removed or replaced. */
function isLive() {
  return Boolean(session && session.me && !session.ended && !session.removed && !session.replaced);
}

// -- speaking: hand and microphone ---------------------------------------------------------------------------

function renderSpeak() {
  const live = isLive();
  // after the end (or a replaced page) nothing of the lesson's state holds any more: no hand, stage or mute
  const state = (live && session && session.state) || { hand: false, stage: false, muted: false };
  const hand = $("hand", HTMLButtonElement);
  hand.disabled = !live || state.stage;
  label(hand, state.hand ? "classroom.handDown" : "classroom.hand");
  hand.classList.toggle("on", state.hand);
  const status = $("hand-status");
  if (state.stage) {
    status.textContent = t(state.muted ? "classroom.onStageMuted" : "classroom.onStage");
  } else if (session && state.hand) {
    status.textContent = session.handPosition
      ? t("classroom.handPosition", { position: session.handPosition }) : t("classroom.handUp");
  } else if (state.muted) {
    status.textContent = t("classroom.mutedByTeacher");
  } else {
    status.textContent = "";
  }
  status.hidden = !status.textContent;
  status.className = `side-status${state.stage ? " onstage" : state.muted ? " muted" : ""}`;
  $("self-box").classList.toggle("onstage", state.stage);

  const mic = $("mic", HTMLButtonElement);
  const hasMic = Boolean(session && session.sending.get("microphone"));
  mic.disabled = !live || !hasMic || state.muted;
  if (!live && session) label(mic, "classroom.micClosed");
  else if (!hasMic) label(mic, "classroom.noMic");
  else if (state.muted) label(mic, "classroom.micMuted");
  else label(mic, session?.microphoneOn ? "classroom.micOff" : "classroom.micOn");
  mic.classList.toggle("on", hasMic && Boolean(session?.microphoneOn) && !state.muted);
  mic.classList.toggle("muted", state.muted);
  document.body.classList.toggle("on-stage", state.stage);
  renderLive();

  if (live && state.hand) {
    handTimer ??= setInterval(refreshHand, HAND_REFRESH_MS);
  } else {
    if (handTimer !== null) clearInterval(handTimer);
    handTimer = null;
  }
}

/** Our place in the queue changes when hands ahead of ours go down; raising again keeps the place. */
async function refreshHand() {
  // not on stage: being put on stage lowers the hand, and the `stage` event may come before that news
  if (!session || !session.state || !session.state.hand || session.state.stage) return;
  try {
    await session.hand(true);
  } catch (err) {
    console.warn("hand:", err);
  }
}

async function toggleHand() {
  if (!session) return;
  const up = !(session.state && session.state.hand);
  $("hand", HTMLButtonElement).disabled = true;
  try {
    await session.hand(up);
  } catch (err) {
    banner(errorText(err), "warn");
  }
  renderSpeak();
}

function toggleMic() {
  if (!session) return;
  session.setMicrophone(!session.microphoneOn);
  renderSpeak();
}

// -- chat -----------------------------------------------------------------------------------------------------

function renderChat() {
  const messages = session ? session.messages : [];
  const list = $("chat-list");
  list.replaceChildren(...messages.map((m) => {
    const li = document.createElement("li");
    li.dataset.message = m.id;
    li.className = m.role === "teacher" ? "from-teacher" : m.participant === session?.me?.id ? "mine" : "";
    const who = document.createElement("b");
    who.textContent = m.role === "teacher" ? `${m.name}（${t("chat.teacher")}）` : m.name;
    const text = document.createElement("p");
    text.textContent = m.text;
    li.append(who, text);
    return li;
  }));
  list.scrollTop = list.scrollHeight;
  renderChatMode();
}

function renderChatMode() {
  const live = isLive();
  const open = !session || session.settings.chat_classrooms;
  $("chat-off").hidden = open;
  $("chat-input", HTMLInputElement).disabled = !live || !open;
  $("chat-send", HTMLButtonElement).disabled = !live || !open;
}

/** @param {Event} e */
async function sendChat(e) {
  try {
    await submitChat(e, session, $("chat-input", HTMLInputElement), $("chat-send", HTMLButtonElement));
  } catch (err) {
    banner(errorText(err), "warn");
    setTimeout(() => { if ($("banner").textContent === errorText(err)) banner(""); }, RECONNECTED_NOTE_MS);
  }
  renderChatMode();
}

// -- entering the lesson ----------------------------------------------------------------------------------

/** The classroom's camera (small) and microphone for the teacher; the lesson goes on without them. */
async function openCamera() {
  if (localStream) return localStream;
  deviceNote = "";
  const video = { width: { ideal: CAMERA_W }, height: { ideal: CAMERA_H }, frameRate: { ideal: CAMERA_FPS, max: CAMERA_FPS } };
  const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  try {
    localStream = await capture({ video, audio });
  } catch (err) {
    localStream = null;
    if (errorCode(err) !== "insecure") {
      for (const constraints of [{ audio }, { video }]) { // no camera: still heard; no microphone: still seen
        try {
          localStream = await capture(constraints);
          break;
        } catch {
          localStream = null;
        }
      }
    }
    const code = localStream && !localStream.getAudioTracks().length ? "no_microphone" : errorCode(err);
    deviceNote = t("classroom.stillWatching", { error: errorText(code) });
    banner(deviceNote, "warn");
  }
  if (localStream) {
    for (const track of localStream.getVideoTracks()) track.contentHint = "motion";
    $("self-video", HTMLVideoElement).srcObject = localStream;
    $("self-video", HTMLVideoElement).play().catch(() => {});
  }
  $("self-box").hidden = !(localStream && localStream.getVideoTracks().length);
  renderLive();
  return localStream;
}

/** The lesson is over for this page (ended, removed, replaced): every camera and microphone track stops, and
 *  nothing on screen claims otherwise (signal, 老师正在看, mute, hand).
 *  @param {string} text */
function stopped(text) {
  banner("");
  message(text);
  clearInterval(qualityTimer);
  lastQuality = null;
  $("quality").className = "quality none";
  $("quality").title = "";
  $("quality-text").textContent = t("quality.none");
  $("quality-detail").textContent = "";
  const box = $("self-box");
  delete box.dataset.seen;
  const caption = box.querySelector("figcaption");
  if (caption) {
    caption.dataset.i18n = "classroom.self";
    caption.textContent = t("classroom.self");
  }
  for (const id of ["main-video", "pip-video", "audio"]) $(id, HTMLMediaElement).srcObject = null;
  $("guests").replaceChildren();
  $("guest-audio").replaceChildren();
  stopAll();
  localStream = null;
  $("self-video", HTMLVideoElement).srcObject = null;
  box.hidden = true;
  $("audio-only", HTMLButtonElement).disabled = true;
  $("low-video", HTMLButtonElement).disabled = true;
  $("slides-only", HTMLButtonElement).disabled = true;
  for (const id of ["pip-controls", "pip-show", "no-video"]) $(id).hidden = true;
  renderSpeak();
  renderChatMode();
}

async function enter() {
  stopCountdown();
  overlay("");
  $("overlay").hidden = true;
  message("");
  // audio plays only after this click (browsers' autoplay rule): the audio element is started here
  $("audio", HTMLAudioElement).play().catch(() => {});
  const stream = await openCamera();
  if (!token || !claims) return; // main() does not offer to enter then
  const lesson = claims.lesson;
  const current = new ClassroomSession(token);
  session = current;
  $("audio-only", HTMLButtonElement).disabled = false;
  $("low-video", HTMLButtonElement).disabled = false;
  $("slides-only", HTMLButtonElement).disabled = false;
  current.on("lesson", (e) => {
    $("lesson-title").textContent = e.detail.lesson?.title || lesson || "";
  });
  current.on("media", showMedia);
  current.on("stage", () => {
    showMedia();
    renderSpeak();
    refreshHand(); // a classroom put on stage has left the queue: ours may have moved up
  });
  current.on("classroom-state", (e) => {
    // on stage with the hand up: our position refresh crossed the server's lowering it; lower it again
    if (e.detail.participant === current.me?.id && e.detail.stage && e.detail.hand) {
      current.hand(false).catch((err) => console.warn("hand:", err));
    }
    renderSpeak();
  });
  current.on("hand", renderSpeak);
  current.on("microphone", renderSpeak);
  current.on("settings", renderChatMode);
  current.on("chat", renderChat);
  current.on("chat-deleted", renderChat);
  current.on("publishing", (e) => {
    if (e.detail.error) banner(t("classroom.publishError", { error: errorText(e.detail.error) }), "warn");
  });
  current.on("demand", (e) => {
    // the server says whether anyone receives our camera; what nobody receives is not sent
    const box = $("self-box");
    box.dataset.seen = e.detail.video ? "yes" : "no";
    const caption = box.querySelector("figcaption");
    if (!caption) return;
    caption.dataset.i18n = e.detail.video ? "classroom.seen" : "classroom.unseen";
    caption.textContent = t(caption.dataset.i18n);
  });
  let reconnecting = false;
  current.on("status", (e) => {
    const { state } = e.detail;
    if (state === "connecting") banner(t("classroom.connecting"));
    else if (state === "reconnecting") {
      reconnecting = true;
      banner(t("classroom.reconnecting"), "warn");
    } else if (state === "connected") {
      if (reconnecting) {
        banner(t("classroom.reconnected"), "ok");
        setTimeout(() => { if (!reconnecting) banner(deviceNote, "warn"); }, RECONNECTED_NOTE_MS);
        reconnecting = false;
      } else {
        banner(deviceNote, "warn");
      }
      renderSpeak();
      renderChatMode();
    } else if (state === "replaced") {
      // the same link opened elsewhere (close code 4001): this page lets go of everything; it may take it back
      stopped("");
      overlay(t("error.replaced"), { key: "resume", run: enter });
    } else if (state === "removed") {
      document.body.dataset.layout = "removed";
      stopped(errorText("removed"));
      tellScreen("removed");
    }
  });
  current.on("ended", () => {
    document.body.dataset.layout = "ended";
    stopped(t("lesson.ended"));
    banner(t("lesson.endedNext"));
    tellScreen("ended");
  });
  try {
    await current.start(stream);
  } catch (err) {
    // a failed join keeps no camera or microphone open
    stopAll();
    localStream = null;
    $("self-video", HTMLVideoElement).srcObject = null;
    $("self-box").hidden = true;
    renderLive();
    banner("");
    $("audio-only", HTMLButtonElement).disabled = true;
    $("low-video", HTMLButtonElement).disabled = true;
    const code = errorCode(err);
    if (code === "lesson_locked") {
      // readable on the overlay, above 进入课堂: they may press it again once the teacher unlocks
      overlay(errorText(code));
      $("message").textContent = errorText(code);
      $("message").hidden = true;
    } else if (code === "unreachable" || code === "unavailable" || code === "draining"
        || code === "overloaded") {
      retryLater();
    } else {
      document.body.dataset.layout = "removed"; // the plain full-page note (a bad link cannot be retried)
      message(errorText(err));
      tellScreen("refused", code);
    }
    return;
  }
  if (current.removed || current.ended) return;
  showMedia();
  renderSpeak();
  renderChat();
  qualityTimer = setInterval(updateQuality, QUALITY_INTERVAL_MS);
}

/** The smallest video layer only (流畅), or the server's choice again: a school that wants its link calm. */
async function toggleLowVideo() {
  if (!session) return;
  const low = session.layer !== "low"; // the click switches
  $("low-video", HTMLButtonElement).disabled = true;
  try {
    await session.setLayer(low ? "low" : "auto");
    const key = low ? "classroom.autoVideo" : "classroom.lowVideo";
    $("low-video", HTMLButtonElement).dataset.i18n = key;
    $("low-video", HTMLButtonElement).textContent = t(key);
    $("low-video", HTMLButtonElement).classList.toggle("active", low);
    banner(low ? t("classroom.lowVideoOn") : "");
  } finally {
    $("low-video", HTMLButtonElement).disabled = false;
  }
}

/** 只看课件+声音: the courseware and the sound, no camera (the server stops sending it: a weak link's choice). */
async function toggleSlidesOnly() {
  if (!session) return;
  const slidesOnly = session.camera; // the click switches
  $("slides-only", HTMLButtonElement).disabled = true;
  try {
    await session.setCamera(!slidesOnly);
    label($("slides-only"), slidesOnly ? "classroom.camerasBack" : "classroom.slidesOnly");
    $("slides-only", HTMLButtonElement).classList.toggle("active", slidesOnly);
    banner(slidesOnly ? t("classroom.slidesOnlyOn") : "");
    showMedia();
  } finally {
    $("slides-only", HTMLButtonElement).disabled = false;
  }
}

async function toggleAudioOnly() {
  if (!session) return;
  const audioOnly = session.video; // the click switches
  $("audio-only", HTMLButtonElement).disabled = true;
  try {
    await session.setVideo(!audioOnly);
    const key = audioOnly ? "classroom.videoBack" : "classroom.audioOnly";
    $("audio-only", HTMLButtonElement).dataset.i18n = key;
    $("audio-only", HTMLButtonElement).textContent = t(key);
    $("audio-only", HTMLButtonElement).classList.toggle("active", audioOnly);
    banner(audioOnly ? t("classroom.audioOnlyOn") : "");
    renderNoVideo();
  } finally {
    $("audio-only", HTMLButtonElement).disabled = false;
  }
}

function toggleFullscreen() {
  if (document.fullscreenElement) document.exitFullscreen();
  else document.documentElement.requestFullscreen().catch(() => {});
}

function main() {
  applyText();
  $("lang", HTMLAnchorElement).textContent = otherLanguageLabel;
  $("lang", HTMLAnchorElement).href = otherLanguageHref();
  $("quality-text").textContent = t("quality.none");
  if (!token || !claims) {
    $("overlay").hidden = true;
    message(t("token.missing"));
    return;
  }
  $("lesson-title").textContent = claims.title || claims.lesson || "";
  $("classroom-name").textContent = claims.name || "";
  document.title = `${t("app.name")} · ${claims.name}`;
  $("enter", HTMLButtonElement).addEventListener("click", enter);
  // 课前检测: before entering (next to 进入课堂) and at any time after (below the chat)
  precheck = setupPrecheck({ button: $("precheck-open", HTMLButtonElement), token,
    video: { width: { ideal: CAMERA_W }, height: { ideal: CAMERA_H } } });
  $("precheck-again", HTMLButtonElement).addEventListener("click", () => precheck?.open());
  $("fullscreen").addEventListener("click", toggleFullscreen);
  $("audio-only", HTMLButtonElement).addEventListener("click", toggleAudioOnly);
  $("low-video", HTMLButtonElement).addEventListener("click", toggleLowVideo);
  $("slides-only", HTMLButtonElement).addEventListener("click", toggleSlidesOnly);
  $("pip-swap").addEventListener("click", () => { swapped = !swapped; showMedia(); });
  $("pip-hide").addEventListener("click", () => { pipHidden = true; showMedia(); });
  $("pip-show").addEventListener("click", () => { pipHidden = false; showMedia(); });
  watchFrames();
  $("hand", HTMLButtonElement).addEventListener("click", toggleHand);
  $("mic", HTMLButtonElement).addEventListener("click", toggleMic);
  $("chat-form").addEventListener("submit", sendChat);
  if (onScreen) {
    document.body.classList.add("on-screen");
    window.addEventListener("message", (e) => {
      if (e.origin !== location.origin || e.source !== window.parent || e.data?.type !== "ketang-screen") return;
      if (e.data.sound) { // the screen was clicked: the browser lets sound start now
        $("audio", HTMLAudioElement).play().catch(() => {});
        for (const a of $("guest-audio").querySelectorAll("audio")) a.play().catch(() => {});
      }
    });
    enter();
  }
  document.addEventListener("fullscreenchange", () => {
    const key = document.fullscreenElement ? "classroom.exitFullscreen" : "classroom.fullscreen";
    $("fullscreen").dataset.i18n = key;
    $("fullscreen").textContent = t(key);
  });
}

main();
