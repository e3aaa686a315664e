"""SecretManager against a real in-memory CA, in trio time (``autojump_clock``: sleeping is free).

Expectations about when things happen come from each certificate's own ``not_before``/``not_after``
(the CA backdates leaves, so a certificate lives longer than the lifetime asked for), mapped into
trio time the way the manager does it. The wall clock is read around the ``get`` that receives the
certificate, which bounds the manager's reading to a window a few milliseconds wide. The CA signs in
wall-clock time, which hardly moves while trio time jumps, so a renewed certificate may carry the
same ``not_after`` as the one it replaces: tests tell certificates apart by their keys.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging

import pytest
import trio
import trio.testing

from ca.authority import SigningAuthority
from ca.client import CertificateError, CertifiedKey, new_key_and_csr, verify_issued
from ca.secrets import REFRESH_BACKOFF, CertificateUnavailable, SecretManager
from mesh.backoff import Backoff
from mesh.identity import SpiffeId

WEB = SpiffeId("cluster.local", "shop", "web")
DB = SpiffeId("cluster.local", "shop", "db")
EPS = 0.05  # seconds of trio time: "just before" / "just after" an instant
NO_JITTER = dataclasses.replace(REFRESH_BACKOFF, jitter=0)  # 1, 2, 4 ... 60 s exactly


class InMemoryCa:
    """A real signing authority behind a ``fetch`` function, with switches for the tests."""

    def __init__(self, authority: SigningAuthority, lifetime: dt.timedelta = dt.timedelta(hours=1)) -> None:
        self.authority = authority
        self.lifetime = lifetime
        self.calls: list[float] = []  # trio time at which each fetch started
        self.outage = False
        self.error_type: type[Exception] = CertificateError
        self.gate: trio.Event | None = None  # if set, fetches are held in flight until it is set
        self.in_flight = trio.Event()
        # A manager that re-fetches in a loop without sleeping would hang an autojump test; past
        # this many calls it gets errors, so it backs off and the test fails on its counts.
        self.max_calls = 200

    @property
    def count(self) -> int:
        return len(self.calls)

    async def fetch(self, identity: SpiffeId) -> CertifiedKey:
        self.calls.append(trio.current_time())
        if self.count > self.max_calls:
            raise CertificateError("runaway: too many fetches")
        self.in_flight.set()
        if self.gate is not None:
            await self.gate.wait()
        await trio.lowlevel.checkpoint()
        if self.outage:
            raise self.error_type("CA unreachable")
        key, csr = new_key_and_csr(identity)
        _, chain = self.authority.issue(csr, identity, self.lifetime)
        return verify_issued(chain, self.authority.root, identity, key)


@dataclasses.dataclass
class Received:
    cert: CertifiedKey
    t0: float  # trio time at receipt
    wall_lo: dt.datetime  # the manager read the wall clock between these two
    wall_hi: dt.datetime

    def window(self, when: dt.datetime) -> tuple[float, float]:
        """Earliest and latest trio time the manager can have mapped wall-clock ``when`` to."""
        return self.t0 + (when - self.wall_hi).total_seconds(), self.t0 + (when - self.wall_lo).total_seconds()

    @property
    def midpoint(self) -> dt.datetime:
        return self.cert.not_before + self.cert.lifetime / 2


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def received(manager: SecretManager, identity: SpiffeId) -> Received:
    wall_lo = utcnow()
    cert = await manager.get(identity)
    return Received(cert, trio.current_time(), wall_lo, utcnow())


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def doubling(n: int, initial: float = 1.0, cap: float = 60.0) -> list[float]:
    return [min(initial * 2**i, cap) for i in range(n)]


@pytest.fixture
async def watchdog(nursery) -> None:
    """Turn a hang into a failure. The tests run on the autojump clock, where a waiter that is
    never woken lets trio time run on for ever: two days of it are more than any test needs.
    (Requested through ``ca``: pytest-trio does not run autouse async fixtures.)"""

    async def bark() -> None:
        await trio.sleep(2 * 24 * 3600)
        raise AssertionError("the test is still running after two days of trio time: something hangs")

    nursery.start_soon(bark)


@pytest.fixture
def ca(authority: SigningAuthority, watchdog: None) -> InMemoryCa:
    # ``authority`` (tests/ca/conftest.py) is SigningAuthority.self_signed("cluster.local").
    return InMemoryCa(authority)


@pytest.fixture
async def manager(nursery, ca) -> SecretManager:
    manager = SecretManager(ca.fetch, backoff=NO_JITTER)
    await nursery.start(manager.run)
    return manager


async def test_first_get_fetches_then_serves_the_held_certificate(autojump_clock, ca, manager):
    assert manager.current(WEB) is None
    cert = await manager.get(WEB)
    assert ca.count == 1
    assert cert.identity == WEB
    assert await manager.get(WEB) is cert
    assert manager.current(WEB) is cert
    assert ca.count == 1


async def test_each_identity_has_its_own_certificate(autojump_clock, ca, manager):
    web, db = await manager.get(WEB), await manager.get(DB)
    assert (web.identity, db.identity) == (WEB, DB)
    assert manager.identities() == [DB, WEB]
    assert ca.count == 2
    manager.forget(DB)
    assert manager.identities() == [WEB]
    assert await manager.get(WEB) is web


async def test_prefetch_starts_fetching_without_waiting(autojump_clock, ca, manager):
    manager.prefetch(WEB)
    assert ca.count == 0  # nothing ran yet: prefetch only starts the task
    assert manager.identities() == [WEB]
    await trio.testing.wait_all_tasks_blocked()
    assert ca.count == 1
    cert = manager.current(WEB)
    assert cert is not None and cert.identity == WEB
    manager.prefetch(WEB)
    await trio.testing.wait_all_tasks_blocked()
    assert ca.count == 1
    with trio.fail_after(10):
        assert await manager.get(WEB) is cert


async def test_refresh_at_half_life(autojump_clock, ca, manager):
    first = await received(manager, WEB)
    earliest, latest = first.window(first.midpoint)
    assert latest - earliest < 5  # the receipt window is narrow; a slow machine would show here

    await trio.sleep_until(earliest - EPS)
    assert ca.count == 1
    assert await manager.get(WEB) is first.cert

    await trio.sleep_until(latest + EPS)
    assert ca.count == 2
    renewed = await manager.get(WEB)
    assert renewed is not first.cert and renewed.key_pem != first.cert.key_pem
    assert renewed.identity == WEB
    assert ca.count == 2

    # The next renewal is at the renewed certificate's own midpoint, counted from its receipt.
    renewed_midpoint = renewed.not_before + renewed.lifetime / 2
    next_lo = earliest + (renewed_midpoint - utcnow()).total_seconds()
    next_hi = latest + EPS + (renewed_midpoint - first.wall_lo).total_seconds()
    await trio.sleep_until(next_lo - EPS)
    assert ca.count == 2
    assert manager.current(WEB) is renewed
    await trio.sleep_until(next_hi + EPS)
    assert ca.count == 3


async def test_ca_outage_keeps_serving_until_expiry_then_recovers(autojump_clock, ca, manager):
    first = await received(manager, WEB)
    ca.outage = True

    _, refresh = first.window(first.midpoint)
    await trio.sleep_until(refresh + EPS)
    assert ca.count == 2  # the renewal was tried, and failed
    assert await manager.get(WEB) is first.cert

    # Retries back off 1, 2, 4, ... seconds apart, then every 60 s; the old certificate still serves.
    await trio.sleep(600)
    retries = gaps(ca.calls[1:])
    assert len(retries) >= 9
    assert retries == pytest.approx(doubling(len(retries)))
    assert await manager.get(WEB) is first.cert

    expiry_lo, expiry_hi = first.window(first.cert.not_after)
    await trio.sleep_until(expiry_lo - EPS)
    assert manager.current(WEB) is first.cert
    await trio.sleep_until(expiry_hi + EPS)
    assert manager.current(WEB) is None

    before = ca.count
    with trio.fail_after(120), pytest.raises(CertificateUnavailable) as info:
        await manager.get(WEB)
    assert ca.count == before + 1  # it waited for the next retry rather than failing on old news
    message = str(info.value)
    assert str(WEB) in message
    assert "CA unreachable" in message
    assert first.cert.not_after.isoformat() in message
    assert info.value.identity == WEB
    assert isinstance(info.value.__cause__, CertificateError)

    ca.outage = False
    with trio.fail_after(120):
        second = await manager.get(WEB)
    assert second is not first.cert and second.key_pem != first.cert.key_pem
    assert second.identity == WEB
    assert manager.current(WEB) is second


async def test_backoff_resets_after_a_success(autojump_clock, ca, manager):
    first = await received(manager, WEB)
    ca.outage = True
    _, refresh = first.window(first.midpoint)
    await trio.sleep_until(refresh + 20)  # failures at +0, +1, +3, +7, +15: the next wait is 16 s
    assert gaps(ca.calls[1:]) == pytest.approx([1, 2, 4, 8])

    ca.outage = False
    await trio.sleep(16 + EPS)
    second = manager.current(WEB)
    assert second is not None and second is not first.cert
    succeeded_at = ca.count

    ca.outage = True
    await trio.sleep(40 * 60)  # past the second certificate's half-life, not its expiry
    after_success = ca.calls[succeeded_at:]
    assert after_success[0] - ca.calls[succeeded_at - 1] > 20 * 60  # it waited for the half-life
    assert gaps(after_success)[:4] == pytest.approx([1, 2, 4, 8])
    assert manager.current(WEB) is second


async def test_default_jitter_shortens_each_backoff_by_at_most_a_fifth(autojump_clock, ca, nursery):
    manager = SecretManager(ca.fetch, backoff=dataclasses.replace(REFRESH_BACKOFF, initial=10.0, cap=80.0))
    await nursery.start(manager.run)
    ca.outage = True
    with trio.fail_after(60), pytest.raises(CertificateUnavailable):
        await manager.get(WEB)
    await trio.sleep(1000)
    waits = gaps(ca.calls)
    assert len(waits) >= 10
    nominals = doubling(len(waits), 10.0, 80.0)
    for wait, nominal in zip(waits, nominals, strict=True):
        assert 0.8 * nominal - 1e-6 <= wait <= nominal + 1e-6
    assert any(wait < nominal - 1e-6 for wait, nominal in zip(waits, nominals, strict=True))


async def test_concurrent_waiters_share_one_fetch(autojump_clock, ca, manager):
    ca.gate = trio.Event()
    results: list[CertifiedKey] = []

    async def waiter() -> None:
        results.append(await manager.get(WEB))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(waiter)
            await ca.in_flight.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert ca.count == 1  # all 20 are waiting, on the one fetch held in flight
            assert results == []
            ca.gate.set()
    assert ca.count == 1
    assert len(results) == 20
    assert all(cert is results[0] for cert in results)
    assert results[0].identity == WEB


@pytest.mark.parametrize("error_type", [CertificateError, ConnectionRefusedError])
async def test_failed_first_fetch_reaches_every_waiter(autojump_clock, ca, manager, error_type):
    ca.outage, ca.error_type = True, error_type
    ca.gate = trio.Event()
    failures: list[CertificateUnavailable] = []

    async def waiter() -> None:
        with pytest.raises(CertificateUnavailable) as info:
            await manager.get(WEB)
        failures.append(info.value)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(waiter)
            await ca.in_flight.wait()
            await trio.testing.wait_all_tasks_blocked()
            ca.gate.set()
    assert len(failures) == 5
    assert ca.count == 1
    for failure in failures:
        assert str(WEB) in str(failure) and "CA unreachable" in str(failure)
        assert "expired" not in str(failure)  # there never was a certificate
        assert isinstance(failure.__cause__, error_type)
    assert manager.current(WEB) is None

    ca.outage, ca.gate = False, None
    with trio.fail_after(10):
        cert = await manager.get(WEB)  # the manager kept running and retried
    assert cert.identity == WEB
    assert ca.count == 2


async def test_failures_are_logged_with_identity_and_error(autojump_clock, ca, manager, caplog):
    caplog.set_level(logging.DEBUG, logger="ambient.ca.secrets")
    cert = await manager.get(WEB)
    ca.outage = True
    await trio.sleep(3600)
    records = [r for r in caplog.records if r.name == "ambient.ca.secrets"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == ca.count - 1
    assert str(WEB) in warnings[0].getMessage()
    assert "CA unreachable" in warnings[0].getMessage()
    key = cert.key_pem.decode()
    assert not any("PRIVATE KEY" in r.getMessage() or key in r.getMessage() for r in records)


async def test_certificate_past_its_midpoint_on_arrival_is_renewed_halfway_to_expiry(autojump_clock, ca, manager):
    # Asked for 2 minutes, the leaf lives 7 (backdated 5): its midpoint is already behind us.
    ca.lifetime = dt.timedelta(minutes=2)
    first = await received(manager, WEB)
    assert first.midpoint < first.wall_lo
    lo, hi = first.window(first.cert.not_after)
    halfway_lo, halfway_hi = first.t0 + (lo - first.t0) / 2, first.t0 + (hi - first.t0) / 2
    await trio.sleep_until(halfway_lo - EPS)
    assert ca.count == 1
    await trio.sleep_until(halfway_hi + EPS)
    assert ca.count == 2


async def test_certificate_expired_on_arrival_is_a_failure(autojump_clock, ca, nursery):
    async def stale_fetch(identity: SpiffeId) -> CertifiedKey:
        cert = await ca.fetch(identity)
        # What a fetch that does not check validity would pass on from a CA whose clock is behind.
        return dataclasses.replace(cert, not_after=cert.not_before)

    manager = SecretManager(stale_fetch, backoff=NO_JITTER)
    await nursery.start(manager.run)
    with trio.fail_after(10), pytest.raises(CertificateUnavailable, match="already expired"):
        await manager.get(WEB)
    assert manager.current(WEB) is None
    await trio.sleep(10)
    assert gaps(ca.calls) == pytest.approx([1, 2, 4])  # retried with backoff, not in a loop


async def test_forget_stops_refreshing_and_drops_the_certificate(autojump_clock, ca, manager):
    cert = await manager.get(WEB)
    manager.forget(WEB)
    assert manager.current(WEB) is None
    assert manager.identities() == []
    await trio.sleep(24 * 3600)
    assert ca.count == 1
    again = await manager.get(WEB)
    assert ca.count == 2
    assert again is not cert and again.identity == WEB


async def test_forget_releases_waiters_and_cancels_the_fetch(autojump_clock, ca, manager):
    ca.gate = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                with pytest.raises(CertificateUnavailable, match="forgotten"):
                    await manager.get(WEB)

            nursery.start_soon(waiter)
            await ca.in_flight.wait()
            await trio.testing.wait_all_tasks_blocked()
            manager.forget(WEB)
    ca.gate.set()  # had the fetch not been cancelled, it would now complete and refresh later
    await trio.sleep(24 * 3600)
    assert ca.count == 1
    assert manager.current(WEB) is None


async def test_stopping_the_manager_releases_waiters(autojump_clock, ca):
    manager = SecretManager(ca.fetch, backoff=NO_JITTER)
    ca.gate = trio.Event()
    errors: list[CertificateUnavailable] = []

    async def waiter() -> None:
        with pytest.raises(CertificateUnavailable, match="stopped") as info:
            await manager.get(WEB)
        errors.append(info.value)

    with trio.fail_after(10):
        async with trio.open_nursery() as waiters:
            async with trio.open_nursery() as running:
                await running.start(manager.run)
                waiters.start_soon(waiter)
                await ca.in_flight.wait()
                await trio.testing.wait_all_tasks_blocked()
                running.cancel_scope.cancel()
    assert len(errors) == 1
    with pytest.raises(CertificateUnavailable, match="stopped"):  # a late caller is told, not crashed
        await manager.get(WEB)


async def test_get_before_run_raises(ca):
    manager = SecretManager(ca.fetch)
    with pytest.raises(RuntimeError, match=r"not running.*manager\.run"):
        await manager.get(WEB)
    with pytest.raises(RuntimeError, match="not running"):
        manager.prefetch(WEB)
    assert ca.count == 0


async def test_run_twice_at_once_raises(autojump_clock, ca, manager):
    with trio.fail_after(10), pytest.raises(RuntimeError, match="already running"):
        await manager.run()


async def test_a_backoff_that_starts_at_zero_is_refused(ca):
    # A failing CA would be called in a busy loop.
    with pytest.raises(ValueError, match="backoff must start above 0"):
        SecretManager(ca.fetch, backoff=Backoff(initial=0.0, cap=60.0))


async def test_a_caller_that_arrives_after_the_manager_stopped_is_told_not_crashed(ca):
    # As a proxy shutting down: a pod's task that starts as everything is cancelled still prefetches
    # (it did: RuntimeError "Nursery is closed to new arrivals" ended the proxy with a traceback).
    manager = SecretManager(ca.fetch, backoff=NO_JITTER)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        nursery.cancel_scope.cancel()
    manager.prefetch(WEB)  # nothing
    with pytest.raises(CertificateUnavailable, match="the secret manager stopped"):
        await manager.get(WEB)
