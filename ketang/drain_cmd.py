"""`ketang drain`: tell a `ketang serve` running on this machine to drain (SIGTERM to the process whose id it keeps
in its data directory), and wait until it has stopped."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from signaling.config import Config, ConfigFileError, apply_config_file, pid_file

WAIT_POLL_S = 0.2
SAY_EVERY_S = 10.0


def _running(path: Path) -> int | None:
    """The pid in a pid file when that process is alive and is a ketang server (not a reused pid), else None."""
    try:
        pid = int(path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"ketang" in cmdline and b"serve" in cmdline else None


def _servers(data_dir: Path, port: int | None) -> dict[int, int]:
    """{port: pid} of the servers running with this data directory (or the one on `port`)."""
    files = [pid_file(data_dir, port)] if port else sorted((data_dir / "run").glob("serve-*.pid"))
    found = {}
    for path in files:
        pid = _running(path)
        if pid is not None:
            found[int(path.stem.removeprefix("serve-"))] = pid
    return found


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return Path(f"/proc/{pid}/status").exists() and "State:\tZ" in Path(f"/proc/{pid}/status").read_text()


def _drain(args: argparse.Namespace) -> int:
    try:
        if args.config:
            apply_config_file(Path(args.config))
    except ConfigFileError as exc:
        print(f"ketang drain: {exc}", file=sys.stderr)
        return 2
    data_dir = Config.data_dir_from(args.data_dir)
    try:
        args.port = args.port or int(os.environ.get("KETANG_PORT") or 0) or None
    except ValueError:
        print("ketang drain: KETANG_PORT must be a port number", file=sys.stderr)
        return 2
    servers = _servers(data_dir, args.port)
    if not servers:
        where = f"port {args.port} of " if args.port else ""
        print(f"ketang drain: no ketang serve is running for {where}data directory {data_dir} (it keeps its process "
              f"id in {pid_file(data_dir, args.port or 0).parent}/)", file=sys.stderr)
        return 1
    if len(servers) > 1:
        print(f"ketang drain: several servers use {data_dir} (ports {', '.join(map(str, sorted(servers)))}): "
              "say which with --port", file=sys.stderr)
        return 2
    (port, pid), = servers.items()
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        print(f"ketang drain: not allowed to signal the server (pid {pid}): run as its user", file=sys.stderr)
        return 1
    print(f"draining ketang serve on port {port} (pid {pid}): no new lessons; live ones go on until they end or "
          "the drain timeout, then move to another node", flush=True)
    if args.no_wait:
        return 0
    started = said = time.monotonic()
    while not _gone(pid):
        time.sleep(WAIT_POLL_S)
        if time.monotonic() - said >= SAY_EVERY_S:
            said = time.monotonic()
            print(f"  still draining after {said - started:.0f} s", flush=True)
    print(f"stopped after {time.monotonic() - started:.1f} s", flush=True)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    drain = sub.add_parser("drain", help="drain a server running here (as SIGTERM does) and wait until it stops")
    drain.add_argument("--data-dir", default=None, help="the server's data directory (or KETANG_DATA_DIR; ./data)")
    drain.add_argument("--config", default=None, metavar="FILE", help="the server's configuration file")
    drain.add_argument("--port", type=int, default=None, help="which server, when several share the data directory")
    drain.add_argument("--no-wait", action="store_true", help="return once the server was told, without waiting")
    drain.set_defaults(func=_drain)
