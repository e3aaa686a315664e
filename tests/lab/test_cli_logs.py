"""``lab.log_view``: what ``ambient lab logs`` shows of a file, and which pod a name means, without a lab."""

from __future__ import annotations

import datetime as dt
import io

import pytest

from lab.log_view import (
    LogOptionError,
    follow,
    last_lines,
    line_time,
    parse_duration,
    pick_pod,
    read_selected,
    select_lines,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", 10), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25), ("2m3s", 123),
    ("0s", 0), ("1us", 1e-6), ("1µs", 1e-6), ("3ns", 3e-9),
])
def test_parse_duration_as_go_does(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "1d", "5 m", "-5m", "1h-", "m5"])
def test_a_bad_duration_says_what_one_is(text):
    with pytest.raises(LogOptionError, match=f"^{text!r} is not a duration such as 10s, 5m or 1h30m$"):
        parse_duration(text)


UTC_NOON = dt.datetime(2026, 1, 2, 12, 0, 0, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(("line", "when"), [
    (b"2026-01-02T12:00:00Z [supervisor] started pid 7\n", UTC_NOON),
    (b"2026-01-02T12:00:00.250Z x\n", UTC_NOON + 0.25),
    (b"[2026-01-02T12:00:00.5Z] \"GET / HTTP/1.1\" 200\n", UTC_NOON + 0.5),
    (b"2026-01-02T13:00:00+01:00 x\n", UTC_NOON),
    (b"2026-01-02 12:00:00,123 INFO ambient: x\n",  # logging's asctime: local time
     dt.datetime(2026, 1, 2, 12, 0, 0).timestamp() + 0.123),
    (b"Traceback (most recent call last):\n", None),
    (b"2026-13-02T12:00:00Z not a date\n", None),
])
def test_line_time(line, when):
    assert line_time(line) == (pytest.approx(when) if when is not None else None)


LINES = [
    b"no time yet\n",
    b"2026-01-02T12:00:00Z old\n",
    b"  continued old\n",
    b"2026-01-02T12:10:00Z new\n",
    b"  continued new\n",
]


def test_since_keeps_newer_lines_and_their_continuations():
    assert select_lines(LINES, since=UTC_NOON + 300) == LINES[3:]
    assert select_lines(LINES, since=UTC_NOON) == LINES[1:]  # the undated first line: left out
    assert select_lines(LINES) == LINES


def test_tail_after_since():
    assert select_lines(LINES, tail=2) == LINES[3:]
    assert select_lines(LINES, since=UTC_NOON, tail=3) == LINES[2:]
    assert select_lines(LINES, tail=0) == []
    assert select_lines(LINES, tail=99) == LINES


def test_last_lines_reads_back_from_the_end_across_blocks():
    data = b"".join(b"line %d\n" % i for i in range(30_000))  # several READ_BLOCKs
    log = io.BytesIO(data)
    assert last_lines(log, 3) == [b"line 29997\n", b"line 29998\n", b"line 29999\n"]
    assert log.tell() == len(data)  # at the end, for -f
    assert last_lines(io.BytesIO(data), 0) == []
    assert last_lines(io.BytesIO(b"a\nb"), 5) == [b"a\n", b"b"]  # no newline at the end
    assert read_selected(io.BytesIO(data), since=None, tail=1) == [b"line 29999\n"]


def test_follow_writes_what_is_appended_and_stops_when_the_file_goes(tmp_path):
    path = tmp_path / "c.log"
    path.write_bytes(b"shown\n")
    written: list[bytes] = []
    sleeps: list[float] = []
    steps = iter([lambda: path.write_bytes(b"shown\nmore\n"),
                  lambda: path.write_bytes(b"t\n"),  # truncated, then rewritten: read from its start
                  path.unlink])

    def sleep(seconds: float) -> None:  # each poll's wait is where the file changes
        sleeps.append(seconds)
        next(steps)()

    with open(path, "rb") as log:
        log.seek(0, 2)
        follow(path, log, written.append, interval=0.25, sleep=sleep)
    assert written == [b"more\n", b"t\n"]
    assert sleeps == [0.25, 0.25, 0.25]


def pod(name: str, namespace: str = "default", ready: bool = True, **extra) -> dict:
    return {"name": name, "namespace": namespace, "all_ready": ready, **extra}


PODS = [
    pod("echo-0123456789-1"), pod("echo-0123456789-0", ready=False), pod("echo-0123456789-2"),
    pod("curl"), pod("curl", "other"), pod("echoes-0123456789-0"), pod("web-abcdef0123-0", "shop"),
]


@pytest.mark.parametrize(("target", "namespace", "expected"), [
    ("default/curl", None, ("default", "curl")),
    ("curl", "other", ("other", "curl")),
    ("deploy/echo", None, ("default", "echo-0123456789-1")),  # the first ready one
    ("deployment/echo", None, ("default", "echo-0123456789-1")),
    ("default/deploy/echo", None, ("default", "echo-0123456789-1")),
    ("echo", None, ("default", "echo-0123456789-1")),  # no pod has that name: the Deployment's
    ("echoes", None, ("default", "echoes-0123456789-0")),
    ("web", None, ("shop", "web-abcdef0123-0")),
    ("deploy/web", "shop", ("shop", "web-abcdef0123-0")),
])
def test_pick_pod(target, namespace, expected):
    found = pick_pod(PODS, target, "lab", namespace)
    assert (found["namespace"], found["name"]) == expected


def test_pick_pod_prefers_the_owner_the_status_gives():
    pods = [pod("echo-0123456789-0", owner="Deployment/other"), pod("x", owner="Deployment/echo")]
    assert pick_pod(pods, "deploy/echo", "lab")["name"] == "x"


def test_no_ready_pod_picks_the_first():
    pods = [pod("echo-0123456789-1", ready=False), pod("echo-0123456789-0", ready=False)]
    assert pick_pod(pods, "deploy/echo", "lab")["name"] == "echo-0123456789-0"


@pytest.mark.parametrize(("target", "namespace", "message"), [
    ("curl", None, "2 pods are named curl: say NAMESPACE/curl"),
    ("nope", None, "no pod or Deployment nope in lab 'lab'; `ambient lab status` lists them"),
    ("deploy/nope", None, "no pods of Deployment deploy/nope in lab 'lab'; `ambient lab status` lists them"),
    ("deploy/web", "default", "no pods of Deployment deploy/web in lab 'lab'; `ambient lab status` lists them"),
])
def test_pick_pod_errors(target, namespace, message):
    with pytest.raises(LogOptionError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        pick_pod(PODS, target, "lab", namespace)
