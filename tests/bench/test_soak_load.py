"""The soak's checksummed exchange: what counts as intact, what as corrupted, and the per-second tally.
Also one real exchange with the echo server on loopback (its sockets, bounded by their timeouts)."""

from __future__ import annotations

import json
import random
import socket
import threading

import pytest

from soak import load


def echo_of(frame: bytes, status: bytes = load.STATUS_OK) -> tuple[bytes, bytes]:
    return status, frame


def test_an_unchanged_echo_is_intact() -> None:
    frame = load.encode_frame(b"payload bytes")
    assert load.check_echo(frame, *echo_of(frame)) is None


@pytest.mark.parametrize("position", [0, 7, 8, 20, -1])  # magic, length, payload, payload end, digest
def test_a_flipped_bit_anywhere_in_the_echo_is_corrupted(position: int) -> None:
    frame = load.encode_frame(bytes(range(32)))
    damaged = bytearray(frame)
    damaged[position] ^= 0x01
    assert load.check_echo(frame, *echo_of(bytes(damaged))) is not None


def test_a_payload_swapped_with_its_own_valid_digest_is_still_caught() -> None:
    """An echo of a different, internally consistent frame (bytes from another request) is corrupted."""
    sent, other = load.encode_frame(b"a" * 100), load.encode_frame(b"b" * 100)
    assert load.check_echo(sent, *echo_of(other)) == "the echo differs from the frame sent"


def test_echo_of_another_length_and_the_servers_verdict_are_corrupted() -> None:
    frame = load.encode_frame(b"x" * 10)
    assert "echo of" in load.check_echo(frame, *echo_of(frame[:-1]))
    assert "server received" in load.check_echo(frame, *echo_of(frame, load.STATUS_CORRUPTED))
    assert "unknown status" in load.check_echo(frame, *echo_of(frame, b"?"))


def test_the_server_checks_a_frames_digest() -> None:
    body = load.encode_frame(b"hello")[load.HEADER_BYTES:]
    assert load.intact(body)
    assert not load.intact(b"hellp" + body[5:])
    assert not load.intact(body[:load.DIGEST_BYTES])  # too short to hold a payload


@pytest.mark.parametrize("header", [b"XOAK\x00\x00\x00\x05", b"SOAK\x00\x00\x00\x00", b"SOAK\x7f\xff\xff\xff", b"SOAK"])
def test_headers_that_are_not_soak_frames_are_refused(header: bytes) -> None:
    with pytest.raises(load.FrameError):
        load.payload_length(header)


def test_payloads_out_of_bounds_are_refused() -> None:
    assert load.payload_length(load.encode_frame(b"x" * load.MAX_PAYLOAD)[:load.HEADER_BYTES]) == load.MAX_PAYLOAD
    for size in (0, load.MAX_PAYLOAD + 1):
        with pytest.raises(load.FrameError):
            load.encode_frame(b"x" * size)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tally_counts_per_second_and_marks_the_recovery() -> None:
    clock = FakeClock()
    tally = load.Tally(clock)
    tally.ok()
    clock.now = 100.5
    tally.failed("ConnectionRefusedError")
    first = tally.rotate()
    assert (first.second, first.ok, first.failed, first.first_failure, first.recovered) == (100.0, 1, 1, 100.5, None)
    clock.now = 101.2
    tally.failed("timeout")
    clock.now = 101.7
    tally.ok()
    tally.ok()
    second = tally.rotate()
    assert (second.ok, second.failed, second.first_failure, second.last_failure) == (2, 1, 101.2, 101.2)
    assert second.recovered == 101.7  # the first success after the failure, not the second
    assert second.longest_gap == pytest.approx(1.7)  # from the success at 100.0 to the one at 101.7
    assert tally.totals == {"ok": 3, "failed": 2, "corrupted": 0}


def test_a_gap_still_open_at_the_end_of_a_second_counts() -> None:
    clock = FakeClock()
    tally = load.Tally(clock)
    tally.ok()
    clock.now = 102.5  # held up: neither a success nor a failure since
    assert tally.rotate().longest_gap == pytest.approx(2.5)


def test_a_corruption_is_not_a_failure_and_error_kinds_are_bounded() -> None:
    tally = load.Tally(FakeClock())
    tally.failed("corrupted", corrupted=True)
    for n in range(load.ERROR_KINDS_PER_BUCKET + 5):
        tally.failed(f"Kind{n}")
    bucket = tally.rotate()
    assert (bucket.corrupted, bucket.failed) == (1, load.ERROR_KINDS_PER_BUCKET + 5)
    # "corrupted" and the first 15 kinds, the other 6 under "other"
    assert len(bucket.errors) == load.ERROR_KINDS_PER_BUCKET + 1
    assert bucket.errors["other"] == 6
    line = json.loads(bucket.line("keepalive"))
    assert (line["load"], line["corrupted"], line["failed"]) == ("keepalive", 1, load.ERROR_KINDS_PER_BUCKET + 5)


def test_exchange_with_the_echo_server_on_loopback() -> None:
    server = load.EchoServer(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with load.connect(*server.server_address[:2]) as sock:
            rng = random.Random(7)
            assert [load.exchange(sock, rng, 70_000) for _ in range(20)] == [None] * 20
            # A frame whose payload does not match its digest comes back flagged by the server.
            frame = bytearray(load.encode_frame(b"z" * 50))
            frame[load.HEADER_BYTES] ^= 0xFF
            sock.sendall(bytes(frame))
            assert load.recv_exactly(sock, 1) == load.STATUS_CORRUPTED
            assert load.recv_exactly(sock, len(frame)) == bytes(frame)
            # A header announcing too much: the server closes rather than buffer it.
            sock.sendall(load.MAGIC + (load.MAX_PAYLOAD + 1).to_bytes(4, "big"))
            with pytest.raises((ConnectionError, OSError)):
                load.recv_exactly(sock, 1)
        assert server.corrupted == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_server_closes_connections_over_its_bound() -> None:
    server = load.EchoServer(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    held: list[socket.socket] = []
    try:
        rng = random.Random(1)
        for _ in range(load.MAX_SERVER_CONNECTIONS):
            sock = load.connect(*server.server_address[:2])
            assert load.exchange(sock, rng, 100) is None  # served: it holds one of the slots
            held.append(sock)
        extra = load.connect(*server.server_address[:2])
        held.append(extra)
        with pytest.raises((ConnectionError, OSError)):
            load.exchange(extra, rng, 100)
    finally:
        for sock in held:
            sock.close()
        server.shutdown()
        server.server_close()
        thread.join(5)
