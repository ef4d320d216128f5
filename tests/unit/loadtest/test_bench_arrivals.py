"""The arrival-stamp micro-benchmark runs and measures both phases (its figures: docs/benchmarks.md)."""

from loadtest.bench.arrivals import run


def test_both_phases_are_timed_and_compared() -> None:
    result = run(datagrams=5000, repeat=3)
    assert len(result["plain_per_round"]) == len(result["stamped_per_round"]) == 3
    assert 0 < result["plain_us"] < 100 and 0 < result["stamped_us"] < 100
    assert abs(result["added_us"] - (result["stamped_us"] - result["plain_us"])) < 0.002
