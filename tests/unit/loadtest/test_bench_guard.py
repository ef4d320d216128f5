"""The datagram-guard micro-benchmark (loadtest/bench/guard.py) runs and times what it says: every datagram from the
nominated address reaches the hand-off to DTLS on both paths, none of the stranger's. No timing assertions."""

from __future__ import annotations

import json

from loadtest.bench.guard import main, run


def test_guard_bench_figures():
    result = run(datagrams=2000, repeat=2)  # raises if a path let through other than it should
    assert set(result["ns_per_datagram"]) == {"stock", "guarded", "stranger"}
    assert all(ns > 0 for ns in result["ns_per_datagram"].values())
    assert result["guarded_over_stock"] > 0


def test_guard_bench_json(capsys):
    main(["--datagrams", "500", "--repeat", "1", "--json"])
    assert json.loads(capsys.readouterr().out)["datagrams"] == 500
