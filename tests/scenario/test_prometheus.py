"""The Grafana dashboard's queries (docs/grafana-ketang.json) run by a real Prometheus that scraped a real lesson.

`ketang serve --workers 2` (the supervisor's /metrics is the machine's one target), an aiortc teacher, a clean
classroom and one whose downlink loses 10 % of its packets (so NACKs and RTX have data), a refused token; a
throwaway Prometheus (Debian's, its own config, data dir and port) scrapes every second. Then every panel's
expression, with Grafana's variables substituted as Grafana would, goes through /api/v1/query_range over the lesson:
each must parse, and the panels a lesson feeds must return series that move. Last, headless Chromium opens
Prometheus's own graph page with the dashboard's main panels and saves docs/screenshots/prometheus-*.png (Grafana
is not packaged for Debian; docs/metrics.md says so).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aioice import ice as aioice_ice

from loadtest.wsclient import WsClient
from tests.chromium import SCREENSHOTS
from tests.scenario.test_metrics import scrape, total
from tests.support import Classroom, Server, free_port, hang_up, join_lesson, publishing_teacher, token

pytestmark = pytest.mark.slow

PROMETHEUS = os.environ.get("KETANG_PROMETHEUS") or shutil.which("prometheus") or "/usr/bin/prometheus"
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-ketang.json"
JOB = "ketang"
SCRAPE_S = 1
# Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval); with a 1 s step and a 1 s
# scrape interval (the data source's setting) that is 4 s
RATE_INTERVAL = f"{4 * SCRAPE_S}s"
LAPTOP = {"width": 1366, "height": 768}
LESSON_AFTER_NACKS_S = 12.0  # scrapes enough for every panel, and graphs worth a look

# panel title -> what a lesson with a lossy classroom must show, per target (one for all, or a list): "parses" = the
# query runs; "some" = it returns series; "moves" = some value > 0 (a counter's rate, a gauge of what is there);
# {label: [values]} = the series with each of those label values has some value > 0
MUST: dict[str, object] = {
    "Lessons live": "moves",
    "Participants by role": {"role": ["teacher", "classroom"]},
    "Classrooms by ladder rung": {"rung": ["video"]},
    "Classrooms by simulcast layer": "some",  # the aiortc teacher sends one layer: the browser tests simulcast
    "SFU packets per second": {"kind": ["audio", "video"]},
    "SFU bitrate": "moves",
    "NACKs and retransmissions": ["moves", "moves", "some", "some"],  # NACKed and resent; not missed, not capped
    "Keyframe requests (PLI/FIR)": "some",
    "Classrooms' downlink estimates (REMB)": "moves",
    "Event-loop lag": "moves",
    "Websocket errors by code": {"code": ["token_invalid"]},
    "Joins refused by reason": {"reason": ["token_invalid"]},
    "Recorder": "moves",
    "Recording write errors and export jobs": "some",
    "Datagrams dropped before DTLS": "some",
    "Process CPU and memory": "moves",
    "Overload (short of CPU)": "some",
}
# the main panels in the screenshots: (file, [(panel title, target index), ...])
SHOTS = [
    ("prometheus-lesson.png", [("Participants by role", 0), ("SFU packets per second", 0),
                               ("SFU packets per second", 1)]),
    ("prometheus-media.png", [("SFU bitrate", 1), ("NACKs and retransmissions", 0),
                              ("NACKs and retransmissions", 1)]),
    ("prometheus-ladder.png", [("Classrooms by ladder rung", 0), ("NACKs and retransmissions", 2),
                               ("Classrooms' downlink estimates (REMB)", 1)]),
]


def grafana_expr(expr: str, instance: str) -> str:
    """`expr` as Grafana sends it: a single-value regex variable is the value with regex characters escaped (inside
    a PromQL string, so backslashes doubled)."""
    def regex(value: str) -> str:
        return re.escape(value).replace("\\", "\\\\")
    return (expr.replace("$__rate_interval", RATE_INTERVAL)
            .replace("${job}", regex(JOB)).replace("$job", regex(JOB))
            .replace("${instance}", regex(instance)).replace("$instance", regex(instance)))


class Prometheus:
    """Debian's Prometheus in a subprocess: its own config (one job, 1 s scrapes), data dir and port."""

    def __init__(self, tmp: Path, target: str) -> None:
        if not Path(PROMETHEUS).exists():
            pytest.fail(f"Prometheus not found at {PROMETHEUS}: `bash scripts/bootstrap.sh test` installs Debian's")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: {SCRAPE_S}s\n  evaluation_interval: {SCRAPE_S}s\n"
                          f"scrape_configs:\n  - job_name: {JOB}\n    scrape_timeout: {SCRAPE_S}s\n"
                          f"    static_configs:\n      - targets: [\"{target}\"]\n", encoding="utf-8")
        (tmp / "tsdb").mkdir()
        self.log = open(tmp / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("prometheus did not get ready")

    async def api(self, path: str, **params: str) -> dict:
        async with aiohttp.ClientSession() as http, \
                http.post(f"{self.url}/api/v1/{path}", data=params) as resp:
            return await resp.json()

    async def query_range(self, expr: str, start: float, end: float) -> dict:
        return await self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{SCRAPE_S}s")

    async def wait_value(self, expr: str, timeout_s: float = 30.0) -> float:
        """Wait until the instant query `expr` returns a value > 0 (Prometheus has scraped it)."""
        deadline = time.monotonic() + timeout_s
        best = 0.0
        while time.monotonic() < deadline:
            reply = await self.api("query", query=expr)
            best = max([float(r["value"][1]) for r in reply["data"]["result"]] + [0.0])
            if best > 0:
                return best
            await asyncio.sleep(0.5)
        return best

    async def wait_scraped(self, expr: str, timeout_s: float = 30.0) -> None:
        """Wait until the instant query `expr` returns a series, whatever its value (Prometheus has its first sample:
        a count that moves after it is seen by `increase`, one already moved at the first scrape is not)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (await self.api("query", query=expr))["data"]["result"]:
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"prometheus has no sample of {expr}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _values(result: list[dict]) -> list[float]:
    return [float(v) for series in result for _, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]


async def _refused_join(server: Server) -> None:
    """A join with a broken token: a websocket error and a refusal, both counted by reason."""
    ws = await WsClient().connect(server.ws_url)
    try:
        reply = await ws.request({"type": "join", "token": token("classroom", "prom") + "x", "lesson": "prom"})
        assert reply["type"] == "error" and reply["code"] == "token_invalid"
    finally:
        await ws.close()


async def _screenshot(browser, prom: Prometheus, panels: dict, shot: str, targets: list[tuple[str, int]],
                      start: float) -> None:  # type: ignore[no-untyped-def]
    """Prometheus's classic graph page, one graph per dashboard target, from the lesson's start to now."""
    params: dict[str, str] = {}
    for i, (title, index) in enumerate(targets):
        params.update({f"g{i}.expr": panels[title][index], f"g{i}.tab": "0",
                       f"g{i}.range_input": f"{int(time.time() - start) + 5}s", f"g{i}.step_input": str(SCRAPE_S)})
    context = await browser.new_context(viewport=LAPTOP)
    page = await context.new_page()
    await page.goto(f"{prom.url}/graph?{urllib.parse.urlencode(params)}")
    # each graph drawn with its legend (Rickshaw's SVG, one legend line per series)
    for i in range(len(targets)):
        await page.wait_for_selector(f"#graph_wrapper{i} .legend li", timeout=20000)
    # the navigation bar is fixed at the top: in a full-page picture it would lie across a graph
    await page.add_style_tag(content=".navbar { position: static !important; } body { padding-top: 0 !important; }")
    await page.wait_for_timeout(500)
    await page.screenshot(path=str(SCREENSHOTS / shot), full_page=True)
    # (Debian's classic UI loads one vendored script that is an ES module as a plain script: a harmless page error)
    await context.close()


async def test_every_dashboard_query_runs_on_prometheus_and_a_lesson_feeds_its_panels(
        tmp_path, monkeypatch, browser) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(aioice_ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else [])
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (tmp_path / "server").mkdir()
    (tmp_path / "prom").mkdir()
    server = Server(tmp_path / "server", env={"KETANG_WORKERS": "2", "KETANG_MEDIA_ADDRESSES": "127.0.0.1"})
    target = f"127.0.0.1:{server.port}"
    instance = target
    prom = Prometheus(tmp_path / "prom", target)
    peers: list = []
    try:
        server.wait_ready(timeout_s=60)
        prom.wait_ready()
        start = time.time()
        teacher = await publishing_teacher(server, "prom")
        clean = Classroom(await join_lesson(server, "classroom", "prom", "第一小学"))
        lossy = Classroom(await join_lesson(server, "classroom", "prom", "第二小学"), loss=0.1)
        peers += [teacher, clean, lossy]
        await clean.wait_frames(10, timeout_s=30)
        await lossy.wait_frames(5, timeout_s=30)
        # the refusal after Prometheus has the counters at 0 (a busy CI machine once scraped them first at 1)
        await prom.wait_scraped(f'ketang_token_refusals_total{{job="{JOB}", reason="token_invalid"}}')
        await prom.wait_scraped(f'ketang_websocket_errors_total{{job="{JOB}", code="token_invalid"}}')
        await _refused_join(server)
        # the lesson goes on until Prometheus has seen NACKs answered by RTX and a few scrapes after
        nacks = await prom.wait_value(f'sum(ketang_sfu_retransmissions_total{{job="{JOB}"}})', timeout_s=40)
        assert nacks > 0, await scrape(server)
        await asyncio.sleep(LESSON_AFTER_NACKS_S)
        end = time.time()
        assert lossy.loss is not None and lossy.loss.dropped > 0

        panels: dict[str, list[str]] = {}
        report = []
        failures = []
        for panel in dashboard["panels"]:
            title = panel["title"]
            exprs = [grafana_expr(t["expr"], instance) for t in panel.get("targets", [])]
            panels[title] = exprs
            assert title in MUST, f"a new panel {title!r}: say what a lesson shows in it"
            must = MUST[title]
            musts = must if isinstance(must, list) else [must] * len(exprs)
            assert len(musts) == len(exprs), title
            for expr, need in zip(exprs, musts, strict=True):
                reply = await prom.query_range(expr, start, end)
                if reply.get("status") != "success":
                    failures.append(f"{title}: {expr}: {reply}")
                    continue
                result = reply["data"]["result"]
                report.append(f"{title!r}: {len(result)} series, max {max(_values(result), default=None)}: {expr}")
                if need != "parses" and not result:
                    failures.append(f"{title}: no series: {expr}")
                elif need == "moves" and not any(v > 0 for v in _values(result)):
                    failures.append(f"{title}: nothing above 0: {expr}")
                elif isinstance(need, dict):
                    for label, wanted in need.items():
                        for value in wanted:
                            series = [r for r in result if r["metric"].get(label) == value]
                            if not any(v > 0 for v in _values(series)):
                                failures.append(f"{title}: nothing above 0 for {label}={value}: {expr}")
        print("\n".join(report))
        assert not failures, "\n".join(failures)

        # the pictures while the lesson goes on
        for shot, targets in SHOTS:
            await _screenshot(browser, prom, panels, shot, targets, start)
        assert total(await scrape(server), "ketang_worker_up") == 2
    finally:
        await hang_up(*peers)
        prom.stop()
        server.stop()
