"""HLS renditions (recorder/hls/) from a real recording, read back with PyAV, and their HTTP routes: the job
queue in its niced child process, the access rules of the recording, hostile file names refused."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from recorder.hls.jobs import LocalHlsQueue
from recorder.hls.renditions import (
    FPS,
    KEYFRAME_S,
    MASTER_NAME,
    RENDITIONS,
    SEGMENT_S,
    START_KEY_TICKS,
    START_NAME,
    segments,
)
from recorder.hls.web import add_routes as add_hls_routes
from recorder.library.catalog import Library, Viewer
from recorder.library.web import add_routes
from signaling.app import token_viewer
from signaling.tokens import issue_token
from tests.hls_media import SECONDS, busy_hls, busy_mp4  # noqa: F401 - fixtures

SECRET = "hls-test-secret-0123456789abcdef"
REVIEWER = Viewer(role="reviewer", sub="r-1", name="张审核")
JOB_TIMEOUT_S = 240.0


def _attrs(line: str) -> dict[str, str]:
    """The attributes of an #EXT-X-STREAM-INF / #EXT-X-MEDIA line (quoted values may hold commas)."""
    out, rest = {}, line.split(":", 1)[1]
    while rest:
        key, _, rest = rest.partition("=")
        if rest.startswith('"'):
            value, _, rest = rest[1:].partition('"')
            rest = rest.lstrip(",")
        else:
            value, _, rest = rest.partition(",")
        out[key] = value
    return out


def _master(folder: Path) -> list[tuple[dict[str, str], str]]:
    lines = (folder / MASTER_NAME).read_text().splitlines()
    assert lines[0] == "#EXTM3U"
    return [(_attrs(line), lines[i + 1]) for i, line in enumerate(lines) if line.startswith("#EXT-X-STREAM-INF:")]


def _joined(folder: Path, tmp: Path) -> Path:
    """A rendition's init segment and media segments as one fragmented MP4 file (what a player appends)."""
    out = tmp / f"{folder.name}.mp4"
    with out.open("wb") as f:
        f.write((folder / "init.mp4").read_bytes())
        for _, uri in segments(folder / "index.m3u8"):
            f.write((folder / uri).read_bytes())
    return out


def test_renditions_of_a_real_recording_read_back_with_their_sizes_rates_and_key_frames(
        busy_hls: Path, tmp_path: Path) -> None:
    variants = _master(busy_hls)
    by_uri = {uri: attrs for attrs, uri in variants}
    assert [uri for _, uri in variants] == ["720p/index.m3u8", "360p/index.m3u8", "180p/index.m3u8",
                                            "audio/index.m3u8"]
    media = [line for line in (busy_hls / MASTER_NAME).read_text().splitlines() if line.startswith("#EXT-X-MEDIA")]
    assert len(media) == 1 and _attrs(media[0])["URI"] == "audio/index.m3u8"
    for r in RENDITIONS:
        attrs = by_uri[f"{r.name}/index.m3u8"]
        folder = busy_hls / r.name
        segs = segments(folder / "index.m3u8")
        # every segment the playlist names exists; segments of 2 s (the last may be shorter)
        assert segs and all((folder / uri).is_file() for _, uri in segs)
        assert all(abs(d - SEGMENT_S) < 0.15 for d, _ in segs[:-1]), segs
        assert abs(sum(d for d, _ in segs) - SECONDS) < 0.5
        with av.open(str(_joined(folder, tmp_path))) as c:
            v = c.streams.video[0]
            width, height = v.codec_context.width, v.codec_context.height
            assert height == r.height and width == round(r.height * 16 / 9 / 2) * 2
            assert attrs["RESOLUTION"] == f"{width}x{height}"
            assert attrs["CODECS"].startswith("avc1.") and attrs["CODECS"].endswith(",mp4a.40.2")
            assert attrs["AUDIO"] == "aac"
            keys, total_bytes = [], 0
            for packet in c.demux(v):
                if packet.pts is None:
                    continue
                total_bytes += packet.size
                if packet.is_keyframe:
                    keys.append(float(packet.pts * packet.time_base))
        # a key frame exactly every 2 s, at the same instants in every rendition (switching at any segment); the
        # lowest one has the start rendition's few more in its first second
        if r is RENDITIONS[-1]:
            early = sorted(t / FPS for t in START_KEY_TICKS)
            assert [round(k, 3) for k in keys[1:4]] == [round(t, 3) for t in early], keys
            keys = keys[:1] + keys[4:]
        gaps = [round(b - a, 3) for a, b in zip(keys, keys[1:], strict=False)]
        assert gaps and all(g == KEYFRAME_S for g in gaps), (r.name, keys)
        # the bit rate within its band: busy pictures reach the target, the cap (maxrate) holds it
        rate = total_bytes * 8 / SECONDS
        assert 0.6 * r.video_bps < rate < 1.3 * r.video_bps, (r.name, rate)
        assert int(attrs["BANDWIDTH"]) >= int(attrs["AVERAGE-BANDWIDTH"]) > rate
    audio = busy_hls / "audio"
    with av.open(str(_joined(audio, tmp_path))) as c:
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac" and a.codec_context.sample_rate == 48_000
        payload = sum(p.size for p in c.demux(a) if p.pts is not None)
    assert 40_000 < payload * 8 / SECONDS < 56_000
    # the 180p variant with its audio fits a 250 kbit/s link
    assert int(by_uri["180p/index.m3u8"]["BANDWIDTH"]) < 250_000
    assert by_uri["audio/index.m3u8"]["CODECS"] == "mp4a.40.2"


def test_the_start_rendition_is_the_lowest_one_with_its_audio_in_short_first_segments(busy_hls: Path,
                                                                                      tmp_path: Path) -> None:
    start = _master_of(busy_hls / START_NAME)
    assert [uri for _, uri in start] == ["start/index.m3u8", "audio/index.m3u8"]
    lowest_attrs = next(attrs for attrs, uri in _master(busy_hls) if uri == "180p/index.m3u8")
    assert start[0][0]["RESOLUTION"] == lowest_attrs["RESOLUTION"] and start[0][0]["CODECS"] == lowest_attrs["CODECS"]
    assert "AUDIO" not in start[0][0]  # (the audio is in its segments)
    assert int(start[0][0]["BANDWIDTH"]) < 250_000
    segs = segments(busy_hls / "start" / "index.m3u8")
    # short first segments (a player starts after a second of them), then 2 s ones
    assert [round(d, 2) for d, _ in segs[:5]] == [0.27, 0.27, 0.47, 1.0, 2.0], segs
    assert abs(sum(d for d, _ in segs) - SECONDS) < 0.5
    first_second = sum((busy_hls / "start" / uri).stat().st_size for _, uri in segs[:3])
    assert first_second < 40_000, first_second  # (≈ 1.3 s of a 250 kbit/s link, the busiest pictures)
    # the same pictures and sound as the lowest rendition and the audio rendition: their packets, as they are
    with av.open(str(_joined(busy_hls / "start", tmp_path))) as c:
        counts = {"video": 0, "audio": 0}
        for packet in c.demux():
            if packet.pts is not None:
                counts[packet.stream.type] += 1
    for kind, folder in (("video", "180p"), ("audio", "audio")):
        with av.open(str(_joined(busy_hls / folder, tmp_path))) as c:
            assert counts[kind] == sum(1 for p in c.demux(c.streams[0]) if p.pts is not None), kind


def _master_of(path: Path) -> list[tuple[dict[str, str], str]]:
    lines = path.read_text().splitlines()
    return [(_attrs(line), lines[i + 1]) for i, line in enumerate(lines) if line.startswith("#EXT-X-STREAM-INF:")]


# -- the routes -------------------------------------------------------------------------------------------


class Site:
    def __init__(self, url: str, library: Library, hls, published: str, unpublished: str) -> None:  # type: ignore[no-untyped-def]
        self.url, self.library, self.hls = url, library, hls
        self.published, self.unpublished = published, unpublished


@pytest.fixture
async def site(tmp_path: Path, webm_master: Path) -> AsyncIterator[Site]:
    library = Library(tmp_path / "data")
    ids = []
    for title in ("勾股定理", "未发布的课"):
        file = library.recordings_dir / f"{title}.webm"
        shutil.copy(webm_master, file)
        rec_id = await library.start_recording("math-8a", title, "李老师", "t-li", file)
        await library.finish_recording(rec_id, 3.0, file.stat().st_size)
        ids.append(rec_id)
    app = web.Application()
    routes = add_routes(app, library, SECRET, token_viewer(SECRET), export_on_publish=False)
    hls = add_hls_routes(app, routes, LocalHlsQueue(library.data_dir))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Site(str(server.make_url("")).rstrip("/"), library, hls, *ids)
    finally:
        await server.close()
        await library.close()


async def _wait_done(http: ClientSession, url: str, headers: dict[str, str]) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        async with http.get(url, headers=headers) as resp:
            job = await resp.json()
        if job["state"] == "done" and job["master"]:
            return job
        assert job["state"] in ("queued", "running", "done"), job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.5)


async def test_publishing_makes_the_renditions_served_with_the_recordings_access_rules(site: Site) -> None:
    reviewer = {"Authorization": f"Bearer {issue_token(SECRET, 'reviewer', 'library', name='张审核')}"}
    async with ClientSession() as http:
        async with http.post(f"{site.url}/api/library/{site.published}/review", headers=reviewer,
                             json={"decision": "publish"}) as resp:
            assert resp.status == 200, await resp.text()
        job = await _wait_done(http, f"{site.url}/api/library/{site.published}/hls", {})
        master = job["master"]
        assert master == f"/library/hls/{site.published}/p/master.m3u8"
        async with http.get(site.url + master) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "application/vnd.apple.mpegurl"
            assert resp.headers["Cache-Control"].startswith("public")
            text = await resp.text()
        assert "180p/index.m3u8" in text
        base = site.url + master.rsplit("/", 1)[0]
        async with http.get(f"{base}/180p/index.m3u8") as resp:
            playlist = await resp.text()
        seg = [line for line in playlist.splitlines() if line.endswith(".m4s")][0]
        async with http.get(f"{base}/180p/{seg}", headers={"Range": "bytes=0-99"}) as resp:
            assert resp.status == 206 and len(await resp.read()) == 100
        # the item's JSON tells the player
        async with http.get(f"{site.url}/api/library/{site.published}") as resp:
            item = await resp.json()
        assert item["hls"]["master"] == master and "node" not in item and "hls" in item
        # …and so does its page, before any script: the start and master playlists on the <video>, the start
        # rendition's first second preloaded with the page
        async with http.get(f"{site.url}/library/play/{site.published}") as resp:
            page, link = await resp.text(), resp.headers.get("Link", "")
        start = master.replace("master.m3u8", "start.m3u8")
        assert f'<video id="video" data-master="{master}" data-start="{start}"' in page
        preloads = [part.split(">")[0].lstrip(" <") for part in link.split(",")]
        assert preloads[:3] == [start, start.replace(".m3u8", "/index.m3u8"),
                                start.replace(".m3u8", "/init.mp4")]
        assert preloads[3].endswith("/start/seg00000.m4s")
        assert all("rel=preload; as=fetch" in part for part in link.split(","))
        for url in preloads:  # every one of them is served
            async with http.get(site.url + url) as resp:
                assert resp.status == 200, url

        # hostile names never reach the filesystem: anything but the renditions' own names is 404
        secret_file = site.library.data_dir / "secret.txt"
        secret_file.write_text("nope")
        for bad in ("../../../../secret.txt", "..%2F..%2F..%2F..%2Fsecret.txt", "720p/../../../../../secret.txt",
                    "720p/seg00001.m4s/../../../../../../secret.txt", "/etc/passwd", "%2Fetc%2Fpasswd",
                    "720p/index.m3u8%00.ts", "1080p/index.m3u8", "720p/seg1.m4s", "720p\\index.m3u8"):
            async with http.get(f"{base}/{bad}") as resp:
                assert resp.status in (400, 404), (bad, resp.status)
                assert b"nope" not in await resp.read()

        # an unpublished lesson's renditions: not for the public, whatever the key
        async with http.post(f"{site.url}/api/library/{site.unpublished}/hls") as resp:
            assert resp.status == 404  # (to the public an unpublished lesson does not exist)
        async with http.post(f"{site.url}/api/library/{site.unpublished}/hls", headers=reviewer) as resp:
            assert resp.status == 202, await resp.text()
        job = await _wait_done(http, f"{site.url}/api/library/{site.unpublished}/hls", reviewer)
        signed = job["master"]
        assert signed.startswith(f"/library/hls/{site.unpublished}/s")
        async with http.get(site.url + signed) as resp:  # the signed path works without a header
            assert resp.status == 200 and resp.headers["Cache-Control"] == "private, no-store"
        async with http.get(f"{site.url}/library/play/{site.unpublished}") as resp:  # its page names nothing
            assert "data-master" not in await resp.text() and "Link" not in resp.headers
        async with http.get(f"{site.url}{signed.rsplit('/', 1)[0]}/180p/index.m3u8") as resp:
            assert resp.status == 200  # (relative URIs keep the signed key)
        for key in ("p", "s99999999999.AAAA", signed.split("/")[4][:-2] + "xx", "s1.x"):
            async with http.get(f"{site.url}/library/hls/{site.unpublished}/{key}/master.m3u8") as resp:
                assert resp.status == 404, key
        async with http.get(f"{site.url}/api/library/{site.unpublished}/hls") as resp:
            assert resp.status == 404  # to the public it does not exist
        async with http.get(f"{site.url}/library/hls/{site.unpublished}/p/master.m3u8", headers=reviewer) as resp:
            assert resp.status == 200  # a reviewer's token opens it too
