"""The tests' stack starts whole or not at all: nothing of a stack that failed
to start keeps running into the next test."""

from __future__ import annotations

import socket

import pydantic
import pytest

from shared import queues
from tests.support.amqp import consumer_count
from tests.support.stack import reserve_port, start_stack
from tests.support.waiting import eventually


async def test_a_stack_that_fails_to_start_leaves_no_consumer_behind(clean_state: None) -> None:
    # webhooks, subscriptions and credits start (and consume) before retry,
    # whose settings are refused: the start fails after three services run.
    with pytest.raises(pydantic.ValidationError):
        await start_stack(retry={"retry_delays_ms": "not a list"})
    # A service left running would consume the next test's queues, and hand
    # it the messages it held: a subscription of an earlier test, say,
    # activated again in the next test's database.
    for queue in (queues.WEBHOOKS_LEDGER, queues.SUBSCRIPTIONS_STRIPE, queues.CREDITS_BILLING):
        count = await eventually(
            lambda queue=queue: consumer_count(queue),
            until=lambda n: n == 0,
            timeout=5,
            what=f"no consumer left on {queue}",
        )
        assert count == 0


async def test_a_reserved_port_is_not_given_to_anyone_else() -> None:
    reserved = reserve_port()
    try:
        port = reserved.getsockname()[1]
        other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
    finally:
        reserved.close()
