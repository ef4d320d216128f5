"""One incoming media packet as the SFU keeps it: cached by its Producer and handed to every Sink attached to it."""

from __future__ import annotations


class Packet:
    """One incoming media packet, shared by every consumer and by the cache (never copied per subscriber)."""

    __slots__ = ("ext_seq", "ts", "marker", "payload", "arrival", "keyframe", "audio_level",
                 "tail", "tail_layout", "tail_ast", "vp8")

    def __init__(self, ext_seq: int, ts: int, marker: int, payload: bytes, arrival: float, keyframe: bool,
                 audio_level: int) -> None:
        self.ext_seq = ext_seq
        self.ts = ts
        self.marker = marker
        self.payload = payload
        self.arrival = arrival
        self.keyframe = keyframe
        self.audio_level = audio_level
        # the bytes after the RTP fixed header, as last built for (layout, abs-send-time): shared by every
        # subscriber with that layout in one fan-out
        self.tail = b""
        self.tail_layout: object = None
        self.tail_ast = b""
        # the VP8 numbering fields (sfu.rtp.vp8.vp8_numbering; () when there are none), parsed once by the first
        # simulcast subscriber that renumbers this packet and shared by the others; None: not parsed yet
        self.vp8: tuple | None = None
