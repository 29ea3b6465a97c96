"""A cart priced on the server, from the catalog: the client's numbers never count."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.subscriptions.payments.contract import Item, Line
from services.subscriptions.payments.settings import PaymentsSettings
from shared.catalog import Catalog
from shared.http.errors import invalid_field

FEE_PRODUCT = "processing_fee"


@dataclass(frozen=True)
class Priced:
    lines: list[Line]
    fee: int
    amount: int
    currency: str

    @property
    def booking_refs(self) -> list[str]:
        return [line.booking_ref for line in self.lines if line.booking_ref is not None]

    @property
    def products(self) -> dict[str, int]:
        """Catalog product -> quantity, for payment.succeeded (credit packs)."""
        counted: dict[str, int] = {}
        for line in self.lines:
            if line.booking_ref is not None:
                counted[line.product] = counted.get(line.product, 0) + line.quantity
        return counted


def fee_for(subtotal: int, settings: PaymentsSettings) -> int:
    # Integer arithmetic, half up: money never passes through a float.
    share = (subtotal * settings.payments_processing_fee_bps + 5_000) // 10_000
    return settings.payments_processing_fee_minor + share if subtotal else 0


def price(items: Sequence[Item], catalog: Catalog, settings: PaymentsSettings) -> Priced:
    """The cart's lines and total; a 422 naming ``items.N.<field>`` for the first bad item."""
    lines = []
    for index, item in enumerate(items):
        product = catalog.products.get(item.product)
        if product is None:
            raise invalid_field(f"items.{index}.product", f"no product {item.product!r}")
        if item.quantity > product.max_quantity:
            raise invalid_field(
                f"items.{index}.quantity", f"at most {product.max_quantity} of {item.product}"
            )
        lines.append(
            Line(
                product=item.product,
                name=product.name,
                booking_ref=item.booking_ref,
                quantity=item.quantity,
                unit_amount=product.amount,
                amount=product.amount * item.quantity,
            )
        )
    subtotal = sum(line.amount for line in lines)
    fee = fee_for(subtotal, settings)
    if fee:
        lines.append(
            Line(
                product=FEE_PRODUCT,
                name="Processing fee",
                booking_ref=None,
                quantity=1,
                unit_amount=fee,
                amount=fee,
            )
        )
    return Priced(lines=lines, fee=fee, amount=subtotal + fee, currency=catalog.currency)
