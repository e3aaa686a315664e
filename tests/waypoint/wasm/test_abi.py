"""The ABI's pure parts: the header-map format (round trip, and bounds on hostile bytes), version
detection by marker and by arity, property paths."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from waypoint.wasm import abi
from waypoint.wasm.abi import AbiVersion

pairs = st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=20)), max_size=10)


@given(pairs)
def test_map_round_trip(items: list[tuple[bytes, bytes]]) -> None:
    assert abi.decode_map(abi.encode_map(items), 10) == items


@given(st.binary(max_size=200))
def test_decoding_any_bytes_either_parses_or_says_why(data: bytes) -> None:
    try:
        abi.decode_map(data, 100)
    except abi.MapFormatError:
        pass


def test_map_layout_is_the_spec_s() -> None:
    assert abi.encode_map([(b"a", b"bc")]) == struct.pack("<III", 1, 1, 2) + b"a\0bc\0"
    assert abi.decode_map(b"", 10) == []


@pytest.mark.parametrize(("data", "why"), [
    (struct.pack("<I", 5), "more than"),
    (struct.pack("<I", 2) + bytes(4), "sizes run past"),
    (struct.pack("<III", 1, 10, 0) + b"ab\0\0", "runs past"),
    (struct.pack("<III", 1, 1, 1) + b"aXb\0", "NUL"),
    (b"\1", "shorter"),
])
def test_bad_maps(data: bytes, why: str) -> None:
    with pytest.raises(abi.MapFormatError, match=why):
        abi.decode_map(data, 4)


@pytest.mark.parametrize(("exports", "version"), [
    ({"proxy_abi_version_0_1_0": 0, "proxy_on_request_headers": 2}, AbiVersion.V0_1_0),
    ({"proxy_abi_version_0_2_0": 0, "proxy_on_request_headers": 3}, AbiVersion.V0_2_0),
    ({"proxy_abi_version_0_2_1": 0}, AbiVersion.V0_2_1),
    ({"proxy_on_request_headers": 2}, AbiVersion.V0_1_0),
    ({"proxy_on_response_headers": 3, "proxy_on_configure": 2}, AbiVersion.V0_2_1),
    ({"proxy_on_configure": 2}, AbiVersion.V0_2_1),
])
def test_detect_version(exports: dict[str, int], version: AbiVersion) -> None:
    assert abi.detect_version(exports) is version


def test_a_module_without_callbacks_is_not_a_plugin() -> None:
    with pytest.raises(abi.AbiError):
        abi.detect_version({"proxy_on_memory_allocate": 1, "malloc": 1})


def test_arity_per_version() -> None:
    assert abi.expected_arity("proxy_on_request_headers", AbiVersion.V0_1_0) == 2
    assert abi.expected_arity("proxy_on_request_headers", AbiVersion.V0_2_1) == 3
    assert abi.expected_arity("my_export", AbiVersion.V0_2_1) is None
    assert not AbiVersion.V0_1_0.headers_have_end_of_stream


@pytest.mark.parametrize(("raw", "path"), [
    (b"request\0path", ("request", "path")),
    (b"request.path", ("request", "path")),
    (b"node\0metadata\0a.b", ("node", "metadata", "a.b")),
    (b"plugin_name\0", ("plugin_name",)),
    (b"", ()),
])
def test_property_paths(raw: bytes, path: tuple[str, ...]) -> None:
    assert abi.split_path(raw) == path


def test_the_package_and_its_pure_modules_do_not_import_wasmtime() -> None:
    import subprocess
    import sys
    code = ("import sys, waypoint.wasm, waypoint.wasm.abi, waypoint.wasm.types, waypoint.wasm.state; "
            "sys.exit('wasmtime' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
