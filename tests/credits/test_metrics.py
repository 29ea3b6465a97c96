"""Credits counted by type, spend latency and refusals by reason, on /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.credits.conftest import Credits


async def _samples(credits: Credits) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with credits.http.get(f"{credits.stack.apps['credits'].url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_credits_are_counted_by_type_and_refusals_by_reason(credits: Credits) -> None:
    before = await _samples(credits)
    await credits.activate("u1", "sub_1")
    assert (await credits.spend("u1", 3))[0] == 201
    assert (await credits.spend("u1", 30))[0] == 422
    _, spent = await credits.spend("u1", 2)
    await credits.request("POST", f"/v1/credits/spends/{spent['id']}/reverse", "u1", json={})
    await credits.refund("u1", invoice="in_1")
    after = await _samples(credits)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    hours = {"credit_type": "meeting_room_hours"}
    assert delta("credits_granted_total", source="plan", **hours) == 10
    assert delta("credits_spent_total", **hours) == 5
    assert delta("credits_reversed_total", **hours) == 2
    assert delta("credits_clawed_back_total", **hours) == 7
    assert delta("credits_spends_rejected_total", reason="insufficient") == 1
    assert delta("credits_spend_duration_seconds_count") == 3
