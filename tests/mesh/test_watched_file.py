"""SettleGate: a changed file is applied only once it has looked the same for the settle interval."""

from __future__ import annotations

from mesh.watched_file import SETTLE_INTERVAL, SettleGate, read_at_most

SIG = (1, 10, 100)


def test_a_change_settles_after_two_looks_the_interval_apart():
    gate = SettleGate()
    assert gate.settled("a", SIG, b"x", 0.0) is False  # first look: wait
    assert gate.settled("a", SIG, b"x", SETTLE_INTERVAL / 2) is False
    assert gate.settled("a", SIG, b"x", SETTLE_INTERVAL) is True
    assert gate.waiting() == set()


def test_any_difference_between_looks_starts_the_wait_again():
    gate = SettleGate(interval=1.0)
    gate.settled("a", SIG, b"x", 0.0)
    assert gate.settled("a", (1, 10, 101), b"x", 1.0) is False  # mtime
    assert gate.settled("a", (1, 10, 101), b"y", 2.0) is False  # content, same signature
    assert gate.settled("a", (1, 10, 101), b"y", 2.5) is False
    assert gate.settled("a", (1, 10, 101), b"y", 3.0) is True


def test_a_missing_file_settles_like_any_other_state():
    gate = SettleGate(interval=1.0)
    assert gate.settled("a", None, None, 0.0) is False
    assert gate.settled("a", SIG, b"x", 0.5) is False  # back before it settled
    assert gate.settled("a", None, None, 1.0) is False
    assert gate.settled("a", None, None, 2.0) is True


def test_forget_drops_the_wait_and_files_are_independent():
    gate = SettleGate(interval=1.0)
    gate.settled("a", SIG, b"x", 0.0)
    gate.settled("b", SIG, b"x", 0.0)
    gate.forget("a")
    assert gate.waiting() == {"b"}
    assert gate.settled("a", SIG, b"x", 1.0) is False
    assert gate.settled("b", SIG, b"x", 1.0) is True


def test_read_at_most_reads_no_more_than_the_bound_and_one(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    assert read_at_most(path, 5) == b"12345"
    assert read_at_most(path, 4) is None
