"""How a handler tells the consumer what to do with a message it cannot apply.

- :class:`InvalidMessage`: the message can never succeed (malformed, fails
  validation). It goes straight to the dead-letter queue; retrying would only
  delay the operator seeing it.
- :class:`RetryLater`: the message is fine but something it depends on is not
  ready (a rate limit, an object not seen yet). It waits in the delay queues
  with exponential backoff, with a larger bound than ordinary failures.
- Any other exception: treated as a bug or an outage; retried a bounded number
  of times with backoff, then dead-lettered.
"""

from __future__ import annotations


class InvalidMessage(Exception):
    pass


class RetryLater(Exception):
    pass


class BrokerRefused(Exception):
    """The broker closed the connection while it was being opened: wrong
    credentials, a missing virtual host, no permission. Not a network error:
    the broker answered, and its reply says what to fix."""


class ProtocolError(Exception):
    """The peer does not speak AMQP as agreed: not a broker at all (a wrong
    port, a proxy's error page), a corrupt frame, or a frame larger than the
    negotiated maximum."""


class PublishFailed(Exception):
    """The broker did not confirm a publish: unreachable, nack, unroutable or timeout."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
