// @ts-check
// The pre-class check (课前检测), on the classroom and the teacher page alike: the camera the page will use (and
// another one to choose), a microphone level meter, a speaker test tone (with speaker selection where the browser
// has setSinkId), and a network check against the server over the path the lesson's media takes (a short WebRTC
// probe: signaling/probe.py, docs/protocol.md *Pre-class check*). Closing the check stops every track it opened.
import { Signaling, relayOnly, signalingUrl } from "./protocol.js";
import { errorCode, errorText, t } from "./i18n.js";
import { attach, capture } from "./media.js";

const LEVEL_EVERY_MS = 100;
const SILENT_AFTER_MS = 3000; // no sound for this long: 没有听到声音
const SILENT_LEVEL = 0.02; // the meter's level (twice the peak amplitude, 0..1) under which nothing is heard
const TONE_S = 1.2;
const TONE_HZ = 660;
const PROBE_TIMEOUT_MS = 15000; // the server ends a probe after 9 s; this is for a server that stopped answering
const PING = 0xff; // first byte of the probe's pings, echoed unchanged (the other messages' first byte: their step)
// the probe's own refusals and failures, as the texts of this module (any other code: the page's error table)
const PROBE_ERRORS = /** @type {Record<string, string>} */ ({
  rate_limited: "precheck.net.tooOften",
  probe_busy: "precheck.net.busy",
  probe_timeout: "precheck.net.failed",
  no_media_path: "precheck.net.failed",
});

/** What the server says of the network (`probe_result`, docs/protocol.md).
 *  @typedef {{type: "probe_result", quality: "hd" | "sd" | "ld" | "audio", downlink_bps: number, loss: number,
 *    rtt_ms: number | null, rtt_high: boolean,
 *    steps: {rate_bps: number, sent: number, received: number, arrived_bps: number}[]}} ProbeResult */

/** Run the network check: a websocket of its own (`probe` with the page's token), the server's data channel
 *  answered, what arrived per step reported, the server's verdict returned. Everything is closed at the end.
 *  @param {string} token  @param {string} [url]  @returns {Promise<ProbeResult>} */
export async function probeNetwork(token, url = signalingUrl()) {
  const sig = await new Signaling(url).connect();
  /** @type {RTCPeerConnection | null} */
  let pc = null;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  try {
    const offer = await sig.request({ type: "probe", token });
    pc = new RTCPeerConnection({ iceServers: offer.ice_servers || [], iceTransportPolicy: relayOnly() ? "relay" : "all" });
    /** @type {{n: number, bytes: number, first: number, last: number}[]} per step */
    const counts = [];
    pc.addEventListener("datachannel", (e) => {
      const channel = e.channel;
      channel.binaryType = "arraybuffer";
      channel.addEventListener("message", (m) => {
        if (!(m.data instanceof ArrayBuffer) || m.data.byteLength === 0) return;
        const step = new Uint8Array(m.data)[0];
        if (step === PING) {
          if (channel.readyState === "open") channel.send(m.data);
          return;
        }
        if (step > 15) return;
        const now = performance.now();
        while (counts.length <= step) counts.push({ n: 0, bytes: 0, first: 0, last: 0 });
        const c = counts[step];
        if (!c.n) c.first = now;
        c.n += 1;
        c.bytes += m.data.byteLength;
        c.last = now;
      });
    });
    /** @type {Promise<ProbeResult>} */
    const done = new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error("probe timed out"), { code: "probe_timeout" })),
        PROBE_TIMEOUT_MS);
      sig.on("message", (e) => {
        const msg = /** @type {{type: string, code?: string}} */ (e.detail);
        if (msg.type === "probe_done") {
          sig.send({ type: "probe_report", steps: counts.map((c) => [c.n, c.bytes, Math.round(c.last - c.first)]) });
        } else if (msg.type === "probe_result") {
          resolve(/** @type {ProbeResult} */ (/** @type {unknown} */ (msg)));
        } else if (msg.type === "error") {
          reject(Object.assign(new Error("probe refused"), { code: msg.code }));
        }
      });
      sig.on("close", () => reject(Object.assign(new Error("closed"), { code: "unreachable" })));
    });
    await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    sig.send({ type: "probe_answer", sdp: pc.localDescription?.sdp });
    return await done;
  } finally {
    clearTimeout(timer);
    if (pc) pc.close();
    sig.close();
  }
}

/** The text of a probe's failure.
 *  @param {unknown} err */
function probeErrorText(err) {
  const code = errorCode(err);
  return code in PROBE_ERRORS ? t(PROBE_ERRORS[code]) : errorText(code);
}

/** The plain words for a result: the quality, the figures, and what to do next.
 *  @param {ProbeResult} r  @returns {{quality: string, summary: string, advice: string}} */
export function describe(r) {
  const summary = t("precheck.net.summary", {
    rtt: r.rtt_ms === null ? "—" : Math.round(r.rtt_ms),
    loss: (Math.round(r.loss * 1000) / 10).toString(),
    kbps: Math.round(r.downlink_bps / 1000),
  });
  let advice = t(`precheck.net.${r.quality}`);
  if (r.rtt_high) advice += ` ${t("precheck.net.rttHigh")}`;
  return { quality: t(`precheck.quality.${r.quality}`), summary, advice };
}

/** @template {keyof HTMLElementTagNameMap} K
 *  @param {K} tag  @param {string} [cls]  @param {string} [key]  @returns {HTMLElementTagNameMap[K]} */
function el(tag, cls = "", key = "") {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (key) {
    node.dataset.i18n = key;
    node.textContent = t(key);
  }
  return node;
}

/** One section of the panel: its heading, a status line and what else it holds.
 *  @param {string} key  @param {...HTMLElement} parts */
function section(key, ...parts) {
  const box = el("section", "precheck-item");
  box.append(el("h3", "", key), ...parts);
  return box;
}

/** The pre-class check of a page, opened by `button` (and again as often as wanted).
 *  @param {{button: HTMLButtonElement, token: string, cameraId?: () => string | undefined,
 *    onCamera?: (deviceId: string) => void, video?: MediaTrackConstraints}} options */
export function setupPrecheck(options) {
  const dialog = el("dialog", "precheck");
  dialog.id = "precheck";
  const head = el("div", "precheck-head");
  const close = el("button", "precheck-close", "precheck.close");
  close.id = "precheck-close";
  head.append(el("h2", "", "precheck.title"), close);

  const video = el("video", "precheck-video");
  video.id = "precheck-video";
  video.muted = video.autoplay = video.playsInline = true;
  const cameraSelect = el("select");
  cameraSelect.id = "precheck-camera";
  const cameraLabel = el("label", "precheck-choose");
  cameraLabel.append(el("span", "", "precheck.camera.choose"), cameraSelect);
  const cameraStatus = el("p", "precheck-status");
  cameraStatus.id = "precheck-camera-status";

  const meter = el("meter", "precheck-meter");
  meter.id = "precheck-meter";
  meter.min = 0;
  meter.max = 1;
  meter.low = SILENT_LEVEL;
  meter.value = 0;
  const micStatus = el("p", "precheck-status");
  micStatus.id = "precheck-mic-status";

  const play = el("button", "", "precheck.speaker.play");
  play.id = "precheck-tone";
  const sinkSelect = el("select");
  sinkSelect.id = "precheck-speaker";
  const sinkLabel = el("label", "precheck-choose");
  sinkLabel.append(el("span", "", "precheck.speaker.choose"), sinkSelect);
  const canChooseSink = "setSinkId" in HTMLMediaElement.prototype;
  sinkLabel.hidden = !canChooseSink;
  const heard = el("div", "precheck-heard");
  heard.hidden = true;
  const yes = el("button", "small", "precheck.speaker.yes");
  const no = el("button", "small", "precheck.speaker.no");
  heard.append(el("span", "", "precheck.speaker.question"), yes, no);
  const speakerStatus = el("p", "precheck-status");
  speakerStatus.id = "precheck-speaker-status";
  const tone = el("audio");

  const runNet = el("button", "", "precheck.net.run");
  runNet.id = "precheck-net-run";
  const quality = el("p", "precheck-quality");
  quality.id = "precheck-quality";
  const netStatus = el("p", "precheck-status");
  netStatus.id = "precheck-net-status";
  const netFigures = el("p", "precheck-figures muted");
  netFigures.id = "precheck-net-figures";

  const body = el("div", "precheck-body");
  body.append(
    section("precheck.camera", video, cameraLabel, cameraStatus),
    section("precheck.microphone", meter, micStatus),
    section("precheck.speaker", play, sinkLabel, heard, speakerStatus, tone),
    section("precheck.network", runNet, quality, netStatus, netFigures),
  );
  dialog.append(head, body);
  document.body.append(dialog);

  /** @type {MediaStream | null} */
  let stream = null;
  /** @type {AudioContext | null} made at the click that opens the check: a page may start sound only then */
  let audio = null;
  /** @type {MediaStreamAudioSourceNode | null} */
  let source = null;
  /** @type {ReturnType<typeof setInterval> | undefined} */
  let levelTimer;
  let generation = 0; // a close (or a new camera) while a capture is on its way: that capture is stopped
  /** @type {ProbeResult | null} */
  let lastResult = null;

  /** @param {HTMLElement} node  @param {string} key  @param {string} [cls] */
  function say(node, key, cls = "") {
    node.dataset.i18n = key;
    node.textContent = t(key);
    node.className = `precheck-status ${cls}`.trim();
  }

  function stopStream() {
    clearInterval(levelTimer);
    if (stream) for (const track of stream.getTracks()) track.stop();
    stream = null;
    attach(video, null);
    if (source) source.disconnect();
    source = null;
    meter.value = 0;
  }

  /** @param {string} [deviceId] */
  async function openDevices(deviceId) {
    const mine = ++generation;
    stopStream();
    say(cameraStatus, "precheck.camera.opening");
    micStatus.textContent = "";
    /** @type {MediaStream} */
    let got;
    try {
      const videoWanted = { ...(options.video || {}), ...(deviceId ? { deviceId: { exact: deviceId } } : {}) };
      got = await capture({ video: videoWanted, audio: { echoCancellation: false, autoGainControl: false } });
    } catch (err) {
      if (mine !== generation) return;
      cameraStatus.textContent = errorText(err);
      cameraStatus.className = "precheck-status bad";
      return;
    }
    if (mine !== generation || !dialog.open) {
      for (const track of got.getTracks()) track.stop();
      return;
    }
    stream = got;
    attach(video, got.getVideoTracks()[0] || null);
    say(cameraStatus, got.getVideoTracks().length ? "precheck.camera.ok" : "precheck.camera.none",
      got.getVideoTracks().length ? "good" : "bad");
    await listCameras(got.getVideoTracks()[0]?.getSettings().deviceId);
    meterFor(got);
  }

  /** @param {string | undefined} current */
  async function listCameras(current) {
    const devices = await navigator.mediaDevices.enumerateDevices();
    const cams = devices.filter((d) => d.kind === "videoinput");
    cameraSelect.replaceChildren(...cams.map((d, i) => {
      const option = new Option(d.label || `${t("precheck.camera")} ${i + 1}`, d.deviceId);
      option.selected = d.deviceId === current;
      return option;
    }));
    cameraLabel.hidden = cams.length < 2;
    const sinks = devices.filter((d) => d.kind === "audiooutput");
    sinkSelect.replaceChildren(...sinks.map((d, i) => new Option(d.label || `${t("precheck.speaker")} ${i + 1}`,
      d.deviceId)));
    sinkLabel.hidden = !canChooseSink || sinks.length < 2;
  }

  /** The microphone's level (the loudest sample of the last ~170 ms), ten times a second; 没有听到声音 after SILENT_AFTER_MS of silence.
   *  @param {MediaStream} got */
  function meterFor(got) {
    if (!got.getAudioTracks().length) {
      micStatus.textContent = errorText("no_microphone");
      micStatus.className = "precheck-status bad";
      return;
    }
    if (!audio) audio = new AudioContext();
    audio.resume().catch(() => {});
    const analyser = audio.createAnalyser();
    analyser.fftSize = 8192; // ~170 ms at 48 kHz: longer than a tick, so that no short sound falls between two
    source = audio.createMediaStreamSource(got);
    source.connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    let loudAt = performance.now();
    say(micStatus, "precheck.mic.listening");
    levelTimer = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      let peak = 0;
      for (const s of samples) peak = Math.max(peak, Math.abs(s));
      const level = Math.min(1, peak * 2);
      meter.value = level;
      const now = performance.now();
      if (level >= SILENT_LEVEL) {
        loudAt = now;
        if (micStatus.dataset.i18n !== "precheck.mic.ok") say(micStatus, "precheck.mic.ok", "good");
      } else if (now - loudAt > SILENT_AFTER_MS && micStatus.dataset.i18n !== "precheck.mic.silent") {
        say(micStatus, "precheck.mic.silent", "bad");
      }
    }, LEVEL_EVERY_MS);
  }

  /** A short tone through an <audio> element (so that a chosen speaker plays it). */
  async function playTone() {
    const ctx = new AudioContext();
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    const out = ctx.createMediaStreamDestination();
    osc.frequency.value = TONE_HZ;
    gain.gain.setValueAtTime(0.0001, ctx.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.3, ctx.currentTime + 0.05);
    gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + TONE_S);
    osc.connect(gain).connect(out);
    tone.srcObject = out.stream;
    const sink = /** @type {HTMLAudioElement & {setSinkId?: (id: string) => Promise<void>}} */ (tone);
    if (canChooseSink && sinkSelect.value && sink.setSinkId) await sink.setSinkId(sinkSelect.value).catch(() => {});
    osc.start();
    osc.stop(ctx.currentTime + TONE_S);
    await tone.play().catch(() => {});
    heard.hidden = false;
    speakerStatus.textContent = "";
    setTimeout(() => {
      ctx.close().catch(() => {});
      tone.srcObject = null;
    }, (TONE_S + 0.3) * 1000);
  }

  async function checkNetwork() {
    runNet.disabled = true;
    quality.textContent = "";
    netFigures.textContent = "";
    quality.className = "precheck-quality";
    say(netStatus, "precheck.net.running");
    try {
      const result = lastResult = await probeNetwork(options.token);
      const words = describe(result);
      quality.textContent = t("precheck.net.expect", { quality: words.quality });
      quality.dataset.quality = result.quality;
      quality.className = `precheck-quality q-${result.quality}`;
      netStatus.textContent = words.advice;
      netStatus.className = "precheck-status";
      netFigures.textContent = words.summary;
    } catch (err) {
      netStatus.textContent = probeErrorText(err);
      netStatus.className = "precheck-status bad";
    } finally {
      runNet.disabled = false;
    }
  }

  function open() {
    if (dialog.open) return;
    dialog.showModal();
    if (!audio) audio = new AudioContext(); // (in the click: a context made later may stay suspended)
    heard.hidden = true;
    speakerStatus.textContent = "";
    openDevices(options.cameraId ? options.cameraId() : undefined);
    checkNetwork();
  }

  function shut() {
    generation += 1;
    stopStream();
    if (audio) audio.close().catch(() => {});
    audio = null;
    if (dialog.open) dialog.close();
  }

  options.button.addEventListener("click", open);
  close.addEventListener("click", shut);
  dialog.addEventListener("close", shut); // Esc closes a modal dialog too
  cameraSelect.addEventListener("change", () => {
    openDevices(cameraSelect.value);
    if (options.onCamera) options.onCamera(cameraSelect.value);
  });
  play.addEventListener("click", playTone);
  yes.addEventListener("click", () => { heard.hidden = true; say(speakerStatus, "precheck.speaker.ok", "good"); });
  no.addEventListener("click", () => { heard.hidden = true; say(speakerStatus, "precheck.speaker.notHeard", "bad"); });
  runNet.addEventListener("click", checkNetwork);

  return {
    open, close: shut,
    get stream() { return stream; },
    get result() { return lastResult; },
    get level() { return meter.value; },
  };
}
