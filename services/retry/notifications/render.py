"""Emails from templates in files: ``templates/<name>.txt`` (its first line is
``Subject: ...``) and ``templates/<name>.html``, rendered with Jinja2.

HTML is autoescaped (a member's name or a Stripe field can never inject
markup); undefined variables raise, so a template and its event cannot drift
apart silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).parent / "templates"
# ISO 4217 currencies without minor units (Stripe's list of zero-decimal ones).
_ZERO_DECIMAL = frozenset(
    {
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    }
)


# Stripe's three-decimal currencies: the minor unit is a thousandth.
_THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def money(amount: int, currency: str) -> str:
    """Integer minor units as a member reads them: ``19900, "usd"`` -> ``199.00 USD``."""
    code = currency.lower()
    if code in _ZERO_DECIMAL:
        return f"{amount} {code.upper()}"
    digits = 3 if code in _THREE_DECIMAL else 2
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**digits)
    return f"{sign}{whole}.{fraction:0{digits}d} {code.upper()}"


def day(moment: datetime | str | None) -> str:
    if moment is None:
        return ""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.strftime("%d %B %Y")


@dataclass(frozen=True)
class Email:
    subject: str
    text: str
    html: str


class Renderer:
    def __init__(self, folder: Path = TEMPLATES) -> None:
        loader = jinja2.FileSystemLoader(folder)
        # Plain text is not HTML: escaping it would show "&amp;" to the member.
        self._text = jinja2.Environment(
            loader=loader,
            autoescape=False,  # noqa: S701
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )
        self._html = jinja2.Environment(
            loader=loader, autoescape=True, undefined=jinja2.StrictUndefined
        )
        for env in (self._text, self._html):
            env.filters["money"] = money
            env.filters["day"] = day

    def render(self, name: str, context: dict[str, Any]) -> Email:
        text = self._text.get_template(f"{name}.txt").render(context)
        first, _, body = text.partition("\n")
        if not first.startswith("Subject: "):
            raise ValueError(f"{name}.txt must start with a Subject: line")
        html = self._html.get_template(f"{name}.html").render(context)
        return Email(
            subject=first.removeprefix("Subject: ").strip(), text=body.lstrip("\n"), html=html
        )
