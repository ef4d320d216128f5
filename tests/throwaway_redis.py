"""A redis-server of a test's own, on a fixed free port, that the test may stop and start again (an outage, a
restart with or without its data). Never the shared 127.0.0.1:6379."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import SERVER_START_TIMEOUT_S, _answers_ping, _free_port, _stop


class ThrowawayRedis:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("these tests start and stop a redis-server of their own: install redis-server")
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ThrowawayRedis:
        """Start (again, on the same port); it loads dump.rdb when stop(keep_data=True) left one."""
        log = open(self.workdir / "redis.log", "ab")
        # no automatic persistence: only stop(keep_data=True) writes a snapshot
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is None and _answers_ping(self.url):
                return self
            time.sleep(0.05)
        pytest.fail(f"redis-server on port {self.port} did not start: {(self.workdir / 'redis.log').read_text()}")

    def stop(self, keep_data: bool = False) -> None:
        """Stop it; keep_data: snapshot first, so that start() finds the data again (else it starts empty)."""
        dump = self.workdir / "dump.rdb"
        if keep_data:
            client = redis.Redis.from_url(self.url)
            try:
                client.save()
            finally:
                client.close()
        elif dump.exists():
            dump.unlink()
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None
        if not keep_data and dump.exists():
            dump.unlink()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)
