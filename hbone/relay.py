"""Copying bytes both ways between two streams (a pod's TCP connection and an HBONE stream, or two
TCP connections), carrying half-close: when one side ends its writes, the other side's write half
is shut and the opposite direction goes on. Large reads, one ``send_all`` per read, no per-byte
work. A failure on either side aborts both: a TCP side is reset (SO_LINGER 0, so the client sees
ECONNRESET rather than a clean end that would pass for a complete response), an HBONE stream is
reset by closing it unfinished.
"""

from __future__ import annotations

import socket
import struct

import trio

from hbone.tcp_stream import TcpStream

CHUNK = 256 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)


class Counts:
    """Bytes carried, as Istio's metrics count them from the proxy's side of the downstream (the
    side that opened the connection): ``received`` from it, ``sent`` to it."""

    __slots__ = ("sent", "received")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0


async def relay(downstream: trio.abc.HalfCloseableStream, upstream: trio.abc.HalfCloseableStream,
                counts: Counts) -> None:
    """Until both directions have ended. Raises ``trio.BrokenResourceError`` (after resetting both
    sides) if either side failed; cancellation also resets both.

    Each pump catches its own side's failure and stops the other, so the nursery raises nothing but
    cancellation from outside: a failure that coincides with a cancellation (a reset arriving as a
    policy change closes the connection) is still a plain ``Cancelled`` or ``BrokenResourceError``,
    never an exception group that the caller's ``except trio.BrokenResourceError`` would miss."""
    failures: list[BaseException] = []
    clean = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, downstream, upstream, counts, True, failures, nursery.cancel_scope)
            nursery.start_soon(_pump, upstream, downstream, counts, False, failures, nursery.cancel_scope)
        clean = not failures
    finally:
        if not clean:
            abort(downstream)
            abort(upstream)
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(downstream)
            await trio.aclose_forcefully(upstream)
    if failures:
        first = failures[0]
        raise trio.BrokenResourceError(f"{type(first).__name__}: {first}") from None


async def _pump(source: trio.abc.ReceiveStream, sink: trio.abc.HalfCloseableStream, counts: Counts,
                forward: bool, failures: list[BaseException], both: trio.CancelScope) -> None:
    try:
        while True:
            data = await source.receive_some(CHUNK)
            if not data:
                break
            await sink.send_all(data)
            if forward:
                counts.received += len(data)
            else:
                counts.sent += len(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        failures.append(exc)
        both.cancel()


def abort(stream: trio.abc.Stream) -> None:
    """Make closing ``stream`` a reset rather than a clean end (a TCP RST)."""
    if isinstance(stream, (TcpStream, trio.SocketStream)):
        try:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except (OSError, trio.ClosedResourceError):
            pass


async def reset(stream: trio.abc.Stream) -> None:
    """Close ``stream`` with a reset (refusals, denials, failures to reach the other side)."""
    abort(stream)
    await trio.aclose_forcefully(stream)
