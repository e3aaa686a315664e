"""Fuzz targets for the JSON files a running server re-reads from disk (``mesh.watched_file``): the
CA's token store, the CA's pod placements, the control plane's pod statuses. Their promise: content
they cannot use raises ValueError, which ``WatchedJsonFile`` logs while the previous value stays in
force; nothing else may escape (it would fail the request, or the scan, that read the file)."""

from __future__ import annotations

import json

from hypothesis import example, given, strategies as st

from ca.placement import parse_placements
from ca.tokens import parse_tokens
from controlplane.registry import parse_pod_statuses
from mesh.watched_file import WatchedJsonFile
from tests.fuzz import fuzz_settings

SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=20)
SPIFFE = st.sampled_from(["spiffe://cluster.local/ns/a/sa/b", "spiffe://x/ns//sa/b", "spiffe:/bad", ""]) | JSON


def record():
    """Token records near the real shape, with any field of any type."""
    return st.fixed_dictionaries({}, optional={
        "kind": st.sampled_from(["node", "workload", "other"]) | JSON, "node": st.text(max_size=10) | JSON,
        "identity": SPIFFE, "sha256": st.text(alphabet="0123456789abcdef", min_size=64, max_size=64) | JSON,
        "addresses": st.lists(st.sampled_from(["10.0.0.1", "::1", "x", ""]) | JSON, max_size=3) | JSON,
        "created": JSON})


PARSERS = [
    (parse_tokens, st.fixed_dictionaries({"tokens": st.lists(record() | JSON, max_size=4)}) | JSON),
    (parse_placements, st.fixed_dictionaries({"nodes": st.dictionaries(st.text(max_size=8),
                                                                        st.lists(SPIFFE, max_size=3) | JSON,
                                                                        max_size=3)}) | JSON),
    (parse_pod_statuses, st.fixed_dictionaries({"pods": st.dictionaries(
        st.sampled_from(["a/b", "a/", "/b", "ab"]) | st.text(max_size=8),
        st.fixed_dictionaries({}, optional={"ip": st.sampled_from(["10.0.0.1", "300.1.1.1", ""]) | JSON,
                                            "node": JSON, "ready": JSON}) | JSON, max_size=3)}) | JSON),
]


@fuzz_settings(300)
@given(data=st.data())
@example(data=None)
def test_the_parsers_of_watched_files_raise_nothing_but_value_error(data) -> None:
    for parse, strategy in PARSERS:
        value = {"tokens": [{"kind": "node", "node": {}}]} if data is None else data.draw(strategy)
        try:
            parse(value)
        except ValueError:
            pass


@fuzz_settings(150)
@given(content=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_a_watched_file_keeps_its_previous_value_whatever_is_written(tmp_path_factory, content: bytes) -> None:
    path = tmp_path_factory.mktemp("watched") / "tokens.json"
    watched = WatchedJsonFile(path, parse_tokens, {})
    path.write_text('{"tokens": []}')
    assert watched.get() == {}
    good = watched.get()
    path.write_bytes(content)
    value = watched.get()  # never raises
    assert value is good or isinstance(value, dict)
