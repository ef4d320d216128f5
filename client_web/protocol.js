// @ts-check
// ketang signalling protocol for browsers (docs/protocol.md), apart from any page's UI.
//
//   Signaling         one websocket: request/reply by id, server messages as DOM events
//   TeacherSession    join, publish microphone + camera (the teacher offers), courseware share, end the lesson;
//                     receive the classrooms (the server offers), wall, stage, mute, remove, lock, chat
//   ClassroomSession  join, answer the server's offers, which mid carries what (the teacher's tracks, a
//                     classroom on stage), publish a small camera view + microphone, hand, chat
//   Both rebuild themselves after a drop (new websocket, join again, new peer connections).
//
// Sessions emit events (addEventListener) and never touch the DOM, so pages stay small and the
// protocol can be read in one place.

import { AudioMix } from "./mixer.js";

// -- the messages (docs/protocol.md), as this code reads them ------------------------------------------------

/** @typedef {{id: string, role: string, name: string, joined_at?: number,
 *    state?: Partial<ClassroomState>}} Participant */
/** @typedef {{participant: string, hand: boolean, stage: boolean, muted: boolean,
 *    position?: number | null}} ClassroomState */
/** @typedef {{participant: string, hand?: boolean, stage?: boolean, muted?: boolean}} StateUpdate */
/** @typedef {{id: string, title?: string, teacher?: string, state?: string, created_at?: number,
 *    started_at?: number, ended_at?: number}} Lesson */
/** A track of the lesson: `joined.tracks`, `track-added`, `track-removed`.
 *  @typedef {{id: string, kind: string, source: string, participant: string}} LessonTrack */
/** What one mid of the receiving peer connection carries (`offer`/`tracks` entries; nulls: a free slot).
 *  @typedef {{mid: string, kind: string, track: string | null, source: string | null,
 *    participant: string | null}} MidEntry */
/** @typedef {MidEntry & {receiverTrack: MediaStreamTrack}} ReceivedMedia */
/** @typedef {{id: string, participant: string, role: string, name: string, text: string, at: number}} ChatMessage */
/** @typedef {{participant: string, name: string, raised_at: number}} Hand */
/** @typedef {{id: string, name: string}} StageGuest */
/** @typedef {{locked: boolean, chat_classrooms: boolean}} Settings */
/** @typedef {{video?: boolean, audio?: boolean}} Demand */
/** @typedef {{type: string, ref?: number}} Reply */
/** @typedef {Reply & {participant: Participant, lesson: Lesson, participants: Participant[], tracks: LessonTrack[],
 *    settings?: Partial<Settings>, stage?: StageValue, chat?: ChatMessage[], hands?: Hand[],
 *    state?: Partial<ClassroomState>, ice_servers?: RTCIceServer[]}} Joined */
/** `joined.stage` and the `stage` event: [{id, name}] (also accepted: {participants: [...]}, or bare ids).
 *  @typedef {Array<StageGuest | string> | {participants?: Array<StageGuest | string>} | null | undefined} StageValue */

/** What each request is answered with (a refusal is an `error` message: ProtocolError).
 *  @typedef {{
 *    join: Joined, publish: Reply & {sdp: string, demand?: Demand}, unpublish: Reply, wall: Reply,
 *    stage: Reply & {participants: StageValue}, mute: Reply & {participants?: string[], muted: boolean},
 *    remove: Reply, lock: Reply & {settings?: Partial<Settings>}, chat_mode: Reply & {settings?: Partial<Settings>},
 *    chat: Reply & {message: ChatMessage}, chat_delete: Reply, prefer: Reply,
 *    hand: Reply & {up: boolean, position?: number | null},
 *    probe: Reply & {sdp: string, ice_servers?: RTCIceServer[]},
 *  }} Replies */
/** A request: its type and its fields (the id is added on sending).
 *  @typedef {{type: keyof Replies, [field: string]: unknown}} Request */

/** A lesson event (`type: "event"`), by its `event` name.
 *  @typedef {{type: "event", event: "participant-joined" | "participant-left", participant: Participant}
 *    | {type: "event", event: "track-added" | "track-removed", track: LessonTrack}
 *    | {type: "event", event: "lesson-started" | "lesson-ended", lesson: Lesson}
 *    | {type: "event", event: "hands", queue?: Hand[]}
 *    | ({type: "event", event: "classroom-state"} & StateUpdate)
 *    | {type: "event", event: "stage", participants: StageValue}
 *    | {type: "event", event: "settings", settings?: Partial<Settings>}
 *    | {type: "event", event: "chat", message: ChatMessage}
 *    | {type: "event", event: "chat-deleted", message: string}
 *    | ({type: "event", event: "demand"} & Demand)} LessonEvent */
/** @typedef {{type: "offer", sdp: string, tracks: MidEntry[]}} Offer */
/** @typedef {{type: "tracks", tracks: MidEntry[]}} Tracks */
/** @typedef {{type: "error", ref?: number, code: string, message: string, url?: string}} ErrorMessage */
/** The server drains (a rolling restart): join again at once, at `url` (another node) when it names one.
 *  @typedef {{type: "rejoin", reason?: string, url?: string}} Rejoin */
/** Any server message: the ones above, and replies (which `request` hands over).
 *  @typedef {(LessonEvent | Offer | Tracks | ErrorMessage | Rejoin | Reply) & {ref?: number}} ServerMessage */

/** The events a Signaling dispatches, by name (each a CustomEvent with this detail).
 *  @typedef {{message: ServerMessage, offer: Offer, tracks: Tracks, event: LessonEvent, rejoin: Rejoin,
 *    close: {code: number, reason: string}}} SignalingEvents */

const REQUEST_TIMEOUT_MS = 10000;
// A session's watchdog: how often it looks, how long "disconnected" or "no packets" may last before
// the connection is rebuilt. aiortc has no ICE restart, so rebuilding means a new peer connection.
const WATCHDOG_INTERVAL_MS = 1000;
const DISCONNECTED_GRACE_MS = 3000;
const STALL_GRACE_MS = 6000;
// After a drop: quick tries first (a crashed server's lessons are free on another one within ~3 s: docs/config.md),
// then slower ones. Each delay is spread by ± RECONNECT_JITTER so that hundreds of classrooms do not all arrive
// in the same instant.
const RECONNECT_DELAYS_MS = [250, 500, 500, 500, 500, 500, 500, 1000, 2000, 4000, 8000];
const RECONNECT_JITTER = 0.25;
// Told to rejoin (a draining server): the first try comes within this, spread so a lesson's classrooms do not
// arrive at the next server in the same instant.
const MOVE_SPREAD_MS = 200;
// A websocket that has not opened by then is given up (a server whose machine died answers nothing at all).
const CONNECT_TIMEOUT_MS = 3000;
// Close code the server uses when the same participant joined again elsewhere (another tab).
const CLOSE_REPLACED = 4001;
// Close code the server uses when the teacher removed this classroom: it cannot join this lesson again.
const CLOSE_REMOVED = 4003;
// Close code after `rejoin`: the server drains; the lesson goes on at another node, joined at once and quietly.
const CLOSE_REJOIN = 4006;
const CHAT_KEEP = 200; // chat messages a page keeps (joined carries the last 100)

export const SOURCES = ["camera", "screen", "microphone"];

/** The token and other values carried in the page's URL fragment (#token=...&invite=...).
 *  The fragment never reaches a server's access log. */
/** @param {string} [hash] */
export function fragmentParams(hash = location.hash) {
  return new URLSearchParams(hash.replace(/^#/, ""));
}

/** @typedef {{role?: string, lesson?: string, name?: string, title?: string, sub?: string}} Claims */

/** The claims of a token, read without verifying (the server verifies): for display only.
 *  @param {string} token
 *  @returns {Claims | null} */
export function readClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part + "===".slice((part.length + 3) % 4)), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

/** @param {{protocol: string, host: string}} [loc] */
export function signalingUrl(loc = location) {
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws`;
}

/** `?relay=1` in the page's URL: media only through the TURN relay that `joined.ice_servers` names (a
 *  school whose firewall lets only TCP out; also what tests/test_turn.py uses).
 *  @param {string} [search] */
export function relayOnly(search = location.search) {
  return new URLSearchParams(search).get("relay") === "1";
}

/** A request refused by the server: its `error` message's code and text. */
export class ProtocolError extends Error {
  /** @param {string} code  @param {string} message  @param {ErrorMessage | null} [reply] */
  constructor(code, message, reply = null) {
    super(message);
    this.code = code;
    this.reply = reply; // the whole error message (e.g. `url` of lesson_elsewhere)
  }
}

/** The server could not be reached, or stopped answering: the websocket failed, closed or timed out (code
 *  `unreachable`; not a refusal: ProtocolError is one). */
export class ConnectionError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.code = "unreachable";
  }
}

// a lesson lives on one server process; a page sent from one to another follows at most this many times
const MAX_HOPS = 2;

/** A join refused for a moment only: the server cannot reach its room state (Redis) just now, it is being
 *  restarted (draining) and no other server takes the lesson yet, or it is short of CPU (overloaded). */
/** @param {unknown} err */
function unavailable(err) {
  return err instanceof ProtocolError && (err.code === "unavailable" || err.code === "draining"
    || err.code === "overloaded");
}

/** The websocket URL of the server whose base URL (http[s]://host:port) a `lesson_elsewhere` names. */
/** @param {string} base */
export function wsUrlOf(base) {
  return `${base.replace(/\/+$/, "").replace(/^http/, "ws")}/ws`;
}

/** One websocket. Dispatches "message" (every server message), "<type>" per message type,
 *  "event:<name>" per lesson event, and "close" ({code, reason}). */
export class Signaling extends EventTarget {
  /** @param {string} url */
  constructor(url) {
    super();
    this.url = url;
    /** @type {WebSocket | null} */
    this.ws = null;
    this.nextId = 1;
    /** @type {Map<number, {resolve: (reply: any) => void, reject: (err: Error) => void,
     *    timer: ReturnType<typeof setTimeout>}>} id -> the caller waiting for its reply */
    this.pending = new Map();
  }

  /** Listen to one of the events this dispatches, typed by name (addEventListener, as the pages use it).
   *  @template {keyof SignalingEvents} K
   *  @param {K} type  @param {(e: CustomEvent<SignalingEvents[K]>) => void} listener */
  on(type, listener) {
    this.addEventListener(type, /** @type {EventListener} */ (listener));
  }

  /** @returns {Promise<Signaling>} */
  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      const timer = setTimeout(() => {
        reject(new ConnectionError("websocket connect timed out"));
        ws.close();
      }, CONNECT_TIMEOUT_MS);
      ws.onopen = () => {
        clearTimeout(timer);
        resolve(this);
      };
      ws.onerror = () => reject(new ConnectionError("websocket failed"));
      ws.onmessage = (e) => this._receive(e.data);
      ws.onclose = (e) => {
        for (const { reject: fail, timer } of this.pending.values()) {
          clearTimeout(timer);
          fail(new ConnectionError("websocket closed"));
        }
        this.pending.clear();
        clearTimeout(timer);
        reject(new ConnectionError("websocket closed"));
        this.dispatchEvent(new CustomEvent("close", { detail: { code: e.code, reason: e.reason } }));
      };
    });
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** @param {object} message */
  send(message) {
    if (this.ws && this.open) this.ws.send(JSON.stringify(message));
  }

  /** Send with an id; resolves with the reply that references it, rejects with a ProtocolError.
   *  @template {keyof Replies} K
   *  @param {{type: K, [field: string]: unknown}} message
   *  @returns {Promise<Replies[K]>} */
  request(message) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ConnectionError(`no reply to ${message.type}`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.send({ ...message, id });
    });
  }

  /** @param {string} data */
  _receive(data) {
    /** @type {ServerMessage} */
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    const ref = msg.ref;
    const waiting = ref !== undefined ? this.pending.get(ref) : undefined;
    if (ref !== undefined && waiting) {
      this.pending.delete(ref);
      clearTimeout(waiting.timer);
      if (isError(msg)) waiting.reject(new ProtocolError(msg.code, msg.message, msg));
      else waiting.resolve(msg);
    }
    this.dispatchEvent(new CustomEvent("message", { detail: msg }));
    this.dispatchEvent(new CustomEvent(msg.type, { detail: msg }));
    if (isEvent(msg)) this.dispatchEvent(new CustomEvent(`event:${msg.event}`, { detail: msg }));
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

/** @param {ServerMessage} msg  @returns {msg is ErrorMessage} */
function isError(msg) {
  return msg.type === "error";
}

/** @param {ServerMessage} msg  @returns {msg is LessonEvent} */
function isEvent(msg) {
  return msg.type === "event";
}

/** How a peer connection tells its session what changed: ("media") when the mid map or the transceivers
 *  change, ("connection", state) when its connection state does.
 *  @typedef {(what: "media" | "connection", state?: RTCPeerConnectionState) => void} OnChange */

/** A receiving peer connection, the server being the offerer: a classroom receives the lesson through one,
 *  the teacher receives the classrooms through one. Answers each `offer` in turn and keeps which mid carries
 *  which track of whom (`offer`/`tracks` entries: {mid, kind, track, source, participant}). The peer
 *  connection is made at the first offer, which follows `joined`: this join's ICE servers are known then. */
class Receiving {
  /** @param {() => RTCConfiguration} configuration  @param {OnChange} onChange */
  constructor(configuration, onChange) {
    this.configuration = configuration;
    this.onChange = onChange;
    /** @type {RTCPeerConnection | null} */
    this.pc = null;
    /** @type {Map<string, MidEntry>} mid -> what it carries */
    this.mids = new Map();
    this.closed = false;
    /** @type {Promise<void>} */
    this._answering = Promise.resolve(); // offers are answered one after the other
  }

  /** @param {Signaling} sig */
  listen(sig) {
    sig.on("offer", (e) => {
      // the offer's map is newer than any `tracks` before it; a `tracks` that arrives while we answer wins
      this.mids = new Map(e.detail.tracks.map((t) => [t.mid, t]));
      const sdp = e.detail.sdp;
      this._answering = this._answering
        .then(() => this._answer(sig, sdp))
        .catch((err) => { if (!this.closed) console.warn("answering the server's offer failed:", err); });
    });
    sig.on("tracks", (e) => {
      this.mids = new Map(e.detail.tracks.map((t) => [t.mid, t]));
      this.onChange("media");
    });
  }

  /** @param {Signaling} sig  @param {string} sdp */
  async _answer(sig, sdp) {
    if (this.closed) return;
    let pc = this.pc;
    if (!pc) {
      const made = new RTCPeerConnection(this.configuration());
      made.addEventListener("connectionstatechange", () => this.onChange("connection", made.connectionState));
      this.pc = pc = made;
    }
    await pc.setRemoteDescription({ type: "offer", sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    sig.send({ type: "answer", sdp: pc.localDescription?.sdp });
    this.onChange("media");
  }

  /** What arrives, live slots only: [{mid, kind, track, source, participant, receiverTrack}].
   *  @returns {ReceivedMedia[]} */
  media() {
    if (!this.pc) return [];
    const transceivers = this.pc.getTransceivers();
    /** @type {ReceivedMedia[]} */
    const out = [];
    for (const t of this.mids.values()) {
      if (!t.track) continue;
      const transceiver = transceivers.find((x) => x.mid === t.mid);
      if (transceiver) out.push({ ...t, receiverTrack: transceiver.receiver.track });
    }
    return out;
  }

  close() {
    this.closed = true;
    this.mids = new Map();
    if (this.pc) this.pc.close();
  }
}

/** A publishing peer connection, we being the offerer: `publish` names what each sending mid carries
 *  ({mid: camera | screen | microphone}) and the server answers. The teacher publishes microphone, camera
 *  and courseware; a classroom its microphone and a small camera view. */
class Publishing {
  /** @param {() => RTCConfiguration} configuration  @param {OnChange} onChange */
  constructor(configuration, onChange) {
    const pc = new RTCPeerConnection(configuration());
    pc.addEventListener("connectionstatechange", () => onChange("connection", pc.connectionState));
    this.pc = pc;
    /** @type {Map<RTCRtpTransceiver, string>} transceiver -> source */
    this.sources = new Map();
    /** @type {Promise<void> | undefined} the last of the setActive calls */
    this._active = undefined;
  }

  /** @param {string} source  @param {MediaStreamTrack} track  @param {RTCRtpTransceiverInit} [init] */
  add(source, track, init = {}) {
    const transceiver = this.pc.addTransceiver(track, { direction: "sendonly", ...init });
    this.sources.set(transceiver, source);
    return transceiver;
  }

  /** Offer (or re-offer) what we send; the server answers.
   *  @param {Signaling} sig  @param {object} [extra] more fields of the `publish` request */
  async publish(sig, extra = {}) {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    /** @type {Record<string, string>} */
    const sources = {};
    for (const [t, source] of this.sources) if (t.mid !== null) sources[t.mid] = source;
    const reply = await sig.request({ type: "publish", sdp: this.pc.localDescription?.sdp, sources, ...extra });
    await this.pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
    return reply;
  }

  /** Send `source` or not (`active`: its encodings on or off; no renegotiation). A track nobody receives costs
   *  a school's uplink nothing this way. Calls are applied one after another, the last one wins.
   *  @param {string} source  @param {boolean} active */
  setActive(source, active) {
    this._active = (this._active || Promise.resolve()).then(async () => {
      for (const [t, s] of this.sources) {
        if (s !== source || this.pc.signalingState === "closed") continue;
        const params = t.sender.getParameters();
        if (!params.encodings || !params.encodings.length) continue;
        if (params.encodings.every((e) => e.active === active)) continue;
        for (const e of params.encodings) e.active = active;
        await t.sender.setParameters(params);
      }
    }).catch((err) => console.warn("setParameters:", err));
    return this._active;
  }

  /** Another device for a source: no renegotiation needed.
   *  @param {string} source  @param {MediaStreamTrack} track */
  async replaceTrack(source, track) {
    for (const [t, s] of this.sources) if (s === source) await t.sender.replaceTrack(track);
  }

  close() {
    this.pc.close();
  }
}

/** `joined.stage` and the `stage` event: [{id, name}] (also accepted: {participants: [...]}, or bare ids).
 *  @param {StageValue} value  @returns {StageGuest[]} */
function stageList(value) {
  const list = Array.isArray(value) ? value : (value && value.participants) || [];
  return list.map((p) => (typeof p === "string" ? { id: p, name: "" } : p));
}

/** What both sessions share: the websocket, the lesson roster and state, the interactive classroom's state
 *  (hands, stage, chat, settings), a receiving peer connection, an optional publishing one, and rebuilding
 *  all of it after a drop (new websocket, `join` again, new peer connections: aiortc has no ICE restart).
 *
 *  Events: "lesson", "participants", "lesson-tracks", "media" (what the receiving pc carries changed),
 *  "status" ({state: connecting|connected|reconnecting|replaced|removed|ended}), "connection", "ended",
 *  "settings", "hands" ({queue, added}), "stage" ({participants}), "classroom-state" (a classroom's
 *  {participant, hand, stage, muted}), "chat" ({message} or {reset: true}), "chat-deleted" ({message}). */
/** The events a session dispatches, by name (each a CustomEvent with this detail); TeacherSession and
 *  ClassroomSession add theirs.
 *  @typedef {{lesson: {lesson: Lesson | null}, participants: {participants: Participant[]},
 *    "lesson-tracks": {added?: LessonTrack, removed?: LessonTrack}, media: {tracks: ReceivedMedia[]},
 *    status: {state: string, reconnects?: number, why?: string}, connection: {state?: RTCPeerConnectionState},
 *    ended: {}, settings: {settings: Settings}, hands: {queue: Hand[], added: string[]},
 *    stage: {participants: StageGuest[]}, "classroom-state": ClassroomState,
 *    chat: {message?: ChatMessage, reset?: boolean}, "chat-deleted": {message: string},
 *    screen: {sharing: boolean}, hand: {up: boolean, position: number | null}, microphone: {on: boolean},
 *    publishing: {ok?: boolean, error?: ProtocolError}, demand: {video: boolean, audio: boolean}}} SessionEvents */

class LessonSession extends EventTarget {
  /** @param {string} token  @param {string} [url] */
  constructor(token, url = signalingUrl()) {
    super();
    this.token = token;
    this.homeUrl = url; // where every (re)join starts: it sends us on if the lesson lives elsewhere
    this.url = url; // the websocket of the server carrying the lesson, as last joined
    /** @type {Claims} */
    this.claims = readClaims(token) || {};
    /** @type {Signaling | null} */
    this.sig = null;
    /** @type {Receiving | null} what the server sends us */
    this.receiving = null;
    /** @type {Publishing | null} what we send (null: nothing) */
    this.publishing = null;
    /** @type {Participant | null} */
    this.me = null;
    /** @type {Lesson | null} */
    this.lesson = null;
    /** @type {Map<string, Participant>} */
    this.participants = new Map();
    /** @type {Map<string, LessonTrack>} track id -> track */
    this.lessonTracks = new Map();
    this.ended = false;
    this.removed = false;
    this.replaced = false; // the same link joined elsewhere (close code 4001): this session stopped for good
    /** @type {string | undefined} the code of a join refused for good (`_refused`) */
    this.refusal = undefined;
    /** @type {RTCIceServer[]} TURN with this participant's credentials, from joined.ice_servers */
    this.iceServers = [];
    this.relay = relayOnly();
    this.closedByUs = false;
    /** @type {string | null} where the next join goes (a draining server's `rejoin` url), once */
    this._moveTo = null;
    this._moving = false; // told to rejoin: the next rebuild starts at once and says "moving", not "reconnecting"
    this.reconnects = 0;
    this._attempt = 0;
    this._rebuilding = false;
    /** @type {ReturnType<typeof setInterval> | undefined} */
    this._watchdog = undefined;
    this._stallCheck = false;
    /** @type {number | null} */
    this._badSince = null;
    this._lastBytes = 0;
    this._lastBytesAt = 0;
    this._joinedAt = 0;
    // the interactive classroom (docs/protocol.md "The interactive classroom")
    /** @type {Settings} */
    this.settings = { locked: false, chat_classrooms: true };
    /** @type {Hand[]} in the order raised (teacher, observers) */
    this.hands = [];
    /** @type {StageGuest[]} */
    this.onStage = [];
    /** @type {ChatMessage[]} chat messages not deleted, oldest first */
    this.messages = [];
    /** @type {Map<string, ClassroomState>} classroom id -> its state */
    this.states = new Map();
  }

  /** The peer connection whose state is this session's (each kind of session says which).
   *  @returns {RTCPeerConnection | null} */
  get pc() {
    return null;
  }

  /** Join, and publish what this kind of session sends (each kind of session says how).
   *  @returns {Promise<void>} */
  async _connect() {
    throw new Error("a session class defines _connect");
  }

  /** Listen to one of the events this dispatches, typed by name (addEventListener, as the pages use it).
   *  @template {keyof SessionEvents} K
   *  @param {K} type  @param {(e: CustomEvent<SessionEvents[K]>) => void} listener */
  on(type, listener) {
    this.addEventListener(type, /** @type {EventListener} */ (listener));
  }

  /** The RTCConfiguration of our peer connections.
   *  @returns {RTCConfiguration} */
  rtcConfiguration() {
    return { iceServers: this.iceServers, iceTransportPolicy: this.relay ? "relay" : "all" };
  }

  get recvPc() {
    return this.receiving ? this.receiving.pc : null;
  }

  get sendPc() {
    return this.publishing ? this.publishing.pc : null;
  }

  /** @template {keyof SessionEvents} K  @param {K} type  @param {SessionEvents[K]} [detail] */
  emit(type, detail = /** @type {SessionEvents[K]} */ ({})) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** What the receiving peer connection carries: [{mid, kind, track, source, participant, receiverTrack}].
   *  @returns {ReceivedMedia[]} */
  media() {
    return this.receiving ? this.receiving.media() : [];
  }

  /** Connect and join; the receiving side listens first, as the server's offer follows `joined` at once.
   *  @param {string} [url]  @param {number} [hops]  @returns {Promise<Joined>} */
  async _join(url = this._moveTo || this.homeUrl, hops = 0) {
    this._moveTo = null;
    this.url = url;
    const sig = new Signaling(url);
    this.sig = sig;
    const receiving = new Receiving(() => this.rtcConfiguration(), (what, state) => this._onPc(receiving, what, state));
    this.receiving = receiving;
    this.publishing = null;
    receiving.listen(sig);
    sig.on("event", (e) => this._onEvent(e.detail));
    sig.on("close", (e) => this._onSignalClose(sig, e));
    sig.on("rejoin", (e) => {
      if (sig !== this.sig) return;
      this._moving = true;
      this._moveTo = e.detail.url ? wsUrlOf(e.detail.url) : null;
    });
    await sig.connect();
    let joined;
    try {
      joined = await sig.request({ type: "join", token: this.token, lesson: this.claims.lesson });
    } catch (err) {
      // several server processes: the lesson lives on another one, which the server names
      if (err instanceof ProtocolError && err.code === "lesson_elsewhere" && err.reply && err.reply.url
          && hops < MAX_HOPS) {
        sig.close();
        return this._join(wsUrlOf(err.reply.url), hops + 1);
      }
      throw err;
    }
    this.me = joined.participant;
    this.lesson = joined.lesson;
    this.participants = new Map(joined.participants.map((p) => [p.id, p]));
    this.iceServers = joined.ice_servers || [];
    this.lessonTracks = new Map(joined.tracks.map((t) => [t.id, t]));
    this._joinedAt = performance.now();
    this.emit("lesson", { lesson: this.lesson });
    this.emit("participants", { participants: [...this.participants.values()] });
    this._restore(joined);
    return joined;
  }

  /** The interactive state `joined` carries: a reconnecting page finds everything as it was.
   *  @param {Joined} joined */
  _restore(joined) {
    this.settings = { locked: false, chat_classrooms: true, ...(joined.settings || {}) };
    this.emit("settings", { settings: this.settings });
    for (const p of joined.participants) if (p.state) this._setState({ participant: p.id, ...p.state });
    if (joined.state) this._setState({ participant: joined.participant.id, ...joined.state });
    if (joined.hands) this._setHands(joined.hands);
    this._setStage(joined.stage);
    this.messages = (joined.chat || []).slice();
    this.emit("chat", { reset: true });
  }

  /** The publishing peer connection of this join (a rebuild makes a new one). */
  _newPublishing() {
    const publishing = new Publishing(() => this.rtcConfiguration(), (what, state) => this._onPc(publishing, what, state));
    this.publishing = publishing;
    return publishing;
  }

  /** @param {Receiving | Publishing} owner  @param {"media" | "connection"} what
   *  @param {RTCPeerConnectionState} [state] */
  _onPc(owner, what, state) {
    if (owner !== this.receiving && owner !== this.publishing) return; // a connection we replaced
    if (what === "media") {
      this.emit("media", { tracks: this.media() });
      return;
    }
    if (owner.pc === this.pc) {
      this.emit("connection", { state });
      if (state === "connected") {
        this._attempt = 0;
        this.emit("status", { state: "connected", reconnects: this.reconnects });
      }
    }
    if (state === "failed") this._rebuild(`${owner === this.receiving ? "receiving" : "publishing"} peer connection failed`);
  }

  /** @param {LessonEvent} msg */
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
      case "hands":
        this._setHands(msg.queue || []);
        break;
      case "classroom-state":
        this._setState(msg);
        break;
      case "stage":
        this._setStage(msg.participants);
        break;
      case "settings":
        this.settings = { ...this.settings, ...(msg.settings || {}) };
        this.emit("settings", { settings: this.settings });
        break;
      case "chat":
        this._addMessage(msg.message);
        break;
      case "chat-deleted":
        this._deleteMessage(msg.message);
        break;
      default:
        break;
    }
  }

  /** @param {Hand[]} queue */
  _setHands(queue) {
    const before = new Set(this.hands.map((h) => h.participant));
    const up = new Set(queue.map((h) => h.participant));
    this.hands = queue;
    for (const [id, s] of this.states) if (s.hand && !up.has(id)) this._setState({ participant: id, hand: false }, false);
    for (const id of up) this._setState({ participant: id, hand: true }, false);
    const added = queue.filter((h) => !before.has(h.participant)).map((h) => h.participant);
    this.emit("hands", { queue, added });
  }

  /** @param {StageValue} value */
  _setStage(value) {
    this.onStage = stageList(value);
    const on = new Set(this.onStage.map((p) => p.id));
    for (const [id, s] of this.states) if (s.stage && !on.has(id)) this._setState({ participant: id, stage: false }, false);
    for (const id of on) this._setState({ participant: id, stage: true }, false);
    this.emit("stage", { participants: this.onStage });
  }

  /** A classroom's {hand, stage, muted}: from `classroom-state`, `joined` and the replies to our requests.
   *  @param {StateUpdate} update  @param {boolean} [announce] */
  _setState(update, announce = true) {
    const id = update.participant;
    /** @type {ClassroomState} */
    const next = { participant: id, hand: false, stage: false, muted: false, ...this.states.get(id) };
    for (const key of /** @type {const} */ (["hand", "stage", "muted"])) {
      const value = update[key];
      if (typeof value === "boolean") next[key] = value;
    }
    this.states.set(id, next);
    if (announce) this.emit("classroom-state", { ...next });
  }

  /** @param {ChatMessage | undefined} message */
  _addMessage(message) {
    if (!message || this.messages.some((m) => m.id === message.id)) return; // our own: the reply and the event
    this.messages.push(message);
    if (this.messages.length > CHAT_KEEP) this.messages.splice(0, this.messages.length - CHAT_KEEP);
    this.emit("chat", { message });
  }

  /** @param {string} id */
  _deleteMessage(id) {
    const count = this.messages.length;
    this.messages = this.messages.filter((m) => m.id !== id);
    if (this.messages.length !== count) this.emit("chat-deleted", { message: id });
  }

  /** The current websocket; throws while there is none (between a drop and the next join).
   *  @returns {Signaling} */
  _signaling() {
    if (!this.sig) throw new ConnectionError("not connected");
    return this.sig;
  }

  /** The publishing peer connection of this join; throws while there is none.
   *  @returns {Publishing} */
  _publishing() {
    if (!this.publishing) throw new Error("not publishing");
    return this.publishing;
  }

  /** A request on the current websocket (rejects while reconnecting).
   *  @template {keyof Replies} K
   *  @param {{type: K, [field: string]: unknown}} message
   *  @returns {Promise<Replies[K]>} */
  async _request(message) {
    if (!this.sig || !this.sig.open) throw new ConnectionError("not connected");
    return this.sig.request(message);
  }

  /** Write in the lesson's chat (a classroom gets `chat_off` while the teacher has turned classroom chat off).
   *  @param {string} text */
  async chat(text) {
    const reply = await this._request({ type: "chat", text });
    this._addMessage(reply.message);
    return reply.message;
  }

  _onEnded() {
    this.ended = true;
    this.emit("ended");
    this.close();
  }

  _onRemoved() {
    this.removed = true;
    this.emit("status", { state: "removed" });
    this.close();
  }

  /** Our websocket closed: rebuild, unless we closed it, the lesson ended, the same link was opened elsewhere
   *  (fighting over it would flap both pages) or the teacher removed us.
   *  @param {Signaling} sig  @param {CustomEvent<{code: number, reason: string}>} e */
  _onSignalClose(sig, e) {
    if (sig !== this.sig || this.closedByUs || this.ended) return;
    if (e.detail.code === CLOSE_REPLACED) {
      this.replaced = true;
      this.close(); // closed before the page hears of it: nothing of this session counts as live any more
      this.emit("status", { state: "replaced" });
      return;
    }
    if (e.detail.code === CLOSE_REMOVED) {
      this._onRemoved();
      return;
    }
    if (e.detail.code === CLOSE_REJOIN) this._moving = true;
    this._rebuild(this._moving ? "the server is restarting: moving to another" : "websocket closed");
  }

  /** A join refused for good: removed by the teacher, or a classroom joining a lesson that has ended.
   *  @param {unknown} err */
  _refused(err) {
    if (!(err instanceof ProtocolError)) return false;
    this.refusal = err.code;
    if (err.code === "removed") {
      this._onRemoved();
      return true;
    }
    if (err.code === "lesson_ended" && this.claims.role !== "teacher") {
      this._onEnded();
      return true;
    }
    return false;
  }

  /** The websocket or a peer connection died: join again with new peer connections, after a back-off.
   *  @param {string} why */
  async _rebuild(why) {
    if (this._rebuilding || this.closedByUs || this.ended) return;
    this._rebuilding = true;
    this.reconnects += 1;
    // a move (the server drains) is not a failure: the page keeps the last picture and says nothing unless the
    // first join fails; it starts at once, where `rejoin` said
    let moving = this._moving;
    this._moving = false;
    this.emit("status", { state: moving ? "moving" : "reconnecting", why });
    this._teardown();
    if (!moving) this.emit("media", { tracks: [] });
    while (!this.closedByUs && !this.ended) {
      const base = RECONNECT_DELAYS_MS[Math.min(this._attempt, RECONNECT_DELAYS_MS.length - 1)];
      const delay = moving ? MOVE_SPREAD_MS * Math.random() : base * (1 + RECONNECT_JITTER * (2 * Math.random() - 1));
      moving = false;
      this._attempt += 1;
      await new Promise((r) => setTimeout(r, delay));
      if (this.closedByUs || this.ended) break;
      try {
        await this._connect();
        break;
      } catch (err) {
        if (this._refused(err)) break;
        console.warn("reconnect failed:", err);
        this._teardown();
        this.emit("status", { state: "reconnecting", why: String((err instanceof Error && err.message) || err) });
      }
    }
    this._rebuilding = false;
  }

  _teardown() {
    const sig = this.sig;
    this.sig = null;
    if (sig) sig.close();
    if (this.receiving) this.receiving.close();
    if (this.publishing) this.publishing.close();
  }

  /** Look at the peer connections every second. `stall`: also rebuild when the receiving one gets no media
   *  bytes for a while although the lesson sends some (a classroom; the teacher receives nothing at times).
   *  @param {boolean} stall */
  _startWatchdog(stall) {
    this._stallCheck = stall;
    clearInterval(this._watchdog);
    this._watchdog = setInterval(() => this._check(), WATCHDOG_INTERVAL_MS);
  }

  /** The watchdog: a closed peer connection (pc.close()), a long "disconnected", an offer that never came, or
   *  no media bytes for a while although media is mapped all mean the connection is dead; rebuild it. */
  async _check() {
    if (this.closedByUs || this.ended || this._rebuilding || !this.sig || !this.me) return;
    const now = performance.now();
    const pcs = [this.recvPc, this.sendPc].filter((pc) => pc !== null);
    if (pcs.some((pc) => pc.connectionState === "closed" || pc.signalingState === "closed")) {
      return this._rebuild("peer connection closed");
    }
    if (pcs.some((pc) => pc.connectionState === "disconnected")) {
      this._badSince ??= now;
      if (now - this._badSince > DISCONNECTED_GRACE_MS) return this._rebuild("peer connection disconnected");
    } else {
      this._badSince = null;
    }
    if (!this._stallCheck) return;
    const pc = this.recvPc;
    if (!pc) {
      if (now - this._joinedAt > STALL_GRACE_MS) this._rebuild("no offer from the server");
      return;
    }
    if (pc.connectionState !== "connected" || this.media().length === 0) {
      this._lastBytesAt = now;
      return;
    }
    let bytes = 0;
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp") bytes += s.bytesReceived || 0;
    });
    if (pc !== this.recvPc) return; // rebuilt meanwhile
    if (bytes > this._lastBytes) {
      this._lastBytes = bytes;
      this._lastBytesAt = now;
    } else if (now - this._lastBytesAt > STALL_GRACE_MS) {
      this._rebuild("no media received");
    }
  }

  _resetWatch() {
    this._badSince = null;
    this._lastBytes = 0;
    this._lastBytesAt = performance.now();
    this._joinedAt = performance.now();
  }

  close() {
    this.closedByUs = true;
    clearInterval(this._watchdog);
    this._teardown();
  }
}

/** The teacher: the offerer of its publishing peer connection (microphone, camera, courseware), and the
 *  answerer of a receiving one (the classrooms' cameras on its wall, their microphones, whoever is on stage).
 *  Call start(stream), then shareScreen/stopScreen, setMuted, the moderation methods, end(). */
export class TeacherSession extends LessonSession {
  /** @param {string} token  @param {string} [url] */
  constructor(token, url) {
    super(token, url);
    /** @type {Map<string, MediaStreamTrack>} source -> the track we send (what a rebuilt connection publishes again) */
    this.sending = new Map();
    /** @type {RTCRtpTransceiver | null} */
    this.screenTransceiver = null;
    /** @type {MediaStreamTrack | null} */
    this.screenTrack = null;
    this.record = true; // the lesson goes into the resource library unless the teacher says no
    /** @type {string[] | null} the classroom tiles on screen (`wall`), sent again after a reconnect */
    this.wallVisible = null;
    this.simulcast = true; // the camera as three layers: each classroom gets the largest its link carries
    /** @type {AudioMix | null} the microphone mixed with the courseware's sound while a share carries sound */
    this.mix = null;
  }

  /** How each source is encoded: the camera in three simulcast layers (RIDs q, h, f, smallest first — the
   *  server reads them in that order), the courseware sharp rather than smooth (slides must stay legible).
   *  @param {string} source  @returns {RTCRtpTransceiverInit} */
  _sendInit(source) {
    if (source === "camera" && this.simulcast) {
      return { sendEncodings: [
        { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000, maxFramerate: 15 },
        { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
        { rid: "f", maxBitrate: 1_500_000 },
      ] };
    }
    if (source === "screen") return { sendEncodings: [{ maxBitrate: 1_200_000, maxFramerate: 5 }] };
    return {};
  }

  /** The teacher's own connection: the publishing one (what `pc.close()` in a test cuts). */
  get pc() {
    return this.sendPc;
  }

  /** @returns {Map<RTCRtpTransceiver, string>} */
  get sources() {
    return this.publishing ? this.publishing.sources : new Map();
  }

  /** Join, publish the microphone and camera of `stream`, and receive the classrooms.
   *  @param {MediaStream} stream */
  async start(stream) {
    this.reconnects = 0;
    this.closedByUs = false;
    for (const track of stream.getTracks()) this.sending.set(track.kind === "audio" ? "microphone" : "camera", track);
    try {
      await this._connect();
    } catch (err) {
      if (unavailable(err)) { // the server's room state is down for a moment: try again as after a drop
        this._startWatchdog(false);
        this._rebuild(/** @type {ProtocolError} */ (err).message);
        return;
      }
      this.close(); // the page may start again with a new session
      throw err;
    }
    this._startWatchdog(false);
  }

  /** Join and publish the same tracks on a new peer connection; the server continues them in the classrooms'
   *  slots. The wall is sent again: what the teacher sees is kept per connection. */
  async _connect() {
    this._resetWatch();
    await this._join();
    const publishing = this._newPublishing();
    this.screenTransceiver = null;
    for (const [source, track] of this.sending) {
      if (source === "screen") track.contentHint = "detail"; // keep the resolution, drop frames instead
      const t = publishing.add(source, track, this._sendInit(source));
      if (source === "screen") this.screenTransceiver = t;
    }
    await this.publish();
    if (this.wallVisible) {
      try {
        await this.wall(this.wallVisible);
      } catch (err) {
        console.warn("wall after reconnect:", err);
      }
    }
  }

  /** Offer (or re-offer) what we send; the server answers. `sources` tells it which mid is the screen. */
  async publish() {
    await this._publishing().publish(this._signaling(), { record: this.record });
  }

  /** Replace the camera or microphone (a device chosen during the lesson): no renegotiation needed.
   *  @param {string} source  @param {MediaStreamTrack} track */
  async replaceTrack(source, track) {
    if (source === "microphone" && this.mix) {
      this.mix.setMicrophone(track); // the mixed track stays what is sent
      return;
    }
    this.sending.set(source, track);
    if (this.publishing) await this.publishing.replaceTrack(source, track);
  }

  /** Publish `track` as the courseware ("screen"): a second video m-line, offered again (renegotiation).
   *  `sound` (a shared tab's audio) is mixed into the microphone's track: classrooms and the recording hear it.
   *  @param {MediaStreamTrack} track  @param {MediaStreamTrack | null} [sound] */
  async shareScreen(track, sound = null) {
    if (this.screenTrack) await this.stopScreen();
    if (sound) await this._mixIn(sound);
    this.screenTrack = track;
    this.sending.set("screen", track);
    if (this.screenTransceiver) {
      // A new share gets a new m-line rather than the stopped one: the server learns which SSRC is which
      // track from the MID header extension, and Chromium stops sending that extension on an SSRC once
      // the server has acknowledged it, so a restarted track on the old SSRC could not be told apart.
      this.screenTransceiver.direction = "inactive";
      this._publishing().sources.delete(this.screenTransceiver);
    }
    track.contentHint = "detail"; // keep the resolution, drop frames instead: text must stay legible
    this.screenTransceiver = this._publishing().add("screen", track, this._sendInit("screen"));
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
    const me = this.me?.id;
    const mine = [...this.lessonTracks.values()].filter((t) => t.source === "screen" && t.participant === me);
    for (const t of mine) {
      try {
        await this._signaling().request({ type: "unpublish", track: t.id });
      } catch (err) {
        console.warn("unpublish failed", err);
      }
    }
    await this.screenTransceiver?.sender.replaceTrack(null); // set with screenTrack
    track.stop();
    await this._mixOut();
    this.emit("screen", { sharing: false });
  }

  /** The courseware's sound joins the microphone in one track (no microphone: it is sent as the lesson's sound).
   *  @param {MediaStreamTrack} sound */
  async _mixIn(sound) {
    const microphone = this.sending.get("microphone");
    if (!microphone) {
      this.sending.set("microphone", sound);
      if (this.publishing) {
        this._publishing().add("microphone", sound, this._sendInit("microphone"));
        await this.publish();
      }
      sound.addEventListener("ended", () => this.stopScreen());
      return;
    }
    this.mix = new AudioMix(microphone, sound);
    this.sending.set("microphone", this.mix.track);
    if (this.publishing) await this.publishing.replaceTrack("microphone", this.mix.track);
  }

  /** Back to the microphone alone (nothing to renegotiate: the same m-line). */
  async _mixOut() {
    const mix = this.mix;
    if (!mix) return;
    this.mix = null;
    this.sending.set("microphone", mix.microphone);
    if (this.publishing) await this.publishing.replaceTrack("microphone", mix.microphone);
    mix.close();
  }

  /** @param {string} kind  @param {boolean} muted */
  setMuted(kind, muted) {
    if (kind === "audio" && this.mix) { // the courseware's sound goes on; only the teacher's voice stops
      this.mix.microphone.enabled = !muted;
      this.mix.setMicMuted(muted);
      return;
    }
    for (const [t, source] of this.sources) {
      const track = t.sender.track;
      if (track && track.kind === kind && source !== "screen") track.enabled = !muted;
    }
  }

  end() {
    this._signaling().send({ type: "end_lesson" }); // everyone, us included, then receives lesson-ended
  }

  // -- the interactive classroom (docs/protocol.md): each resolves with the server's reply ------------------

  /** The classroom tiles on screen: the server sends their video (and no other classroom's).
   *  @param {Iterable<string>} visible */
  async wall(visible) {
    this.wallVisible = [...visible];
    return this._request({ type: "wall", visible: this.wallVisible });
  }

  /** Bring a classroom on stage (every classroom sees and hears it) or take it off; `stage_full` when full.
   *  @param {string} participant  @param {boolean} on */
  async stage(participant, on) {
    const reply = await this._request({ type: "stage", participant, on });
    this._setStage(reply.participants);
    return reply;
  }

  /** Hard-mute (or unmute) one classroom, or every classroom when `participant` is absent.
   *  @param {boolean} muted  @param {string} [participant] */
  async mute(muted, participant = undefined) {
    const reply = await this._request({ type: "mute", muted, ...(participant ? { participant } : {}) });
    for (const id of reply.participants || []) this._setState({ participant: id, muted: reply.muted });
    return reply;
  }

  /** Remove a classroom from the lesson: its page is closed and its link cannot join this lesson again.
   *  @param {string} participant */
  async remove(participant) {
    return this._request({ type: "remove", participant });
  }

  /** Lock the lesson: classrooms that were not in it cannot join (those reconnecting can).
   *  @param {boolean} locked */
  async lock(locked) {
    return this._applySettings(await this._request({ type: "lock", locked }));
  }

  /** @param {string} message the message's id */
  async chatDelete(message) {
    const reply = await this._request({ type: "chat_delete", message });
    this._deleteMessage(message);
    return reply;
  }

  /** May classrooms write in the chat.
   *  @param {boolean} classrooms */
  async chatMode(classrooms) {
    return this._applySettings(await this._request({ type: "chat_mode", classrooms }));
  }

  /** @template {{settings?: Partial<Settings>}} R  @param {R} reply  @returns {R} */
  _applySettings(reply) {
    if (reply.settings) {
      this.settings = { ...this.settings, ...reply.settings };
      this.emit("settings", { settings: this.settings });
    }
    return reply;
  }

  /** @param {string} path */
  _apiUrl(path) {
    // the server carrying the lesson (another origin when this page was sent on to it)
    const base = this.url.replace(/^ws/, "http").replace(/\/ws$/, "");
    return `${base}/api/lessons/${encodeURIComponent(String(this.claims.lesson))}/${path}`;
  }

  /** @param {string} path */
  async _get(path) {
    const res = await fetch(this._apiUrl(path), { headers: { Authorization: `Bearer ${this.token}` } });
    if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
    return res;
  }

  /** The server's forwarding figures for this lesson (docs/protocol.md "HTTP").
   *  @returns {Promise<LessonStats>} */
  async fetchStats() {
    return (await this._get("stats")).json();
  }

  /** Attendance: {classrooms: [{participant, name, joined_at, left_at, present_s, ...}]}.
   *  @returns {Promise<Attendance>} */
  async fetchAttendance() {
    return (await this._get("attendance")).json();
  }

  /** The attendance as CSV (a Blob: the page saves it; a plain link could not carry the token). */
  async fetchAttendanceCsv() {
    return (await this._get("attendance.csv")).blob();
  }
}

/** The server's forwarding figures for a lesson (GET /api/lessons/<id>/stats, docs/protocol.md "HTTP"): per
 *  classroom, what each of its consumers sent and heard back, and its video ladder.
 *  @typedef {{subscribers?: Record<string, ConsumerStats[]>, video?: Record<string, VideoLadder>}} LessonStats */
/** @typedef {{octets_out?: number, fraction_lost?: number, rtt_ms?: number | null}} ConsumerStats */
/** @typedef {{chosen?: boolean, state: string, reason?: string,
 *    simulcast?: Record<string, {layer: number | null, layers: number, reason?: string}>}} VideoLadder */
/** GET /api/lessons/<id>/attendance: one row per classroom.
 *  @typedef {{classrooms?: AttendanceRow[]}} Attendance */
/** @typedef {{participant: string, name: string, left_at?: number | null, present_s?: number | null,
 *    sessions?: number | null, hands?: number | null, stage_s?: number | null, loss_avg?: number | null,
 *    rtt_ms_avg?: number | null, kbps_avg?: number | null, video_share?: number | null}} AttendanceRow */

/** @typedef {"good" | "fair" | "poor" | "none"} QualityLevel */
/** What a classroom receives, from its getStats: the best video, the audio's jitter, the round trip (s), packets
 *  so far, the loss over the last interval and its level.
 *  @typedef {{at: number, video: {fps: number, width: number, height: number} | null, audio: {jitter: number} | null,
 *    rtt: number | null, packetsLost: number, packetsReceived: number, loss: number, level: QualityLevel}} Quality */

/** A classroom: answers the server's offers, maps mids to tracks (the teacher's, and those of a classroom on
 *  stage), publishes its small camera view and its microphone (off until the classroom speaks), raises its
 *  hand, chats, and rebuilds itself when the websocket or a peer connection dies. More events: "hand"
 *  ({up, position}), "microphone" ({on}), "publishing" ({ok} or {error}). */
export class ClassroomSession extends LessonSession {
  /** @param {string} token  @param {string} [url] */
  constructor(token, url) {
    super(token, url);
    this.layer = "auto"; // the simulcast layer the classroom pinned ("low") or "auto"
    this.video = true; // false: audio only, enforced by the server (a weak link, or the school's choice)
    this.camera = true; // false: courseware and sound only (只看课件+声音), enforced by the server
    /** @type {Map<string, MediaStreamTrack>} source -> the track we publish (camera, microphone) */
    this.sending = new Map();
    /** @type {number | null} our place in the hand queue (1-based), null when down or not known */
    this.handPosition = null;
    // whether anyone receives our camera / microphone (the teacher's wall shows our tile, or we are on
    // stage): the server says so in its answer and with `demand` events; what nobody receives is not sent
    this.demand = { video: true, audio: true };
  }

  /** What this classroom receives: the receiving peer connection. */
  get pc() {
    return this.recvPc;
  }

  /** Our own {hand, stage, muted}.
   *  @returns {Omit<ClassroomState, "participant"> | null} */
  get state() {
    return this.me ? this.states.get(this.me.id) || { hand: false, stage: false, muted: false } : null;
  }

  /** Join and receive the lesson; publish the camera and microphone of `stream` (null: receive only). The
   *  microphone starts disabled: the classroom turns it on to speak.
   *  @param {MediaStream | null} [stream] */
  async start(stream = null) {
    if (stream) {
      for (const track of stream.getTracks()) this.sending.set(track.kind === "audio" ? "microphone" : "camera", track);
      const mic = this.sending.get("microphone");
      if (mic) mic.enabled = false;
    }
    this.emit("status", { state: "connecting" });
    try {
      await this._connect();
    } catch (err) {
      if (this._refused(err)) return; // removed, or the lesson has ended: the page shows it
      if (unavailable(err)) { // the server's room state is down for a moment: try again as after a drop
        this._startWatchdog(true);
        this._rebuild(/** @type {ProtocolError} */ (err).message);
        return;
      }
      this.close(); // lesson_locked, a bad link, no server: the page says so and may start again
      throw err;
    }
    this._startWatchdog(true);
  }

  async _connect() {
    this._resetWatch();
    await this._join();
    if (!this.video || this.layer !== "auto" || !this.camera) { // kept across reconnects
      await this._signaling().request({ type: "prefer", ...this._preference() });
    }
    if (this.sending.size) await this._publish();
  }

  async _publish() {
    const publishing = this._newPublishing();
    for (const [source, track] of this.sending) publishing.add(source, track);
    try {
      const reply = await publishing.publish(this._signaling());
      if (reply.demand) this._setDemand(reply.demand);
      else this._applyDemand();
      this.emit("publishing", { ok: true });
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err; // the websocket died: the rebuild starts over
      // refused (a server without the interactive classroom): the lesson goes on, received only
      console.warn("publish refused:", err);
      publishing.close();
      this.publishing = null;
      this.emit("publishing", { error: err });
    }
  }

  /** @param {LessonEvent} msg */
  _onEvent(msg) {
    if (msg.event === "demand") this._setDemand(msg);
    else super._onEvent(msg);
  }

  /** @param {Demand} demand */
  _setDemand(demand) {
    this.demand = { video: demand.video !== false, audio: demand.audio !== false };
    this._applyDemand();
    this.emit("demand", { ...this.demand });
  }

  _applyDemand() {
    if (!this.publishing) return;
    this.publishing.setActive("camera", this.demand.video);
    this.publishing.setActive("microphone", this.demand.audio);
  }

  /** @param {StateUpdate} update  @param {boolean} [announce] */
  _setState(update, announce = true) {
    super._setState(update, announce);
    const state = this.state;
    if (this.me && update.participant === this.me.id && state) {
      if (!state.hand) this.handPosition = null;
      if (state.muted) this.setMicrophone(false); // hard-muted: the server drops it anyway, say so here too
    }
  }

  /** Audio only (false) or video again (true): the server stops or restarts sending the video.
   *  @param {boolean} enabled */
  async setVideo(enabled) {
    this.video = enabled;
    if (this.sig) await this.sig.request({ type: "prefer", ...this._preference() });
  }

  /** Courseware and sound only (false: the server sends no camera, the courseware still) or the cameras again.
   *  @param {boolean} enabled */
  async setCamera(enabled) {
    this.camera = enabled;
    if (this.sig) await this.sig.request({ type: "prefer", ...this._preference() });
  }

  /** What this classroom chose, as `prefer` fields. */
  _preference() {
    return { video: this.video, layer: this.layer, camera: this.camera };
  }

  /** "low": the smallest of the teacher's camera layers only (a calm link); "auto": the server chooses.
   *  @param {string} choice */
  async setLayer(choice) {
    this.layer = choice;
    if (this.sig) await this.sig.request({ type: "prefer", ...this._preference() });
  }

  get microphoneOn() {
    const mic = this.sending.get("microphone");
    return Boolean(mic && mic.enabled);
  }

  /** Turn our microphone on (to speak) or off; not on while the teacher has muted us.
   *  @param {boolean} on */
  setMicrophone(on) {
    const mic = this.sending.get("microphone");
    if (!mic) return false;
    const enabled = Boolean(on) && !(this.state && this.state.muted);
    if (mic.enabled !== enabled) {
      mic.enabled = enabled;
      this.emit("microphone", { on: enabled });
    }
    return enabled;
  }

  /** Raise (true) or lower our hand; resolves with {up, position}. Raising again while up keeps our place
   *  (the server's rule), so the page may ask again to learn the current position.
   *  @param {boolean} up */
  async hand(up) {
    const reply = await this._request({ type: "hand", up });
    this.handPosition = reply.up ? reply.position ?? null : null;
    if (this.me) this._setState({ participant: this.me.id, hand: Boolean(reply.up) });
    this.emit("hand", { up: Boolean(reply.up), position: this.handPosition });
    return reply;
  }

  /** What this classroom receives, from its own getStats: for the quality indicator.
   *  @param {Quality | null} previous  @returns {Promise<Quality>} */
  async quality(previous) {
    /** @type {Quality} */
    const q = { at: performance.now(), video: null, audio: null, rtt: null, packetsLost: 0, packetsReceived: 0,
      loss: 0, level: "none" };
    if (!this.pc) return q;
    const media = this.media();
    const live = new Set(media.map((m) => m.mid));
    // the frame rate tells of the link only for a camera this classroom chose to receive: the courseware runs at
    // a few frames a second by design, and a picture turned off (只听声音, 只看课件) has none to count
    const judged = new Set(this.video && this.camera
      ? media.filter((m) => m.kind === "video" && m.source !== "screen").map((m) => m.mid) : []);
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && live.has(s.mid)) {
        q.packetsLost += Math.max(0, s.packetsLost || 0);
        q.packetsReceived += s.packetsReceived || 0;
        if (s.kind === "video" && judged.has(s.mid) && (!q.video || (s.framesPerSecond || 0) > (q.video.fps || 0))) {
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
}

/** good | fair | poor, with the field figures in DESIGN.md: ≤ 1 % loss and ≤ 150 ms good, ≤ 5 % and
 *  ≤ 400 ms acceptable (none: nothing received).
 *  @param {Pick<Quality, "video" | "audio" | "rtt" | "loss">} q  @returns {QualityLevel} */
export function qualityLevel(q) {
  const rtt = q.rtt ?? 0;
  if (!q.video && !q.audio) return "none";
  if (q.loss > 0.05 || rtt > 0.4 || (q.video && q.video.fps > 0 && q.video.fps < 8)) return "poor";
  if (q.loss > 0.01 || rtt > 0.15) return "fair";
  return "good";
}
