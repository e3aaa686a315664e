"""Small structured-concurrency helpers shared by the trio drivers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio


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
