// @ts-check
// What both pages do with received tracks: show a track in a media element, and keep one <audio> element per
// received audio track (classrooms on stage, tiles on the teacher's wall) in a container.

/** Show `track` in `el` (null: nothing), starting playback; a no-op when it already shows that track.
 *  @param {HTMLMediaElement} el  @param {MediaStreamTrack | null} track */
export function attach(el, track) {
  const current = el.srcObject instanceof MediaStream ? el.srcObject.getTracks()[0] : el.srcObject;
  if (current === track) return;
  el.srcObject = track ? new MediaStream([track]) : null;
  if (track) el.play().catch(() => {});
}

/** One playing <audio> per entry of `audio` (session media entries of kind audio) inside `box`; elements of
 *  tracks no longer received are removed.
 *  @param {HTMLElement} box  @param {import("./protocol.js").ReceivedMedia[]} audio */
export function syncAudio(box, audio) {
  const keep = new Set(audio.map((m) => m.receiverTrack.id));
  for (const el of [...box.children]) if (!(el instanceof HTMLElement && keep.has(el.dataset.track || ""))) el.remove();
  for (const m of audio) {
    if (box.querySelector(`audio[data-track="${CSS.escape(m.receiverTrack.id)}"]`)) continue;
    const el = document.createElement("audio");
    el.autoplay = true;
    el.dataset.track = m.receiverTrack.id;
    el.dataset.participant = m.participant || "";
    box.append(el);
    attach(el, m.receiverTrack);
  }
}

// -- this page's own camera, microphone and screen: every track is registered, so every one can be stopped ------

/** @type {MediaStreamTrack[]} every track this page captured (camera, microphone, screen), live or ended */
export const createdTracks = [];

/** Register the tracks of `stream` (or one track) as this page's own, for stopAll and the tests.
 *  @template {MediaStream | MediaStreamTrack} S  @param {S} what  @returns {S} */
export function own(what) {
  /** @type {MediaStreamTrack[]} */
  const tracks = what instanceof MediaStream ? what.getTracks() : [/** @type {MediaStreamTrack} */ (what)];
  for (const track of tracks) if (!createdTracks.includes(track)) createdTracks.push(track);
  return what;
}

/** Whether this page may use the camera and microphone at all: only on a secure origin (HTTPS or localhost). */
export function mediaAvailable() {
  return window.isSecureContext && Boolean(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
}

/** getUserMedia, registered; on an insecure origin an error of code `insecure` instead of a TypeError.
 *  @param {MediaStreamConstraints} constraints  @returns {Promise<MediaStream>} */
export async function capture(constraints) {
  if (!mediaAvailable()) throw Object.assign(new Error("insecure origin"), { code: "insecure" });
  return own(await navigator.mediaDevices.getUserMedia(constraints));
}

/** Stop every track this page captured: the camera and microphone lights go out. */
export function stopAll() {
  for (const track of createdTracks) track.stop();
}

/** Whether any of this page's own tracks of `kind` is live (and, for `enabledOnly`, enabled: sending sound).
 *  @param {"audio" | "video"} kind  @param {boolean} [enabledOnly] */
export function liveTrack(kind, enabledOnly = false) {
  return createdTracks.some((tr) => tr.kind === kind && tr.readyState === "live" && (!enabledOnly || tr.enabled));
}
