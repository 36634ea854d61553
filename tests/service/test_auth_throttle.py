"""Key guessing is slowed down: failed keys are limited per client address (app.api.throttle)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.api.metrics import Metrics
from app.api.throttle import AuthThrottle
from app.core.config import Settings, load_settings
from app.core.net import client_address, parse_networks
from app.errors import SketchReidError
from app.ml.bundle.store import Bundle

from .conftest import Keys

ATTACKER = "10.0.0.66"
COLLEAGUE = "10.0.0.9"
PROXY = "10.0.0.1"
BAD = {"X-API-Key": "skr_guess"}
LIMIT = 5


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_app(
    make_settings: Callable[..., Settings], bundle: Bundle, keys: Keys
) -> Iterator[Callable[..., tuple[FastAPI, Clock]]]:
    """An app (its lifespan running) with LIMIT failures per 60 s, and its throttle's clock."""
    with ExitStack() as stack:

        def make(**overrides: object) -> tuple[FastAPI, Clock]:
            values: dict[str, object] = {"AUTH_FAILURE_LIMIT": LIMIT}
            values.update(overrides)
            app = create_app(make_settings(**values), bundle=bundle)
            clock = Clock()
            app.state.auth_throttle.clock = clock
            stack.enter_context(TestClient(app, raise_server_exceptions=False))
            return app, clock

        yield make


def at(app: FastAPI, address: str) -> TestClient:
    """A client whose requests come from ``address`` (the app's lifespan runs elsewhere)."""
    return TestClient(app, raise_server_exceptions=False, client=(address, 40000))


def gallery(client: TestClient, headers: dict[str, str], **extra: str) -> int:
    return client.get("/api/v1/gallery", headers={**headers, **extra}).status_code


def lock_out(client: TestClient, **extra: str) -> None:
    for _ in range(LIMIT):
        assert gallery(client, BAD, **extra) == 401


def test_guessing_locks_the_address_out_but_not_others(
    make_app: Callable[..., tuple[FastAPI, Clock]],
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = make_app()
    attacker, colleague = at(app, ATTACKER), at(app, COLLEAGUE)
    with caplog.at_level(logging.WARNING, logger="app.api.throttle"):
        lock_out(attacker)
        r = attacker.get("/api/v1/gallery", headers=BAD)
        assert r.status_code == 429, r.text
        assert r.headers["Retry-After"] == "60"
        assert "too many failed API keys" in r.json()["detail"]
        assert "Retry-After" in r.json()["detail"]
        # The key is not checked during the lockout: a valid one is refused the same way.
        r = attacker.get("/api/v1/gallery", headers=keys.investigator)
        assert r.status_code == 429 and "too many failed API keys" in r.json()["detail"]
        for _ in range(5):
            assert gallery(attacker, BAD) == 429
        # No key at all: nothing to guess, the usual 401.
        assert gallery(attacker, {}) == 401
        # Other addresses: a valid key works, a wrong one is only a 401.
        assert gallery(colleague, keys.investigator) == 200
        assert gallery(colleague, BAD) == 401
    lockouts = [r for r in caplog.records if "authentication lockout" in r.getMessage()]
    assert len(lockouts) == 1, caplog.text
    assert ATTACKER in lockouts[0].getMessage()
    text = attacker.get("/metrics").text
    assert "sketchreid_auth_lockouts_total 1.0" in text
    assert "sketchreid_auth_throttled_requests_total 7.0" in text


def test_revoked_keys_count_and_successes_do_not_reset(
    make_app: Callable[..., tuple[FastAPI, Clock]], keys: Keys
) -> None:
    app, _ = make_app()
    attacker = at(app, ATTACKER)
    for i in range(LIMIT - 1):
        assert gallery(attacker, keys.revoked if i % 2 else BAD) == 401
        assert gallery(attacker, keys.investigator) == 200  # a shared NAT: does not reset
    assert gallery(attacker, keys.revoked) == 401
    assert gallery(attacker, keys.investigator) == 429


def test_the_lockout_ends_and_old_failures_fall_out_of_the_window(
    make_app: Callable[..., tuple[FastAPI, Clock]], keys: Keys
) -> None:
    app, clock = make_app(AUTH_FAILURE_WINDOW_SECONDS=10, AUTH_LOCKOUT_SECONDS=30)
    attacker = at(app, ATTACKER)
    # LIMIT - 1 failures, then the window passes: they no longer count.
    for _ in range(LIMIT - 1):
        assert gallery(attacker, BAD) == 401
    clock.now += 10.5
    lock_out(attacker)
    r = attacker.get("/api/v1/gallery", headers=keys.investigator)
    assert r.status_code == 429 and r.headers["Retry-After"] == "30"
    clock.now += 29.2
    r = attacker.get("/api/v1/gallery", headers=keys.investigator)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    clock.now += 1
    assert gallery(attacker, keys.investigator) == 200
    # After the lockout: LIMIT more tries, then locked out again.
    lock_out(attacker)
    assert gallery(attacker, BAD) == 429


def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    make_app: Callable[..., tuple[FastAPI, Clock]], keys: Keys
) -> None:
    app, _ = make_app()
    attacker = at(app, ATTACKER)
    for i in range(LIMIT):  # a new forged client address every time: still one address
        assert gallery(attacker, BAD, **{"X-Forwarded-For": f"198.51.100.{i}"}) == 401
    assert gallery(attacker, BAD, **{"X-Forwarded-For": "198.51.100.200"}) == 429
    assert len(app.state.auth_throttle) == 1

    app, _ = make_app(TRUSTED_PROXIES=f"{PROXY}, 192.168.0.0/16")
    proxy = at(app, PROXY)
    guesser = {"X-Forwarded-For": "203.0.113.7"}
    lock_out(proxy, **guesser)
    assert gallery(proxy, BAD, **guesser) == 429
    # The guesser cannot escape by writing another address in front (the proxy appends).
    assert gallery(proxy, keys.investigator, **{"X-Forwarded-For": "1.1.1.1, 203.0.113.7"}) == 429
    # Through two trusted proxies: the first untrusted hop from the right is the client.
    two_hops = {"X-Forwarded-For": "203.0.113.7, 192.168.4.4"}
    assert gallery(proxy, keys.investigator, **two_hops) == 429
    # Others behind the same proxy are not locked out, nor is the proxy itself.
    assert gallery(proxy, keys.investigator, **{"X-Forwarded-For": "203.0.113.8"}) == 200
    assert gallery(proxy, keys.investigator) == 200
    # A peer that is not a trusted proxy cannot claim to be one.
    assert gallery(at(app, ATTACKER), keys.investigator, **guesser) == 200


def test_the_table_stays_bounded_under_a_flood_of_addresses(
    make_app: Callable[..., tuple[FastAPI, Clock]], keys: Keys
) -> None:
    app, _ = make_app(TRUSTED_PROXIES=PROXY, AUTH_THROTTLE_MAX_ADDRESSES=8)
    proxy = at(app, PROXY)
    for i in range(40):
        assert gallery(proxy, BAD, **{"X-Forwarded-For": f"203.0.113.{i}"}) == 401
    assert len(app.state.auth_throttle) == 8

    metrics = Metrics()
    clock = Clock()
    throttle = AuthThrottle(
        limit=3, window=30, lockout=60, max_addresses=1000, metrics=metrics, clock=clock
    )
    for i in range(20_000):
        throttle.failed(f"2001:db8::{i:x}")
    assert len(throttle) == 1000
    for _ in range(3):
        throttle.failed("203.0.113.1")
    assert throttle.refuse("203.0.113.1") == 60
    assert throttle.refuse("2001:db8::1") is None  # evicted, the oldest
    # Entries with nothing left to remember are dropped when the next failure comes.
    clock.now += 31
    throttle.failed("203.0.113.2")
    assert len(throttle) == 2  # the locked-out address (29 s left) and the new one
    clock.now += 29
    throttle.failed("203.0.113.3")
    assert len(throttle) == 2  # the lockout is over: .2 (still in the window) and .3
    assert metrics.auth_lockouts._value.get() == 1
    assert metrics.auth_refused._value.get() == 1


def test_client_address() -> None:
    proxies = parse_networks("10.0.0.1, 192.168.0.0/16")
    assert client_address("10.0.0.66", ["1.2.3.4"], proxies) == "10.0.0.66"
    assert client_address("10.0.0.1", ["1.2.3.4"], ()) == "10.0.0.1"
    assert client_address("10.0.0.1", ["1.2.3.4"], proxies) == "1.2.3.4"
    assert client_address("10.0.0.1", ["9.9.9.9, 1.2.3.4"], proxies) == "1.2.3.4"
    assert client_address("10.0.0.1", ["9.9.9.9", "1.2.3.4, 192.168.1.1"], proxies) == "1.2.3.4"
    assert client_address("10.0.0.1", ["junk"], proxies) == "10.0.0.1"
    assert client_address("10.0.0.1", [], proxies) == "10.0.0.1"
    assert client_address(None, ["1.2.3.4"], proxies) == "unknown"


def test_throttle_settings_are_validated() -> None:
    assert load_settings().AUTH_FAILURE_LIMIT == 20
    assert load_settings().trusted_proxies == ()
    nets = load_settings(TRUSTED_PROXIES="10.0.0.1,fd00::/8").trusted_proxies
    assert [str(n) for n in nets] == ["10.0.0.1/32", "fd00::/8"]
    with pytest.raises(SketchReidError, match=r"TRUSTED_PROXIES.*'proxy\.local'"):
        load_settings(TRUSTED_PROXIES="10.0.0.1, proxy.local")
    for name, value in (
        ("AUTH_FAILURE_LIMIT", -1),
        ("AUTH_FAILURE_WINDOW_SECONDS", 0),
        ("AUTH_LOCKOUT_SECONDS", 0),
        ("AUTH_THROTTLE_MAX_ADDRESSES", 0),
    ):
        with pytest.raises(SketchReidError, match=name):
            load_settings(**{name: value})


def test_a_limit_of_zero_turns_the_throttle_off(
    make_app: Callable[..., tuple[FastAPI, Clock]],
) -> None:
    app, _ = make_app(AUTH_FAILURE_LIMIT=0)
    attacker = at(app, ATTACKER)
    for _ in range(30):
        assert gallery(attacker, BAD) == 401
    assert len(app.state.auth_throttle) == 0
