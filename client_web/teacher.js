// @ts-check
// Teacher page: devices and preview, start the lesson, courseware share, mute, end; the classrooms with
// their reception figures from the server (polled every 2 s); the interactive classroom: a wall of classroom
// cameras (a page at a time: only the tiles on screen are sent), raised hands with a chime, stage, mute,
// remove, lock, chat, attendance. Protocol work is in protocol.js.
import { TeacherSession, fragmentParams, readClaims } from "./protocol.js";
import { applyText, errorCode, errorText, otherLanguageHref, otherLanguageLabel, t } from "./i18n.js";
import { byId, countdown, stopCountdown } from "./dom.js";
import { attach, capture, createdTracks, mediaAvailable, own, stopAll, syncAudio } from "./media.js";
import { submitChat } from "./chat.js";
import { setupPrecheck } from "./precheck.js";

const STATS_INTERVAL_MS = 2000;
const ATTENDANCE_INTERVAL_MS = 5000;
const END_CONFIRM_MS = 4000;
const REMOVE_CONFIRM_MS = 4000;
const RETRY_S = 10; // a server that cannot be reached: start again after this many seconds
const params = new URLSearchParams(location.search);
// ?wall=N: classroom tiles per wall page (default 16; tests use 2 to show paging with three classrooms)
const WALL_PAGE_SIZE = Math.max(1, Math.min(64, Number(params.get("wall")) || 16));
// ?video=640x360 asks the camera for another size (tests use a small one to spare the CPU)
const [VIDEO_W, VIDEO_H] = (params.get("video") || "1280x720").split("x").map(Number);
// ?fakescreen=1: the courseware is a drawn slide instead of getDisplayMedia (headless tests, demos)
const FAKE_SCREEN = params.get("fakescreen") === "1";
// ?screenaudio=HZ: the drawn slide comes with a steady tone of that pitch as its sound (a stand-in for a shared
// tab's audio in headless tests: a tone the classroom and the recording can be searched for)
const SCREEN_TONE_HZ = Number(params.get("screenaudio")) || 0;

const $ = byId;
const fragment = fragmentParams();
const token = fragment.get("token");
const invites = fragment.getAll("invite");
const claims = token ? readClaims(token) : null;

/** @typedef {import("./protocol.js").Participant} Participant */
/** @typedef {import("./protocol.js").LessonStats} LessonStats */
/** A classroom's tile on the wall: its camera, quality dot, name, marks and buttons.
 *  @typedef {{el: HTMLElement, video: HTMLVideoElement, dot: HTMLElement, name: HTMLElement, marks: HTMLElement,
 *    stage: HTMLButtonElement, mute: HTMLButtonElement, remove: HTMLButtonElement,
 *    removeArmed: ReturnType<typeof setTimeout> | null}} Tile */

/** @type {TeacherSession | null} */
let session = null;
/** @type {ReturnType<typeof import("./precheck.js").setupPrecheck> | null} */
let precheck = null;
/** @type {MediaStream | null} */
let stream = null;
let micMuted = false;
let cameraOff = false;
/** @type {{at: number, octets: Record<string, number>} | null} */
let previousStats = null;
/** @type {ReturnType<typeof setInterval> | undefined} */
let statsTimer;
/** @type {ReturnType<typeof setInterval> | undefined} */
let attendanceTimer;
/** @type {Record<string, string>} participant id -> good | fair | poor | none, from the last stats */
let quality = {};
let wallPage = 0;
/** @type {string[]} classroom ids in the order first seen: a classroom that reconnects keeps its tile's place */
const wallOrder = [];
/** @type {Map<string, Tile>} participant id -> its tile */
const tiles = new Map();
/** @type {string | null} the visible list last sent (JSON), null: send at the next render */
let wallSent = null;
/** @type {string[]} */
let wallVisible = [];
/** @type {AudioContext | null} */
let audioContext = null;
let chimes = 0;

// `pc` is what this page receives (the classrooms), as on the classroom page; `sendPc` what it publishes
window.ketang = {
  get precheck() { return precheck; },
  get session() { return session; },
  get pc() { return session && session.recvPc; },
  get sendPc() { return session && session.sendPc; },
  get wallVisible() { return wallVisible; },
  get wallPage() { return wallPage; },
  get chimes() { return chimes; },
  get tracks() { return createdTracks; }, // every camera, microphone and screen track this page opened
};

/** @param {HTMLElement} el  @param {string} key */
function label(el, key) {
  el.dataset.i18n = key;
  el.textContent = t(key);
}

/** @param {string} text  @param {string} [cls] */
function status(text, cls = "") {
  const el = $("status");
  el.textContent = text;
  el.className = `status ${cls}`;
}

/** The notice line; with `action`, one button after the text (「在此处继续」, 立即重试).
 *  @param {string} text  @param {{key: string, run: () => void} | null} [action] */
function notice(text, action = null) {
  $("notice").textContent = text;
  if (action) {
    $("notice").append(" ", button(action.key, action.run, "notice-action"));
  }
  $("notice").hidden = !text;
}

/** @param {string} key  @param {() => void} onClick  @param {string} [cls] */
function button(key, onClick, cls = "") {
  const b = document.createElement("button");
  b.type = "button";
  if (cls) b.className = cls;
  label(b, key);
  b.addEventListener("click", onClick);
  return b;
}


/** A short two-note chime (WebAudio, no sound file) when a hand goes up. */
function chime() {
  chimes += 1;
  try {
    audioContext ??= new AudioContext();
    const now = audioContext.currentTime;
    const osc = audioContext.createOscillator();
    const gain = audioContext.createGain();
    osc.type = "sine";
    osc.frequency.setValueAtTime(880, now);
    osc.frequency.setValueAtTime(1318.5, now + 0.15);
    gain.gain.setValueAtTime(0.0001, now);
    gain.gain.exponentialRampToValueAtTime(0.25, now + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, now + 0.5);
    osc.connect(gain).connect(audioContext.destination);
    osc.start(now);
    osc.stop(now + 0.55);
  } catch (err) {
    console.warn("chime:", err);
  }
}

/** Whether the lesson goes on for this page: after the end, or once replaced, its last classrooms, hands and
 *  stage are no longer true and are not shown. */
function inLesson() {
  return Boolean(session && !session.ended && !session.replaced);
}

/** @param {number} unixSeconds */
function clock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString(document.documentElement.lang, { hour12: false });
}

// -- the wall: classroom cameras, a page at a time --------------------------------------------------------

/** The classrooms present, in the order first seen.
 *  @returns {Participant[]} */
function presentClassrooms() {
  if (!session || !inLesson()) return [];
  const rooms = [...session.participants.values()].filter((p) => p.role === "classroom");
  for (const p of rooms) if (!wallOrder.includes(p.id)) wallOrder.push(p.id);
  const present = new Map(rooms.map((p) => [p.id, p]));
  return wallOrder.flatMap((id) => present.get(id) ?? []);
}

/** @param {Participant} p  @returns {Tile} */
function makeTile(p) {
  const el = document.createElement("figure");
  el.className = "tile";
  el.dataset.participant = p.id;
  const video = document.createElement("video");
  video.autoplay = true;
  video.muted = true; // the sound plays through the audio elements
  video.playsInline = true;
  const caption = document.createElement("figcaption");
  const dot = document.createElement("i");
  dot.className = "dot";
  const name = document.createElement("span");
  name.className = "name";
  const marks = document.createElement("span");
  marks.className = "marks";
  caption.append(dot, name, marks);
  /** @type {Tile} */
  const tile = { el, video, dot, name, marks, removeArmed: null,
    stage: button("tile.stageOn", () => toggleStage(p.id)),
    mute: button("tile.mute", () => toggleMute(p.id)),
    remove: button("tile.remove", () => removeClassroom(p.id, tile), "danger") };
  tile.stage.title = t("tile.stageTitle");
  tile.mute.title = t("tile.muteTitle");
  tile.remove.title = t("tile.removeTitle");
  const actions = document.createElement("div");
  actions.className = "actions";
  actions.append(tile.stage, tile.mute, tile.remove);
  el.append(video, caption, actions);
  return tile;
}

/** @param {Participant} p  @param {Tile} tile */
function updateTile(p, tile) {
  /** @type {Partial<import("./protocol.js").ClassroomState>} */
  const state = session?.states.get(p.id) || {};
  tile.name.textContent = p.name;
  const level = quality[p.id] || "none";
  tile.dot.className = `dot ${level}`;
  tile.dot.title = t(`quality.${level}`);
  tile.el.classList.toggle("hand", Boolean(state.hand));
  tile.el.classList.toggle("muted", Boolean(state.muted));
  tile.el.classList.toggle("onstage", Boolean(state.stage));
  /** @type {[string, string][]} */
  const marks = [];
  if (state.hand) marks.push(["hand", t("tile.hand")]);
  if (state.muted) marks.push(["muted", t("tile.muted")]);
  if (state.stage) marks.push(["onstage", t("tile.onStage")]);
  tile.marks.replaceChildren(...marks.map(([cls, text]) => {
    const m = document.createElement("span");
    m.className = `mark ${cls}`;
    m.textContent = text;
    return m;
  }));
  label(tile.stage, state.stage ? "tile.stageOff" : "tile.stageOn");
  label(tile.mute, state.muted ? "tile.unmute" : "tile.mute");
  tile.mute.classList.toggle("on", Boolean(state.muted));
  if (!tile.removeArmed) label(tile.remove, "tile.remove");
}

/** Draw the current wall page and tell the server which tiles are on screen (it sends only their video). */
function renderWall() {
  const rooms = presentClassrooms();
  const pages = Math.max(1, Math.ceil(rooms.length / WALL_PAGE_SIZE));
  wallPage = Math.min(wallPage, pages - 1);
  const visible = rooms.slice(wallPage * WALL_PAGE_SIZE, (wallPage + 1) * WALL_PAGE_SIZE);
  $("wall-count").textContent = String(rooms.length);
  $("no-wall").hidden = rooms.length > 0;
  for (const id of tiles.keys()) if (!rooms.some((p) => p.id === id)) tiles.delete(id);
  const els = visible.map((p) => {
    const tile = tiles.get(p.id) ?? makeTile(p);
    tiles.set(p.id, tile);
    updateTile(p, tile);
    return tile.el;
  });
  const wall = $("wall");
  if (els.length !== wall.children.length || els.some((el, i) => wall.children[i] !== el)) {
    wall.replaceChildren(...els);
    for (const el of els) el.querySelector("video")?.play().catch(() => {});
  }
  renderPager(pages);
  sendWall(visible.map((p) => p.id));
  showMedia();
}

/** @param {number} pages */
function renderPager(pages) {
  const pager = $("pager");
  if (pages <= 1) {
    pager.replaceChildren();
    return;
  }
  const go = (/** @type {number} */ page) => () => { wallPage = page; renderWall(); };
  const items = [button("teacher.prevPage", go(Math.max(0, wallPage - 1)))];
  items[0].disabled = wallPage === 0;
  items[0].classList.add("page-prev");
  for (let i = 0; i < pages; i++) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = String(i + 1);
    b.title = t("teacher.pageN", { page: i + 1 });
    b.className = `page${i === wallPage ? " current" : ""}`;
    b.dataset.page = String(i + 1);
    b.addEventListener("click", go(i));
    items.push(b);
  }
  const next = button("teacher.nextPage", go(Math.min(pages - 1, wallPage + 1)));
  next.disabled = wallPage === pages - 1;
  next.classList.add("page-next");
  const where = document.createElement("span");
  where.className = "where";
  where.textContent = t("teacher.page", { page: wallPage + 1, pages });
  pager.replaceChildren(...items, next, where);
}

/** @param {string[]} ids */
function sendWall(ids) {
  wallVisible = ids;
  const key = JSON.stringify(ids);
  if (key === wallSent || !session || !session.sig || !session.me) return;
  wallSent = key;
  session.wall(ids).catch((err) => {
    wallSent = null; // try again at the next render
    console.warn("wall:", err);
  });
}

/** Received media: each classroom's camera on its tile, those on stage large, every microphone audible. */
function showMedia() {
  if (!session) return;
  const media = inLesson() ? session.media() : [];
  /** @type {Map<string, MediaStreamTrack>} */
  const videoOf = new Map();
  for (const m of media) if (m.kind === "video" && m.participant) videoOf.set(m.participant, m.receiverTrack);
  for (const [id, tile] of tiles) attach(tile.video, videoOf.get(id) || null);
  renderStage(videoOf);
  const box = $("classroom-audio");
  syncAudio(box, media.filter((m) => m.kind === "audio"));
}

/** @param {Map<string, MediaStreamTrack>} videoOf */
function renderStage(videoOf) {
  const box = $("stage-videos");
  const on = session && inLesson() ? session.onStage : [];
  const figures = on.map((p) => {
    const found = box.querySelector(`figure[data-participant="${CSS.escape(p.id)}"]`);
    let fig = found instanceof HTMLElement ? found : null;
    if (!fig) {
      fig = document.createElement("figure");
      fig.className = "onstage";
      fig.dataset.participant = p.id;
      const video = document.createElement("video");
      video.autoplay = true;
      video.muted = true;
      video.playsInline = true;
      const caption = document.createElement("figcaption");
      const off = button("tile.stageOff", () => toggleStage(p.id));
      fig.append(video, caption, off);
    }
    const name = p.name || session?.participants.get(p.id)?.name || "";
    const caption = fig.querySelector("figcaption");
    const video = fig.querySelector("video");
    if (!caption || !video) throw new Error("a stage figure without its caption or video");
    caption.textContent = t("teacher.stageCaption", { name });
    attach(video, videoOf.get(p.id) || null);
    return fig;
  });
  if (figures.length !== box.children.length || figures.some((f, i) => box.children[i] !== f)) {
    box.replaceChildren(...figures);
    for (const f of figures) f.querySelector("video")?.play().catch(() => {});
  }
}

/** A moderation request: its reply, or null with the refusal shown.
 *  @template R  @param {Promise<R>} promise  @returns {Promise<R | null>} */
async function act(promise) {
  try {
    return await promise;
  } catch (err) {
    notice(errorText(err, "teacher"));
    return null;
  }
}

/** @param {string} id */
async function toggleStage(id) {
  if (!session) return;
  const on = !session.states.get(id)?.stage;
  if (await act(session.stage(id, on))) notice("");
  renderAll();
}

/** @param {string} id */
async function toggleMute(id) {
  if (!session) return;
  const muted = !session.states.get(id)?.muted;
  if (await act(session.mute(muted, id))) notice("");
  renderAll();
}

/** Remove needs a second press within a few seconds (a dialog is easy to dismiss by mistake, or to confirm).
 *  @param {string} id  @param {Tile} tile */
async function removeClassroom(id, tile) {
  const disarm = () => {
    if (tile.removeArmed) clearTimeout(tile.removeArmed);
    tile.removeArmed = null;
    label(tile.remove, "tile.remove");
    tile.remove.title = t("tile.removeTitle");
    tile.el.querySelector("button.remove-cancel")?.remove();
  };
  if (!tile.removeArmed) {
    label(tile.remove, "tile.removeConfirm");
    tile.remove.title = t("tile.removeConfirmText", { name: tile.name.textContent || "" });
    tile.removeArmed = setTimeout(disarm, REMOVE_CONFIRM_MS);
    tile.remove.after(button("confirm.cancel", disarm, "remove-cancel"));
    return;
  }
  disarm();
  if (session && await act(session.remove(id))) notice("");
}

// -- hands, moderation, chat -------------------------------------------------------------------------------

function renderHands() {
  const queue = session && inLesson() ? session.hands : [];
  $("hand-count").textContent = String(queue.length);
  $("no-hands").hidden = queue.length > 0;
  $("hands").replaceChildren(...queue.map((h) => {
    const li = document.createElement("li");
    li.dataset.participant = h.participant;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = h.name;
    const at = document.createElement("span");
    at.className = "muted";
    at.textContent = t("teacher.handAt", { time: clock(h.raised_at) });
    li.append(name, at, button("tile.stageOn", () => toggleStage(h.participant)));
    return li;
  }));
}

function renderSettings() {
  const settings = session ? session.settings : { locked: false, chat_classrooms: true };
  label($("lock"), settings.locked ? "teacher.unlock" : "teacher.lock");
  $("lock").classList.toggle("on", settings.locked);
  label($("chat-mode"), settings.chat_classrooms ? "teacher.chatOff" : "teacher.chatOn");
  $("chat-mode").classList.toggle("on", !settings.chat_classrooms);
  const notes = [];
  if (settings.locked) notes.push(t("teacher.locked"));
  if (!settings.chat_classrooms) notes.push(t("teacher.chatIsOff"));
  $("settings-note").textContent = notes.join(" · ");
  $("settings-note").hidden = !notes.length;
}

function renderChat() {
  const list = $("chat-list");
  const messages = session ? session.messages : [];
  $("chat-empty").hidden = messages.length > 0;
  list.replaceChildren(...messages.map((m) => {
    const li = document.createElement("li");
    li.dataset.message = m.id;
    li.className = m.role === "teacher" ? "from-teacher" : "";
    const who = document.createElement("b");
    who.textContent = m.role === "teacher" ? `${m.name}（${t("chat.teacher")}）` : m.name;
    const at = document.createElement("span");
    at.className = "at";
    at.textContent = clock(m.at);
    const text = document.createElement("p");
    text.textContent = m.text;
    const del = button("chat.delete", () => { if (session) act(session.chatDelete(m.id)); }, "small");
    del.classList.add("delete");
    li.append(who, at, del, text);
    return li;
  }));
  list.scrollTop = list.scrollHeight;
}

/** @param {Event} e */
async function sendChat(e) {
  try {
    if (await submitChat(e, session, $("chat-input", HTMLInputElement), $("chat-send", HTMLButtonElement))) notice("");
  } catch (err) {
    notice(errorText(err, "teacher"));
  } finally {
    $("chat-send", HTMLButtonElement).disabled = false;
    $("chat-input", HTMLInputElement).focus();
  }
}

// -- attendance ---------------------------------------------------------------------------------------------

/** @param {number | null | undefined} seconds */
function minutes(seconds) {
  return seconds === null || seconds === undefined ? "—" : (seconds / 60).toFixed(1);
}

/** @param {import("./protocol.js").Attendance | null} data */
function renderAttendance(data) {
  const rows = (data && data.classrooms) || [];
  $("no-attendance").hidden = rows.length > 0;
  $("attendance-csv").hidden = !session;
  const pct = (/** @type {number | null | undefined} */ v, digits = 1) => (v === null || v === undefined ? "—" : `${(v * 100).toFixed(digits)}%`);
  $("attendance", HTMLTableElement).tBodies[0].replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.participant = r.participant;
    const cells = [
      r.name,
      r.left_at ? t("att.left") : t("att.online"),
      minutes(r.present_s),
      String(r.sessions ?? "—"),
      String(r.hands ?? "—"),
      minutes(r.stage_s),
      pct(r.loss_avg, 1),
      r.rtt_ms_avg === null || r.rtt_ms_avg === undefined ? "—" : `${Math.round(r.rtt_ms_avg)} ms`,
      r.kbps_avg === null || r.kbps_avg === undefined ? "—" : String(Math.round(r.kbps_avg)),
      pct(r.video_share, 0),
    ];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
}

async function pollAttendance() {
  try {
    if (session) renderAttendance(await session.fetchAttendance());
  } catch (err) {
    console.warn("attendance:", err);
  }
}

/** At the lesson's end: 「本节课录像已存入资源库」 with a link to the lesson's library item (found by the lesson id,
 *  with this page's token: the library lets a lesson's teacher see its own unpublished items). Nothing when the
 *  lesson was not recorded (404). */
async function showLibraryLink() {
  if (!token || !claims) return;
  document.getElementById("library-link")?.remove();
  try {
    const resp = await fetch(`/api/library/lessons/${encodeURIComponent(claims.lesson || "")}`,
      { headers: { Authorization: `Bearer ${token}` } });
    if (!resp.ok) return;
    const item = await resp.json();
    const lang = params.get("lang");
    const href = `/library/play/${encodeURIComponent(item.id)}${lang ? `?lang=${encodeURIComponent(lang)}` : ""}`
      + `#token=${encodeURIComponent(token)}`;
    const line = document.createElement("p");
    line.id = "library-link";
    line.className = "notice";
    const link = document.createElement("a");
    link.href = href;
    link.target = "_blank";
    link.rel = "noopener";
    link.textContent = t("teacher.openLibraryItem");
    line.append(t("teacher.savedToLibrary"), " ", link);
    $("notice").after(line);
  } catch (err) {
    console.warn("library link:", err);
  }
}

/** The CSV needs the teacher's token in a header, which a plain link cannot carry: fetch it, save a Blob. */
/** @param {Event} e */
async function downloadAttendance(e) {
  e.preventDefault();
  if (!session) return;
  try {
    const blob = await session.fetchAttendanceCsv();
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = `attendance-${claims?.lesson}.csv`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    notice(errorText(err, "teacher"));
  }
}

function renderAll() {
  renderWall();
  renderHands();
  renderSettings();
}

/** @param {string} [deviceId] */
function videoConstraints(deviceId) {
  return { width: { ideal: VIDEO_W }, height: { ideal: VIDEO_H }, ...(deviceId ? { deviceId: { exact: deviceId } } : {}) };
}

/** @param {string} [cameraId]  @param {string} [microphoneId] */
async function openDevices(cameraId, microphoneId) {
  const next = await capture({
    video: videoConstraints(cameraId),
    audio: microphoneId ? { deviceId: { exact: microphoneId } } : true,
  });
  const old = stream;
  stream = next;
  $("preview", HTMLVideoElement).srcObject = next;
  if (session && session.pc && !session.closedByUs && !session.ended) { // a stopped session keeps its closed pc
    await session.replaceTrack("camera", next.getVideoTracks()[0]);
    await session.replaceTrack("microphone", next.getAudioTracks()[0]);
  }
  applyMute();
  if (old) for (const track of old.getTracks()) track.stop();
}

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  /** @param {HTMLSelectElement} select  @param {MediaDeviceKind} kind  @param {string | undefined} current */
  const fill = (select, kind, current) => {
    select.replaceChildren();
    devices.filter((d) => d.kind === kind).forEach((d, i) => {
      const option = new Option(d.label || `${kind} ${i + 1}`, d.deviceId);
      option.selected = d.deviceId === current;
      select.append(option);
    });
  };
  fill($("camera", HTMLSelectElement), "videoinput", stream?.getVideoTracks()[0]?.getSettings().deviceId);
  fill($("microphone", HTMLSelectElement), "audioinput", stream?.getAudioTracks()[0]?.getSettings().deviceId);
}

function applyMute() {
  if (!stream) return;
  for (const track of stream.getAudioTracks()) track.enabled = !micMuted;
  for (const track of stream.getVideoTracks()) track.enabled = !cameraOff;
}

/** The courseware for tests and demos without a screen: an animated slide drawn on a canvas. */
function fakeScreenTrack() {
  const canvas = document.createElement("canvas");
  canvas.width = 1280;
  canvas.height = 720;
  const g = canvas.getContext("2d");
  if (!g) throw new Error("no 2d canvas");
  let n = 0;
  const draw = () => {
    g.fillStyle = "#fdfbf3";
    g.fillRect(0, 0, 1280, 720);
    g.fillStyle = "#1d4e89";
    g.fillRect(0, 0, 1280, 110);
    g.fillStyle = "#fff";
    g.font = "bold 56px 'WenQuanYi Micro Hei', sans-serif";
    g.fillText("第三章 一元一次方程", 60, 78);
    g.fillStyle = "#222";
    g.font = "44px 'WenQuanYi Micro Hei', sans-serif";
    g.fillText("例 1：解方程 3x + 5 = 20", 80, 230);
    g.fillText("解：3x = 20 − 5", 80, 330);
    g.fillText("      3x = 15", 80, 410);
    g.fillText("        x = 5", 80, 490);
    g.fillStyle = "#d33";
    g.beginPath();
    g.arc(700 + 300 * Math.sin(n / 10), 600, 24, 0, 2 * Math.PI); // the pointer moves: frames differ
    g.fill();
    n += 1;
  };
  draw();
  const track = own(canvas.captureStream(10).getVideoTracks()[0]);
  const timer = setInterval(draw, 100);
  track.addEventListener("ended", () => clearInterval(timer));
  const stop = track.stop.bind(track);
  track.stop = () => { clearInterval(timer); stop(); };
  return track;
}

/** A steady tone as the drawn slide's sound (?screenaudio=HZ). @param {number} hz */
function fakeScreenSound(hz) {
  const ctx = new AudioContext();
  const tone = ctx.createOscillator();
  tone.frequency.value = hz;
  const gain = ctx.createGain();
  gain.gain.value = 0.3;
  const dest = ctx.createMediaStreamDestination();
  tone.connect(gain).connect(dest);
  tone.start();
  const track = own(dest.stream.getAudioTracks()[0]);
  const stop = track.stop.bind(track);
  track.stop = () => { stop(); ctx.close().catch(() => {}); };
  return track;
}

/** The courseware: a window, a screen or a browser tab — with its sound when the teacher ticks 「分享音频」 in the
 *  browser's picker (Chromium offers it for tabs, and for the whole screen on Windows).
 *  @param {TeacherSession} current */
async function shareScreen(current) {
  /** @type {MediaStreamTrack} */
  let track;
  /** @type {MediaStreamTrack | null} */
  let sound = null;
  if (FAKE_SCREEN) {
    track = fakeScreenTrack();
    if (SCREEN_TONE_HZ) sound = fakeScreenSound(SCREEN_TONE_HZ);
  } else {
    const stream = own(await navigator.mediaDevices.getDisplayMedia({
      video: { frameRate: { ideal: 10 } },
      // the tab's sound for classrooms; the teacher still hears it in the tab itself
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    }));
    track = stream.getVideoTracks()[0];
    sound = stream.getAudioTracks()[0] || null;
  }
  track.contentHint = "detail"; // slides: keep text sharp, drop frames rather than resolution
  $("screen-preview", HTMLVideoElement).srcObject = new MediaStream([track]);
  $("screen-box").hidden = false;
  await current.shareScreen(track, sound);
  const caption = $("screen-box").querySelector("figcaption");
  if (caption) label(caption, sound ? "teacher.screenOnSound" : "teacher.screenOnSilent");
}

/** The classroom's audio-first ladder as the server reports it (docs/weak-networks.md). */
/** @param {LessonStats | null} stats  @param {string} id */
function videoState(stats, id) {
  const ladder = stats && stats.video && stats.video[id];
  if (!ladder) return "—";
  if (!ladder.chosen) return t("video.chosen");
  const state = t(`video.${ladder.state}`);
  // simulcast: which of the camera's layers this classroom gets (high / middle / low)
  const layers = Object.values(ladder.simulcast || {});
  if (ladder.state === "audio" || !layers.length || layers[0].layer === null) return state;
  const { layer, layers: count } = layers[0];
  return `${state} · ${t(`layer.${count - 1 - layer}`)}`;
}

/** Why the server chose this classroom's video state and layer (shown on hover). */
/** @param {LessonStats | null} stats  @param {string} id */
function videoReason(stats, id) {
  const ladder = stats && stats.video && stats.video[id];
  if (!ladder) return "";
  const layers = Object.values(ladder.simulcast || {});
  return [ladder.reason, layers.length ? layers[0].reason : ""].filter(Boolean).join(" · ");
}

/** @param {LessonStats | null} stats */
function renderClassrooms(stats) {
  if (!session || !inLesson()) return; // after the end the table stays empty: no last bitrates
  const rooms = [...session.participants.values()].filter((p) => p.role === "classroom");
  $("classroom-count").textContent = String(rooms.length);
  $("no-classrooms").hidden = rooms.length > 0;
  const now = performance.now();
  /** @type {Record<string, number>} */
  const octets = {};
  const rows = rooms.map((p) => {
    const consumers = (stats && stats.subscribers && stats.subscribers[p.id]) || [];
    const bytes = consumers.reduce((sum, c) => sum + (c.octets_out || 0), 0);
    octets[p.id] = bytes;
    const before = previousStats ? previousStats.octets[p.id] : undefined; // (classrooms there before the teacher)
    const kbps = previousStats && before !== undefined && now > previousStats.at
      ? Math.max(0, ((bytes - before) * 8) / (now - previousStats.at)) : null;
    const loss = consumers.length ? Math.max(...consumers.map((c) => (c.fraction_lost || 0) / 256)) : null;
    const rtts = consumers.map((c) => c.rtt_ms).filter((v) => typeof v === "number");
    const rtt = rtts.length ? Math.max(...rtts) : null;
    const level = loss === null ? "none" : loss > 0.05 ? "poor" : loss > 0.01 ? "fair" : "good";
    const tr = document.createElement("tr");
    tr.dataset.participant = p.id;
    tr.className = level;
    const cells = [
      p.name,
      t(`quality.${level}`),
      loss === null ? "—" : `${(loss * 100).toFixed(1)} %`,
      rtt === null ? "—" : `${Math.round(rtt)} ms`,
      kbps === null ? "—" : `${Math.round(kbps)} kbit/s`,
      videoState(stats, p.id),
    ];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    if (rtt === null) tr.cells[3].title = t("teacher.rttUnknown");
    const why = videoReason(stats, p.id);
    if (why) tr.cells[5].title = why; // why the server paused its video, or chose that layer
    return tr;
  });
  $("classrooms", HTMLTableElement).tBodies[0].replaceChildren(...rows);
  if (stats) {
    previousStats = { at: now, octets };
    quality = Object.fromEntries(rows.map((tr) => [tr.dataset.participant, tr.className]));
    renderWall();
  }
}

async function pollStats() {
  try {
    if (session) renderClassrooms(await session.fetchStats());
  } catch (err) {
    renderClassrooms(null);
  }
}

/** Let go of the camera, microphone and courseware (the lesson ended, the page was replaced, a start failed):
 *  every track stops and the previews go blank; a new start opens the devices again. */
function releaseDevices() {
  stopAll();
  stream = null;
  $("preview", HTMLVideoElement).srcObject = null;
  $("screen-preview", HTMLVideoElement).srcObject = null;
  $("screen-box").hidden = true;
  label($("share", HTMLButtonElement), "teacher.share");
  micMuted = false;
  cameraOff = false;
  label($("mute"), "teacher.mute");
  $("mute").classList.remove("on");
  label($("camera-toggle"), "teacher.cameraOff");
}

/** The lesson is over for this page: timers stop, nothing live is claimed (the reception table's figures, the
 *  quality dots, 正在上课), and 开始上课 may start it again.
 *  @param {string} statusText  @param {string} cls */
function stoppedLesson(statusText, cls) {
  clearInterval(statsTimer);
  clearInterval(attendanceTimer);
  releaseDevices();
  status(statusText, cls);
  for (const id of INTERACTIVE_CONTROLS) control(id).disabled = true;
  disarmEnd();
  previousStats = null;
  quality = {};
  $("classrooms", HTMLTableElement).tBodies[0].replaceChildren();
  $("classroom-count").textContent = "0";
  $("no-classrooms").hidden = false;
  renderAll();
  label($("start", HTMLButtonElement), "teacher.start");
  $("start", HTMLButtonElement).disabled = false;
}

/** The server cannot be reached: a countdown in the notice, then start again (or at once, with the button). */
function retryLater() {
  countdown(RETRY_S, (left) => notice(t("error.unreachable", { seconds: left }), { key: "retryNow", run: start }), start);
}

// the lesson this tab is teaching (with its 录制 choice), kept for the tab's life: reloading the page during the
// lesson starts it again by itself — the same token, so the server lets the new connection take over from the old
const LIVE_KEY = "ketang.teacher.live";

/** Whether this tab was teaching this page's lesson before a reload: its 录制 choice then, or null.
 *  @returns {{record: boolean} | null} */
function wasLive() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(LIVE_KEY) || "null");
    return saved && claims && saved.lesson === claims.lesson ? { record: Boolean(saved.record) } : null;
  } catch {
    return null;
  }
}

async function start() {
  stopCountdown();
  $("start", HTMLButtonElement).disabled = true;
  label($("start", HTMLButtonElement), "teacher.starting");
  if (!stream) { // released after an end, a replaced page or a failed start: open the devices again
    try {
      await openDevices($("camera", HTMLSelectElement).value || undefined,
                        $("microphone", HTMLSelectElement).value || undefined);
    } catch (err) {
      console.warn("devices:", err);
      notice(errorText(err, "teacher"));
      label($("start", HTMLButtonElement), "teacher.start");
      $("start", HTMLButtonElement).disabled = false;
      return;
    }
  }
  // the chime's audio context starts inside this click (browsers let sound start only after one)
  try {
    audioContext ??= new AudioContext();
    audioContext.resume().catch(() => {});
  } catch {
    audioContext = null;
  }
  if (!token) return; // main() does not offer to start then
  const current = new TeacherSession(token);
  session = current;
  session.simulcast = params.get("simulcast") !== "0"; // ?simulcast=0: one camera layer only
  session.record = $("record", HTMLInputElement).checked;
  $("record", HTMLInputElement).disabled = true;
  wallSent = null;
  current.on("participants", () => {
    renderClassrooms(null);
    renderWall();
  });
  current.on("media", showMedia);
  current.on("classroom-state", renderWall);
  current.on("stage", () => {
    renderWall();
    showMedia();
  });
  current.on("hands", (e) => {
    renderHands();
    renderWall();
    if (e.detail.added.length) chime();
  });
  current.on("settings", renderSettings);
  current.on("chat", renderChat);
  current.on("chat-deleted", renderChat);
  current.on("ended", () => {
    sessionStorage.removeItem(LIVE_KEY);
    stoppedLesson(t("lesson.ended"), "ended");
    pollAttendance(); // the final figures stay on screen
    notice(t("teacher.endedNext"));
    showLibraryLink();
  });
  current.on("status", (e) => {
    if (e.detail.state === "reconnecting") {
      status(t("teacher.reconnecting"), "warn");
      notice(t("teacher.reconnecting"));
    } else if (e.detail.state === "connected") {
      status(t("teacher.live"), "live");
      notice("");
    } else if (e.detail.state === "replaced") {
      // the same link opened elsewhere (close code 4001): let go of everything; 「在此处继续」 takes it back
      sessionStorage.removeItem(LIVE_KEY); // taught from elsewhere now: a reload here does not take it back
      stoppedLesson(t("teacher.replaced"), "ended");
      notice(errorText("replaced", "teacher"), { key: "resume", run: start });
    }
  });
  current.on("screen", (e) => {
    label($("share", HTMLButtonElement), e.detail.sharing ? "teacher.stopShare" : "teacher.share");
    if (!e.detail.sharing) {
      $("screen-box").hidden = true;
      $("screen-preview", HTMLVideoElement).srcObject = null;
    }
  });
  try {
    if (!stream) throw Object.assign(new Error("no camera or microphone"), { code: "no_camera" });
    await current.start(stream);
  } catch (err) {
    console.warn("start:", err); // the details for the console; the page says it in words
    releaseDevices(); // a failed join keeps no camera or microphone open
    label($("start", HTMLButtonElement), "teacher.start");
    $("start", HTMLButtonElement).disabled = false;
    $("record", HTMLInputElement).disabled = false;
    if (errorCode(err) === "unreachable") retryLater();
    else notice(errorText(err, "teacher"));
    return;
  }
  sessionStorage.setItem(LIVE_KEY, JSON.stringify({ lesson: claims?.lesson, record: current.record }));
  label($("start", HTMLButtonElement), "teacher.live");
  status(t("teacher.live"), "live");
  for (const id of INTERACTIVE_CONTROLS) control(id).disabled = false;
  statsTimer = setInterval(pollStats, STATS_INTERVAL_MS);
  pollStats();
  attendanceTimer = setInterval(pollAttendance, ATTENDANCE_INTERVAL_MS);
  pollAttendance();
  renderAll();
  renderChat();
}

/** @type {ReturnType<typeof setTimeout> | null} while 结束课程 waits for its confirmation */
let endArmed = null;

/** Ask before ending: what it does, 确认结束 and 取消, built next to the button. */
function armEnd() {
  label($("end"), "teacher.endConfirm");
  const box = document.createElement("span");
  box.className = "end-confirm";
  box.setAttribute("role", "alert");
  const text = document.createElement("span");
  text.textContent = t("teacher.endConfirmText");
  const yes = button("teacher.endYes", () => {
    disarmEnd();
    session?.end();
  }, "danger end-yes");
  box.append(text, " ", yes, " ", button("confirm.cancel", disarmEnd, "end-cancel"));
  $("end").after(box);
  endArmed = setTimeout(disarmEnd, END_CONFIRM_MS);
}

function disarmEnd() {
  if (endArmed) clearTimeout(endArmed);
  endArmed = null;
  label($("end"), "teacher.end");
  document.querySelector(".end-confirm")?.remove();
}

const INTERACTIVE_CONTROLS = ["share", "mute", "camera-toggle", "end", "mute-all", "unmute-all", "lock", "chat-mode",
                              "chat-input", "chat-send"];

/** One of INTERACTIVE_CONTROLS: a button or an input.
 *  @param {string} id */
function control(id) {
  const el = $(id);
  if (el instanceof HTMLButtonElement || el instanceof HTMLInputElement) return el;
  throw new Error(`#${id} is not a control`);
}

function setupControls() {
  $("start", HTMLButtonElement).addEventListener("click", start);
  $("share", HTMLButtonElement).addEventListener("click", async () => {
    $("share", HTMLButtonElement).disabled = true;
    try {
      if (!session) return;
      if (session.screenTrack) await session.stopScreen();
      else await shareScreen(session);
      notice("");
    } catch (err) {
      $("screen-box").hidden = true;
      notice(t("teacher.shareError", { error: errorText(err, "teacher") }));
    } finally {
      $("share", HTMLButtonElement).disabled = Boolean(session?.ended);
    }
  });
  $("mute").addEventListener("click", () => {
    micMuted = !micMuted;
    applyMute();
    label($("mute"), micMuted ? "teacher.unmute" : "teacher.mute");
    $("mute").classList.toggle("on", micMuted);
  });
  $("camera-toggle").addEventListener("click", () => {
    cameraOff = !cameraOff;
    applyMute();
    label($("camera-toggle"), cameraOff ? "teacher.cameraOn" : "teacher.cameraOff");
  });
  // no confirm(): an inline confirmation (确认结束 / 取消) next to the button, and a second press within a few
  // seconds also ends the lesson (dialogs are easy to dismiss by mistake)
  $("end").addEventListener("click", () => {
    if (!endArmed) {
      armEnd();
      return;
    }
    disarmEnd();
    session?.end();
  });
  const change = async () => {
    try {
      await openDevices($("camera", HTMLSelectElement).value, $("microphone", HTMLSelectElement).value);
    } catch (err) {
      notice(errorText(err, "teacher"));
    }
  };
  $("camera", HTMLSelectElement).addEventListener("change", change);
  $("microphone", HTMLSelectElement).addEventListener("change", change);
  $("mute-all").addEventListener("click", () => session && act(session.mute(true)).then(renderWall));
  $("unmute-all").addEventListener("click", () => session && act(session.mute(false)).then(renderWall));
  $("lock").addEventListener("click", () => session && act(session.lock(!session.settings.locked)));
  $("chat-mode").addEventListener("click", () => session && act(session.chatMode(!session.settings.chat_classrooms)));
  $("chat-form").addEventListener("submit", sendChat);
  $("attendance-csv").addEventListener("click", downloadAttendance);
}

/** One copyable link per classroom (each classroom has its own token: the same token twice would replace). */
function renderLinks() {
  const base = `${location.origin}/classroom${location.search.includes("lang=en") ? "?lang=en" : ""}`;
  const rows = invites.map((invite) => {
    const row = document.createElement("div");
    row.className = "link";
    const name = document.createElement("span");
    name.textContent = readClaims(invite)?.name || "";
    const input = document.createElement("input");
    input.readOnly = true;
    input.value = `${base}#token=${invite}`;
    const copy = document.createElement("button");
    copy.textContent = t("teacher.copy");
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(input.value);
      } catch {
        input.select();
        document.execCommand("copy");
      }
      copy.textContent = t("teacher.copied");
      setTimeout(() => { copy.textContent = t("teacher.copy"); }, 2000);
    });
    row.append(name, input, copy);
    return row;
  });
  if (!rows.length) {
    const none = document.createElement("p");
    none.className = "muted";
    none.textContent = t("teacher.noLink");
    rows.push(none);
  }
  $("links").replaceChildren(...rows);
}

async function main() {
  applyText();
  $("lang", HTMLAnchorElement).textContent = otherLanguageLabel;
  $("lang", HTMLAnchorElement).href = otherLanguageHref();
  if (!token || !claims) {
    notice(t("token.missing"));
    return;
  }
  $("lesson-title").textContent = claims.title || claims.lesson || "";
  document.title = `${t("app.name")} · ${claims.title || claims.lesson}`;
  renderLinks();
  setupControls();
  // 课前检测, next to 开始上课 (before and during the lesson); a camera chosen there is the lesson's camera
  precheck = setupPrecheck({ button: $("precheck-open", HTMLButtonElement), token,
    cameraId: () => $("camera", HTMLSelectElement).value || undefined,
    onCamera: (id) => {
      const select = $("camera", HTMLSelectElement);
      if (select.value === id) return;
      select.value = id;
      select.dispatchEvent(new Event("change"));
    },
    video: { width: { ideal: VIDEO_W }, height: { ideal: VIDEO_H } } });
  status(t("teacher.ready"));
  if (!mediaAvailable()) { // http:// from another computer: the browser offers no camera at all
    notice(errorText("insecure", "teacher"));
    return;
  }
  try {
    await openDevices();
    await listDevices();
  } catch (err) {
    notice(errorText(err, "teacher"));
    return;
  }
  $("start", HTMLButtonElement).disabled = false;
  const resumed = wasLive();
  if (resumed) { // reloaded during the lesson: it goes on (the classrooms stayed in it)
    $("record", HTMLInputElement).checked = resumed.record;
    start();
  } else if (fragment.get("start") === "1") { // 开始上课 in 我的课程: that click was the one to start
    history.replaceState(null, "", location.href.replace(/&start=1$/, ""));
    start();
  }
}

main();
