"""The domains taking part in the chaos run, each with its part of the reference model.

To add one: write ``chaos/domains/<name>.py`` with a :class:`chaos.domain.Domain`
subclass and add an instance here. The order only decides the report's order.
"""

from __future__ import annotations

from chaos.domain import Domain
from chaos.domains.credits import Credits
from chaos.domains.dunning import Dunning
from chaos.domains.ledger import Ledger
from chaos.domains.payments import Payments
from chaos.domains.subscriptions import Subscriptions


def all_domains() -> list[Domain]:
    return [Ledger(), Subscriptions(), Payments(), Credits(), Dunning()]
