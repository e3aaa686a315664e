"""Each container's command line in manifests/install/ is one the `ambient` of this tree accepts: the
manifests are written against the flags, so a renamed or missing flag fails here, not on a node.
Parsed with the real parser (ambient.cli.build_parser), nothing run."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from ambient.cli import build_parser
from tests.install.manifests import Doc, containers, workloads

# Flags the manifests use that the tree does not accept yet, each with who adds it. strict: the day it
# is accepted, the test fails until its entry is removed here.
PENDING: dict[str, str] = {}  # label -> why its command line is not accepted yet (an expected failure)


def ambient_argv(spec: Doc) -> list[str]:
    """The arguments after `ambient`: the image's ENTRYPOINT is `ambient`; a shell command line is
    read up to its `exec ambient`."""
    if "command" not in spec:
        return list(spec["args"])
    command = spec["command"]
    assert command[:2] == ["/bin/sh", "-c"] and len(command) == 3, command
    words = shlex.split(command[2])
    start = words.index("exec") + 1
    assert words[start] == "ambient", words
    return words[start + 1:]


def cases() -> list[Any]:
    found = []
    for workload in workloads():
        for spec in containers(workload.doc):
            label = f"{workload.kind}/{workload.name}/{spec['name']}"
            marks = [pytest.mark.xfail(strict=True, reason=PENDING[label])] if label in PENDING else []
            found.append(pytest.param(ambient_argv(spec), id=label, marks=marks))
    return found


@pytest.mark.parametrize("argv", cases())
def test_the_command_line_is_accepted(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        build_parser(argv).parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"ambient {shlex.join(argv)}: refused ({exc.code}): {capsys.readouterr().err.strip()}")
