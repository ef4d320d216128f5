"""One typed configuration object, built from CLI flags and the environment, passed down explicitly."""

from __future__ import annotations

import os
import tomllib
import uuid
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import store

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = "data"
PARTICIPANT_TTL_S = 30.0  # a participant not heard of for this long (crashed node) disappears from state
HEARTBEAT_INTERVAL_S = 10.0  # how often a node refreshes its participants' TTL
# a node's own liveness in the room store: renewed every NODE_TTL_S / 3, dead (its lessons free for the next node)
# NODE_TTL_S after its last renewal. Short: a crashed node's lessons move in seconds, not after PARTICIPANT_TTL_S
NODE_TTL_S = 3.0
MESSAGES_PER_S = 20.0  # per websocket connection, sustained
MESSAGE_BURST = 40
JOIN_TIMEOUT_S = 10.0  # KETANG_JOIN_TIMEOUT_S: a websocket that has not joined by then is closed
TURN_TTL_S = 12 * 3600.0  # lifetime of the TURN credentials minted for each participant (a school day)
CLASSROOM_UPLINK_KBPS = 150  # a classroom's thumbnail for the teacher's wall (about 320x180)
STAGE_MAX = 2  # classrooms on stage at once: each is heard by every classroom
TEACHER_UPLINK_KBPS = 1500  # a 720p camera; lowered by the server when the teacher's uplink loses packets
# SIGTERM or `ketang drain`: live lessons go on this long at most, then their participants are sent to another node
DRAIN_TIMEOUT_S = 600.0
MAX_WORKERS = 256
# a running job's lease on the shared job queue (recorder/compose/shared.py): renewed every third of it; a job
# whose worker died is taken again this long after (KETANG_JOB_LEASE_S)
JOB_LEASE_S = 30.0


@dataclass(frozen=True)
class Config:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    redis_url: str | None = None
    redis_prefix: str = "ketang:"  # several deployments (or test runs) can share one Redis
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    # the durable store (the library's catalog): "" is the SQLite file in data_dir; postgresql+asyncpg://… is one
    # database shared by every node (--database-url, KETANG_DATABASE_URL)
    database_url: str = ""
    secret: str = ""
    node_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    # how browsers reach this process (several processes sharing Redis: each lesson lives on one of them, and
    # a participant joining another one is sent here); empty: http://host:port
    public_url: str = ""
    ice_servers: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()  # TURN for the browsers (firewalled schools), e.g. turn:host:3478?transport=tcp
    turn_secret: str = ""  # coturn's static-auth-secret (use-auth-secret): credentials are minted per participant
    turn_ttl_s: float = TURN_TTL_S
    record: bool = True  # record every lesson into the resource library (data_dir/recordings)
    # where recordings are written (None: data_dir/recordings); e.g. an NFS mount every node shares, so any node
    # serves any recording without asking the node that wrote it (docs/deploy.md)
    media_dir: Path | None = None
    teacher_uplink_kbps: int = TEACHER_UPLINK_KBPS  # video the teacher's browser is asked for (REMB)
    classroom_uplink_kbps: int = CLASSROOM_UPLINK_KBPS  # a classroom's own small camera (REMB)
    stage_max: int = STAGE_MAX  # classrooms on stage at once
    participant_ttl_s: float = PARTICIPANT_TTL_S
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    # the node's liveness (KETANG_NODE_TTL_S, KETANG_NODE_HEARTBEAT_S when not given); heartbeat TTL/3 by default
    node_ttl_s: float = field(default_factory=lambda: Config.float_from("KETANG_NODE_TTL_S", NODE_TTL_S))
    node_heartbeat_s: float = field(default_factory=lambda: Config.float_from(
        "KETANG_NODE_HEARTBEAT_S", Config.float_from("KETANG_NODE_TTL_S", NODE_TTL_S) / 3))
    messages_per_s: float = MESSAGES_PER_S
    message_burst: int = MESSAGE_BURST
    # a websocket that has not joined within this is closed (4008); read from KETANG_JOIN_TIMEOUT_S when not given
    join_timeout_s: float = field(default_factory=lambda: Config.float_from("KETANG_JOIN_TIMEOUT_S", JOIN_TIMEOUT_S))
    # webhooks (docs/webhooks.md): the first retry's delay, doubled each time (KETANG_WEBHOOK_BACKOFF_S), and how
    # long after a lesson's start a classroom not connected is reported absent (KETANG_ABSENT_AFTER_S)
    webhook_backoff_s: float = field(default_factory=lambda: Config.float_from("KETANG_WEBHOOK_BACKOFF_S", 10.0))
    absent_after_s: float = field(default_factory=lambda: Config.float_from("KETANG_ABSENT_AFTER_S", 300.0))
    # HTTPS: a PEM certificate (chain) and its private key; both or neither. Browsers open the camera only on
    # https pages (or localhost), so a server that teachers reach by address or name needs them (or a TLS proxy)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    # reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (signaling/forwarded.py); none: the
    # headers are ignored and the peer's address is the client's
    trusted_proxies: tuple[str, ...] = field(default_factory=lambda: Config.list_from("KETANG_TRUSTED_PROXIES"))
    # a worker of `ketang serve --workers N` (signaling/supervisor.py): it serves HTTP on this unix socket (only the
    # supervisor reaches it) instead of host:port, and without Redis its room state is the supervisor's
    listen_socket: str = ""
    store_socket: str = ""
    worker_index: int | None = None
    # this node runs the library's jobs (composite 课例, HLS renditions): --jobs on|off, KETANG_JOBS, `jobs` in the
    # file. Off: they are queued for the nodes that run them (docs/deploy.md, "Jobs on their own nodes")
    jobs: bool = True
    # a running job's lease on the shared queue (recorder/compose/shared.py; KETANG_JOB_LEASE_S)
    job_lease_s: float = JOB_LEASE_S

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def url(self) -> str:
        """This process's address for browsers and other nodes' redirects."""
        scheme = "https" if self.tls else "http"
        return (self.public_url or f"{scheme}://{self.host}:{self.port}").rstrip("/")

    @staticmethod
    def media_dir_from(flag: str | None, env: Mapping[str, str] = os.environ) -> Path | None:
        """--media-dir, else KETANG_MEDIA_DIR, else None (the data directory's recordings/)."""
        value = flag or env.get("KETANG_MEDIA_DIR") or ""
        return Path(value) if value else None

    @staticmethod
    def data_dir_from(flag: str | None, env: Mapping[str, str] = os.environ) -> Path:
        return Path(flag or env.get("KETANG_DATA_DIR") or DEFAULT_DATA_DIR)

    @staticmethod
    def tls_from(cert_flag: str | None, key_flag: str | None,
                 env: Mapping[str, str] = os.environ) -> tuple[Path | None, Path | None]:
        """--tls-cert/--tls-key (or KETANG_TLS_CERT/KETANG_TLS_KEY): both or neither, else ValueError."""
        cert = cert_flag or env.get("KETANG_TLS_CERT") or None
        key = key_flag or env.get("KETANG_TLS_KEY") or None
        if bool(cert) != bool(key):
            raise ValueError("HTTPS needs both --tls-cert and --tls-key (or KETANG_TLS_CERT and KETANG_TLS_KEY)")
        return (Path(cert), Path(key)) if cert and key else (None, None)

    @staticmethod
    def public_url_from(flag: str | None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, tls: bool = False,
                        env: Mapping[str, str] = os.environ) -> str:
        """How browsers reach the server: the flag, KETANG_PUBLIC_URL, else http(s)://HOST:PORT."""
        url = flag or env.get("KETANG_PUBLIC_URL") or f"{'https' if tls else 'http'}://{host}:{port}"
        return url.rstrip("/")

    @staticmethod
    def float_from(name: str, default: float, env: Mapping[str, str] = os.environ) -> float:
        raw = env.get(name)
        if not raw:
            return default
        value = float(raw)
        if not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds")
        return value

    @staticmethod
    def database_url_from(flag: str | None, data_dir: Path, env: Mapping[str, str] = os.environ) -> str:
        """--database-url, else KETANG_DATABASE_URL, else the SQLite file in ``data_dir``; ValueError for a URL
        the store cannot use."""
        return store.database_url_from(flag, data_dir, env)

    @staticmethod
    def list_from(name: str, flag: str | None = None, env: Mapping[str, str] = os.environ) -> tuple[str, ...]:
        """A comma-separated setting: the flag, else the environment variable."""
        raw = flag or env.get(name) or ""
        return tuple(u.strip() for u in raw.split(",") if u.strip())

    @staticmethod
    def jobs_from(flag: str | None, env: Mapping[str, str] = os.environ) -> bool:
        """--jobs on|off, else KETANG_JOBS (1/0, on/off, true/false, yes/no), else on."""
        raw = (flag or env.get("KETANG_JOBS") or "").strip().lower()
        if raw in ("", *TRUE):
            return True
        if raw in ("0", "off", "false", "no"):
            return False
        raise ValueError(f"--jobs (or KETANG_JOBS, jobs in the configuration file) must be on or off, not {raw!r:.20}")

    @staticmethod
    def redis_url_from(flag: str | None, env: Mapping[str, str] = os.environ) -> str | None:
        return flag or env.get("KETANG_REDIS_URL") or None

    @staticmethod
    def ice_servers_from(flag: str | None, env: Mapping[str, str] = os.environ) -> tuple[str, ...]:
        raw = flag or env.get("KETANG_ICE_SERVERS") or ""
        return tuple(u.strip() for u in raw.split(",") if u.strip())

    @staticmethod
    def turn_urls_from(flag: str | None, env: Mapping[str, str] = os.environ) -> tuple[str, ...]:
        """KETANG_TURN_URLS (or the flag), checked: turn:/turns: URLs only, and a secret to sign them with."""
        raw = flag or env.get("KETANG_TURN_URLS") or ""
        urls = tuple(u.strip() for u in raw.split(",") if u.strip())
        for url in urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"KETANG_TURN_URLS: {url!r} is not a turn: or turns: URL")
        if urls and not env.get("KETANG_TURN_SECRET"):
            raise ValueError("KETANG_TURN_URLS needs KETANG_TURN_SECRET (coturn's static-auth-secret)")
        return urls


# -- the configuration file (`ketang serve --config ketang.toml`, docs/config.md) ---------------------------------
#
# Each key of the file stands for one environment variable; the file's values are applied as that variable's
# value where the environment does not set it. So a setting is resolved flag > environment > file > default, by
# the code that already reads flags and environment, and every option has one name per layer (--drain-timeout,
# KETANG_DRAIN_TIMEOUT_S, drain_timeout_s).

STR, INT, SECONDS, BOOL, LIST = "a string", "an integer", "a number of seconds", "true or false", "a list of strings"
CONFIG_KEYS: dict[str, tuple[str, str]] = {  # file key -> (environment variable, kind)
    "host": ("KETANG_HOST", STR),
    "port": ("KETANG_PORT", INT),
    "workers": ("KETANG_WORKERS", INT),
    "public_url": ("KETANG_PUBLIC_URL", STR),
    "tls_cert": ("KETANG_TLS_CERT", STR),
    "tls_key": ("KETANG_TLS_KEY", STR),
    "data_dir": ("KETANG_DATA_DIR", STR),
    "secret": ("KETANG_SECRET", STR),
    "redis_url": ("KETANG_REDIS_URL", STR),
    "redis_prefix": ("KETANG_REDIS_PREFIX", STR),
    "database_url": ("KETANG_DATABASE_URL", STR),
    "media_dir": ("KETANG_MEDIA_DIR", STR),
    "log_format": ("KETANG_LOG_FORMAT", STR),
    "verbose": ("KETANG_VERBOSE", BOOL),
    "no_record": ("KETANG_NO_RECORD", BOOL),
    "jobs": ("KETANG_JOBS", BOOL),
    "job_lease_s": ("KETANG_JOB_LEASE_S", SECONDS),
    "drain_timeout_s": ("KETANG_DRAIN_TIMEOUT_S", SECONDS),
    "ice_servers": ("KETANG_ICE_SERVERS", LIST),
    "media_addresses": ("KETANG_MEDIA_ADDRESSES", LIST),
    "announce_addresses": ("KETANG_ANNOUNCE_ADDRESSES", LIST),
    "trusted_proxies": ("KETANG_TRUSTED_PROXIES", LIST),
    "media_ports": ("KETANG_MEDIA_PORTS", STR),
    "turn_urls": ("KETANG_TURN_URLS", LIST),
    "turn_secret": ("KETANG_TURN_SECRET", STR),
    "turn_ttl_s": ("KETANG_TURN_TTL_S", SECONDS),
    "participant_ttl_s": ("KETANG_PARTICIPANT_TTL_S", SECONDS),
    "heartbeat_s": ("KETANG_HEARTBEAT_S", SECONDS),
    "node_ttl_s": ("KETANG_NODE_TTL_S", SECONDS),
    "node_heartbeat_s": ("KETANG_NODE_HEARTBEAT_S", SECONDS),
    "join_timeout_s": ("KETANG_JOIN_TIMEOUT_S", SECONDS),
    "http_timeout_s": ("KETANG_HTTP_TIMEOUT_S", SECONDS),
    "teacher_uplink_kbps": ("KETANG_TEACHER_UPLINK_KBPS", INT),
    "classroom_uplink_kbps": ("KETANG_CLASSROOM_UPLINK_KBPS", INT),
    "stage_max": ("KETANG_STAGE_MAX", INT),
}
TRUE = ("1", "true", "yes", "on")
DEFAULT_ON = frozenset({"jobs"})  # true unless the file says false (an empty variable is the default)


class ConfigFileError(ValueError):
    """The configuration file cannot be used; the message names the file and the key."""


def _as_env(path: Path, key: str, value: object) -> str:
    env, kind = CONFIG_KEYS[key]
    ok = {STR: isinstance(value, str),
          INT: isinstance(value, int) and not isinstance(value, bool),
          SECONDS: isinstance(value, (int, float)) and not isinstance(value, bool),
          BOOL: isinstance(value, bool),
          LIST: isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))}[kind]
    if not ok:
        raise ConfigFileError(f"{path}: {key} must be {kind}, not {type(value).__name__} {value!r:.40}")
    if kind in (INT, SECONDS) and value < 0:  # type: ignore[operator]
        raise ConfigFileError(f"{path}: {key} must not be negative")
    if kind == BOOL:
        return "1" if value else ("0" if key in DEFAULT_ON else "")
    if kind == LIST and isinstance(value, list):
        return ",".join(value)
    return str(value)


def read_config_file(path: Path) -> dict[str, str]:
    """The file's settings as {environment variable: value}; ConfigFileError naming the file and the key for a
    file that cannot be read, is not TOML, or has an unknown key or a value of the wrong type."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigFileError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path} is not valid TOML: {exc}") from None
    for key in data:
        if key not in CONFIG_KEYS:
            raise ConfigFileError(f"{path}: unknown key {key!r} (the keys are listed in docs/config.md: "
                                  f"{', '.join(sorted(CONFIG_KEYS))})")
    return {CONFIG_KEYS[key][0]: _as_env(path, key, value) for key, value in data.items()}


def apply_config_file(path: Path, environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Apply the file below the environment: each of its settings becomes its variable's value unless the
    environment sets that variable already. Returns what was applied."""
    applied = {env: value for env, value in read_config_file(path).items() if not environ.get(env)}
    environ.update(applied)
    return applied


def flag_on(name: str, env: Mapping[str, str] = os.environ) -> bool:
    return env.get(name, "").strip().lower() in TRUE


def seconds_from(name: str, default: float, env: Mapping[str, str] = os.environ) -> float:
    """A duration that may be 0 (e.g. KETANG_DRAIN_TIMEOUT_S=0: move the lessons at once)."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r:.40}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a number of seconds (0 or more)")
    return value


def workers_from(flag: int | None, env: Mapping[str, str] = os.environ) -> int:
    """--workers (or KETANG_WORKERS): worker processes behind the one address; default the number of cores."""
    raw = env.get("KETANG_WORKERS")
    if flag is None and raw:
        if not raw.strip().isdigit():
            raise ValueError(f"KETANG_WORKERS (or workers in the configuration file) must be a number, not {raw!r:.20}")
        flag = int(raw)
    workers = flag if flag is not None else (os.cpu_count() or 1)
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"--workers must be between 1 and {MAX_WORKERS}")
    return workers


def pid_file(data_dir: Path, port: int) -> Path:
    """Where a running server keeps its process id, for `ketang drain` (one file per port: several servers may
    share a data directory)."""
    return data_dir / "run" / f"serve-{port}.pid"
