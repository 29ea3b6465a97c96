"""The ceiling: an aiohttp handler that reads the body and answers 200.

Run on the same event loop and server settings as the gateway, so the ratio
between the two measures what verifying and publishing with confirms costs.
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"received": True})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/webhooks/stripe", ok)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
