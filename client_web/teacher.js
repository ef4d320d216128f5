// Teacher page: devices and preview, start the lesson, courseware share, mute, end; the classrooms with
// their reception figures from the server (polled every 2 s). Protocol work is in protocol.js.
import { TeacherSession, fragmentParams, readClaims } from "./protocol.js";
import { applyText, otherLanguageHref, otherLanguageLabel, t } from "./i18n.js";

const STATS_INTERVAL_MS = 2000;
const END_CONFIRM_MS = 4000;
const params = new URLSearchParams(location.search);
// ?video=640x360 asks the camera for another size (tests use a small one to spare the CPU)
const [VIDEO_W, VIDEO_H] = (params.get("video") || "1280x720").split("x").map(Number);
// ?fakescreen=1: the courseware is a drawn slide instead of getDisplayMedia (headless tests, demos)
const FAKE_SCREEN = params.get("fakescreen") === "1";

const $ = (id) => document.getElementById(id);
const fragment = fragmentParams();
const token = fragment.get("token");
const invites = fragment.getAll("invite");
const claims = token ? readClaims(token) : null;

let session = null;
let stream = null;
let micMuted = false;
let cameraOff = false;
let previousStats = null; // {at, octets: {participant: bytes}}
let statsTimer = null;

window.ketang = { get session() { return session; }, get pc() { return session && session.pc; } };

function label(el, key) {
  el.dataset.i18n = key;
  el.textContent = t(key);
}

function status(text, cls = "") {
  const el = $("status");
  el.textContent = text;
  el.className = `status ${cls}`;
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

function videoConstraints(deviceId) {
  return { width: { ideal: VIDEO_W }, height: { ideal: VIDEO_H }, ...(deviceId ? { deviceId: { exact: deviceId } } : {}) };
}

async function openDevices(cameraId, microphoneId) {
  const next = await navigator.mediaDevices.getUserMedia({
    video: videoConstraints(cameraId),
    audio: microphoneId ? { deviceId: { exact: microphoneId } } : true,
  });
  const old = stream;
  stream = next;
  $("preview").srcObject = stream;
  if (session && session.pc) {
    await session.replaceTrack("camera", stream.getVideoTracks()[0]);
    await session.replaceTrack("microphone", stream.getAudioTracks()[0]);
  }
  applyMute();
  if (old) for (const track of old.getTracks()) track.stop();
}

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const fill = (select, kind, current) => {
    select.replaceChildren();
    devices.filter((d) => d.kind === kind).forEach((d, i) => {
      const option = new Option(d.label || `${kind} ${i + 1}`, d.deviceId);
      option.selected = d.deviceId === current;
      select.append(option);
    });
  };
  fill($("camera"), "videoinput", stream.getVideoTracks()[0]?.getSettings().deviceId);
  fill($("microphone"), "audioinput", stream.getAudioTracks()[0]?.getSettings().deviceId);
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
  const track = canvas.captureStream(10).getVideoTracks()[0];
  const timer = setInterval(draw, 100);
  track.addEventListener("ended", () => clearInterval(timer));
  const stop = track.stop.bind(track);
  track.stop = () => { clearInterval(timer); stop(); };
  return track;
}

async function shareScreen() {
  const track = FAKE_SCREEN
    ? fakeScreenTrack()
    : (await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 10 } }, audio: false })).getVideoTracks()[0];
  track.contentHint = "detail"; // slides: keep text sharp, drop frames rather than resolution
  $("screen-preview").srcObject = new MediaStream([track]);
  $("screen-box").hidden = false;
  await session.shareScreen(track);
}

/** The classroom's audio-first ladder as the server reports it (docs/weak-networks.md). */
function videoState(stats, id) {
  const ladder = stats && stats.video && stats.video[id];
  if (!ladder) return "—";
  if (!ladder.chosen) return t("video.chosen");
  return t(`video.${ladder.state}`);
}

function renderClassrooms(stats) {
  const rooms = [...session.participants.values()].filter((p) => p.role === "classroom");
  $("classroom-count").textContent = rooms.length;
  $("no-classrooms").hidden = rooms.length > 0;
  const now = performance.now();
  const octets = {};
  const rows = rooms.map((p) => {
    const consumers = (stats && stats.subscribers && stats.subscribers[p.id]) || [];
    const bytes = consumers.reduce((sum, c) => sum + (c.octets_out || 0), 0);
    octets[p.id] = bytes;
    const before = previousStats && previousStats.octets[p.id];
    const kbps = before !== undefined && now > previousStats.at
      ? Math.max(0, ((bytes - before) * 8) / (now - previousStats.at)) : null;
    const loss = consumers.length ? Math.max(...consumers.map((c) => (c.fraction_lost || 0) / 256)) : null;
    const rtts = consumers.map((c) => c.rtt_ms).filter((v) => typeof v === "number");
    const rtt = rtts.length ? Math.max(...rtts) : null;
    const level = !consumers.length ? "none" : loss > 0.05 ? "poor" : loss > 0.01 ? "fair" : "good";
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
    if (rtt === null) tr.children[3].title = t("teacher.rttUnknown");
    const ladder = stats && stats.video && stats.video[p.id];
    if (ladder && ladder.reason) tr.children[5].title = ladder.reason; // why the server paused its video
    return tr;
  });
  $("classrooms").tBodies[0].replaceChildren(...rows);
  if (stats) previousStats = { at: now, octets };
}

async function pollStats() {
  try {
    renderClassrooms(await session.fetchStats());
  } catch (err) {
    renderClassrooms(null);
  }
}

async function start() {
  $("start").disabled = true;
  label($("start"), "teacher.starting");
  session = new TeacherSession(token);
  session.record = $("record").checked;
  $("record").disabled = true;
  session.addEventListener("participants", () => renderClassrooms(null));
  session.addEventListener("ended", () => {
    clearInterval(statsTimer);
    status(t("lesson.ended"), "ended");
    for (const id of ["share", "mute", "camera-toggle", "end"]) $(id).disabled = true;
    notice(t("lesson.ended"));
  });
  session.addEventListener("status", (e) => {
    if (e.detail.state === "reconnecting") {
      status(t("teacher.reconnecting"), "warn");
      notice(t("teacher.reconnecting"));
    } else if (e.detail.state === "connected") {
      status(t("teacher.live"), "live");
      notice("");
    } else if (e.detail.state === "replaced") {
      status(t("teacher.replaced"), "ended");
      notice(t("teacher.replaced"));
    }
  });
  session.addEventListener("screen", (e) => {
    label($("share"), e.detail.sharing ? "teacher.stopShare" : "teacher.share");
    if (!e.detail.sharing) {
      $("screen-box").hidden = true;
      $("screen-preview").srcObject = null;
    }
  });
  try {
    await session.start(stream);
  } catch (err) {
    notice(t("error", { error: err.message }));
    label($("start"), "teacher.start");
    $("start").disabled = false;
    return;
  }
  label($("start"), "teacher.live");
  status(t("teacher.live"), "live");
  for (const id of ["share", "mute", "camera-toggle", "end"]) $(id).disabled = false;
  statsTimer = setInterval(pollStats, STATS_INTERVAL_MS);
  pollStats();
}

function setupControls() {
  $("start").addEventListener("click", start);
  $("share").addEventListener("click", async () => {
    $("share").disabled = true;
    try {
      if (session.screenTrack) await session.stopScreen();
      else await shareScreen();
      notice("");
    } catch (err) {
      $("screen-box").hidden = true;
      notice(t("teacher.shareError", { error: err.message }));
    } finally {
      $("share").disabled = session.ended;
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
  // no confirm(): a second press within a few seconds ends the lesson (dialogs are easy to dismiss by mistake)
  let armed = null;
  $("end").addEventListener("click", () => {
    if (!armed) {
      label($("end"), "teacher.endConfirm");
      armed = setTimeout(() => { armed = null; label($("end"), "teacher.end"); }, END_CONFIRM_MS);
      return;
    }
    clearTimeout(armed);
    armed = null;
    label($("end"), "teacher.end");
    session.end();
  });
  const change = async () => {
    try {
      await openDevices($("camera").value, $("microphone").value);
    } catch (err) {
      notice(t("teacher.deviceError", { error: err.message }));
    }
  };
  $("camera").addEventListener("change", change);
  $("microphone").addEventListener("change", change);
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
  $("lang").textContent = otherLanguageLabel;
  $("lang").href = otherLanguageHref();
  if (!token || !claims) {
    notice(t("token.missing"));
    return;
  }
  $("lesson-title").textContent = claims.title || claims.lesson;
  document.title = `${t("app.name")} · ${claims.title || claims.lesson}`;
  renderLinks();
  setupControls();
  status(t("teacher.ready"));
  try {
    await openDevices();
    await listDevices();
  } catch (err) {
    notice(t("teacher.deviceError", { error: err.message }));
    return;
  }
  $("start").disabled = false;
}

main();
