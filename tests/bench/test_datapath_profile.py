"""Reading py-spy's collapsed stacks back: where the GIL-holding samples were spent, by package and
by function."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, strategies as st

from datapath.profile import FORMATS, flame_name, package_of, parse_collapsed, record_argv, split_frame, summarize

RUN = "<module> (ambient/__main__.py:5);run (trio/_core/_run.py:2010);unrolled_run (trio/_core/_run.py:2400)"
PUMP = f"{RUN};Relay.pump (hbone/relay.py:40)"
SEND = f"{RUN};Relay.pump (hbone/relay.py:42);TlsStream._try_send (hbone/tls_stream.py"
LOG = f"{RUN};AccessLog.write (ztunnel/connections.py:99)"
# As py-spy --format raw writes it: one line per distinct stack (outermost first), then its samples.
# 200 samples in all, so a sample is half a percent.
RAW = f"""\
{RUN} 31
{RUN};EpollIOManager.get_events (trio/_core/_io_epoll.py:226) 9
{PUMP};Connection.send_data (hbone/http2.py:300);encode_frame (hbone/http2.py:120) 40
{PUMP};Connection.send_data (hbone/http2.py:300);encode_frame (hbone/http2.py:124) 5
{PUMP};Connection.send_data (hbone/http2.py:310) 11
{SEND}:120);SSLObject.write (ssl.py:930) 30
{SEND}:120) 16
{SEND}:131) 4
{RUN};__init__ (<attrs generated methods trio._core._run.CancelScope>:11) 10
{PUMP} 18
{PUMP};__create_fn__.<locals>.__init__ (<string>:3) 6
{LOG};dumps (json/__init__.py:231) 3
{LOG};JSONEncoder.iterencode (json/encoder.py:258) 7
<module> (ambient/__main__.py:5) 3
{RUN};Mapping.get (<frozen _collections_abc>:774) 5
(10.244.0.2:9) 2
"""


def test_parse_collapsed_reads_a_stack_and_its_samples_per_line():
    stacks = parse_collapsed(RAW)
    assert sum(stacks.values()) == 200
    assert stacks[("<module> (ambient/__main__.py:5)",)] == 3
    assert stacks[tuple(f"{RUN};EpollIOManager.get_events (trio/_core/_io_epoll.py:226)".split(";"))] == 9
    assert parse_collapsed("a (x.py:1);b (y.py:2) 3\n\nnot a sample\na (x.py:1);b (y.py:2) 4\n") == Counter(
        {("a (x.py:1)", "b (y.py:2)"): 7})


@pytest.mark.parametrize("frame, parts", [
    ("TlsStream._try_send (hbone/tls_stream.py:120)", ("TlsStream._try_send", "hbone/tls_stream.py")),
    ("AccessLog.write.<locals>.<dictcomp> (ztunnel/connections.py:101)",
     ("AccessLog.write.<locals>.<dictcomp>", "ztunnel/connections.py")),
    ("Mapping.get (<frozen _collections_abc>:774)", ("Mapping.get", "<frozen _collections_abc>")),
    ("run (trio/_core/_run.py)", ("run", "trio/_core/_run.py")),  # recorded with --nolineno
    ("(10.244.0.2:9)", ("", "10.244.0.2")),  # a torn read (--nonblocking)
    ("native_thing", ("native_thing", "")),
])
def test_split_frame(frame, parts):
    assert split_frame(frame) == parts


@pytest.mark.parametrize("file, package", [
    ("trio/_core/_run.py", "trio"),
    ("ssl.py", "ssl"),
    ("json/__init__.py", "json"),
    ("hbone/http2.py", "hbone.http2"),  # the mesh's own code: by module
    ("ztunnel/__init__.py", "ztunnel"),
    ("lab/components.py", "lab.components"),
    ("h2/connection.py", "h2"),
    ("<attrs generated methods trio._core._run.CancelScope>", "trio"),
    ("<frozen abc>", "abc"),
    ("<string>", "<string>"),  # dataclasses' generated methods
    ("10.244.0.2", "?"),
    ("/opt/elsewhere/thing.py", "?"),
    ("", "?"),
])
def test_package_of(file, package):
    assert package_of(file) == package


def test_summarize_shares_own_time_by_package_and_by_function():
    summary = summarize(parse_collapsed(RAW))
    assert summary["samples"] == 200
    assert summary["packages"] == [
        ("hbone.http2", 0.28),  # encode_frame 45 (both lines) + send_data's own 11
        ("trio", 0.25),  # unrolled_run 31 + get_events 9 + attrs' CancelScope.__init__ 10
        ("ssl", 0.15),
        ("hbone.tls_stream", 0.1),
        ("hbone.relay", 0.09),  # not the 103 samples under Relay.pump: only its own 18
        ("json", 0.05),
        ("<string>", 0.03),
        ("_collections_abc", 0.025),
        ("ambient.__main__", 0.015),
        ("?", 0.01),
    ]
    assert summary["top_self"] == [
        ("encode_frame (hbone/http2.py)", 0.225),
        ("unrolled_run (trio/_core/_run.py)", 0.155),
        ("SSLObject.write (ssl.py)", 0.15),
        ("TlsStream._try_send (hbone/tls_stream.py)", 0.1),
        ("Relay.pump (hbone/relay.py)", 0.09),
        ("Connection.send_data (hbone/http2.py)", 0.055),
        ("__init__ (<attrs generated methods trio._core._run.CancelScope>)", 0.05),
        ("EpollIOManager.get_events (trio/_core/_io_epoll.py)", 0.045),
        ("JSONEncoder.iterencode (json/encoder.py)", 0.035),
        ("__create_fn__.<locals>.__init__ (<string>)", 0.03),
    ]
    assert summarize(parse_collapsed(RAW), n=2)["top_self"] == summary["top_self"][:2]


def test_summarize_without_samples():
    assert summarize(parse_collapsed("")) == {"samples": 0, "packages": [], "top_self": []}


FRAMES = st.sampled_from(["f (trio/_run.py:1)", "g (hbone/http2.py:2)", "h (ssl.py:3)", "i (<string>:4)", "j"])


@given(st.dictionaries(st.lists(FRAMES, min_size=1, max_size=4).map(tuple), st.integers(1, 10_000), max_size=20))
def test_summarize_accounts_for_every_sample(stacks):
    text = "".join(f"{';'.join(stack)} {samples}\n" for stack, samples in stacks.items())
    assert parse_collapsed(text) == Counter(stacks)
    summary = summarize(parse_collapsed(text), n=100)
    assert summary["samples"] == sum(stacks.values())
    if stacks:
        assert sum(share for _, share in summary["packages"]) == pytest.approx(1, abs=1e-3)
        assert sum(share for _, share in summary["top_self"]) == pytest.approx(1, abs=1e-3)


def test_record_argv_and_names(tmp_path):
    argv = record_argv("/venv/bin/py-spy", 4242, 7, tmp_path / "x.svg")
    assert argv[:4] == ["/venv/bin/py-spy", "record", "--pid", "4242"]
    assert "--nonblocking" in argv and "--gil" in argv and "--idle" not in argv
    assert argv[argv.index("--duration") + 1] == "7"
    assert argv[argv.index("--format") + 1] == "flamegraph"
    raw = record_argv("/venv/bin/py-spy", 4242, 7, tmp_path / "x.txt", fmt="raw")
    assert raw[raw.index("--format") + 1] == "raw" and "--gil" in raw
    assert set(FORMATS) == {"flamegraph", "raw"}
    assert flame_name("2026-11-21", "ztunnel-node-0", "conn") == "2026-11-21-flame-ztunnel-node-0-conn.svg"
    assert flame_name("2026-11-21", "ztunnel-node-0", "conn", "raw") == "2026-11-21-flame-ztunnel-node-0-conn.txt"
