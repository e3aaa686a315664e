"""Fetching a WasmPlugin's module (``waypoint.wasm_fetch``): files, HTTP on loopback, checksums, bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from waypoint import wasm_fetch
from waypoint.wasm_fetch import FetchError, ModuleCache, fetch_module, sha256_hex

MODULE = b"\0asm\x01\0\0\0" + b"x" * 100


@asynccontextmanager
async def http_server(status: int = 200, body: bytes = MODULE, stall: bool = False) -> AsyncIterator[str]:
    """A one-route HTTP/1.1 server on loopback; yields its base URL. It counts the requests it gets."""
    seen: list[bytes] = []

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            if not chunk:
                return
            data += chunk
        seen.append(data)
        if stall:
            await trio.sleep_forever()
        head = b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (status, len(body))
        await stream.send_all(head + body)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        http_server.seen = seen  # type: ignore[attr-defined]
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def test_a_file_url_is_read(tmp_path: Path) -> None:
    path = tmp_path / "plugin.wasm"
    path.write_bytes(MODULE)
    assert await fetch_module(f"file://{path}") == MODULE
    assert await fetch_module(f"file://{path}", sha256_hex(MODULE)) == MODULE


async def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="missing.wasm: No such file"):
        await fetch_module(f"file://{tmp_path}/missing.wasm")


async def test_a_wrong_checksum_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plugin.wasm"
    path.write_bytes(MODULE)
    with pytest.raises(FetchError, match="is not the 0000"):
        await fetch_module(f"file://{path}", "0" * 64)


async def test_a_file_over_the_bound_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wasm_fetch, "WASM_MODULE_MAX_BYTES", 10)
    path = tmp_path / "plugin.wasm"
    path.write_bytes(MODULE)
    with pytest.raises(FetchError, match="over the 10 bytes"):
        await fetch_module(f"file://{path}")


@pytest.mark.parametrize("url", ["oci://registry/plugin:1", "registry/plugin:1", "ftp://host/plugin.wasm"])
async def test_other_schemes_are_not_supported(url: str) -> None:
    with pytest.raises(FetchError, match="is not supported here"):
        await fetch_module(url, "0" * 64)


async def test_http_needs_a_checksum() -> None:
    with pytest.raises(FetchError, match="needs its sha256"):
        await fetch_module("http://127.0.0.1:1/plugin.wasm")


async def test_http_is_fetched_checked_and_cached_by_checksum() -> None:
    cache = ModuleCache()
    async with http_server() as base:
        assert await fetch_module(f"{base}/plugin.wasm", sha256_hex(MODULE), cache) == MODULE
        assert await fetch_module(f"{base}/plugin.wasm", sha256_hex(MODULE).upper(), cache) == MODULE
        assert len(http_server.seen) == 1  # type: ignore[attr-defined]
        assert http_server.seen[0].startswith(b"GET /plugin.wasm HTTP/1.1\r\n")  # type: ignore[attr-defined]


async def test_http_with_a_wrong_checksum_is_refused_and_not_cached() -> None:
    cache = ModuleCache()
    async with http_server() as base:
        with pytest.raises(FetchError, match="sha256"):
            await fetch_module(f"{base}/plugin.wasm", "1" * 64, cache)
    assert cache.get("1" * 64) is None


async def test_an_http_error_status_is_an_error() -> None:
    async with http_server(status=404, body=b"no") as base:
        with pytest.raises(FetchError, match="answered 404"):
            await fetch_module(f"{base}/plugin.wasm", sha256_hex(b"no"))


async def test_an_http_body_over_the_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wasm_fetch, "WASM_MODULE_MAX_BYTES", 10)
    async with http_server() as base:
        with pytest.raises(FetchError, match="over the 10 bytes"):
            await fetch_module(f"{base}/plugin.wasm", sha256_hex(MODULE))


async def test_a_server_that_never_answers_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async with http_server(stall=True) as base:
        with pytest.raises(FetchError, match="not fetched within"):
            await fetch_module(f"{base}/plugin.wasm", sha256_hex(MODULE))


def test_the_cache_keeps_the_most_recent() -> None:
    cache = ModuleCache(entries=2)
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.get("a") == b"1"
    cache.put("c", b"3")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"1", None, b"3")
