"""`ketang serve` and `ketang token`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import replace

from pathlib import Path

from signaling.config import (
    CLASSROOM_UPLINK_KBPS,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DRAIN_TIMEOUT_S,
    JOB_LEASE_S,
    PARTICIPANT_TTL_S,
    STAGE_MAX,
    TEACHER_UPLINK_KBPS,
    TURN_TTL_S,
    Config,
    ConfigFileError,
    apply_config_file,
    flag_on,
    seconds_from,
    workers_from,
)


def _port(flag: int | None, env: Mapping[str, str] = os.environ) -> int:
    raw = env.get("KETANG_PORT")
    if flag is not None or not raw:
        return flag if flag is not None else DEFAULT_PORT
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"KETANG_PORT (or port in the configuration file) must be a port number, not {raw!r:.20}")
    return int(raw)


def _serve(args: argparse.Namespace) -> int:
    # the configuration file goes below the environment (flag > environment > file > default): its settings
    # become the environment variables the environment does not set
    config_path = args.config or os.environ.get("KETANG_CONFIG")
    try:
        if config_path:
            apply_config_file(Path(config_path))
    except ConfigFileError as exc:
        print(f"ketang: {exc}", file=sys.stderr)
        return 2
    return _serve_configured(args)


def _serve_configured(args: argparse.Namespace) -> int:
    import uvloop

    from ketang.log import configure as configure_logging
    from sfu.peers.sdp import set_announced_addresses
    from sfu.seams import MediaPorts, SeamError, set_media_addresses, set_media_ports
    from sfu.seams import install as install_seams
    from signaling.app import run_server, tls_context
    from signaling.forwarded import trusted_networks
    from signaling.supervisor import WORKER_ENV, WorkerSpec, media_port_slices, run_supervisor
    from signaling.tokens import load_or_create_secret

    try:
        configure_logging(args.log_format or os.environ.get("KETANG_LOG_FORMAT") or "text",
                          args.verbose or flag_on("KETANG_VERBOSE"))
    except ValueError as exc:
        print(f"ketang: {exc} (--log-format or KETANG_LOG_FORMAT)", file=sys.stderr)
        return 2
    # a worker of a supervisor (`--workers N`) is told who it is; the supervisor itself carries no media
    worker = WorkerSpec.from_env(os.environ[WORKER_ENV]) if os.environ.get(WORKER_ENV) else None
    ports = args.media_ports or os.environ.get("KETANG_MEDIA_PORTS", "")
    try:
        workers = 1 if worker is not None else workers_from(args.workers)
        if ports:
            MediaPorts.parse(ports)
        media_port_slices(ports, workers)
    except ValueError as exc:
        print(f"ketang: {exc}", file=sys.stderr)
        return 2
    if worker is not None:
        ports = worker.media_ports
    if workers == 1:
        try:
            install_seams()  # the start-up self-test of the aiortc seams, decoding off, the datagram guard
        except SeamError as exc:
            print(f"ketang: {exc}", file=sys.stderr)
            return 2
        set_media_addresses((args.media_addresses or os.environ.get("KETANG_MEDIA_ADDRESSES", "")).split(","))
        try:
            set_announced_addresses(
                (args.announce_addresses or os.environ.get("KETANG_ANNOUNCE_ADDRESSES", "")).split(","))
        except ValueError as exc:
            print(f"ketang: {exc} (--announce-addresses or KETANG_ANNOUNCE_ADDRESSES)", file=sys.stderr)
            return 2
        set_media_ports(MediaPorts.parse(ports) if ports else None)
    data_dir = Config.data_dir_from(args.data_dir)
    try:
        tls_cert, tls_key = Config.tls_from(args.tls_cert, args.tls_key)
        ssl_context = tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
        ttl = Config.float_from("KETANG_PARTICIPANT_TTL_S", PARTICIPANT_TTL_S)
        host = args.host or os.environ.get("KETANG_HOST") or DEFAULT_HOST
        port = _port(args.port)
        drain_timeout = (args.drain_timeout_s if args.drain_timeout_s is not None
                         else seconds_from("KETANG_DRAIN_TIMEOUT_S", DRAIN_TIMEOUT_S))
        if not drain_timeout >= 0:
            raise ValueError("--drain-timeout must be 0 or more seconds")
        config = Config(host=host, port=port, redis_url=Config.redis_url_from(args.redis_url),
                        redis_prefix=args.redis_prefix or os.environ.get("KETANG_REDIS_PREFIX") or "ketang:",
                        data_dir=data_dir, secret=load_or_create_secret(data_dir),
                        database_url=Config.database_url_from(args.database_url, data_dir),
                        media_dir=Config.media_dir_from(args.media_dir),
                        ice_servers=Config.ice_servers_from(args.ice_servers), participant_ttl_s=ttl,
                        turn_urls=Config.turn_urls_from(args.turn_urls),
                        turn_secret=os.environ.get("KETANG_TURN_SECRET", ""),
                        turn_ttl_s=Config.float_from("KETANG_TURN_TTL_S", TURN_TTL_S),
                        record=not (args.no_record or flag_on("KETANG_NO_RECORD")), drain_timeout_s=drain_timeout,
                        teacher_uplink_kbps=int(Config.float_from("KETANG_TEACHER_UPLINK_KBPS", TEACHER_UPLINK_KBPS)),
                        classroom_uplink_kbps=int(Config.float_from("KETANG_CLASSROOM_UPLINK_KBPS",
                                                                    CLASSROOM_UPLINK_KBPS)),
                        stage_max=int(Config.float_from("KETANG_STAGE_MAX", STAGE_MAX)),
                        heartbeat_interval_s=Config.float_from("KETANG_HEARTBEAT_S", ttl / 3),
                        public_url=args.public_url or os.environ.get("KETANG_PUBLIC_URL", ""),
                        tls_cert=tls_cert, tls_key=tls_key,
                        trusted_proxies=Config.list_from("KETANG_TRUSTED_PROXIES", args.trusted_proxies),
                        jobs=Config.jobs_from(args.jobs),
                        job_lease_s=Config.float_from("KETANG_JOB_LEASE_S", JOB_LEASE_S))
        trusted_networks(config.trusted_proxies)  # checked here: a typo stops the start with the entry named
        if worker is not None:
            config = replace(config, node_id=worker.node, public_url=worker.url, listen_socket=worker.listen,
                             store_socket=worker.store, worker_index=worker.index)
    except ValueError as exc:
        print(f"ketang: {exc}", file=sys.stderr)
        return 2
    if workers > 1:
        # the workers are started with this same command line (flags win over their environment)
        uvloop.run(run_supervisor(config, workers, args.argv, ssl_context, ports))
    else:
        uvloop.run(run_server(config, ssl_context))
    return 0


def _token(args: argparse.Namespace) -> int:
    from signaling.tokens import issue_token, load_or_create_secret

    secret = load_or_create_secret(Config.data_dir_from(args.data_dir))
    try:
        print(issue_token(secret, args.role, args.lesson, name=args.name, ttl_s=args.ttl))
    except ValueError as exc:
        print(f"ketang token: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ketang.admin_cmd import add_parser as add_admin_parser
    from ketang.audit_cmd import add_parser as add_audit_parser
    from ketang.drain_cmd import add_parser as add_drain_parser
    from ketang.lesson_cmd import add_parser as add_lesson_parser
    from recorder.library.cli import add_parser as add_library_parser
    from signaling.tokens import ROLES

    parser = argparse.ArgumentParser(prog="ketang", description="ketang live-lesson server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (in-process room state unless a Redis URL is given)")
    serve.add_argument("--config", default=None, metavar="FILE",
                       help="a TOML file with any of these settings (or KETANG_CONFIG; docs/config.md): flags and "
                            "environment variables win over it")
    serve.add_argument("--host", default=None, help=f"listen address (or KETANG_HOST; {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=None, help=f"listen port (or KETANG_PORT; {DEFAULT_PORT})")
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="worker processes behind the one address, lessons spread over them by load (or "
                            "KETANG_WORKERS; default: the number of cores; 1: a single process, as before). Each "
                            "worker takes its own slice of --media-ports (docs/deploy.md)")
    serve.add_argument("--drain-timeout", dest="drain_timeout_s", type=float, default=None, metavar="SECONDS",
                       help="on SIGTERM or `ketang drain`, live lessons go on at most this long, then their "
                            f"participants are sent to another node (or KETANG_DRAIN_TIMEOUT_S; {DRAIN_TIMEOUT_S:g})")
    serve.add_argument("--redis-url", default=None, help="room state in Redis (or KETANG_REDIS_URL)")
    serve.add_argument("--public-url", default=None,
                       help="how browsers reach this process, e.g. https://ketang.example.cn:8443 (or "
                            "KETANG_PUBLIC_URL; default http(s)://HOST:PORT): with several processes on one Redis, "
                            "each lesson lives on one of them and a participant joining another is sent there")
    serve.add_argument("--tls-cert", default=None, metavar="FILE",
                       help="serve https and wss with this PEM certificate (chain) (or KETANG_TLS_CERT; needs "
                            "--tls-key): browsers open the camera only on https pages or localhost")
    serve.add_argument("--tls-key", default=None, metavar="FILE",
                       help="the certificate's unencrypted PEM private key (or KETANG_TLS_KEY)")
    serve.add_argument("--redis-prefix", default=None, help="key prefix in Redis (or KETANG_REDIS_PREFIX; ketang:)")
    serve.add_argument("--data-dir", default=None, help="secret and recordings (or KETANG_DATA_DIR; ./data)")
    serve.add_argument("--database-url", default=None,
                       help="the store (library catalog, accounts, timetable): postgresql+asyncpg://USER@HOST/DB shared by every node "
                            "(or KETANG_DATABASE_URL); default: a SQLite file in the data directory")
    serve.add_argument("--media-dir", default=None, metavar="DIR",
                       help="where recordings are written (or KETANG_MEDIA_DIR; default: DATA_DIR/recordings): a "
                            "directory every node mounts (NFS) lets any node serve any recording (docs/deploy.md)")
    serve.add_argument("--ice-servers", default=None,
                       help="comma-separated STUN/TURN URLs (or KETANG_ICE_SERVERS); none by default")
    serve.add_argument("--media-addresses", default=None,
                       help="comma-separated local IP addresses the media (ICE host candidates) uses (or "
                            "KETANG_MEDIA_ADDRESSES; default: every interface address but 127.0.0.1)")
    serve.add_argument("--trusted-proxies", default=None, metavar="ADDRESS|NETWORK,...",
                       help="reverse proxies (e.g. 127.0.0.1 for nginx on this machine) whose X-Forwarded-For and "
                            "X-Forwarded-Proto are believed (or KETANG_TRUSTED_PROXIES); none by default: the "
                            "headers are ignored")
    serve.add_argument("--announce-addresses", default=None, metavar="PUBLIC|BOUND=PUBLIC,...",
                       help="behind a 1:1 NAT: the public IP address browsers are told in place of the bound one "
                            "(or KETANG_ANNOUNCE_ADDRESSES; e.g. 203.0.113.7, or 10.0.0.5=203.0.113.7 for one "
                            "bound address); ports stay, so forward the media ports one to one")
    serve.add_argument("--log-format", default=None, choices=("text", "json"),
                       help="text (default) or json: one JSON object per line with the lesson and participant a "
                            "line is about, for a log collector (or KETANG_LOG_FORMAT)")
    serve.add_argument("--media-ports", default=None, metavar="FIRST-LAST",
                       help="UDP ports the media binds, e.g. 40000-49999: one rule in the firewall (or "
                            "KETANG_MEDIA_PORTS; default: any port the system gives)")
    serve.add_argument("--turn-urls", default=None,
                       help="comma-separated TURN URLs handed to the browsers with per-participant credentials "
                            "(or KETANG_TURN_URLS; needs KETANG_TURN_SECRET)")
    serve.add_argument("--jobs", default=None, choices=("on", "off"),
                       help="run the library's jobs (composite, HLS) on this node (or KETANG_JOBS; on). off: they "
                            "wait for the nodes that run them (docs/deploy.md)")
    serve.add_argument("--no-record", action="store_true",
                       help="do not record lessons into the library (or KETANG_NO_RECORD=1)")
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging (or KETANG_VERBOSE=1)")
    serve.set_defaults(func=_serve)

    token = sub.add_parser("token", help="print a signed role token for a lesson")
    token.add_argument("--role", required=True, choices=list(ROLES))
    token.add_argument("--lesson", required=True)
    token.add_argument("--name", default=None)
    token.add_argument("--ttl", type=int, default=6 * 3600, help="seconds (default 6 h)")
    token.add_argument("--data-dir", default=None)
    token.set_defaults(func=_token)
    add_lesson_parser(sub)
    add_library_parser(sub)
    add_audit_parser(sub)
    add_drain_parser(sub)
    add_admin_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # (a supervisor starts its workers with the same command line)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
