"""An in-memory ``hbone.transport.FrameTransport`` for driver tests: no sockets, no TLS, and with
``trio.testing.MockClock`` timing that is exact.

Two ``MemoryPipe``s make a connection. A pipe holds at most ``capacity`` bytes (None: no limit) that
were sent and not yet received, as a socket's buffers do; ``send_nowait`` puts what fits into the
pipe and queues the rest (``unsent``), which ``flush`` moves in as the reader makes room. So a test
can stall one side (``pause_receiving``) and watch the other's writer and ``HIGH_WATER`` at work.
"""

from __future__ import annotations

import trio


class MemoryPipe:
    """One direction: bytes in order, at most ``capacity`` of them in flight, then maybe the end."""

    def __init__(self, capacity: int | None = None) -> None:
        self.buffer = bytearray()
        self.capacity = capacity
        self.ended = False  # the sender closed
        self.changed = trio.lowlevel.ParkingLot()  # data, room or the end: both sides recheck

    def room(self) -> int:
        return 1 << 62 if self.capacity is None else self.capacity - len(self.buffer)


class MemoryTransport:
    """One end of an in-memory connection: receives from ``incoming``, sends into ``outgoing``."""

    def __init__(self, incoming: MemoryPipe, outgoing: MemoryPipe) -> None:
        self.incoming = incoming
        self.outgoing = outgoing
        self._unsent = bytearray()
        self._closed = False
        self._paused = False
        self.bytes_sent = 0  # into the pipe

    def pause_receiving(self) -> None:
        """``receive_some`` waits (as if this side were busy) until ``resume_receiving``."""
        self._paused = True

    def resume_receiving(self) -> None:
        self._paused = False
        self.incoming.changed.unpark_all()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._paused or not self.incoming.buffer:
            self._check_open()
            if self.incoming.ended and not self._paused:
                return b""
            await self.incoming.changed.park()
        self._check_open()
        size = len(self.incoming.buffer) if max_bytes is None else max_bytes
        data = bytes(self.incoming.buffer[:size])
        del self.incoming.buffer[:size]
        self.incoming.changed.unpark_all()  # room for the sender
        return data

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        self._check_open()
        if self.outgoing.ended:
            raise trio.BrokenResourceError("the pipe was closed")
        self._unsent += data
        self._move()
        return not self._unsent

    @property
    def unsent(self) -> int:
        return len(self._unsent)

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._unsent:
            self._check_open()
            self._move()
            if self._unsent:
                await self.outgoing.changed.park()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.outgoing.ended = True
            self.outgoing.changed.unpark_all()
            self.incoming.changed.unpark_all()
        await trio.lowlevel.checkpoint()

    def _move(self) -> None:
        room = self.outgoing.room()
        if room > 0 and self._unsent:
            chunk = self._unsent[:room]
            del self._unsent[:room]
            self.outgoing.buffer += chunk
            self.bytes_sent += len(chunk)
            self.outgoing.changed.unpark_all()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the transport was closed")


def memory_transport_pair(capacity: int | None = None) -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected ends, each direction holding at most ``capacity`` bytes in flight."""
    a_to_b, b_to_a = MemoryPipe(capacity), MemoryPipe(capacity)
    return MemoryTransport(b_to_a, a_to_b), MemoryTransport(a_to_b, b_to_a)
