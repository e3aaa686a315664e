"""first_of: the index of the wait that finished first, with the others cancelled."""

from __future__ import annotations

import trio

from mesh.concurrency import first_of


async def test_first_of_returns_the_finished_wait_and_cancels_the_others():
    event = trio.Event()
    cancelled = []

    async def never() -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(True)

    async def set_soon() -> None:
        await trio.lowlevel.checkpoint()
        event.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(set_soon)
        assert await first_of(never, event.wait, never) == 1
    assert cancelled == [True, True]
