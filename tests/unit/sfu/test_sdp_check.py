"""What an offer or answer may be (sfu/peers/sdp.py `check_description`): every malformed or oversized description
refused with `bad_sdp` / `too_many_tracks` and a message, before aiortc sees it. Table-driven, on a real offer
made by aiortc."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiortc import AudioStreamTrack, RTCPeerConnection, VideoStreamTrack

from sfu.peers.sdp import PUBLISH_MAX_SECTIONS, SdpError, check_description


def _real_offer(videos: int = 1) -> str:
    async def make() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        for _ in range(videos):
            pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp
    return asyncio.run(make())


OFFER = _real_offer()


def _sections(sdp: str) -> tuple[str, list[str]]:
    head, *sections = re.split(r"(?=^m=)", sdp, flags=re.M)
    return head, sections


def _with_sections(sdp: str, sections: list[str]) -> str:
    return _sections(sdp)[0] + "".join(sections)


def _video_copies(n: int) -> str:
    head, sections = _sections(OFFER)
    video = sections[1]
    copies = [re.sub(r"a=mid:\S+", f"a=mid:v{i}", video) for i in range(n)]
    return _with_sections(OFFER, [sections[0], *copies])


def _drop(pattern: str) -> str:
    return re.sub(pattern, "", OFFER, flags=re.M)


CASES = [
    ("not a string", 5, "bad_sdp"),
    ("empty", "", "bad_sdp"),
    ("no v=0", "o=- 1 1 IN IP4 0.0.0.0\r\n", "bad_sdp"),
    ("too long", OFFER + "a=x:" + "y" * 61000 + "\r\n", "bad_sdp"),
    ("no media", "v=0\r\n", "nothing_to_publish"),
    ("no a=mid", _drop(r"^a=mid:.*\r\n"), "bad_sdp"),
    ("all mids 0", re.sub(r"a=mid:\S+", "a=mid:0", OFFER), "bad_sdp"),
    ("duplicate m-section", _with_sections(OFFER, _sections(OFFER)[1] + [_sections(OFFER)[1][1]]), "bad_sdp"),
    ("40-character mid", re.sub(r"a=mid:0", "a=mid:" + "m" * 40, OFFER), "bad_sdp"),
    ("mid with a space-like char", re.sub(r"a=mid:0", "a=mid:a\tb", OFFER), "bad_sdp"),
    ("m=text", re.sub(r"^m=audio", "m=text", OFFER, flags=re.M), "bad_sdp"),
    ("m=application", re.sub(r"^m=video", "m=application", OFFER, flags=re.M), "bad_sdp"),
    ("no fingerprint", _drop(r"^a=fingerprint:.*\r\n"), "bad_sdp"),
    ("md5 fingerprint only", re.sub(r"a=fingerprint:\S+", "a=fingerprint:md5", OFFER), "bad_sdp"),
    ("no ice-ufrag", _drop(r"^a=ice-ufrag:.*\r\n"), "bad_sdp"),
    ("no ice-pwd", _drop(r"^a=ice-pwd:.*\r\n"), "bad_sdp"),
    ("bad rtpmap", re.sub(r"a=rtpmap:(\d+) ", r"a=rtpmap:x\1 ", OFFER, count=1), "bad_sdp"),
    ("bad m-line port", re.sub(r"^m=audio \d+", "m=audio port", OFFER, flags=re.M), "bad_sdp"),
    ("bad fingerprint line", re.sub(r"a=fingerprint:.*", "a=fingerprint:sha-256", OFFER), "bad_sdp"),
    ("26 m-lines", _video_copies(25), "too_many_tracks"),
    (f"{PUBLISH_MAX_SECTIONS + 1} m-lines", _video_copies(PUBLISH_MAX_SECTIONS), "too_many_tracks"),
]


@pytest.mark.parametrize("name, sdp, code", CASES, ids=[c[0] for c in CASES])
def test_a_malformed_offer_is_refused_with_a_clear_code(name, sdp, code):
    with pytest.raises(SdpError) as refused:
        check_description(sdp, "offer", max_per_kind=2)
    assert refused.value.code == code, (name, str(refused.value))
    assert str(refused.value)  # a message a client author can act on
    assert "Traceback" not in str(refused.value)


def test_a_real_offer_passes_and_so_do_stopped_sections():
    check_description(OFFER, "offer", max_per_kind=2)
    head, sections = _sections(_real_offer(videos=2))
    stopped = re.sub(r"^m=video \d+", "m=video 0", sections[2], flags=re.M)  # a share stopped: port 0
    check_description(_with_sections(OFFER, [sections[0], sections[1], stopped]), "offer", max_per_kind=1)


def test_more_sending_tracks_of_a_kind_than_allowed_are_refused():
    three_videos = _real_offer(videos=3)
    check_description(three_videos, "offer", max_per_kind=3)
    with pytest.raises(SdpError) as refused:
        check_description(three_videos, "offer", max_per_kind=2)
    assert refused.value.code == "too_many_tracks" and "3 video" in str(refused.value)
