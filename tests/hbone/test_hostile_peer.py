"""Hostile HTTP/2 peers (issue 18): each attack replayed against the sans-IO core, or against the
server driver over in-memory pipes, with bounds on the work, output and dials it makes us spend.

Frames are built by hand (tests/ztunnel/wire.py), as an attacker would. Work is counted (calls,
events, bytes queued, handler invocations), not timed; the one wall-clock bound is generous.
"""

from __future__ import annotations

import contextlib
import time

import pytest
import trio
import trio.testing

import hbone.driver
import hbone.http2
import hbone.limits as limits
from hbone.connect import ConnectRequested, HboneServerConnection
from hbone.driver import HboneServerDriver, IncomingConnect
from hbone.http2 import ConnectionClosed, ErrorCode, SendWindowOpened, Setting
from hbone.limits import (
    MAX_CONTINUATION_FRAMES,
    MAX_EMPTY_FRAMES_PER_READ,
    MAX_PENDING_CONTROL_FRAMES,
    MAX_PREMATURE_RESETS,
    MAX_SETTINGS_ENTRIES,
)
from tests.hbone.memory_transport import MemoryPipe, MemoryTransport
from tests.ztunnel.wire import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
    frames_of,
    literal,
    setting,
    u32,
)

POD = "10.0.0.1"
REQUEST = literal(b":method", b"CONNECT") + literal(b":authority", f"{POD}:80".encode())
OPENING = PREFACE + frame(SETTINGS, 0, 0)
CANCEL = u32(ErrorCode.CANCEL)
CALM = ErrorCode.ENHANCE_YOUR_CALM


def server() -> HboneServerConnection:
    """A server that has read the client's preface and SETTINGS, its own first frames taken."""
    conn = HboneServerConnection([POD])
    assert conn.receive_bytes(OPENING) == []
    conn.data_to_send()
    return conn


def goaway_code(data: bytes) -> int | None:
    codes = [int.from_bytes(payload[4:8], "big") for kind, _, _, payload in frames_of(data) if kind == GOAWAY]
    return codes[-1] if codes else None


def closed_code(events: list) -> int | None:
    closings = [event for event in events if type(event) is ConnectionClosed]
    return closings[-1].error_code if closings else None


def rapid_resets(count: int, first: int = 1) -> bytes:
    """``count`` streams, each a valid CONNECT at once reset by the client (CVE-2023-44487)."""
    return b"".join(frame(HEADERS, END_HEADERS, sid, REQUEST) + frame(RST_STREAM, 0, sid, CANCEL)
                    for sid in range(first, first + 2 * count, 2))


# ---------------------------------------------------------------- CONTINUATION flood (defect 2)


def test_continuation_frames_past_the_cap_end_the_connection_with_enhance_your_calm():
    conn = server()
    opened = frame(HEADERS, 0, 1, REQUEST[:3]) + frame(CONTINUATION, 0, 1) * MAX_CONTINUATION_FRAMES
    assert conn.receive_bytes(opened) == [] and not conn.closed
    events = conn.receive_bytes(frame(CONTINUATION, 0, 1))
    assert closed_code(events) == CALM
    assert goaway_code(conn.data_to_send()) == CALM


def test_a_flood_of_100k_empty_continuation_frames_is_cut_off_at_once():
    """The adversarial run: 100,000 empty CONTINUATION frames (900 KB) in one write froze ztunnel for
    ~49 s. Cut off after MAX_CONTINUATION_FRAMES, the rest is never looked at."""
    conn = server()
    flood = frame(HEADERS, 0, 1, REQUEST[:3]) + frame(CONTINUATION, 0, 1) * 100_000
    started = time.perf_counter()
    events = conn.receive_bytes(flood)
    elapsed = time.perf_counter() - started
    assert closed_code(events) == CALM
    assert goaway_code(conn.data_to_send()) == CALM
    assert elapsed < 5.0  # generous: the quadratic loop took ~49 s here


def test_a_header_block_is_gathered_in_work_linear_in_its_frames(monkeypatch):
    """With the frame cap out of the way, a header block in 2,000 one-byte fragments costs a bounded
    number of length computations per fragment, not one per fragment so far."""
    monkeypatch.setattr(hbone.http2, "MAX_CONTINUATION_FRAMES", 10**6, raising=False)
    block = REQUEST + b"".join(literal(b"x-pad-%02d" % i, b"v" * 90) for i in range(20))
    fragments = [block[i:i + 1] for i in range(len(block))]
    wire = frame(HEADERS, 0, 1, fragments[0]) + b"".join(
        frame(CONTINUATION, END_HEADERS if i == len(fragments) - 1 else 0, 1, fragment)
        for i, fragment in enumerate(fragments[1:], 1))
    calls = 0

    def counting_len(obj) -> int:
        nonlocal calls
        calls += 1
        return len(obj)

    conn = server()
    monkeypatch.setattr(hbone.http2, "len", counting_len, raising=False)
    events = conn.receive_bytes(wire)
    monkeypatch.delattr(hbone.http2, "len")
    [requested] = [event for event in events if type(event) is ConnectRequested]
    assert requested.request.ip == POD
    assert calls <= 10 * len(fragments)  # quadratic: ~len(fragments) ** 2 / 2 = 2.1 million


# ---------------------------------------------------------------- rapid reset (defect 3)


def test_rapid_reset_hands_up_at_most_the_reset_budget_and_ends_with_enhance_your_calm():
    """50,000 CONNECT + RST_STREAM pairs in one write: the adversarial run's fd and memory blow-up."""
    conn = server()
    events = conn.receive_bytes(rapid_resets(50_000))
    requested = [event for event in events if type(event) is ConnectRequested]
    assert len(requested) <= MAX_PREMATURE_RESETS + 1
    assert closed_code(events) == CALM
    assert goaway_code(conn.data_to_send()) == CALM


def test_streams_reset_after_their_answer_spend_no_reset_budget():
    """A client that closes its tunnels abruptly (RST after the 200) is an ordinary client."""
    conn = server()
    for sid in range(1, 2 * 3 * MAX_PREMATURE_RESETS, 2):
        conn.receive_bytes(frame(HEADERS, END_HEADERS, sid, REQUEST))
        conn.accept(sid)
        conn.receive_bytes(frame(RST_STREAM, 0, sid, CANCEL))
        conn.data_to_send()
    assert not conn.closed


def test_each_answered_stream_earns_back_one_premature_reset():
    conn = server()
    sid = 1
    for _ in range(3 * MAX_PREMATURE_RESETS):  # one answered, one given up on, and again
        conn.receive_bytes(frame(HEADERS, END_HEADERS, sid, REQUEST))
        conn.reject(sid, 503)
        conn.receive_bytes(rapid_resets(1, sid + 2))
        conn.data_to_send()
        sid += 4
    assert not conn.closed


# ---------------------------------------------------------------- control frames nobody reads (defect 4)


FLOODS = {
    "PING (CVE-2019-9512)": frame(PING, 0, 0, b"12345678"),
    "SETTINGS (CVE-2019-9515)": frame(SETTINGS, 0, 0),
    # A PRIORITY of the wrong size is a stream error: each provokes a RST_STREAM (CVE-2019-9514).
    "RST_STREAM provoked (CVE-2019-9514)": frame(PRIORITY, 0, 3, b"\0"),
}


@pytest.mark.parametrize("unit", FLOODS.values(), ids=FLOODS.keys())
def test_control_frames_a_peer_does_not_read_are_bounded(unit):
    """5 million PINGs from a peer that never read took ztunnel's RSS from 91 to 418 MB: what the
    answers queue up is bounded, and the connection ends over the bound."""
    conn = server()
    events: list = []
    for _ in range(100):  # 100,000 frames in all, in reads of 1,000, none of our output taken
        events += conn.receive_bytes(unit * 1000)
    assert closed_code(events) == CALM
    queued = conn.data_to_send()
    assert goaway_code(queued) == CALM
    assert len(queued) <= (MAX_PENDING_CONTROL_FRAMES + 1) * 17 + 512  # each answer 17 bytes at most, GOAWAY


def test_control_frames_answered_as_they_are_read_never_reach_the_bound():
    conn = server()
    for _ in range(20):
        conn.receive_bytes(FLOODS["PING (CVE-2019-9512)"] * (MAX_PENDING_CONTROL_FRAMES // 2))
        assert len(frames_of(conn.data_to_send())) == MAX_PENDING_CONTROL_FRAMES // 2
    assert not conn.closed


def test_a_settings_frame_with_more_entries_than_the_cap_ends_the_connection():
    conn = server()
    entries = setting(Setting.INITIAL_WINDOW_SIZE, 1 << 20)
    conn.receive_bytes(frame(SETTINGS, 0, 0, entries * MAX_SETTINGS_ENTRIES))
    assert not conn.closed
    events = conn.receive_bytes(frame(SETTINGS, 0, 0, entries * (MAX_SETTINGS_ENTRIES + 1)))
    assert closed_code(events) == CALM


@pytest.mark.parametrize("empty", [frame(DATA, 0, 1), frame(HEADERS, END_HEADERS, 1)], ids=["DATA", "HEADERS"])
def test_frames_that_carry_nothing_are_bounded_per_read(empty):
    """CVE-2019-9518: frames without payload and without END_STREAM, each work for nothing."""
    conn = server()
    conn.receive_bytes(frame(HEADERS, END_HEADERS, 1, REQUEST))
    conn.accept(1)
    assert not conn.receive_bytes(empty * MAX_EMPTY_FRAMES_PER_READ)  # no events, no harm
    assert not conn.closed
    events = conn.receive_bytes(empty * (MAX_EMPTY_FRAMES_PER_READ + 1))
    assert closed_code(events) == CALM
    end = server()  # END_STREAM on an empty frame is a half-close, not nothing
    end.receive_bytes(frame(HEADERS, END_HEADERS, 1, REQUEST))
    end.accept(1)
    end.receive_bytes(frame(DATA, END_STREAM, 1))
    assert not end.closed


def test_a_window_update_storm_wakes_senders_only_when_a_window_was_exhausted():
    conn = server()
    conn.receive_bytes(frame(HEADERS, END_HEADERS, 1, REQUEST))
    conn.accept(1)
    storm = (frame(WINDOW_UPDATE, 0, 0, u32(1)) + frame(WINDOW_UPDATE, 0, 1, u32(1))) * 10_000
    events = conn.receive_bytes(storm)
    assert len([event for event in events if type(event) is SendWindowOpened]) <= 2  # was 20,000
    assert conn.send_data(1, b"x" * 200_000) == 65_535 + 10_000  # the increments all count
    assert conn.receive_bytes(frame(WINDOW_UPDATE, 0, 0, u32(100))) == [SendWindowOpened(0)]  # was exhausted
    assert conn.receive_bytes(frame(WINDOW_UPDATE, 0, 0, u32(100))) == []  # open already: nobody waits on it
    assert conn.receive_bytes(frame(WINDOW_UPDATE, 0, 1, u32(100))) == [SendWindowOpened(1)]


# ---------------------------------------------------------------- the server driver over memory pipes


def held_by(driver: HboneServerDriver) -> int:
    """Output bytes the driver's HTTP/2 connection has queued and not handed to the transport yet."""
    return sum(map(len, driver.peer._http2._out))


class Attacker:
    """The client's end of a connection to a ``HboneServerDriver``: raw bytes in, and maybe never read."""

    def __init__(self, capacity_to_attacker: int | None = None) -> None:
        to_server, to_attacker = MemoryPipe(), MemoryPipe(capacity_to_attacker)
        self.end = MemoryTransport(to_attacker, to_server)
        self.server_end = MemoryTransport(to_server, to_attacker)
        self.handled = 0  # handler invocations
        self.dials_cancelled = 0
        self.dialling = trio.Event()

    async def handler(self, request: IncomingConnect) -> None:
        self.handled += 1
        try:
            self.dialling.set()
            await trio.sleep_forever()  # an app that takes its time to accept
        except trio.Cancelled:
            self.dials_cancelled += 1
            raise

    def send(self, data: bytes) -> None:
        assert self.end.send_nowait(data)


async def test_streams_reset_in_the_batch_that_opened_them_never_reach_the_handler():
    """5,000 CONNECT + RST_STREAM pairs in one write (the adversarial run used 50,000: fds 25 -> 14,375)."""
    attacker = Attacker()
    async with trio.open_nursery() as nursery:
        driver = HboneServerDriver(attacker.server_end, [POD], attacker.handler)
        nursery.start_soon(driver.serve)
        attacker.send(OPENING + rapid_resets(5_000))
        await trio.testing.wait_all_tasks_blocked()
        assert attacker.handled == 0
        assert driver.closed and f"error code {int(CALM)}" in driver.close_reason
        nursery.cancel_scope.cancel()
    received = bytes(attacker.end.incoming.buffer)
    assert goaway_code(received) == CALM


async def test_a_stream_reset_while_its_upstream_is_dialled_cancels_the_dial():
    attacker = Attacker()
    async with trio.open_nursery() as nursery:
        driver = HboneServerDriver(attacker.server_end, [POD], attacker.handler)
        nursery.start_soon(driver.serve)
        attacker.send(OPENING + frame(HEADERS, END_HEADERS, 1, REQUEST))
        await attacker.dialling.wait()
        attacker.send(frame(RST_STREAM, 0, 1, CANCEL))
        await trio.testing.wait_all_tasks_blocked()
        assert (attacker.handled, attacker.dials_cancelled) == (1, 1)
        assert not driver.closed  # one reset is no attack
        nursery.cancel_scope.cancel()


async def test_a_peer_that_never_reads_cannot_grow_the_servers_output():
    """PINGs in writes of 500, each read by the server, while the attacker reads nothing: the answers
    stop at the socket, the connection ends over the bound, and the output held stays bounded."""
    attacker = Attacker(capacity_to_attacker=16 * 1024)
    async with trio.open_nursery() as nursery:
        driver = HboneServerDriver(attacker.server_end, [POD], attacker.handler)
        nursery.start_soon(driver.serve)
        attacker.send(OPENING)
        most_held = 0
        for _ in range(200):  # 100,000 PINGs
            if attacker.server_end._closed:
                break
            attacker.send(FLOODS["PING (CVE-2019-9512)"] * 500)
            await trio.testing.wait_all_tasks_blocked()
            most_held = max(most_held, attacker.server_end.unsent + held_by(driver))
        assert driver.closed and f"error code {int(CALM)}" in driver.close_reason
        assert most_held <= (MAX_PENDING_CONTROL_FRAMES + 500) * 17 + 1024
        nursery.cancel_scope.cancel()


async def test_the_reader_stops_while_the_output_backlog_is_over_the_bound(monkeypatch):
    """Backpressure, apart from the control-frame bound: while more than MAX_QUEUED_OUTPUT_BYTES wait
    for a peer that does not read (here a download it asked for), the server reads nothing more."""
    bound = 64 * 1024  # under HIGH_WATER, so that the download alone goes over it
    monkeypatch.setattr(hbone.driver, "MAX_QUEUED_OUTPUT_BYTES", bound, raising=False)
    attacker = Attacker(capacity_to_attacker=16 * 1024)
    download_sent = trio.Event()

    async def download(request: IncomingConnect) -> None:
        async with request.accept() as stream:
            await stream.send_all(b"x" * (1 << 20))
            download_sent.set()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        driver = HboneServerDriver(attacker.server_end, [POD], download)
        nursery.start_soon(driver.serve)
        attacker.send(PREFACE + frame(SETTINGS, 0, 0, setting(Setting.INITIAL_WINDOW_SIZE, 1 << 24))
                      + frame(WINDOW_UPDATE, 0, 0, u32(1 << 24)) + frame(HEADERS, END_HEADERS, 1, REQUEST))
        await trio.testing.wait_all_tasks_blocked()
        assert attacker.server_end.unsent >= bound  # the download waits for the socket
        ping = FLOODS["PING (CVE-2019-9512)"]
        for _ in range(2):  # the read already waiting when the download began takes the first
            attacker.send(ping * 100)
            await trio.testing.wait_all_tasks_blocked()
        assert len(attacker.end.outgoing.buffer) == len(ping) * 100  # not read: the reader waits
        received = bytearray()
        ack = frame(PING, 1, 0, b"12345678")
        answered = trio.Event()

        async def read() -> None:  # the attacker reads at last: the server reads and answers
            while True:
                received.extend(await attacker.end.receive_some())
                if received.count(ack) >= 200:
                    answered.set()

        nursery.start_soon(read)
        # The answers can arrive before the last of the download: both, whatever the order. The
        # bound only ends a hang; an event ends the wait.
        with trio.fail_after(10):
            await answered.wait()
            await download_sent.wait()
        assert not driver.closed
        nursery.cancel_scope.cancel()


async def test_a_connection_closed_while_its_peer_does_not_read_ends_within_the_grace(autojump_clock):
    """A peer that sends PINGs slowly enough to stay under every flood bound, and never reads: our
    output waits for the socket, the PING timeout (or any close) ends the connection, and the driver
    stops within CLOSE_GRACE of that instead of waiting for the peer to read (found by bench/attacks.py:
    the connection stayed open, holding its socket buffers, until the attacker went away)."""
    attacker = Attacker(capacity_to_attacker=16 * 1024)
    ended = trio.Event()
    async with trio.open_nursery() as nursery:
        driver = HboneServerDriver(attacker.server_end, [POD], attacker.handler)

        async def serve() -> None:
            await driver.serve()
            ended.set()

        nursery.start_soon(serve)
        attacker.send(OPENING)
        ping = FLOODS["PING (CVE-2019-9512)"]
        while attacker.server_end.unsent == 0:  # paced: each batch read and answered, until the pipe is full
            attacker.send(ping * 100)
            await trio.testing.wait_all_tasks_blocked()
        assert not driver.closed
        closed_at = trio.current_time()
        driver.close("closed locally, as ztunnel does on its handshake timeout")
        with trio.move_on_after(hbone.driver.CLOSE_GRACE + 1) as waited:
            await ended.wait()
        assert not waited.cancelled_caught, "the driver still held the connection after its grace"
        assert trio.current_time() - closed_at <= hbone.driver.CLOSE_GRACE + 0.01
        assert attacker.server_end._closed
        nursery.cancel_scope.cancel()


async def answer_pings(end: MemoryTransport) -> None:
    """A well-behaved peer in one respect: it reads what the server sends and answers its PINGs."""
    buffer = b""
    while data := await end.receive_some():
        buffer += data
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags, payload = buffer[3], buffer[4], buffer[9:9 + length]
            buffer = buffer[9 + length:]
            if kind == hbone.http2.PING and not flags & 0x1:
                end.send_nowait(frame(hbone.http2.PING, 0x1, 0, payload))


async def test_an_accepted_connection_left_without_streams_is_closed_after_the_server_idle_timeout(autojump_clock):
    """A peer that answers PINGs, opened a stream, let it end, and kept the connection: it is closed
    SERVER_IDLE_TIMEOUT after its last stream, not held for ever (only the per-pod cap bounded it)."""
    attacker = Attacker()

    async def echo_once(request: IncomingConnect) -> None:
        async with request.accept() as stream:
            with contextlib.suppress(trio.BrokenResourceError):  # the peer resets it
                await stream.receive_some()

    async with trio.open_nursery() as nursery:
        driver = HboneServerDriver(attacker.server_end, [POD], echo_once)
        nursery.start_soon(driver.serve)
        nursery.start_soon(answer_pings, attacker.end)
        attacker.send(OPENING + frame(HEADERS, END_HEADERS, 1, REQUEST))
        await trio.testing.wait_all_tasks_blocked()
        assert driver.streams
        await trio.sleep(3 * limits.SERVER_IDLE_TIMEOUT)  # an open stream: never idle, however long
        assert not driver.closed
        attacker.send(frame(RST_STREAM, 0, 1, CANCEL))
        await trio.testing.wait_all_tasks_blocked()
        assert not driver.streams
        idle_from = trio.current_time()
        await trio.sleep(limits.SERVER_IDLE_TIMEOUT - 1)
        assert not driver.closed
        await trio.sleep(2)
        assert driver.closed and driver.close_reason == f"no stream for {limits.SERVER_IDLE_TIMEOUT:.0f} s"
        assert trio.current_time() - idle_from <= limits.SERVER_IDLE_TIMEOUT + 1
        nursery.cancel_scope.cancel()


async def test_many_streams_sending_at_once_hold_the_output_near_high_water():
    """100 relays each sending a 256 KiB chunk to a peer that reads nothing: the output waiting for the
    socket stays near HIGH_WATER (plus a chunk), not 100 chunks."""
    chunk = 256 * 1024
    attacker = Attacker(capacity_to_attacker=16 * 1024)
    started = trio.Event()
    count = 0

    async def download(request: IncomingConnect) -> None:
        nonlocal count
        async with request.accept() as stream:
            count += 1
            if count == 100:
                started.set()
            await stream.send_all(b"x" * chunk)
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        driver = HboneServerDriver(attacker.server_end, [POD], download)
        nursery.start_soon(driver.serve)
        big_window = setting(Setting.INITIAL_WINDOW_SIZE, 1 << 24)
        attacker.send(PREFACE + frame(SETTINGS, 0, 0, big_window) + frame(WINDOW_UPDATE, 0, 0, u32(1 << 30))
                      + b"".join(frame(HEADERS, END_HEADERS, sid, REQUEST) for sid in range(1, 200, 2)))
        await started.wait()
        await trio.testing.wait_all_tasks_blocked()
        held = attacker.server_end.unsent + held_by(driver)
        assert held <= hbone.driver.HIGH_WATER + 2 * chunk, held
        nursery.cancel_scope.cancel()
