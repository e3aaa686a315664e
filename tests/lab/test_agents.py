"""The lab's reading of its node agents' status.json: every rewrite is seen, and how a capture reads."""

from __future__ import annotations

import json
import logging
import os

import pytest

from lab.agents import AWAITING_ZTUNNEL, ENROLLED, NOT_LISTED, PENDING, AgentStatus, capture_state, read_agent_status


def agent_status(acknowledged: bool, pid: int = 4242) -> bytes:
    """A node agent's status.json with one pod: captured, and acknowledged by ztunnel or not."""
    pod = {"namespace": "mesh", "name": "client", "uid": "Kubernetes//Pod/mesh/client", "ip": "10.244.0.2",
           "captured": True, "acknowledged": acknowledged, "enrolled": acknowledged, "netns_inode": 4026532000,
           "error": None}
    return json.dumps({"node": "node-0", "pid": pid, "ztunnel_connected": True, "pods": [pod]}).encode()


def signature(path) -> tuple[int, int, int]:
    info = os.stat(path)
    return info.st_ino, info.st_size, info.st_mtime_ns


def test_a_rewrite_of_equal_size_inode_and_mtime_is_seen(tmp_path):
    # "captured, awaiting ztunnel", then "enrolled" padded to the same size, written in place and
    # stamped with the first write's mtime: as two rewrites within one timestamp tick whose file got
    # the replaced one's inode number. Only the content tells them apart.
    path = tmp_path / "status.json"
    awaiting = agent_status(acknowledged=False)
    enrolled = agent_status(acknowledged=True)
    enrolled = enrolled[:-1] + b" " * (len(awaiting) - len(enrolled)) + b"}"
    assert len(enrolled) == len(awaiting)
    path.write_bytes(awaiting)
    first = read_agent_status(path, None)
    assert capture_state(first.pods[("mesh", "client")]) == AWAITING_ZTUNNEL
    before = signature(path)
    with open(path, "r+b") as file:
        file.write(enrolled)
    os.utime(path, ns=(before[2], before[2]))
    assert signature(path) == before

    second = read_agent_status(path, first)
    assert second is not None, "the rewrite was missed"
    assert capture_state(second.pods[("mesh", "client")]) == ENROLLED
    assert read_agent_status(path, second) is None  # unchanged since


def test_first_read_missing_file_and_file_that_appears(tmp_path):
    path = tmp_path / "status.json"
    missing = read_agent_status(path, None)
    assert missing == AgentStatus() and missing.pid is None and dict(missing.pods) == {}
    assert read_agent_status(path, missing) is None
    path.write_bytes(agent_status(acknowledged=True, pid=77))
    appeared = read_agent_status(path, missing)
    assert appeared.pid == 77 and list(appeared.pods) == [("mesh", "client")]
    path.unlink()
    assert read_agent_status(path, appeared) == AgentStatus()


def test_a_file_that_is_not_json_vouches_for_nothing_and_is_logged_once(tmp_path, caplog):
    path = tmp_path / "status.json"
    path.write_bytes(b'{"pid": 1, "pods": [')
    with caplog.at_level(logging.ERROR, logger="ambient.lab"):
        broken = read_agent_status(path, None)
        assert read_agent_status(path, broken) is None
    assert broken.pid is None and dict(broken.pods) == {}
    assert [r.getMessage() for r in caplog.records if "is not valid JSON" in r.getMessage()] != []
    assert len(caplog.records) == 1


@pytest.mark.parametrize("entry, state", [
    (None, NOT_LISTED),
    ({"captured": False, "acknowledged": False, "enrolled": False, "error": None}, PENDING),
    ({"captured": True, "acknowledged": False, "enrolled": False, "error": None}, AWAITING_ZTUNNEL),
    ({"captured": True, "acknowledged": True, "enrolled": True, "error": None}, ENROLLED),
    ({"captured": False, "acknowledged": False, "enrolled": False, "error": "cannot enroll: EPERM"},
     "error: cannot enroll: EPERM"),
])
def test_capture_state_in_lab_status_words(entry, state):
    assert capture_state(entry) == state
