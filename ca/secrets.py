"""Keeping workload certificates fresh: one certificate per SPIFFE identity, for a proxy that
serves many workloads.

Every identity the proxy needs gets a refresh task in the nursery that ``SecretManager.run`` opens.
The task fetches a certificate, sleeps until half of its lifetime has passed and fetches again; when
a fetch fails it keeps the certificate it holds (still valid, still served) and retries with
exponential backoff. Only that task ever calls the CA. ``get`` returns the held certificate while it
is valid; otherwise it waits for the outcome of the task's current or next attempt, which is
published once to every waiter through a ``trio.Event``, so any number of waiters share one request.

All scheduling is in trio time, so tests can drive it with ``trio.testing.MockClock``: a
certificate's wall-clock ``not_before``/``not_after`` are converted into trio deadlines once, when
it is received, and the wall clock is read nowhere else.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Awaitable, Callable

import trio

from ca.cert_store import CertificateStore
from mesh.backoff import Backoff
from mesh.certs import CertificateError, CertifiedKey
from mesh.identity import SpiffeId

log = logging.getLogger("ambient.ca.secrets")

Fetch = Callable[[SpiffeId], Awaitable[CertifiedKey]]


# 1 s doubling up to a minute; each wait shortened by up to a fifth at random, so that proxies that
# lost the CA together do not all retry in the same instant.
REFRESH_BACKOFF = Backoff(initial=1.0, cap=60.0, multiplier=2.0, jitter=0.2)


class CertificateUnavailable(CertificateError):
    """There is no valid certificate for ``identity``: fetching one failed (``__cause__`` is the
    error) and nothing unexpired is held. ``expired_at`` is when the previous one expired, if any."""

    def __init__(self, identity: SpiffeId, reason: str, expired_at: dt.datetime | None = None) -> None:
        message = f"no certificate for {identity}: {reason}"
        if expired_at is not None:
            message += f" (the previous certificate expired at {expired_at.isoformat()})"
        super().__init__(message)
        self.identity = identity
        self.expired_at = expired_at


class _Attempt:
    """The outcome of one fetch, shared by every ``get`` that waits for it. Settled once."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.cert: CertifiedKey | None = None
        self.reason = ""
        self.cause: BaseException | None = None
        self.expired_at: dt.datetime | None = None

    def succeed(self, cert: CertifiedKey) -> None:
        if not self.done.is_set():
            self.cert = cert
            self.done.set()

    def fail(self, reason: str, cause: BaseException | None = None, expired_at: dt.datetime | None = None) -> None:
        if not self.done.is_set():
            self.reason, self.cause, self.expired_at = reason, cause, expired_at
            self.done.set()


class _Entry:
    """What is held for one identity. Only its refresh task writes ``cert`` and ``expires_at``."""

    def __init__(self, identity: SpiffeId) -> None:
        self.identity = identity
        self.scope = trio.CancelScope()  # forget() cancels the refresh task through it
        self.next = _Attempt()  # what a waiter arriving now will receive
        self.cert: CertifiedKey | None = None
        self.expires_at = -math.inf  # trio time

    def valid_cert(self) -> CertifiedKey | None:
        if self.cert is not None and trio.current_time() < self.expires_at:
            return self.cert
        return None


def _deadlines(cert: CertifiedKey) -> tuple[float, float]:
    """``(refresh_at, expires_at)`` in trio time, for a certificate received just now."""
    t0, w0 = trio.current_time(), dt.datetime.now(dt.UTC)
    to_expiry = (cert.not_after - w0).total_seconds()
    if to_expiry <= 0:
        raise CertificateError(f"received a certificate that already expired at {cert.not_after.isoformat()}")
    midpoint = cert.not_before + (cert.not_after - cert.not_before) / 2
    to_refresh = (midpoint - w0).total_seconds()
    if to_refresh <= 0:
        # The CA backdates leaves, so a short-lived one can arrive past its midpoint; renewing at
        # once would then loop on the CA. Renew halfway to its expiry instead.
        to_refresh = to_expiry / 2
    return t0 + to_refresh, t0 + to_expiry


class SecretManager:
    """Fetches and renews a certificate per identity; see the module docstring.

    ``fetch`` is usually ``CaClient.fetch``. Start it with ``await nursery.start(manager.run)``
    before calling ``get`` or ``prefetch``. ``get`` waits as long as the next attempt takes (up to
    ``backoff.cap`` during an outage): callers that need a bound put it in a cancel scope.
    """

    def __init__(self, fetch: Fetch, *, backoff: Backoff = REFRESH_BACKOFF, store: CertificateStore | None = None,
                 ) -> None:
        if backoff.initial <= 0:
            # A failing CA would be called in a busy loop.
            raise ValueError(f"the retry backoff must start above 0 s: {backoff}")
        self._fetch = fetch
        self._backoff = backoff
        self._store = store  # certificates kept across restarts (ca.cert_store), if any
        self._stopped = False  # run() ended (or is ending): nothing new is tracked
        self._entries: dict[SpiffeId, _Entry] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the refresh tasks until cancelled; then drop everything held."""
        if self._nursery is not None:
            raise RuntimeError("SecretManager.run() is already running")
        self._stopped = False
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    # From here the nursery takes no new task, while its refresh tasks end: a caller
                    # that arrives now, or later (a proxy serving a pod as it shuts down), is told, not
                    # crashed.
                    self._stopped = True
        finally:
            self._nursery = None
            self._stopped = True
            entries, self._entries = self._entries, {}
            for entry in entries.values():
                # Waiters live outside our nursery: tell them rather than leave them hanging.
                entry.next.fail("the secret manager stopped")

    async def get(self, identity: SpiffeId) -> CertifiedKey:
        """The valid certificate for ``identity``, fetching it if needed.

        Raises ``CertificateUnavailable`` if the attempt it waited for failed."""
        entry = self._track(identity)
        cert = entry.valid_cert()
        if cert is not None:
            return cert
        attempt = entry.next
        await attempt.done.wait()
        if attempt.cert is not None:
            return attempt.cert
        raise CertificateUnavailable(identity, attempt.reason, attempt.expired_at) from attempt.cause

    def prefetch(self, identity: SpiffeId) -> None:
        """Start keeping a certificate for ``identity`` (a workload arrived) without waiting; nothing
        once the manager has stopped."""
        if not self._stopped:
            self._track(identity)

    def forget(self, identity: SpiffeId) -> None:
        """Stop refreshing ``identity`` and drop its certificate (the workload left)."""
        entry = self._entries.pop(identity, None)
        if entry is not None:
            entry.scope.cancel()
            entry.next.fail("it was forgotten before a certificate arrived")
        if self._store is not None:
            self._store.remove(identity)  # no key kept for an identity no longer served

    def current(self, identity: SpiffeId) -> CertifiedKey | None:
        """The still-valid certificate for ``identity``, if one is held; never fetches."""
        entry = self._entries.get(identity)
        return entry.valid_cert() if entry is not None else None

    def identities(self) -> list[SpiffeId]:
        """Every identity being kept, with or without a valid certificate yet, in order."""
        return sorted(self._entries, key=str)

    def _track(self, identity: SpiffeId) -> _Entry:
        if self._stopped:
            raise CertificateUnavailable(identity, "the secret manager stopped")
        if self._nursery is None:
            raise RuntimeError(
                "SecretManager is not running: start it first with `await nursery.start(manager.run)`"
            )
        entry = self._entries.get(identity)
        if entry is None:
            entry = self._entries[identity] = _Entry(identity)
            self._nursery.start_soon(self._refresh, entry, name=f"refresh certificate {identity}")
        return entry

    def _restore(self, entry: _Entry) -> None:
        assert self._store is not None
        cert = self._store.load(entry.identity)
        if cert is None:
            return
        try:
            _, expires_at = _deadlines(cert)
        except CertificateError:
            return
        entry.cert, entry.expires_at = cert, expires_at
        attempt, entry.next = entry.next, _Attempt()
        attempt.succeed(cert)
        log.info("serving %s with its stored certificate (valid until %s) until the CA answers", entry.identity,
                 cert.not_after.isoformat())

    async def _refresh(self, entry: _Entry) -> None:
        failures = 0  # in a row: the next retry's attempt number
        with entry.scope:
            if self._store is not None:
                self._restore(entry)  # served at once; a fresh one is fetched all the same
            while True:
                attempt = entry.next
                try:
                    cert = await self._fetch(entry.identity)
                    refresh_at, expires_at = _deadlines(cert)
                except Exception as exc:  # any failure is retried; only cancellation ends the task
                    delay = self._backoff.delay(failures)
                    failures += 1
                    reason = f"{type(exc).__name__}: {exc}"
                    log.warning("fetching a certificate for %s failed (retry in %.1fs): %s",
                                entry.identity, delay, reason)
                    held = entry.cert
                    expired_at = held.not_after if held is not None and entry.valid_cert() is None else None
                    entry.next = _Attempt()
                    attempt.fail(reason, exc, expired_at)
                    await trio.sleep(delay)
                else:
                    entry.cert, entry.expires_at = cert, expires_at
                    entry.next = _Attempt()
                    attempt.succeed(cert)
                    failures = 0
                    if self._store is not None:
                        try:
                            self._store.save(cert)
                        except OSError as exc:
                            log.warning("cannot keep the certificate of %s across restarts: %s", entry.identity, exc)
                    log.debug("certificate for %s valid until %s", entry.identity, cert.not_after.isoformat())
                    await trio.sleep_until(refresh_at)
