"""The scale-out proof's comparison of a one-replica and a two-replica run."""

from __future__ import annotations

from chaos.verify import Observed, compare_runs


def _run(dunning: dict[tuple[str, ...], object], flexible: set[object]) -> Observed:
    return Observed({"dunning": dunning}, {"dunning": flexible})


def test_runs_that_agree_are_the_same() -> None:
    state = {("invoice", "in_1"): ("recovered", "paid")}
    comparison = compare_runs(_run(state, set()), _run(dict(state), set()))
    assert comparison.same
    assert comparison.order_dependent == []


def test_a_difference_the_model_pins_down_makes_the_runs_differ() -> None:
    one = _run({("invoice", "in_1"): ("recovered", "paid")}, set())
    two = _run({("invoice", "in_1"): ("exhausted", "open")}, set())
    comparison = compare_runs(one, two)
    assert not comparison.same
    assert comparison.determined == [("dunning", ("invoice", "in_1"))]


def test_an_outcome_the_order_decides_is_reported_not_failed() -> None:
    key = ("invoice", "in_2")
    one = _run({key: ("canceled", "paid")}, {key})
    two = _run({key: ("recovered", "paid")}, {key})
    comparison = compare_runs(one, two)
    assert comparison.same
    assert comparison.order_dependent == [("dunning", key)]


def test_a_key_only_one_run_has_is_a_difference() -> None:
    one = _run({("invoice", "in_1"): ("open", None)}, set())
    comparison = compare_runs(one, _run({}, set()))
    assert not comparison.same
