"""``ambient ztunnel``'s wait for a request to stop: a signal, or ``POST /quitquitquit``."""

from __future__ import annotations

import signal

import trio

from mesh.concurrency import wait_for_stop


async def signals_from(receive: trio.MemoryReceiveChannel[int]):
    async for signum in receive:
        yield signum


async def test_a_signal_stops_it():
    send, receive = trio.open_memory_channel[int](1)
    result: list[str] = []

    async def waiter() -> None:
        result.append(await wait_for_stop(signals_from(receive), trio.Event()))

    async with trio.open_nursery() as inner:
        inner.start_soon(waiter)
        await send.send(signal.SIGTERM)
    assert result == ["SIGTERM"]


async def test_quitquitquit_stops_it_without_a_signal():
    send, receive = trio.open_memory_channel[int](1)
    quit_requested = trio.Event()
    result: list[str] = []

    async def waiter() -> None:
        result.append(await wait_for_stop(signals_from(receive), quit_requested))

    async with trio.open_nursery() as inner:
        inner.start_soon(waiter)
        quit_requested.set()
    assert result == ["/quitquitquit"]
