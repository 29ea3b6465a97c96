"""Pre-signed webhook requests for wrk, written as a Lua script.

wrk cannot compute HMACs, so the requests are signed here, in Python, with
stripe-python's own signer, and wrk replays them round-robin. Signatures are
valid for the gateway's 300 s tolerance, so the file is rebuilt per round.
Each request is a distinct event (its own id) shaped like Stripe's
``invoice.paid``: the body size of a real delivery, about 4 KB.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import stripe

_LUA_FOOTER = """
local counter = 0
function setup(thread)
  thread:set("offset", counter * 7919)
  counter = counter + 1
end
function init(args)
  index = offset
end
function request()
  index = index + 1
  return requests[(index % #requests) + 1]
end
"""


def _lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def write_script(
    path: Path, *, fixtures: Path, secret: str, count: int, run_id: str, host: str
) -> int:
    """Write ``count`` signed requests to ``path``; return the body size in bytes."""
    resources: dict[str, Any] = json.loads(fixtures.read_text())["resources"]
    now = int(time.time())
    lines = ["requests = {}"]
    size = 0
    for i in range(count):
        event = copy.deepcopy(resources["event"])
        event.update(
            id=f"evt_bench{run_id}x{i}",
            type="invoice.paid",
            created=now,
            api_version=stripe.api_version,
            data={"object": resources["invoice"]},
        )
        body = json.dumps(event, separators=(",", ":"))
        size = len(body)
        signature = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=now)
        headers = (
            f'{{["Host"]={_lua_string(host)}, ["Content-Type"]="application/json", '
            f'["Stripe-Signature"]={_lua_string(signature)}}}'
        )
        lines.append(
            f'requests[{i + 1}] = wrk.format("POST", "/webhooks/stripe", {headers}, '
            f"{_lua_string(body)})"
        )
    lines.append(_LUA_FOOTER)
    path.write_text("\n".join(lines))
    return size
