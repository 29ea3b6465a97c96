"""The benchmark reports the spread over its rounds, not one round."""

from __future__ import annotations

from bench.webhooks import DEFAULT_ROUNDS, Round, Spread, summarise
from bench.wrk_result import WrkResult
from tests.support.env import ROOT


def _round(target: str, rps: float, p99: float) -> Round:
    result = WrkResult(
        requests=int(rps * 10),
        requests_per_second=rps,
        p50_ms=p99 / 2,
        p99_ms=p99,
        non_2xx=0,
        socket_errors=0,
    )
    return Round(target, result, cpu_us_per_request=rps / 100)


def test_each_measure_is_given_as_min_median_max_over_the_rounds() -> None:
    rounds = [
        _round("gateway", 7_145, 15.2),
        _round("bare", 13_000, 6.0),
        _round("gateway", 6_100, 27.4),
        _round("bare", 12_000, 7.0),
        _round("gateway", 6_900, 18.0),
        _round("bare", 14_000, 6.5),
    ]

    gateway = summarise(rounds, "gateway")

    assert gateway["requests_per_second"] == Spread(6_100, 6_900, 7_145)
    assert gateway["p99_ms"] == Spread(15.2, 18.0, 27.4)
    assert gateway["p50_ms"] == Spread(7.6, 9.0, 13.7)
    assert summarise(rounds, "bare")["requests_per_second"] == Spread(12_000, 13_000, 14_000)
    assert gateway["p99_ms"].format(1) == "15.2 / 18.0 / 27.4"


def test_the_default_number_of_rounds_is_the_one_the_readme_states() -> None:
    readme = (ROOT / "README.md").read_text()

    assert DEFAULT_ROUNDS == 5
    assert "in 5 alternating rounds" in readme
    assert "defaults: 5 rounds" in readme
