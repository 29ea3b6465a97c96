"""Products and prices (recurring and one-time, ``lookup_key``)."""

from __future__ import annotations

from .. import clock
from ..api import LIST_PARAMS, Call, Route, paginate
from ..errors import invalid, required
from ..events import changed
from ..fixtures import template
from ..ids import new_id
from ..params import Params, merge_metadata
from ..sandbox import Sandbox
from ..store import Obj, snapshot

PRODUCT_FIELDS = {
    "name",
    "description",
    "metadata",
    "active",
    "id",
    "images",
    "tax_code",
    "unit_label",
    "url",
    "statement_descriptor",
    "marketing_features",
    "shippable",
    "default_price_data",
    "package_dimensions",
    "type",
}
PRICE_FIELDS = {
    "currency",
    "unit_amount",
    "unit_amount_decimal",
    "product",
    "product_data",
    "recurring",
    "lookup_key",
    "transfer_lookup_key",
    "nickname",
    "metadata",
    "active",
    "tax_behavior",
    "billing_scheme",
    "currency_options",
    "custom_unit_amount",
    "tiers",
    "tiers_mode",
    "transform_quantity",
}


def _now() -> int:
    return clock.to_ts(clock.wall_now())


def new_product(sb: Sandbox, p: Params) -> Obj:
    product_id = p.str("id") or new_id("prod", 14)
    if sb.store.maybe("product", product_id):
        raise invalid("Product already exists.", param="id", code="resource_already_exists")
    now = _now()
    product = template("product")
    product.update(
        {
            "id": product_id,
            "object": "product",
            "active": p.bool("active", default=True),
            "created": now,
            "default_price": None,
            "description": p.str("description"),
            "images": p.list("images"),
            "livemode": False,
            "marketing_features": [],
            "metadata": merge_metadata({}, p.raw("metadata")),
            "name": p.req_str("name"),
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": p.str("tax_code"),
            "unit_label": p.str("unit_label"),
            "updated": now,
            "url": p.str("url"),
            "type": "service",
        }
    )
    sb.store.add("product", product)
    sb.events.emit("product.created", product)
    return product


def create_product(sb: Sandbox, call: Call) -> Obj:
    p = call.p(PRODUCT_FIELDS)
    product = new_product(sb, p)
    price_data = p.dict("default_price_data")
    if price_data:
        price = _new_price(sb, Params({**price_data, "product": product["id"]}, None))
        product["default_price"] = price["id"]
    return product


def retrieve_product(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("product", call.match["id"])


def update_product(sb: Sandbox, call: Call) -> Obj:
    p = call.p(PRODUCT_FIELDS - {"id"} | {"default_price"})
    product = sb.store.get("product", call.match["id"])
    before = snapshot(product)
    for key in ("name", "description", "url", "unit_label", "default_price"):
        if p.has(key):
            product[key] = p.str(key)
    if p.has("active"):
        product["active"] = p.bool("active")
    if p.has("metadata"):
        product["metadata"] = merge_metadata(product["metadata"], p.raw("metadata"))
    product["updated"] = _now()
    sb.events.emit("product.updated", product, changed(before, product))
    return product


def list_products(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"active", "ids", "shippable", "url"})
    objs = sb.store.all("product")
    if p.has("active"):
        objs = [o for o in objs if o["active"] == p.bool("active")]
    if p.has("ids"):
        wanted = set(p.list("ids"))
        objs = [o for o in objs if o["id"] in wanted]
    return paginate(objs, call, "/v1/products")


def _meter(sb: Sandbox, recurring: dict[str, object]) -> str | None:
    """A metered price bills what its meter counts (usage-based billing); a
    licensed one bills its quantity and has no meter."""
    usage_type = recurring.get("usage_type") or "licensed"
    if usage_type not in ("licensed", "metered"):
        raise invalid(
            "Invalid recurring[usage_type]: must be one of licensed or metered",
            param="recurring[usage_type]",
        )
    meter_id = recurring.get("meter") or None
    if usage_type == "licensed":
        if meter_id is not None:
            raise invalid(
                "A meter can only be set on a price with `recurring[usage_type]=metered`.",
                param="recurring[meter]",
            )
        return None
    if meter_id is None:
        raise invalid(
            "Metered prices must be backed by a meter: set `recurring[meter]`.",
            param="recurring[meter]",
        )
    meter = sb.store.get("billing.meter", str(meter_id), "recurring[meter]")
    if meter["status"] != "active":
        raise invalid(f"The meter `{meter['id']}` is not active.", param="recurring[meter]")
    return str(meter["id"])


def _new_price(sb: Sandbox, p: Params) -> Obj:
    currency = p.req_str("currency").lower()
    amount = p.int("unit_amount", minimum=0)
    if amount is None and p.str("unit_amount_decimal"):
        amount = int(float(p.req_str("unit_amount_decimal")))
    if amount is None:
        raise required("unit_amount")
    if p.str("product"):
        product = sb.store.get("product", p.str("product"), "product")
    elif p.dict("product_data"):
        product = new_product(sb, Params(p.dict("product_data"), None))
    else:
        raise required("product")
    recurring_in = p.dict("recurring")
    recurring = None
    if recurring_in:
        interval = recurring_in.get("interval")
        if interval not in ("day", "week", "month", "year"):
            raise invalid(
                "Invalid recurring[interval]: must be one of day, week, month, or year",
                param="recurring[interval]",
            )
        recurring = {
            "interval": interval,
            "interval_count": int(recurring_in.get("interval_count") or 1),
            "meter": _meter(sb, recurring_in),
            "trial_period_days": None,
            "usage_type": recurring_in.get("usage_type") or "licensed",
        }
    lookup_key = p.str("lookup_key")
    if lookup_key:
        holder = next((o for o in sb.store.all("price") if o["lookup_key"] == lookup_key), None)
        if holder is not None:
            if not p.bool("transfer_lookup_key"):
                raise invalid(
                    f"A price (`{holder['id']}`) already uses that lookup key.", param="lookup_key"
                )
            holder["lookup_key"] = None
    price = template("price")
    price.update(
        {
            "id": new_id("price"),
            "object": "price",
            "active": p.bool("active", default=True),
            "billing_scheme": "per_unit",
            "created": _now(),
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": lookup_key,
            "metadata": merge_metadata({}, p.raw("metadata")),
            "nickname": p.str("nickname"),
            "product": product["id"],
            "recurring": recurring,
            "tax_behavior": p.str("tax_behavior") or "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "recurring" if recurring else "one_time",
            "unit_amount": amount,
            "unit_amount_decimal": str(amount),
        }
    )
    sb.store.add("price", price)
    sb.events.emit("price.created", price)
    return price


def inline_price(sb: Sandbox, price_data: dict[str, object]) -> Obj:
    """A ``price_data`` of a Checkout line item: a price (and, from ``product_data``,
    a product) made for that line alone, inactive so it is never offered again."""
    allowed = {"currency", "unit_amount", "unit_amount_decimal", "product", "product_data"}
    return _new_price(sb, Params({**price_data, "active": "false"}, allowed | {"active"}))


def create_price(sb: Sandbox, call: Call) -> Obj:
    return _new_price(sb, call.p(PRICE_FIELDS))


def retrieve_price(sb: Sandbox, call: Call) -> Obj:
    return sb.store.get("price", call.match["id"])


def update_price(sb: Sandbox, call: Call) -> Obj:
    p = call.p(
        {
            "active",
            "metadata",
            "nickname",
            "lookup_key",
            "transfer_lookup_key",
            "tax_behavior",
            "currency_options",
        }
    )
    price = sb.store.get("price", call.match["id"])
    before = snapshot(price)
    if p.has("active"):
        price["active"] = p.bool("active")
    if p.has("nickname"):
        price["nickname"] = p.str("nickname")
    if p.has("metadata"):
        price["metadata"] = merge_metadata(price["metadata"], p.raw("metadata"))
    if p.has("lookup_key"):
        key = p.str("lookup_key")
        holder = next(
            (
                o
                for o in sb.store.all("price")
                if key and o["lookup_key"] == key and o["id"] != price["id"]
            ),
            None,
        )
        if holder is not None:
            if not p.bool("transfer_lookup_key"):
                raise invalid(
                    f"A price (`{holder['id']}`) already uses that lookup key.", param="lookup_key"
                )
            holder["lookup_key"] = None
        price["lookup_key"] = key
    sb.events.emit("price.updated", price, changed(before, price))
    return price


def list_prices(sb: Sandbox, call: Call) -> Obj:
    p = call.p(LIST_PARAMS | {"active", "product", "lookup_keys", "type", "currency", "recurring"})
    objs = sb.store.all("price")
    if p.has("active"):
        objs = [o for o in objs if o["active"] == p.bool("active")]
    if p.str("product"):
        objs = [o for o in objs if o["product"] == p.str("product")]
    if p.has("lookup_keys"):
        keys = set(p.list("lookup_keys"))
        objs = [o for o in objs if o["lookup_key"] in keys]
    if p.str("type"):
        objs = [o for o in objs if o["type"] == p.str("type")]
    if p.str("currency"):
        objs = [o for o in objs if o["currency"] == p.str("currency")]
    return paginate(objs, call, "/v1/prices")


ROUTES: list[Route] = [
    ("POST", "/v1/products", create_product),
    ("GET", "/v1/products", list_products),
    ("GET", "/v1/products/{id}", retrieve_product),
    ("POST", "/v1/products/{id}", update_product),
    ("POST", "/v1/prices", create_price),
    ("GET", "/v1/prices", list_prices),
    ("GET", "/v1/prices/{id}", retrieve_price),
    ("POST", "/v1/prices/{id}", update_price),
]
