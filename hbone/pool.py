"""The HBONE client pool (DESIGN.md section 6): HTTP/2 connections shared by the proxied connections
that have the same source pod, destination identities and destination address.

Istio pools per {source identity, destination identity, destination address}. Here each pod's
outbound HBONE socket is made in that pod's own netns and so carries the pod's IP, which the far
ztunnel reads as the client; the key's first part is therefore the source pod (a finer key than the
identity: pods of one service account on a node do not share a connection).

A connection takes up to 100 streams; when all are in use another is opened. Concurrent first users
of a key wait for one handshake instead of each making their own. A reused connection that turns out
to be gone (the peer restarted and sent GOAWAY) is retried once on a fresh one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable

import trio

from hbone.driver import HboneClientDriver, HboneStream
from hbone.limits import IDLE_TIMEOUT
from hbone.transport import FrameTransport

log = logging.getLogger("ambient.hbone.pool")

Connect = Callable[[], Awaitable[FrameTransport]]


class HbonePool:
    """Client HBONE connections by key, each run by a task in ``nursery``; see the module docstring."""

    def __init__(self, nursery: trio.Nursery, *, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self._nursery = nursery
        self._idle_timeout = idle_timeout
        self._drivers: dict[Hashable, list[HboneClientDriver]] = {}
        self._locks: dict[Hashable, trio.Lock] = {}
        self.connections_opened = 0

    async def open_stream(self, key: Hashable, connect: Connect, authority: str,
                          forwarded_for: tuple[str, int] | None, baggage: str | None = None,
                          traceparent: str | None = None) -> HboneStream:
        """A CONNECT stream to ``authority`` over a pooled connection for ``key`` (made with
        ``connect``, which returns a verified TLS stream), with the ``forwarded``, ``baggage`` and
        ``traceparent`` headers given. Raises ``HboneRefused`` on a non-200, and what ``connect``
        raises when no connection can be made."""
        driver = self._available(key)
        if driver is not None:
            try:
                return await driver.open(authority, forwarded_for, baggage, traceparent)
            except trio.BrokenResourceError as exc:
                log.debug("pooled HBONE connection for %s was gone (%s); opening a new one", key, exc)
        lock = self._locks.setdefault(key, trio.Lock())
        try:
            async with lock:
                driver = self._available(key) or await self._new(key, connect)
        finally:
            if key not in self._drivers and not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]  # no connection could be made: keep nothing for the key
        return await driver.open(authority, forwarded_for, baggage, traceparent)

    def _available(self, key: Hashable) -> HboneClientDriver | None:
        for driver in self._drivers.get(key, ()):
            if driver.streams_available():
                return driver
        return None

    async def _new(self, key: Hashable, connect: Connect) -> HboneClientDriver:
        transport = await connect()
        driver = HboneClientDriver(transport, idle_timeout=self._idle_timeout)
        await self._nursery.start(self._run, key, driver)
        self.connections_opened += 1
        return driver

    async def _run(self, key: Hashable, driver: HboneClientDriver,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._drivers.setdefault(key, []).append(driver)
        try:
            await driver.run(task_status=task_status)
        finally:
            drivers = self._drivers.get(key, [])
            if driver in drivers:
                drivers.remove(driver)
            if not drivers:
                self._drivers.pop(key, None)
                lock = self._locks.get(key)
                if lock is not None and not lock.locked():
                    del self._locks[key]
            log.debug("HBONE connection for %s ended: %s", key, driver.close_reason)

    def count(self) -> int:
        return sum(len(drivers) for drivers in self._drivers.values())

    def close_where(self, predicate: Callable[[Hashable], bool], reason: str) -> int:
        """Close the connections whose key satisfies ``predicate`` (e.g. those of a pod that left)."""
        closed = 0
        for key, drivers in list(self._drivers.items()):
            if predicate(key):
                for driver in list(drivers):
                    driver.close(reason)
                    closed += 1
        return closed

    def close_all(self) -> None:
        for drivers in list(self._drivers.values()):
            for driver in list(drivers):
                driver.close("ztunnel is shutting down")
