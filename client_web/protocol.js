// ketang signalling protocol for browsers (docs/protocol.md), apart from any page's UI.
//
//   Signaling         one websocket: request/reply by id, server messages as DOM events
//   TeacherSession    join, publish microphone + camera (the teacher offers), courseware share, end the lesson
//   ClassroomSession  join, answer the server's offers, which mid carries what, and rebuild itself after a drop
//
// Sessions emit events (addEventListener) and never touch the DOM, so pages stay small and the
// protocol can be read in one place.

const REQUEST_TIMEOUT_MS = 10000;
// A classroom's watchdog: how often it looks, how long "disconnected" or "no packets" may last before
// the connection is rebuilt. aiortc has no ICE restart, so rebuilding means a new peer connection.
const WATCHDOG_INTERVAL_MS = 1000;
const DISCONNECTED_GRACE_MS = 3000;
const STALL_GRACE_MS = 6000;
const RECONNECT_DELAYS_MS = [300, 1000, 2000, 4000, 8000];
// Close code the server uses when the same participant joined again elsewhere (another tab).
const CLOSE_REPLACED = 4001;

export const SOURCES = ["camera", "screen", "microphone"];

/** The token and other values carried in the page's URL fragment (#token=...&invite=...).
 *  The fragment never reaches a server's access log. */
export function fragmentParams(hash = location.hash) {
  return new URLSearchParams(hash.replace(/^#/, ""));
}

/** The claims of a token, read without verifying (the server verifies): for display only. */
export function readClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part + "===".slice((part.length + 3) % 4)), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

export function signalingUrl(loc = location) {
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws`;
}

export class ProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** One websocket. Dispatches "message" (every server message), "<type>" per message type,
 *  "event:<name>" per lesson event, and "close" ({code, reason}). */
export class Signaling extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer}
  }

  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.onopen = () => resolve(this);
      ws.onerror = () => reject(new Error("websocket failed"));
      ws.onmessage = (e) => this._receive(e.data);
      ws.onclose = (e) => {
        for (const { reject: fail, timer } of this.pending.values()) {
          clearTimeout(timer);
          fail(new Error("websocket closed"));
        }
        this.pending.clear();
        reject(new Error("websocket closed"));
        this.dispatchEvent(new CustomEvent("close", { detail: { code: e.code, reason: e.reason } }));
      };
    });
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  send(message) {
    if (this.open) this.ws.send(JSON.stringify(message));
  }

  /** Send with an id; resolves with the reply that references it, rejects with a ProtocolError. */
  request(message) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`no reply to ${message.type}`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.send({ ...message, id });
    });
  }

  _receive(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    const waiting = msg.ref !== undefined ? this.pending.get(msg.ref) : undefined;
    if (waiting) {
      this.pending.delete(msg.ref);
      clearTimeout(waiting.timer);
      if (msg.type === "error") waiting.reject(new ProtocolError(msg.code, msg.message));
      else waiting.resolve(msg);
    }
    this.dispatchEvent(new CustomEvent("message", { detail: msg }));
    this.dispatchEvent(new CustomEvent(msg.type, { detail: msg }));
    if (msg.type === "event") this.dispatchEvent(new CustomEvent(`event:${msg.event}`, { detail: msg }));
  }

  close() {
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000);
    }
    for (const { timer } of this.pending.values()) clearTimeout(timer);
    this.pending.clear();
  }
}

/** What both sessions share: the lesson roster and lesson state, kept from `joined` and events. */
class LessonSession extends EventTarget {
  constructor(token, url = signalingUrl()) {
    super();
    this.token = token;
    this.url = url;
    this.claims = readClaims(token) || {};
    this.sig = null;
    this.pc = null;
    this.me = null;
    this.lesson = null;
    this.participants = new Map(); // id -> {id, role, name, joined_at}
    this.lessonTracks = new Map(); // track id -> {id, kind, source, participant}
    this.ended = false;
  }

  emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Connect and join; `listen(sig)` adds listeners first, as the server's offer follows `joined` at once. */
  async _join(listen = () => {}) {
    const sig = new Signaling(this.url);
    this.sig = sig;
    sig.addEventListener("event", (e) => this._onEvent(e.detail));
    listen(sig);
    await sig.connect();
    const joined = await sig.request({ type: "join", token: this.token, lesson: this.claims.lesson });
    this.me = joined.participant;
    this.lesson = joined.lesson;
    this.participants = new Map(joined.participants.map((p) => [p.id, p]));
    this.lessonTracks = new Map(joined.tracks.map((t) => [t.id, t]));
    this.emit("lesson", { lesson: this.lesson });
    this.emit("participants", { participants: [...this.participants.values()] });
    return joined;
  }

  _onEvent(msg) {
    switch (msg.event) {
      case "participant-joined":
        this.participants.set(msg.participant.id, msg.participant);
        this.emit("participants", { participants: [...this.participants.values()] });
        break;
      case "participant-left":
        this.participants.delete(msg.participant.id);
        this.emit("participants", { participants: [...this.participants.values()] });
        break;
      case "track-added":
        this.lessonTracks.set(msg.track.id, msg.track);
        this.emit("lesson-tracks", { added: msg.track });
        break;
      case "track-removed":
        this.lessonTracks.delete(msg.track.id);
        this.emit("lesson-tracks", { removed: msg.track });
        break;
      case "lesson-started":
      case "lesson-ended":
        this.lesson = msg.lesson;
        this.emit("lesson", { lesson: this.lesson });
        if (msg.event === "lesson-ended") this._onEnded();
        break;
      default:
        break;
    }
  }

  _onEnded() {
    this.ended = true;
    this.emit("ended");
    this.close();
  }

  /** Our websocket closed: rebuild, unless we closed it, the lesson ended, or the same link was opened
   *  elsewhere (fighting over it would flap both pages). */
  _onSignalClose(sig, e) {
    if (sig !== this.sig || this.closedByUs || this.ended) return;
    if (e.detail.code === CLOSE_REPLACED) {
      this.closedByUs = true;
      this.emit("status", { state: "replaced" });
      this.close();
      return;
    }
    this._rebuild("websocket closed");
  }

  close() {
    if (this.sig) this.sig.close();
    if (this.pc) this.pc.close();
  }
}

/** The teacher: the offerer of its own peer connection. Call start(stream), then shareScreen/stopScreen,
 *  setMuted, end(). */
export class TeacherSession extends LessonSession {
  constructor(token, url) {
    super(token, url);
    this.sources = new Map(); // RTCRtpTransceiver -> source
    this.sending = new Map(); // source -> the track we send (what a rebuilt connection publishes again)
    this.screenTransceiver = null;
    this.screenTrack = null;
    this.record = true; // the lesson goes into the resource library unless the teacher says no
  }

  /** Join and publish the microphone and camera of `stream`. */
  async start(stream) {
    this.reconnects = 0;
    this.closedByUs = false;
    for (const track of stream.getTracks()) this.sending.set(track.kind === "audio" ? "microphone" : "camera", track);
    await this._joinAndPublish();
  }

  async _joinAndPublish() {
    const listen = (sig) => sig.addEventListener("close", (e) => this._onSignalClose(sig, e));
    await this._join(listen);
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    pc.addEventListener("connectionstatechange", () => {
      if (pc !== this.pc) return;
      this.emit("connection", { state: pc.connectionState });
      if (pc.connectionState === "failed") this._rebuild("peer connection failed");
    });
    this.sources = new Map();
    this.screenTransceiver = null;
    for (const [source, track] of this.sending) {
      const t = pc.addTransceiver(track, { direction: "sendonly" });
      this.sources.set(t, source);
      if (source === "screen") this.screenTransceiver = t;
    }
    await this.publish();
  }

  /** The websocket or the peer connection died: join again and publish the same tracks on a new peer
   *  connection (aiortc has no ICE restart); the server continues them in the classrooms' slots. */
  async _rebuild(why) {
    if (this._rebuilding || this.closedByUs || this.ended) return;
    this._rebuilding = true;
    this.reconnects += 1;
    this.emit("status", { state: "reconnecting", why });
    if (this.sig) this.sig.close();
    if (this.pc) this.pc.close();
    for (let attempt = 0; !this.closedByUs && !this.ended; attempt++) {
      await new Promise((r) => setTimeout(r, RECONNECT_DELAYS_MS[Math.min(attempt, RECONNECT_DELAYS_MS.length - 1)]));
      try {
        await this._joinAndPublish();
        this.emit("status", { state: "connected", reconnects: this.reconnects });
        break;
      } catch (err) {
        console.warn("teacher reconnect failed:", err);
        if (this.sig) this.sig.close();
        if (this.pc) this.pc.close();
      }
    }
    this._rebuilding = false;
  }

  /** Offer (or re-offer) what we send; the server answers. `sources` tells it which mid is the screen. */
  async publish() {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    const sources = {};
    for (const [t, source] of this.sources) if (t.mid !== null) sources[t.mid] = source;
    const reply = await this.sig.request({ type: "publish", sdp: this.pc.localDescription.sdp, sources,
                                           record: this.record });
    await this.pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
  }

  /** Replace the camera or microphone (a device chosen during the lesson): no renegotiation needed. */
  async replaceTrack(source, track) {
    this.sending.set(source, track);
    for (const [t, s] of this.sources) if (s === source) await t.sender.replaceTrack(track);
  }

  /** Publish `track` as the courseware ("screen"): a second video m-line, offered again (renegotiation). */
  async shareScreen(track) {
    if (this.screenTrack) await this.stopScreen();
    this.screenTrack = track;
    this.sending.set("screen", track);
    if (this.screenTransceiver) {
      // A new share gets a new m-line rather than the stopped one: the server learns which SSRC is which
      // track from the MID header extension, and Chromium stops sending that extension on an SSRC once
      // the server has acknowledged it, so a restarted track on the old SSRC could not be told apart.
      this.screenTransceiver.direction = "inactive";
      this.sources.delete(this.screenTransceiver);
    }
    this.screenTransceiver = this.pc.addTransceiver(track, { direction: "sendonly" });
    this.sources.set(this.screenTransceiver, "screen");
    track.addEventListener("ended", () => this.stopScreen()); // the browser's own "stop sharing" bar
    await this.publish();
    this.emit("screen", { sharing: true });
  }

  /** Stop the courseware: the server closes that track (`unpublish`) and tells the classrooms. */
  async stopScreen() {
    if (!this.screenTrack) return;
    const track = this.screenTrack;
    this.screenTrack = null;
    this.sending.delete("screen");
    const mine = [...this.lessonTracks.values()].filter((t) => t.source === "screen" && t.participant === this.me.id);
    for (const t of mine) {
      try {
        await this.sig.request({ type: "unpublish", track: t.id });
      } catch (err) {
        console.warn("unpublish failed", err);
      }
    }
    await this.screenTransceiver.sender.replaceTrack(null);
    track.stop();
    this.emit("screen", { sharing: false });
  }

  setMuted(kind, muted) {
    for (const [t, source] of this.sources) {
      const track = t.sender.track;
      if (track && track.kind === kind && source !== "screen") track.enabled = !muted;
    }
  }

  end() {
    this.sig.send({ type: "end_lesson" }); // everyone, us included, then receives lesson-ended
  }

  close() {
    this.closedByUs = true;
    super.close();
  }

  /** The server's forwarding figures for this lesson (docs/protocol.md "HTTP"). */
  async fetchStats() {
    const res = await fetch(`/api/lessons/${encodeURIComponent(this.claims.lesson)}/stats`, {
      headers: { Authorization: `Bearer ${this.token}` },
    });
    if (!res.ok) throw new Error(`stats: HTTP ${res.status}`);
    return res.json();
  }
}

/** A classroom: answers the server's offers, maps mids to lesson tracks and rebuilds itself when the
 *  websocket or the peer connection dies. Events: "media" (the mid map changed), "status"
 *  ({state: connecting|connected|reconnecting|replaced|ended|error}), "lesson", "participants". */
export class ClassroomSession extends LessonSession {
  constructor(token, url) {
    super(token, url);
    this.mids = new Map(); // mid -> {mid, kind, track, source}
    this.video = true; // false: audio only, enforced by the server (a weak link, or the school's choice)
    this.closedByUs = false;
    this.reconnects = 0;
    this._attempt = 0;
    this._watchdog = null;
    this._rebuilding = false;
    this._badSince = null;
    this._lastBytes = 0;
    this._lastBytesAt = 0;
  }

  async start() {
    this.emit("status", { state: "connecting" });
    await this._connect();
    this._watchdog = setInterval(() => this._check(), WATCHDOG_INTERVAL_MS);
  }

  async _connect() {
    this.mids = new Map();
    this.pc = new RTCPeerConnection({ iceServers: [] });
    const pc = this.pc;
    pc.addEventListener("connectionstatechange", () => {
      if (pc !== this.pc) return;
      if (pc.connectionState === "connected") {
        this._attempt = 0;
        this.emit("status", { state: "connected", reconnects: this.reconnects });
      }
      if (pc.connectionState === "failed") this._rebuild("peer connection failed");
    });
    this._badSince = null;
    this._lastBytes = 0;
    this._lastBytesAt = performance.now();
    const listen = (sig) => {
      sig.addEventListener("offer", (e) => this._onOffer(pc, e.detail));
      sig.addEventListener("tracks", (e) => this._setMids(e.detail.tracks));
      sig.addEventListener("close", (e) => this._onSignalClose(sig, e));
    };
    try {
      await this._join(listen);
    } catch (err) {
      if (err instanceof ProtocolError && err.code === "lesson_ended") {
        this._onEnded();
        return;
      }
      throw err;
    }
    if (!this.video) await this.sig.request({ type: "prefer", video: false }); // kept across reconnects
  }

  /** Audio only (false) or video again (true): the server stops or restarts sending the video. */
  async setVideo(enabled) {
    this.video = enabled;
    if (this.sig) await this.sig.request({ type: "prefer", video: enabled });
  }

  async _onOffer(pc, msg) {
    if (pc !== this.pc) return;
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    this.sig.send({ type: "answer", sdp: pc.localDescription.sdp });
    this._setMids(msg.tracks);
  }

  _setMids(tracks) {
    this.mids = new Map(tracks.map((t) => [t.mid, t]));
    this.emit("media", { tracks: this.media() });
  }

  /** The lesson's media as received: [{mid, kind, source, track id, receiver track}], live slots only. */
  media() {
    if (!this.pc) return [];
    const out = [];
    for (const t of this.mids.values()) {
      if (!t.track) continue;
      const transceiver = this.pc.getTransceivers().find((x) => x.mid === t.mid);
      if (transceiver) out.push({ ...t, receiverTrack: transceiver.receiver.track });
    }
    return out;
  }

  /** The watchdog: a closed peer connection (pc.close()), a long "disconnected", or no media bytes for a
   *  while although the teacher is sending all mean the connection is dead; rebuild it. */
  async _check() {
    if (this.closedByUs || this.ended || this._rebuilding || !this.pc) return;
    const pc = this.pc;
    const now = performance.now();
    if (pc.connectionState === "closed" || pc.signalingState === "closed") return this._rebuild("peer connection closed");
    if (pc.connectionState === "disconnected") {
      this._badSince ??= now;
      if (now - this._badSince > DISCONNECTED_GRACE_MS) return this._rebuild("peer connection disconnected");
    } else {
      this._badSince = null;
    }
    if (pc.connectionState !== "connected" || this.media().length === 0) {
      this._lastBytesAt = now;
      return;
    }
    let bytes = 0;
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp") bytes += s.bytesReceived || 0;
    });
    if (bytes > this._lastBytes) {
      this._lastBytes = bytes;
      this._lastBytesAt = now;
    } else if (now - this._lastBytesAt > STALL_GRACE_MS) {
      this._rebuild("no media received");
    }
  }

  async _rebuild(why) {
    if (this._rebuilding || this.closedByUs || this.ended) return;
    this._rebuilding = true;
    this.reconnects += 1;
    this.emit("status", { state: "reconnecting", why });
    const oldSig = this.sig;
    const oldPc = this.pc;
    this.sig = null;
    if (oldSig) oldSig.close();
    if (oldPc) oldPc.close();
    this.mids = new Map();
    this.emit("media", { tracks: [] });
    while (!this.closedByUs && !this.ended) {
      const delay = RECONNECT_DELAYS_MS[Math.min(this._attempt, RECONNECT_DELAYS_MS.length - 1)];
      this._attempt += 1;
      await new Promise((r) => setTimeout(r, delay));
      try {
        await this._connect();
        break;
      } catch (err) {
        console.warn("reconnect failed:", err);
        if (this.sig) this.sig.close();
        if (this.pc) this.pc.close();
        this.emit("status", { state: "reconnecting", why: String(err.message || err) });
      }
    }
    this._rebuilding = false;
  }

  /** What this classroom receives, from its own getStats: for the quality indicator. */
  async quality(previous) {
    const q = { at: performance.now(), video: null, audio: null, rtt: null, packetsLost: 0, packetsReceived: 0 };
    if (!this.pc) return q;
    const live = new Set(this.media().map((m) => m.mid));
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && live.has(s.mid)) {
        q.packetsLost += Math.max(0, s.packetsLost || 0);
        q.packetsReceived += s.packetsReceived || 0;
        if (s.kind === "video" && (!q.video || (s.framesPerSecond || 0) > (q.video.fps || 0))) {
          q.video = { fps: s.framesPerSecond || 0, width: s.frameWidth || 0, height: s.frameHeight || 0 };
        }
        if (s.kind === "audio") q.audio = { jitter: s.jitter || 0 };
      }
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) q.rtt = s.currentRoundTripTime;
    });
    // loss over the last interval, not since the start
    const lost = q.packetsLost - (previous ? previous.packetsLost : 0);
    const got = q.packetsReceived - (previous ? previous.packetsReceived : 0);
    q.loss = lost > 0 && got + lost > 0 ? lost / (got + lost) : 0;
    q.level = qualityLevel(q);
    return q;
  }

  close() {
    this.closedByUs = true;
    clearInterval(this._watchdog);
    super.close();
  }
}

/** good | fair | poor, with the field figures in DESIGN.md: ≤ 1 % loss and ≤ 150 ms good, ≤ 5 % and
 *  ≤ 400 ms acceptable. */
export function qualityLevel(q) {
  const rtt = q.rtt ?? 0;
  if (!q.video && !q.audio) return "none";
  if (q.loss > 0.05 || rtt > 0.4 || (q.video && q.video.fps > 0 && q.video.fps < 8)) return "poor";
  if (q.loss > 0.01 || rtt > 0.15) return "fair";
  return "good";
}
