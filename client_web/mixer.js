// @ts-check
// The courseware's sound (a shared tab's audio: an English listening exercise, a video clip) mixed with the
// teacher's microphone into ONE outgoing audio track, so every classroom and the recording hear both without a
// second audio stream to negotiate, and a muted microphone silences the teacher only, not the clip.

const COURSEWARE_GAIN = 0.8; // a clip mastered loud should not drown the teacher talking over it

export class AudioMix {
  /** @param {MediaStreamTrack} microphone  @param {MediaStreamTrack} courseware */
  constructor(microphone, courseware) {
    this.ctx = new AudioContext({ sampleRate: 48000 });
    this.ctx.resume().catch(() => {}); // started from the share click: browsers allow it then
    this.dest = this.ctx.createMediaStreamDestination();
    this.micGain = this.ctx.createGain();
    this.micGain.connect(this.dest);
    const clip = this.ctx.createGain();
    clip.gain.value = COURSEWARE_GAIN;
    clip.connect(this.dest);
    this.ctx.createMediaStreamSource(new MediaStream([courseware])).connect(clip);
    /** @type {MediaStreamAudioSourceNode | null} */
    this.micSource = null;
    /** @type {MediaStreamTrack} the microphone as captured (what the page gets back when the share stops) */
    this.microphone = microphone;
    this.courseware = courseware;
    this.setMicrophone(microphone);
    /** @type {MediaStreamTrack} what is sent in place of the microphone */
    this.track = this.dest.stream.getAudioTracks()[0];
  }

  /** Another microphone chosen during the share. @param {MediaStreamTrack} microphone */
  setMicrophone(microphone) {
    this.micSource?.disconnect();
    this.microphone = microphone;
    this.micSource = this.ctx.createMediaStreamSource(new MediaStream([microphone]));
    this.micSource.connect(this.micGain);
    this.setMicMuted(!microphone.enabled);
  }

  /** The teacher's 静音 silences the microphone in the mix; the courseware's sound goes on.
   *  @param {boolean} muted */
  setMicMuted(muted) {
    this.micGain.gain.value = muted ? 0 : 1;
  }

  /** The share stopped: the mixed track and the courseware's sound end; the microphone itself stays live. */
  close() {
    this.track.stop();
    this.courseware.stop();
    this.ctx.close().catch(() => {});
  }
}
