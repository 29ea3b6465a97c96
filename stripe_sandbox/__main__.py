"""Command line entry point.

``python -m stripe_sandbox --port 12111 [--webhook-url URL --webhook-secret whsec_...]
[--smart-retries on|off] [--after-retries canceled|unpaid|past_due]
[--retry-tries N] [--retry-window-days D]``
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys

from aiohttp import web

from .app import create_app
from .delivery import DEFAULT_BACKOFF
from .settings import AFTER_RETRIES, RETRY_WINDOWS_DAYS, AccountSettings, SettingsError

# Collections of the youngest generation: one per this many new objects.
_GC_GEN0_THRESHOLD = 50_000


def _tune_gc() -> None:
    """Keep the garbage collector from walking the store on every few requests.

    The store only grows (every object, every event's snapshot), and a request
    allocates thousands of short-lived objects (decoding, copying, encoding), so
    with the default thresholds the collector ran every request or so and its
    older generations grew with the store. What exists at start-up is frozen out
    of its sight, and the youngest generation is collected less often. Objects
    are JSON-shaped (no cycles to find), so nothing is kept longer for it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def _pair_webhooks(urls: list[str], secrets: list[str]) -> list[tuple[str, str]]:
    if not urls:
        return []
    if len(secrets) == 1:
        return [(url, secrets[0]) for url in urls]
    if len(secrets) != len(urls):
        raise SystemExit("give one --webhook-secret for all URLs, or one per --webhook-url")
    return list(zip(urls, secrets, strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stripe_sandbox", description="Stripe API emulator for tests"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument(
        "--webhook-url",
        action="append",
        default=[],
        help="repeatable; events are POSTed, signed, to each URL",
    )
    parser.add_argument(
        "--webhook-secret",
        action="append",
        default=[],
        help="one for all URLs, or one per --webhook-url (in order)",
    )
    parser.add_argument(
        "--chaos", action="store_true", help="deliver webhooks shuffled and with duplicates"
    )
    parser.add_argument("--chaos-seed", type=int, default=None)
    parser.add_argument(
        "--backoff",
        default=",".join(str(s) for s in DEFAULT_BACKOFF),
        help="comma-separated retry delays in seconds",
    )
    parser.add_argument("--max-attempts", type=int, default=5)
    defaults = AccountSettings()
    parser.add_argument(
        "--smart-retries",
        choices=("on", "off"),
        default="on" if defaults.smart_retries else "off",
        help="Stripe's automatic retries of failed subscription payments (on for new accounts)",
    )
    parser.add_argument(
        "--after-retries",
        choices=AFTER_RETRIES,
        default=defaults.after_retries,
        help="subscription status once every Smart Retry has failed",
    )
    parser.add_argument("--retry-tries", type=int, default=defaults.retry_tries)
    parser.add_argument(
        "--retry-window-days",
        type=int,
        choices=RETRY_WINDOWS_DAYS,
        default=defaults.retry_window_days,
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    settings = AccountSettings()
    try:
        settings.update(
            {
                "smart_retries": args.smart_retries == "on",
                "after_retries": args.after_retries,
                "retry_tries": args.retry_tries,
                "retry_window_days": args.retry_window_days,
            }
        )
    except SettingsError as exc:
        parser.error(str(exc))
    app = create_app(
        settings=settings,
        webhooks=_pair_webhooks(args.webhook_url, args.webhook_secret),
        chaos=args.chaos,
        chaos_seed=args.chaos_seed,
        backoff=tuple(float(s) for s in args.backoff.split(",") if s),
        max_attempts=args.max_attempts,
    )
    _tune_gc()
    print(f"stripe sandbox listening on http://{args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
