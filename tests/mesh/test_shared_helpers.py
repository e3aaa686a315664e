"""The small helpers every component shares: one backoff, one address format, one error description,
one accept loop."""

from __future__ import annotations

import errno

import pytest
import trio

from mesh.addresses import format_address
from mesh.backoff import Backoff
from mesh.concurrency import accept_loop
from mesh.errors import describe


@pytest.mark.parametrize("host, port, text", [
    ("10.0.0.1", 80, "10.0.0.1:80"),
    ("fd00::1", 15008, "[fd00::1]:15008"),
    ("localhost", 1, "localhost:1"),
])
def test_format_address_brackets_ipv6_hosts(host, port, text):
    assert format_address(host, port) == text


def test_backoff_doubles_up_to_the_cap_without_jitter():
    backoff = Backoff(initial=0.5, cap=4.0, jitter=0)
    assert [backoff.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(10_000) == 4.0  # a huge attempt count neither overflows nor exceeds the cap


def test_backoff_jitter_only_shortens_the_delay():
    low = Backoff(initial=1.0, cap=8.0, jitter=0.5, uniform=lambda a, b: a)
    high = Backoff(initial=1.0, cap=8.0, jitter=0.5, uniform=lambda a, b: b)
    assert (low.delay(2), high.delay(2)) == (2.0, 4.0)


@pytest.mark.parametrize("kwargs", [dict(initial=2, cap=1), dict(cap=0, initial=0), dict(multiplier=0.5),
                                    dict(jitter=1.0), dict(jitter=-0.1)])
def test_backoff_rejects_a_schedule_that_makes_no_sense(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_describe_names_the_message_the_group_or_the_cause():
    assert describe(ValueError("bad port")) == "bad port"
    assert describe(TimeoutError()) == "TimeoutError"
    group = ExceptionGroup("several", [OSError("no route"), ValueError("bad port")])
    assert describe(group) == "no route; bad port"
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as exc:
            raise EOFError() from exc
    except EOFError as outer:
        assert describe(outer) == "EOFError: ConnectionResetError: reset by peer"


class _Listener:
    """A listener whose accept() fails with the given errors first, then hands out one connection."""

    def __init__(self, errors: list[OSError]) -> None:
        self.errors = errors

    async def accept(self):
        await trio.lowlevel.checkpoint()
        if self.errors:
            raise self.errors.pop(0)
        if self.errors is not None:
            self.errors = None
            return "sock", ("10.0.0.1", 1234)
        await trio.sleep_forever()


async def test_accept_loop_rides_out_running_out_of_fds(autojump_clock):
    handled = []

    async def handle(sock, peer):
        handled.append((sock, peer))

    async with trio.open_nursery() as nursery:
        listener = _Listener([OSError(errno.EMFILE, "Too many open files"), OSError(errno.ENOBUFS, "No buffer")])
        nursery.start_soon(accept_loop, listener, handle, nursery, "test")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert handled == [("sock", ("10.0.0.1", 1234))]


async def test_accept_loop_ends_on_any_other_error():
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="Bad file descriptor")):
        async with trio.open_nursery() as nursery:
            await accept_loop(_Listener([OSError(errno.EBADF, "Bad file descriptor")]), trio.sleep, nursery, "test")


async def test_accept_loop_resets_what_admit_refuses_without_a_task(autojump_clock):
    import socket

    a, b = socket.socketpair()
    listener_side = trio.socket.from_stdlib_socket(a)

    class OneSocket:
        def __init__(self) -> None:
            self.given = False

        async def accept(self):
            await trio.lowlevel.checkpoint()
            if not self.given:
                self.given = True
                return listener_side, ("10.0.0.9", 4321)
            await trio.sleep_forever()

    handled, asked = [], []

    async def handle(sock, peer):
        handled.append(peer)

    def admit(sock, peer) -> bool:
        asked.append(peer)
        return False

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, OneSocket(), handle, nursery, "test", admit)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert asked == [("10.0.0.9", 4321)] and handled == []
    assert listener_side.fileno() == -1  # closed in the loop
    assert b.recv(1) == b""  # the other side sees it end
    b.close()
