"""Each service its own RabbitMQ user, limited to its own queues.

RabbitMQ permissions are three regular expressions per user and virtual host,
matched against the names of the queues and exchanges an operation touches:
``configure`` (declare, delete), ``write`` (publish to an exchange, bind a
queue), ``read`` (consume, get, bind from an exchange). Here:

- the gateway publishes Stripe events to ``stripe.events`` and nothing else;
  it reads nothing.
- a consumer service declares, binds and consumes its own queues
  (``<service>.*``: its queues, retry tiers and dead-letter queue), binds them
  to the two exchanges, and publishes domain events to ``billing.events``;
- the webhooks service also replays to ``stripe.events``, and declares and
  drains every ``*.dlq`` into its dead-letter store.

Where RabbitMQ cannot narrow it further:

- retry and dead-letter copies go through the default exchange
  (``amq.default``), and publishing is checked against the exchange, not the
  queue it routes to: a service able to write there could send to any queue
  by name;
- queue policies are set through the management API with the ``policymaker``
  tag, which covers every policy of the virtual host.

``python -m shared.broker.users`` creates or updates the users named in each
``<SERVICE>_AMQP_URL`` (with their passwords) through the management API of
``ADMIN_AMQP_URL`` (``ADMIN_AMQP_MANAGEMENT_URL`` when the API is elsewhere),
whose user must be an administrator.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shared.broker.policies import Management
from shared.broker.tls import client_context
from shared.broker.topology import BILLING_EVENTS, STRIPE_EVENTS
from shared.logging import configure_logging, get_logger

log = get_logger(__name__)

SERVICES = ("gateway", "webhooks", "subscriptions", "credits", "retry")
_DEFAULT_EXCHANGE = "amq.default"


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str
    # Management API rights: a service applies its queues' policies.
    tags: tuple[str, ...] = ()


def _only(*names: str) -> str:
    return "^(" + "|".join(names) + ")$" if names else "^$"


def permissions_for(service: str) -> Permissions:
    exchanges = (re.escape(STRIPE_EVENTS), re.escape(BILLING_EVENTS))
    if service == "gateway":
        # Its publisher declares both exchanges (idempotently) at connect.
        return Permissions(
            configure=_only(*exchanges), write=_only(re.escape(STRIPE_EVENTS)), read=_only()
        )
    own = rf"{re.escape(service)}\..*"
    configure = [own, *exchanges]
    write = [own, re.escape(BILLING_EVENTS), re.escape(_DEFAULT_EXCHANGE)]
    read = [own, *exchanges]
    if service == "webhooks":
        write.append(re.escape(STRIPE_EVENTS))  # replay
        # Every service's dead letters: its recorder declares each ``.dlq``
        # (whichever service starts first) and drains it into Postgres, and
        # parks there what it cannot store (``.dlq.parked``, its own).
        configure += [r".*\.dlq", r".*\.dlq\.parked"]
        read.append(r".*\.dlq")
    return Permissions(
        configure=_only(*configure),
        write=_only(*write),
        read=_only(*read),
        tags=("policymaker",),
    )


@dataclass(frozen=True)
class BrokerUser:
    service: str
    user: str
    password: str

    @classmethod
    def from_url(cls, service: str, amqp_url: str) -> BrokerUser:
        parts = urlsplit(amqp_url)
        if not parts.username or parts.password is None:
            raise ValueError(f"{service}: its AMQP_URL names no user and password")
        return cls(service, unquote(parts.username), unquote(parts.password))


async def provision(admin: Management, users: list[BrokerUser]) -> None:
    """Create or update each user with its service's permissions in ``admin``'s vhost."""
    for entry in users:
        if entry.user == admin.user:
            raise ValueError(
                f"{entry.service}: {entry.user} is the administrator, not its own user"
            )
        allowed = permissions_for(entry.service)
        await admin.put_user(entry.user, entry.password, allowed.tags)
        await admin.put_permissions(
            entry.user, configure=allowed.configure, write=allowed.write, read=allowed.read
        )
        log.info(
            "broker_user_provisioned", service=entry.service, user=entry.user, vhost=admin.vhost
        )


def users_from_environment(environ: dict[str, str]) -> list[BrokerUser]:
    return [
        BrokerUser.from_url(service, url)
        for service in SERVICES
        if (url := environ.get(f"{service.upper()}_AMQP_URL"))
    ]


def main() -> None:
    configure_logging("broker_users", os.environ.get("LOG_LEVEL", "INFO"))
    admin_url = os.environ.get("ADMIN_AMQP_URL")
    users = users_from_environment(dict(os.environ))
    if not admin_url or not users:
        sys.exit("set ADMIN_AMQP_URL and at least one <SERVICE>_AMQP_URL")
    # Over TLS, the broker's CA as the services use it (AMQP_CA_FILE).
    ca_file = os.environ.get("AMQP_CA_FILE")
    tls = (
        client_context(ca_file=Path(ca_file) if ca_file else None)
        if admin_url.startswith("amqps://")
        else None
    )
    admin = Management.for_broker(
        admin_url, os.environ.get("ADMIN_AMQP_MANAGEMENT_URL"), ssl_context=tls
    )
    asyncio.run(provision(admin, users))


if __name__ == "__main__":
    main()
