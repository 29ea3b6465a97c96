"""The dunning schedule as a pure function: caps, jitter, the end of attempts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.retry.backoff import Schedule, delay_before
from services.retry.handlers import schedule_of
from services.retry.settings import RetrySettings

DAY = timedelta(days=1)
DEFAULT = Schedule(first_delay=DAY, factor=3.0, max_delay=7 * DAY, max_attempts=3)


def test_the_caps_grow_by_the_factor_up_to_the_maximum() -> None:
    assert [DEFAULT.cap(n) for n in (1, 2, 3, 4)] == [DAY, 3 * DAY, 7 * DAY, 7 * DAY]


def test_full_jitter_waits_a_fraction_of_the_cap() -> None:
    assert delay_before(DEFAULT, 2, lambda: 0.0) == timedelta(0)
    assert delay_before(DEFAULT, 2, lambda: 0.5) == 1.5 * DAY
    almost = delay_before(DEFAULT, 3, lambda: 0.999)
    assert almost is not None and 6.99 * DAY < almost < 7 * DAY


def test_no_delay_after_the_last_attempt() -> None:
    assert delay_before(DEFAULT, 3, lambda: 0.5) is not None
    assert delay_before(DEFAULT, 4, lambda: 0.5) is None


def test_real_draws_stay_within_the_cap() -> None:
    delays = [delay_before(DEFAULT, 2) for _ in range(200)]
    assert all(d is not None and timedelta(0) <= d < 3 * DAY for d in delays)
    assert len(set(delays)) > 100  # jittered, not one instant for everyone


@pytest.mark.parametrize("draw", [-0.1, 1.0, 2.0])
def test_a_draw_outside_the_unit_interval_is_refused(draw: float) -> None:
    with pytest.raises(ValueError, match="draw"):
        delay_before(DEFAULT, 1, lambda: draw)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first_delay": timedelta(0)},
        {"max_delay": -DAY},
        {"factor": 0.5},
        {"max_attempts": 0},
    ],
)
def test_a_schedule_that_makes_no_sense_is_refused(kwargs: dict[str, object]) -> None:
    values: dict[str, object] = {
        "first_delay": DAY,
        "factor": 3.0,
        "max_delay": 7 * DAY,
        "max_attempts": 3,
        **kwargs,
    }
    with pytest.raises(ValueError):
        Schedule(**values)  # type: ignore[arg-type]


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        DEFAULT.cap(0)


def test_the_settings_default_to_about_one_three_and_seven_days() -> None:
    settings = RetrySettings(service_token="t")
    assert schedule_of(settings) == DEFAULT
