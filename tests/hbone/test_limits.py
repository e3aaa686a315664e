"""``hbone.limits``: every bound in one place, each with the reason for its value."""

from __future__ import annotations

import ast
from pathlib import Path

import hbone.connect
import hbone.driver
import hbone.limits

UNITS = {"KiB", "MiB"}


def test_every_limit_is_positive_and_says_why_in_a_comment_above_it():
    source = Path(hbone.limits.__file__).read_text()
    lines = source.splitlines()
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in UNITS:
                continue
            names.append(name)
            assert getattr(hbone.limits, name) > 0, name
            above = lines[node.lineno - 2].strip()  # the last line of the comment block above it
            assert above.startswith("#"), f"{name} has no comment saying why"
    assert "MAX_CONTINUATION_FRAMES" in names and "MAX_PENDING_CONTROL_FRAMES" in names


def test_the_old_homes_of_the_limits_still_export_them():
    for module, names in ((hbone.connect, ["MAX_CONCURRENT_STREAMS", "STREAM_WINDOW", "CONNECTION_WINDOW",
                                           "MAX_FRAME_SIZE", "MAX_HEADER_LIST_SIZE", "PING_INTERVAL",
                                           "PING_TIMEOUT"]),
                          (hbone.driver, ["READ_SIZE", "HIGH_WATER", "IDLE_TIMEOUT", "CLOSE_GRACE"])):
        for name in names:
            assert getattr(module, name) == getattr(hbone.limits, name), name
