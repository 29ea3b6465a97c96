"""The product's real log lines, as JSON, for tests that check what they carry."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import structlog

from shared.logging import processors


@contextlib.contextmanager
def log_lines() -> Iterator[list[dict[str, Any]]]:
    """Every line logged inside the block, rendered by the product's own
    processors (context merged, secrets redacted), parsed when the block ends."""
    out = io.StringIO()
    before = structlog.get_config()
    structlog.configure(
        processors=processors(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        structlog.configure(**before)
        lines.extend(orjson.loads(line) for line in out.getvalue().splitlines() if line.strip())
