"""What an HBONE driver needs of the connection under it: ``FrameTransport``.

A driver sends frames from whichever task queued them, without waiting (``send_nowait``), and leaves
waiting for a full socket to its writer task (``flush``). So a transport takes every byte at once,
sends what it can, and keeps the rest in order (``unsent`` counts it) until ``flush`` has sent it.
``hbone.tls_stream.TlsStream`` is one; the tests' in-memory pipes are another. A ``Protocol``:
mypy checks that a transport fits, and it costs nothing at run time.
"""

from __future__ import annotations

from typing import Protocol


class FrameTransport(Protocol):
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """What arrived, at most ``max_bytes``; b"" at a clean end. ``trio.BrokenResourceError`` if
        the connection broke, ``trio.ClosedResourceError`` once it was closed."""
        ...

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Take all of ``data`` now, send what can be sent, queue the rest behind what is already
        queued; True when nothing is left queued. Never waits; any task may call it. Raises as
        ``receive_some`` does."""
        ...

    @property
    def unsent(self) -> int:
        """Bytes taken by ``send_nowait`` and not sent yet."""
        ...

    async def flush(self) -> None:
        """Wait until nothing is left queued. One task at a time."""
        ...

    async def aclose(self) -> None:
        """Close at once (HTTP/2's GOAWAY has said goodbye)."""
        ...
