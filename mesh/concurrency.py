"""Small structured-concurrency helpers shared by the trio drivers."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger("ambient")


async def first_of(*waits: Callable[[], Awaitable[object]]) -> int:
    """Run ``waits`` side by side; once one returns, cancel the others and return its index."""
    first: int | None = None
    async with trio.open_nursery() as nursery:
        async def one(index: int, wait: Callable[[], Awaitable[object]]) -> None:
            nonlocal first
            await wait()
            if first is None:
                first = index
            nursery.cancel_scope.cancel()

        for index, wait in enumerate(waits):
            nursery.start_soon(one, index, wait)
    assert first is not None  # the nursery only ends early by our own cancel (or raises)
    return first


async def wait_for_stop(signals: AsyncIterator[int], quit_requested: trio.Event) -> str:
    """Wait for the first request to stop a proxy: a signal (its name), or ``/quitquitquit`` (the
    admin port's ``quit_requested``)."""
    received: list[int] = []

    async def next_signal() -> None:
        async for signum in signals:
            received.append(signum)
            return

    first = await first_of(next_signal, quit_requested.wait)
    return signal.Signals(received[0]).name if first == 0 else "/quitquitquit"


# accept() errors that mean "out of capacity for now" (fds, memory): the loop waits and tries again,
# as trio.serve_listeners does, instead of ending the listener. Anything else ends it.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_DELAY = 0.1  # seconds to wait after such an error
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST


async def accept_loop(listener: trio.socket.SocketType,
                      handle: Callable[[trio.socket.SocketType, Any], Awaitable[object]],
                      nursery: trio.Nursery, what: str,
                      admit: Callable[[trio.socket.SocketType, Any], bool] | None = None) -> None:
    """Accept connections on ``listener`` for ever, starting ``handle(sock, peer)`` in ``nursery`` for
    each; rides out running out of fds or memory (logged, naming ``what``). A connection that
    ``admit(sock, peer)`` refuses is reset at once, in this loop: a flood of refused connections
    costs no task each."""
    while True:
        try:
            sock, peer = await listener.accept()
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            log.error("%s: cannot accept (%s); retrying in %.1f s", what, os.strerror(exc.errno), ACCEPT_RETRY_DELAY)
            await trio.sleep(ACCEPT_RETRY_DELAY)
            continue
        if admit is not None and not admit(sock, peer):
            refuse(sock)
            continue
        nursery.start_soon(handle, sock, peer)


def refuse(sock: trio.socket.SocketType | socket.socket) -> None:
    """Close an accepted ``sock`` with a reset: the client knows at once, and no TIME_WAIT is left."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()
