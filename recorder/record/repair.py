"""Crash repair: at start-up, the recordings a crash (or a full disk) left open are made whole and finished.

A killed server leaves a WebM without its index (cues, duration): `repair_file` rewrites it by stream copy,
keeping everything up to the torn end. `repair_unfinished` does that for every library item still recording and
finishes it in the catalog (the file rewritten in a thread: the event loop goes on), as incomplete when its marker (marker.py) says the writing stopped early. It never
raises: what cannot be done now is one log line and tried again at the next start.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import av

from recorder.record.handoff import CATALOG_ERRORS, Catalog, finish_in_catalog, unwrap
from recorder.record.marker import clear_incomplete, read_incomplete
from recorder.record.webm import MS

log = logging.getLogger("ketang.recorder")


def repair_file(path: Path) -> tuple[float, int]:
    """Rewrite a WebM a crash left without its index into a complete one (stream copy); (duration s, size).

    What cannot be read (the torn end of the file) ends the copy; what cannot be written (a full disk) raises
    OSError and leaves the original as it was (the partial copy is removed)."""
    if not path.exists() or path.stat().st_size == 0:
        return 0.0, 0
    fixed = path.with_suffix(".repaired.webm")
    last_ms = 0
    try:
        with av.open(str(path)) as src, av.open(str(fixed), "w", format="webm") as dst:
            mapping = {}
            for stream in src.streams:
                if stream.type not in ("video", "audio"):
                    continue
                out = dst.add_stream(stream.codec_context.name, rate=stream.average_rate if stream.type == "video"
                                     else stream.codec_context.sample_rate)
                if stream.type == "video":
                    out.width, out.height = stream.codec_context.width, stream.codec_context.height
                if stream.codec_context.extradata:
                    out.codec_context.extradata = stream.codec_context.extradata
                out.time_base = MS
                mapping[stream.index] = out
            packets = src.demux(*[s for s in src.streams if s.index in mapping])
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError:
                    break  # the torn end of the file: keep what came before
                if packet.size == 0 or packet.pts is None:
                    continue
                ms = int(packet.pts * packet.time_base * 1000)
                last_ms = max(last_ms, ms)
                packet.stream = mapping[packet.stream.index]
                packet.pts = packet.dts = ms
                packet.time_base = MS
                dst.mux(packet)  # (an OSError here, a full disk, is raised)
    except BaseException:
        fixed.unlink(missing_ok=True)
        raise
    fixed.replace(path)
    return last_ms / 1000, path.stat().st_size


async def repair_unfinished(catalog: Catalog) -> int:
    """At start-up: close the recordings a crash (or a full disk) left open and hand them to the library.
    Returns how many were finished. Never raises: the server must start whatever the disk and the catalog
    say. Each failure is one log line; an item that cannot be repaired or finished now (no room to rewrite
    its file, a catalog that cannot be written) stays as it is and is tried again at the next start."""
    try:
        unfinished = await catalog.unfinished()
    except Exception as exc:  # noqa: BLE001 - e.g. a catalog on a full disk that cannot even be read
        log.error("start-up repair skipped: the library's catalog cannot be read (%s); unfinished recordings "
                  "are repaired at the next start", one_line(exc))
        return 0
    n = 0
    for rec in unfinished:
        try:
            if await repair_one(catalog, rec):
                n += 1
        except Exception as exc:  # noqa: BLE001 - one bad item must not stop the server from starting
            log.error("recording %s (%s) not repaired: %s; tried again at the next start", rec.id, rec.file,
                      one_line(exc))
    return n


async def repair_one(catalog: Catalog, rec: Any) -> bool:
    """Repair one unfinished item's file and finish it in the library (as incomplete when its marker says so);
    False when that cannot be done now. Raises only what nobody foresaw (repair_unfinished logs it)."""
    path = Path(rec.file)
    if not path.is_absolute():
        # "recordings/x.webm": in the recordings (media) directory, wherever that is (--media-dir)
        path = catalog.recordings_dir / path.relative_to(path.parts[0]) if path.parts[0] == "recordings" \
            else catalog.recordings_dir.parent / path
    incomplete = read_incomplete(path)
    if getattr(rec, "state", "recording") == "processing":
        duration, size = rec.duration_s or 0.0, rec.size_bytes or 0  # the file was finished already
    else:
        try:
            duration, size = await asyncio.to_thread(repair_file, path)
        except OSError as exc:
            # no room for the repaired copy (a full disk) or the file cannot be read: as it is, next time
            log.error("recording %s (%s) not repaired now: %s; tried again at the next start (free space in %s)",
                      rec.id, path.name, one_line(exc), path.parent)
            return False
        except Exception as exc:  # noqa: BLE001 - a damaged file: the library gets what there is
            log.warning("recording %s (%s) could not be rewritten (%s): finished as it is", rec.id, path.name,
                        one_line(exc))
            duration, size = 0.0, path.stat().st_size if path.exists() else 0
    try:
        await finish_in_catalog(catalog, rec.id, duration, size, incomplete)
    except CATALOG_ERRORS as exc:
        log.error("recording %s (%s) repaired but not finished in the library: %s; tried again at the next start",
                  rec.id, path.name, one_line(exc))
        return False
    clear_incomplete(path)
    log.info("repaired recording %s (%.1f s%s) after an unclean stop", path, duration,
             ", incomplete" if incomplete else "")
    return True


def one_line(exc: BaseException) -> str:
    """An exception in one log-friendly line: "OSError: [Errno 28] No space left on device"."""
    exc = unwrap(exc)  # (the driver's error inside SQLAlchemy's wrapper)
    return " ".join(f"{type(exc).__name__}: {exc}".split())
