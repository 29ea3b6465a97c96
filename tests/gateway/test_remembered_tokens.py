"""Accepted tokens are remembered (``services/gateway/auth.py``) and the rate
limit's moving window (``services/gateway/rate_limit.py``), on their own.

A remembered token stops being accepted when its ``exp`` passes, as a token
verified afresh would; a token signed with a previous secret is counted at
every use; the window lets N hits through in any window of its length.
"""

from __future__ import annotations

import time

import jwt
import pytest
from prometheus_client import REGISTRY

from services.gateway.auth import Authenticator, TokenRules
from services.gateway.rate_limit import MovingWindow
from shared.http.errors import ApiError

SECRET = "the-current-jwt-secret-long-enough-to-be-used-here"
PREVIOUS = "the-previous-jwt-secret-long-enough-to-be-used-too"


def _token(secret: str, *, exp: float, sub: str = "user_cached") -> str:
    return jwt.encode({"sub": sub, "role": "member", "exp": exp}, secret, algorithm="HS256")


def test_a_remembered_token_is_refused_once_it_expires() -> None:
    authenticator = Authenticator(TokenRules(secret=SECRET))
    # exp is whole seconds: at least one second ahead, at most two.
    exp = int(time.time()) + 2
    header = f"Bearer {_token(SECRET, exp=exp)}"
    assert authenticator.authenticate(header).user_id == "user_cached"
    assert authenticator.authenticate(header).user_id == "user_cached"
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    with pytest.raises(ApiError) as refused:
        authenticator.authenticate(header)
    assert refused.value.status == 401
    assert refused.value.payload()["error"]["code"] == "token_expired"


def test_a_token_of_a_previous_secret_is_counted_at_every_use() -> None:
    authenticator = Authenticator(TokenRules(secret=SECRET, previous_secrets=(PREVIOUS,)))
    header = f"Bearer {_token(PREVIOUS, exp=time.time() + 300)}"
    before = _previous_secret_tokens()
    for _ in range(3):
        authenticator.authenticate(header)
    assert _previous_secret_tokens() == before + 3


def _previous_secret_tokens() -> float:
    return REGISTRY.get_sample_value("gateway_api_previous_secret_tokens_total") or 0.0


def test_the_moving_window_lets_n_hits_through_in_any_window_of_its_length() -> None:
    window = MovingWindow(3, 2.0)
    assert [window.hit("a", now=t) for t in (100.0, 100.5, 101.0)] == [None, None, None]
    # The fourth within two seconds waits for the oldest to leave the window.
    assert window.hit("a", now=101.5) == pytest.approx(0.5)
    # Another caller has a budget of its own.
    assert window.hit("b", now=101.5) is None
    # At 102.0 the hit of 100.0 is still inside [100.0, 102.0]; just after, it is out.
    assert window.hit("a", now=102.0) == pytest.approx(0.0)
    assert window.hit("a", now=102.01) is None
    # A refused hit counts nothing: the window is full again until 102.5.
    assert window.hit("a", now=102.2) == pytest.approx(0.3)
    assert window.hit("a", now=102.6) is None


def test_the_moving_window_forgets_callers_idle_for_a_whole_window() -> None:
    window = MovingWindow(1, 1.0)
    start = time.monotonic()
    for n in range(100):
        assert window.hit(f"caller-{n}", now=start) is None
    assert window.hit("caller-0", now=start + 0.5) is not None
    # The next hit after a window sweeps: only the caller seen since remains.
    assert window.hit("late", now=start + 2.5) is None
    assert window.hit("caller-0", now=start + 2.6) is None
    assert set(window._hits) <= {"late", "caller-0"}
