"""The payments, credits and dunning domains' reference models, and that the
comparison catches a double effect (the run itself is ``make chaos``)."""

from __future__ import annotations

from chaos.calls import CallStats
from chaos.domain import Domain, OneOf, State, World
from chaos.domains import invoices
from chaos.domains.credits import Credits
from chaos.domains.dunning import Dunning, failed_email, recovered_email
from chaos.domains.payments import Payments, routed
from chaos.domains.subscriptions import Subscriptions
from chaos.story import DAY, PERIOD, Customer, Step, StepKind, new_customer
from chaos.verify import check_calls, diff_states

T0 = 1_924_992_000
HOT_DESK = "hot_desk_monthly"
# catalog.toml's hot desk allotment per period.
ALLOTMENT = {"meeting_room_hours": 10, "guest_passes": 2, "printing_pages": 100}


def _step(kind: StepKind, index: int, at: int, period: tuple[int, int], **more: object) -> Step:
    values: dict[str, object] = {
        "kind": kind,
        "at": at,
        "index": index,
        "plan": HOT_DESK,
        "period": period,
        "status": "active",
    }
    values.update(more)
    return Step(**values)  # type: ignore[arg-type]


def _story(ending: StepKind | None = None) -> Customer:
    """Subscribed, renewed, spent 2 guest passes, a renewal failed and was
    recovered, spent 3 (of the 2 left: refused), then maybe another step."""
    customer = new_customer(0, "t")
    p1, p2, p3 = (
        (T0, T0 + PERIOD),
        (T0 + PERIOD, T0 + 2 * PERIOD),
        (T0 + 2 * PERIOD, T0 + 3 * PERIOD),
    )
    customer.steps = [
        _step(StepKind.SUBSCRIBE, 0, T0, p1),
        _step(StepKind.RENEW, 1, p2[0], p2),
        _step(StepKind.CREDITS_SPENT, 2, p2[0] + DAY, p2, amount=2),
        _step(StepKind.PAYMENT_FAILED, 3, p3[0], p3, status="past_due"),
        _step(StepKind.PAYMENT_RECOVERED, 4, p3[0] + DAY, p3),
        _step(StepKind.CREDITS_SPENT, 5, p3[0] + 2 * DAY, p3, amount=3),
    ]
    if ending is StepKind.CANCEL:
        customer.steps.append(_step(StepKind.CANCEL, 6, p3[0] + 3 * DAY, p3, status="canceled"))
    elif ending is StepKind.PAYMENT_FAILED:
        p4 = (p3[1], p3[1] + PERIOD)
        customer.steps.append(_step(StepKind.PAYMENT_FAILED, 6, p4[0], p4, status="past_due"))
    return customer


def _world(*customers: Customer) -> World:
    domains: list[Domain] = [Subscriptions(), Credits(), Dunning()]
    world = World(customers=list(customers))
    for customer in customers:
        for step in customer.steps:
            for domain in domains:
                world.events.extend(domain.events(customer, step))
    return world


def test_renewals_and_recoveries_grant_the_allotment_and_spends_follow_the_balance() -> None:
    customer = _story()
    world = _world(customer)
    expected = Credits().expected(world)
    sub = customer.subscription_id
    renewed, recovered = str(T0 + PERIOD), str(T0 + 2 * PERIOD)
    for credit_type, level in ALLOTMENT.items():
        # One grant of the allotment per paid period (the recovered one too);
        # the first period is the activation's, which names no plan here.
        assert expected[("grant", sub, renewed, credit_type)] == (level, 1)
        assert expected[("grant", sub, recovered, credit_type)] == (level, 1)
    assert not any(k[:3] == ("grant", sub, str(T0)) for k in expected)
    # 2 + 2 guest passes; the first spend takes 2, the second (3) is refused.
    assert expected[("spend", f"chaos-{sub}-002")] == (customer.user_id, 2, 1)
    assert ("spend", f"chaos-{sub}-005") not in expected
    assert expected[("balance", customer.user_id, "guest_passes")] == (2, 2, 2)
    assert expected[("balance", customer.user_id, "meeting_room_hours")] == (20, 20, 20)
    calls = Credits().api_calls(world)
    assert [(c.idempotency_key, c.body["amount"], c.expect) for c in calls] == [
        (f"chaos-{sub}-002", 2, 201),
        (f"chaos-{sub}-005", 3, 422),
    ]


def _same(expected: State) -> State:
    """The observed state a correct run leaves: each value as expected (the
    first outcome of a ``OneOf``)."""
    return {k: v.outcomes[0] if isinstance(v, OneOf) else v for k, v in expected.items()}


def test_a_credit_grant_applied_twice_is_a_difference() -> None:
    customer = _story()
    expected = Credits().expected(_world(customer))
    assert diff_states("credits", expected, _same(expected)).ok
    sub = customer.subscription_id
    doubled = _same(expected)
    # The renewal granted twice: a second grant of the period, and its balance.
    doubled[("grant", sub, str(T0 + PERIOD), "guest_passes")] = (4, 2)
    doubled[("balance", customer.user_id, "guest_passes")] = (4, 4, 4)
    check = diff_states("credits", expected, doubled)
    assert not check.ok
    assert check.note == "0 missing, 0 unexpected, 2 different"


def test_a_spend_taken_twice_or_a_ledger_off_its_balance_is_a_difference() -> None:
    customer = _story()
    expected = Credits().expected(_world(customer))
    sub = customer.subscription_id
    twice = _same(expected)
    twice[("spend", f"chaos-{sub}-002")] = (customer.user_id, 4, 2)
    assert not diff_states("credits", expected, twice).ok
    drifted = _same(expected)
    # The balance row says 2, the entries say 4: the ledger does not sum to it.
    drifted[("balance", customer.user_id, "guest_passes")] = (2, 4, 2)
    assert not diff_states("credits", expected, drifted).ok
    refused_taken = _same(expected)
    refused_taken[("spend", f"chaos-{sub}-005")] = (customer.user_id, 3, 1)
    assert diff_states("credits", expected, refused_taken).note == (
        "0 missing, 1 unexpected, 0 different"
    )


def test_a_recovered_case_may_never_open_but_never_mails_twice() -> None:
    customer = _story()
    expected = Dunning().expected(_world(customer))
    invoice = invoices.invoice_id(customer, customer.steps[3])
    renewal = invoices.invoice_id(customer, customer.steps[1])
    assert expected[("invoice", renewal)] == (None, "paid", None, None)
    observed = _same(expected)
    assert observed[("invoice", invoice)] == ("recovered", "paid", ("sent", 1), ("sent", 1))
    assert diff_states("dunning", expected, observed).ok
    # The failure arrived after the payment: no case, no email. Also correct.
    observed[("invoice", invoice)] = (None, "paid", None, None)
    assert diff_states("dunning", expected, observed).ok
    # Two copies of the "payment recovered" email, or none for a recovered case.
    observed[("invoice", invoice)] = ("recovered", "paid", ("sent", 1), ("sent", 2))
    assert not diff_states("dunning", expected, observed).ok
    observed[("invoice", invoice)] = ("recovered", "paid", ("sent", 1), None)
    assert not diff_states("dunning", expected, observed).ok
    # Canceled although the story never canceled.
    observed[("invoice", invoice)] = ("canceled", "paid", ("sent", 1), None)
    assert not diff_states("dunning", expected, observed).ok


def test_an_unpaid_case_stays_open_or_ends_with_the_cancellation() -> None:
    open_story = _story(StepKind.PAYMENT_FAILED)
    expected = Dunning().expected(_world(open_story))
    still_open = invoices.invoice_id(open_story, open_story.steps[6])
    assert expected[("invoice", still_open)] == ("open", None, ("sent", 1), None)
    canceled = _story(StepKind.CANCEL)
    world = _world(canceled)
    # Recovered before the cancellation: nothing left to void.
    assert [e.type for e in world.events][-1] == "customer.subscription.deleted"
    recovered = invoices.invoice_id(canceled, canceled.steps[3])
    outcome = Dunning().expected(world)[("invoice", recovered)]
    # The deletion may overtake the payment: the case then closed as canceled.
    assert outcome == ("canceled", "paid", ("sent", 1), None)
    assert outcome == ("recovered", "paid", ("sent", 1), ("sent", 1))
    # Canceled while unpaid: the invoice is voided and the case canceled.
    last = open_story.steps[-1]
    open_story.steps.append(
        _step(StepKind.CANCEL, 7, last.at + DAY, last.period, status="canceled")
    )
    world = _world(open_story)
    assert world.events[-1].type == "invoice.voided"
    outcome = Dunning().expected(world)[("invoice", still_open)]
    assert outcome == ("canceled", "void", ("sent", 1), None)
    assert outcome == (None, "void", None, None)
    assert outcome != ("open", None, ("sent", 1), None)


def test_an_email_nobody_expects_is_a_difference() -> None:
    customer = _story()
    expected = Dunning().expected(_world(customer))
    observed = _same(expected)
    observed[("email", "0b7e0a4e-0000-5000-8000-000000000000")] = ("sent", 1)
    check = diff_states("dunning", expected, observed)
    assert check.note == "0 missing, 1 unexpected, 0 different"


def test_the_emails_are_the_retry_services_event_ids() -> None:
    # The mail table and the SMTP sink know an email by its domain event's
    # id, which the retry service derives from the invoice.
    assert failed_email("in_1") != failed_email("in_2")
    assert failed_email("in_1") != recovered_email("in_1")
    assert failed_email("in_1") == failed_email("in_1")


def test_an_api_call_answered_otherwise_than_modelled_fails_the_run() -> None:
    stats = CallStats(calls=2, wrong=1, examples=["POST /v1/credits/spend k: 201, expected 422"])
    assert not check_calls(stats).ok
    assert check_calls(CallStats(calls=2)).ok


def _bookings() -> Customer:
    """Two bookings paid; the first one refunded."""
    customer = new_customer(1, "t")
    p1 = (T0, T0 + PERIOD)
    customer.steps = [
        _step(StepKind.SUBSCRIBE, 0, T0, p1),
        _step(StepKind.BOOKING_PAID, 1, T0 + DAY, p1, amount=2500, booking="pi_chaos_000001_001"),
        _step(
            StepKind.BOOKING_PAID, 2, T0 + 2 * DAY, p1, amount=1500, booking="pi_chaos_000001_002"
        ),
        _step(
            StepKind.BOOKING_REFUNDED,
            3,
            T0 + 3 * DAY,
            p1,
            amount=2500,
            booking="pi_chaos_000001_001",
        ),
    ]
    return customer


def test_each_booking_is_paid_once_and_refunded_once_if_its_story_says_so() -> None:
    customer = _bookings()
    payments = Payments()
    world = World(customers=[customer])
    for step in customer.steps:
        world.events.extend(payments.events(customer, step))
    assert [e.type for e in world.events] == [
        "payment_intent.succeeded",
        "payment_intent.succeeded",
        "charge.refunded",
    ]
    expected = payments.expected(world)
    # The catalog's prices: a meeting-room hour 2500, an event seat 1500.
    assert expected[("booking", "bk_chaos_000001_001")] == (
        customer.user_id,
        "refunded",
        2500,
        2500,
        2500,
        1,
        1,
    )
    assert expected[("booking", "bk_chaos_000001_002")] == (
        customer.user_id,
        "succeeded",
        1500,
        1500,
        0,
        0,
        1,
    )
    observed = _same(expected)
    assert diff_states("payments", expected, observed).ok
    # Charged twice (a second payment holding the booking), or the refund counted twice.
    charged_twice = dict(observed)
    charged_twice[("booking", "bk_chaos_000001_002")] = (
        customer.user_id,
        "succeeded",
        1500,
        1500,
        0,
        0,
        2,
    )
    assert not diff_states("payments", expected, charged_twice).ok
    refunded_twice = dict(observed)
    refunded_twice[("booking", "bk_chaos_000001_001")] = (
        customer.user_id,
        "refunded",
        2500,
        2500,
        5000,
        2,
        1,
    )
    assert not diff_states("payments", expected, refunded_twice).ok


def test_a_bookings_events_name_the_payment_the_api_started() -> None:
    customer = _bookings()
    payments = Payments()
    calls = payments.api_calls(World(customers=[customer]))
    assert [
        (c.idempotency_key, c.before_traffic, c.body["items"][0]["product"]) for c in calls
    ] == [
        ("chaos-pay-bk_chaos_000001_001", True, "meeting_room_hour"),
        ("chaos-pay-bk_chaos_000001_002", True, "event_seat"),
    ]
    payments.answered(
        {"chaos-pay-bk_chaos_000001_001": {"payment_id": "pay_1", "payment_intent_id": "pi_1"}}
    )
    paid, _, refunded = (e for s in customer.steps for e in payments.events(customer, s))
    intent = paid.build()
    assert (intent["id"], intent["metadata"]["payment_id"], intent["status"]) == (
        "pi_1",
        "pay_1",
        "succeeded",
    )
    charge = refunded.build()
    assert charge["payment_intent"] == "pi_1"
    assert charge["amount_refunded"] == 2500
    assert [r["id"] for r in charge["refunds"]["data"]] == ["re_bk_chaos_000001_001"]


def test_the_payments_queue_takes_what_its_bindings_say() -> None:
    assert routed("payment_intent.succeeded")
    assert routed("charge.refunded")
    assert routed("invoice.paid")
    assert not routed("customer.subscription.updated")
    assert not routed("invoice.payment_failed")
