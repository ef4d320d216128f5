"""The SFU's one clock (sfu/rtp/clock.py): nothing else in sfu/ reads time.time() or time.monotonic(), and a bare
callable passed as a clock keeps working as its monotonic time."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

import sfu
from sfu.producer import Producer
from sfu.rtp.clock import SYSTEM_CLOCK, Clock, MonotonicOnly, as_clock
from sfu.rtp.header import abs_send_time_bytes
from tests.clock import FakeClock

SFU = Path(sfu.__file__).parent
ALLOWED = {SFU / "rtp" / "clock.py"}
FORBIDDEN = {"time", "monotonic", "time_ns", "monotonic_ns", "perf_counter"}


def clock_reads(source: str) -> list[int]:
    """Lines reading the machine's clock: `time.time()` / `time.monotonic()` (and the like), also when imported
    by name (`from time import monotonic`) or passed uncalled (`clock=time.monotonic`)."""
    tree = ast.parse(source)
    names = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             and node.module == "time" for alias in node.names if alias.name in FORBIDDEN}
    modules = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names if alias.name == "time"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                and node.attr in FORBIDDEN:
            found.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id in names:
            found.append(node.lineno)
    return sorted(found)


@pytest.mark.parametrize("source, lines", [
    ("import time\nx = time.time()\n", [2]),
    ("import time\ny = time.monotonic()\n", [2]),
    ("import time\ndef f(clock=time.monotonic):\n    pass\n", [2]),
    ("import time as t\nz = t.time()\n", [2]),
    ("from time import monotonic\nz = monotonic()\n", [2]),
    ("import time\ntime.sleep(1)\n", []),
    ("now = clock.wall()\nthen = clock.monotonic()\n", []),
])
def test_the_checker_sees_every_way_of_reading_the_clock(source, lines):
    assert clock_reads(source) == lines


def test_nothing_in_the_sfu_reads_the_machine_clock_but_the_clock_module():
    offenders = {}
    for path in sorted(SFU.rglob("*.py")):
        if path in ALLOWED:
            continue
        lines = clock_reads(path.read_text(encoding="utf-8"))
        if lines:
            offenders[str(path.relative_to(SFU.parent))] = lines
    assert offenders == {}


def test_as_clock_takes_a_clock_none_or_a_bare_callable():
    fake = FakeClock(50.0, wall_offset=1_000_000.0)
    assert as_clock(fake) is fake and isinstance(fake, Clock)
    assert as_clock(None) is SYSTEM_CLOCK
    bare = as_clock(lambda: 7.0)
    assert isinstance(bare, MonotonicOnly) and bare.monotonic() == 7.0 and bare() == 7.0
    assert abs(bare.wall() - time.time()) < 5
    assert fake.wall() == 1_000_050.0


def test_a_producer_reads_its_injected_clock_for_arrival_and_the_rtp_reference():
    clock = FakeClock(10.0, wall_offset=1_700_000_000.0)
    producer = Producer("mic", "audio", "opus", 48000, send_pli=lambda ssrc: None, clock=clock)
    assert producer._clock() == 10.0  # the bare callable the recorder reads
    got = []

    class Tap:
        def forward(self, packet, ast_bytes):  # noqa: ANN001
            got.append((packet.arrival, ast_bytes))

        def skip(self, ext_seq):  # noqa: ANN001
            pass

        def on_error(self):
            pass

        def close(self):
            pass

    producer.attach(Tap())
    clock.advance(2.5)
    producer.on_packet(1, 4800, 1, b"\x01", 127)
    assert got == [(12.5, abs_send_time_bytes(1_700_000_012.5))]
    assert producer.rtp_time_at(1_700_000_013.5) == 4800 + 48000
