"""SettleGate: a changed file is applied only once it has looked the same for the settle interval.
WatchedJsonFile: a bad file (too deep, too large, not JSON) keeps the previous value in force."""

from __future__ import annotations

import json
import os

import pytest

from mesh import watched_file
from mesh.watched_file import SETTLE_INTERVAL, SettleGate, WatchedJsonFile, read_at_most

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


def replace(path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a new inode: the watcher sees the change without waiting for the clock


@pytest.mark.parametrize("text, reason", [
    pytest.param("[" * 100_000 + "]" * 100_000, "nested too deeply", id="deep"),
    pytest.param(json.dumps({"pods": "x" * 300_000}), "larger than 300000 bytes", id="large"),
    pytest.param("{", "Expecting property name", id="not-json"),
])
def test_a_bad_json_file_keeps_the_previous_value(tmp_path, caplog, monkeypatch, text, reason):
    monkeypatch.setattr(watched_file, "MAX_JSON_BYTES", 300_000)
    path = tmp_path / "pods.json"
    watched = WatchedJsonFile(path, lambda data: data, {}, what="pod status")
    replace(path, json.dumps({"pods": 1}))
    assert watched.get() == {"pods": 1}
    replace(path, text)
    assert watched.get() == {"pods": 1}
    assert f"pods.json: {reason}" in caplog.text and "keeping the previous pod status in force" in caplog.text
