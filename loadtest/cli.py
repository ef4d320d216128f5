"""`python -m loadtest` (from the checkout): one teacher to N classrooms, and `python -m loadtest sweep`."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ramp", type=float, default=20.0, metavar="PER_SECOND", help="classrooms joining per second")
    p.add_argument("--bitrate", type=int, default=500, metavar="KBPS", help="teacher's video + audio (default 500)")
    p.add_argument("--workers", type=int, default=0, help="load-generator processes (default: 1 per 150 classrooms)")
    p.add_argument("--classroom-mode", choices=["counter", "stock"], default="counter",
                   help="counter (default): header-only counting + RR/NACK; stock: also run aiortc's receiver on "
                        "every packet (to measure its cost)")
    p.add_argument("--classroom-loss", type=float, default=0.0, metavar="RATIO",
                   help="emulated downlink loss at each classroom, e.g. 0.013 (retransmissions repair it)")
    p.add_argument("--classroom-uplink", type=int, default=0, metavar="KBPS",
                   help="the interactive classroom: each classroom also publishes a looped 320x180 VP8 camera at "
                        "KBPS (e.g. 150) + Opus on its own publishing connection (default: off)")
    p.add_argument("--wall", type=int, default=None, metavar="N",
                   help="classroom tiles on the synthetic teacher's wall, received and counted (default: 16 with "
                        "--classroom-uplink, else no wall; at most 64)")
    p.add_argument("--classroom-downlink", default="", metavar="KBPS[,KBPS...]",
                   help="each classroom reports this downlink estimate by REMB once a second, as a browser does "
                        "(a list is cycled over the classrooms, e.g. 300,900,3000 for a mix of weak and good "
                        "links); with --simulcast the server's layer choice follows it (default: no REMB)")
    p.add_argument("--ignore-demand", action="store_true",
                   help="with --classroom-uplink: classrooms send their camera and microphone all the time, even "
                        "when nobody receives them (the page stops sending them; this measures what that saves)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _with_extra(command):  # type: ignore[no-untyped-def]
    """The load tester's own packages (psutil, matplotlib) are an extra the server does not install."""
    def run(args: argparse.Namespace) -> int:
        try:
            import matplotlib  # noqa: F401
            import psutil  # noqa: F401
        except ImportError as exc:
            raise SystemExit(f"python -m loadtest needs the load tester's packages ({exc.name} is missing): "
                             "pip install -e '.[loadtest]'") from exc
        return command(args)
    return run


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `loadtest` on a parent parser (this module's own main)."""
    p = subparsers.add_parser("loadtest", help="one synthetic teacher to N synthetic classrooms; CPU, loss, delay",
                              description="Start a ketang server (or target --url), publish a looped pre-encoded "
                                          "VP8 + Opus clip, ramp N real WebRTC classrooms in, hold, report.")
    p.add_argument("--classrooms", type=int, required=True, metavar="N")
    p.add_argument("--duration", type=float, default=20.0, metavar="S", help="hold window measured, seconds")
    p.add_argument("--json", default=None, metavar="PATH", help="write the report here")
    p.add_argument("--url", default=None, help="target a running server (needs --secret or KETANG_SECRET)")
    p.add_argument("--secret", default=None, help="that server's token secret")
    p.add_argument("--server-pid", type=int, default=None,
                   help="with --url on this machine: the server's pid, to measure its CPU and memory")
    p.add_argument("--baseline", choices=["relay"], default=None,
                   help="run against the aiortc MediaRelay reference server instead (decode once, encode each)")
    p.add_argument("--lesson", default=None)
    p.add_argument("--profile-server", default=None, metavar="PATH",
                   help="run the server under cProfile, write its stats to PATH (and the top entries to PATH.txt)")
    p.add_argument("--simulcast", action="store_true",
                   help="the teacher sends its camera as Chromium does with the teacher page: three simulcast "
                        "layers q (÷4, 15 fps), h (÷2), f (full), each on its own SSRC named by the RID header "
                        "extension; the report gives each classroom's layer and the layer mix")
    p.add_argument("--layers", default=None, metavar="Q,H,F",
                   help="with --simulcast: the layers' video kbit/s (default: f gets what --bitrate gives the "
                        "single stream, h a third, q a ninth; the teacher page asks 150,500,1500)")
    p.add_argument("--simulcast-size", default="640x360", metavar="WxH",
                   help="with --simulcast: the full layer's size (default 640x360; the page's camera is 1280x720)")
    p.add_argument("--cpu-hog", type=int, default=0, metavar="N",
                   help="N busy-loop processes pinned to the machine's last cores for the whole run (the overload "
                        "run: other work takes a core; docs/benchmarks.md, Overload)")
    _add_run_options(p)
    p.set_defaults(func=_with_extra(_run))
    return p


def _kbps_list(raw: str) -> tuple[int, ...]:
    values = tuple(int(x) for x in raw.split(",") if x.strip())
    if any(v <= 0 for v in values):
        raise SystemExit("--classroom-downlink: positive kbit/s values")
    return values


def _simulcast_options(args: argparse.Namespace) -> dict:
    """LoadTestConfig's simulcast fields from the command line (none unless --simulcast)."""
    if not args.simulcast:
        if args.layers is not None or args.simulcast_size != "640x360":
            raise SystemExit("loadtest: --layers and --simulcast-size go with --simulcast")
        return {}
    try:
        kbps = tuple(int(x) for x in args.layers.split(",")) if args.layers else None
        w, h = (int(x) for x in args.simulcast_size.lower().split("x"))
    except ValueError as exc:
        raise SystemExit(f"loadtest: --layers Q,H,F and --simulcast-size WxH: {exc}") from exc
    return {"simulcast": True, "simulcast_kbps": kbps, "simulcast_size": (w, h)}


def _run(args: argparse.Namespace) -> int:
    from loadtest.report import summary_line
    from loadtest.runner import LoadTestConfig, run_loadtest, write_json

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = LoadTestConfig(classrooms=args.classrooms, duration_s=args.duration, ramp_per_s=args.ramp,
                         bitrate_kbps=args.bitrate, url=args.url, secret=args.secret, baseline=args.baseline,
                         workers=args.workers, lesson=args.lesson, profile_server=args.profile_server,
                         server_pid=args.server_pid, classroom_mode=args.classroom_mode,
                         classroom_loss=args.classroom_loss, classroom_uplink_kbps=args.classroom_uplink,
                         wall=args.wall, classroom_demand=not args.ignore_demand, quiet=args.quiet,
                         classroom_downlink_kbps=_kbps_list(args.classroom_downlink), cpu_hog=args.cpu_hog,
                         **_simulcast_options(args))
    try:
        report = run_loadtest(cfg)
    except ValueError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    if args.profile_server:
        from loadtest.profile import summarize
        report["server_profile"] = summarize(args.profile_server, args.profile_server + ".txt")
    if args.json:
        write_json(report, args.json)
    print(summary_line(report))
    if not args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2, ensure_ascii=False))
    return 0 if report["classrooms_connected"] == report["classrooms_requested"] else 1


def _sweep(args: argparse.Namespace) -> int:
    from loadtest.sweep import run_sweep

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_sweep(args)


def _uplink(args: argparse.Namespace) -> int:
    from loadtest.uplink import run_pairs

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_pairs(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description="ketang load test")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    s = sub.add_parser("sweep", help="load tests at several sizes, ketang and the relay baseline; writes "
                                     "docs/benchmarks.md's load-test section and docs/loadtest.png")
    s.add_argument("--sizes", default="25,50,100,200,400")
    s.add_argument("--baseline-sizes", default="2,4,8,12,16,24",
                   help="relay sizes; the sweep stops early once loss > 20 %% or CPU saturates")
    s.add_argument("--duration", type=float, default=20.0)
    s.add_argument("--doc", default="docs/benchmarks.md")
    s.add_argument("--plot", default="docs/loadtest.png")
    s.add_argument("--json", default=None, metavar="PATH", help="all reports")
    s.add_argument("--from-json", default=None, metavar="PATH",
                   help="only re-render the doc section and plot from an earlier sweep's --json")
    s.add_argument("--profile-largest", default=None, metavar="PATH",
                   help="after the sweep, profile the server at the largest size (separate run)")
    _add_run_options(s)
    s.set_defaults(func=_with_extra(_sweep))
    u = sub.add_parser("uplink", help="what the interactive classroom costs: at each size one run without classroom "
                                      "uplinks and one with them (--classroom-uplink, default 150, and the teacher's "
                                      "wall); prints a markdown table")
    u.add_argument("--sizes", default="50,100")
    u.add_argument("--duration", type=float, default=20.0)
    u.add_argument("--json", default=None, metavar="PATH", help="all reports")
    u.add_argument("--from-json", default=None, metavar="PATH", help="only re-render an earlier --json")
    _add_run_options(u)
    u.set_defaults(func=_with_extra(_uplink))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "loadtest")  # `python -m loadtest --classrooms 20 ...` means the load test itself
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
