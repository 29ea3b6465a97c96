"""The catalog file is checked as a whole when it is read."""

from __future__ import annotations

import pydantic
import pytest

from shared import catalog

BASE = """
currency = "usd"
[credit_types.meeting_room_hours]
name = "Hours"
[plans.desk]
name = "Desk"
prices.month = { lookup_key = "desk_monthly", amount = 1000 }
credits = { meeting_room_hours = 5 }
"""


def test_the_shipped_catalog_is_valid() -> None:
    shipped = catalog.load()
    assert shipped.plans and shipped.products
    hot_desk = shipped.plans["hot_desk"]
    assert hot_desk.price("month", tier="partner") != hot_desk.price("month")
    assert hot_desk.price("year", tier="partner") == hot_desk.price("year")


def test_a_lookup_key_reused_for_another_amount_is_refused_naming_it() -> None:
    text = BASE + '[products.hour]\nname = "Hour"\namount = 999\nlookup_key = "desk_monthly"\n'
    with pytest.raises(pydantic.ValidationError, match="lookup_key 'desk_monthly'"):
        catalog.parse(text)


def test_a_lookup_key_shared_at_the_same_amount_is_one_price() -> None:
    text = BASE + '[products.hour]\nname = "Hour"\namount = 1000\nlookup_key = "desk_monthly"\n'
    assert catalog.parse(text).products["hour"].lookup_key == "desk_monthly"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("credits = { meeting_room_hours = 5 }", "unknown credit type 'printing'"),
        ("amount = 1000", "greater than 0"),
        ('prices.month = { lookup_key = "desk_monthly", amount = 1000 }', "Extra inputs"),
    ],
)
def test_mistakes_are_named(change: str, message: str) -> None:
    broken = {
        "unknown credit type 'printing'": BASE.replace(change, "credits = { printing = 5 }"),
        "greater than 0": BASE.replace(change, "amount = -5"),
        "Extra inputs": BASE.replace(change, change + "\nprise = 3"),
    }[message]
    with pytest.raises(pydantic.ValidationError, match=message):
        catalog.parse(broken)
