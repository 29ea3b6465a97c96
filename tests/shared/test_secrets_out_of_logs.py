"""Passwords in the broker and database URLs never reach a repr or a log line."""

from __future__ import annotations

import io

import orjson
import structlog

from shared.broker.confirm_connection import AmqpAddress
from shared.logging import processors
from shared.settings import ServiceSettings

BROKER_PASSWORD = "broker-pw-Zq8"
DB_PASSWORD = "db-pw-Kx3"


def test_a_broker_address_shows_no_password() -> None:
    address = AmqpAddress.parse(f"amqps://billing:{BROKER_PASSWORD}@mq.internal:5671/prod")

    assert address.password == BROKER_PASSWORD  # still there for the login
    assert BROKER_PASSWORD not in repr(address)
    assert BROKER_PASSWORD not in str(address)
    assert str(address) == "amqps://billing@mq.internal:5671/prod"


def test_settings_show_no_url_passwords() -> None:
    settings = ServiceSettings(
        service_token="t" * 32,
        amqp_url=f"amqp://billing:{BROKER_PASSWORD}@mq.internal/prod",
        database_url=f"postgresql://billing:{DB_PASSWORD}@db.internal/billing",
    )

    for text in (repr(settings), str(settings)):
        assert BROKER_PASSWORD not in text
        assert DB_PASSWORD not in text


def _log_line(event: str, **values: object) -> dict[str, object]:
    out = io.StringIO()
    logger = structlog.wrap_logger(structlog.PrintLogger(out), processors=processors())
    logger.error(event, **values)
    line: dict[str, object] = orjson.loads(out.getvalue())
    return line


def test_log_lines_redact_passwords_of_urls_in_any_value() -> None:
    line = _log_line(
        "broker_connect_failed",
        error=f"could not reach amqp://billing:{BROKER_PASSWORD}@mq.internal:5672/prod",
        dsn=f"postgresql://billing:{DB_PASSWORD}@db.internal/billing?sslmode=require",
    )

    assert BROKER_PASSWORD not in str(line)
    assert DB_PASSWORD not in str(line)
    assert line["error"] == "could not reach amqp://billing:[redacted]@mq.internal:5672/prod"
    assert line["dsn"] == "postgresql://billing:[redacted]@db.internal/billing?sslmode=require"


def test_a_traceback_in_a_log_line_is_redacted_too() -> None:
    try:
        raise ConnectionError(f"lost postgresql://billing:{DB_PASSWORD}@db.internal/billing")
    except ConnectionError:
        out = io.StringIO()
        logger = structlog.wrap_logger(structlog.PrintLogger(out), processors=processors())
        logger.exception("database_lost")

    line = orjson.loads(out.getvalue())
    assert "ConnectionError" in line["exception"]
    assert DB_PASSWORD not in out.getvalue()
