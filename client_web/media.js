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
