"""A WasmPlugin's module, fetched as Istio's agent fetches it for Envoy (DESIGN.md 8, issue #20).

``fetch_module(url, sha256)`` gives the module's bytes:

- ``file:///path``: read from the waypoint's filesystem (the lab's configuration directory);
- ``http://`` and ``https://``: one GET (h11 over trio; TLS verified against the system's roots),
  redirects not followed, the body at most ``WASM_MODULE_MAX_BYTES`` and the whole fetch within
  ``WASM_FETCH_TIMEOUT``; ``sha256`` is required for these (the control plane refuses a WasmPlugin
  without it) and always checked;
- ``oci://`` and image references: not supported here (the control plane reports them).

A module whose sha256 is given and was fetched before is not fetched again (``ModuleCache``, bounded by
``WASM_FETCHED_MODULES``): Istio's agent caches by checksum the same way. Every failure is a
``FetchError`` naming the URL and what went wrong.
"""

from __future__ import annotations

import hashlib
import ssl
from collections import OrderedDict
from urllib.parse import urlsplit

import h11
import trio

from waypoint.limits import WASM_FETCH_TIMEOUT, WASM_FETCHED_MODULES, WASM_MODULE_MAX_BYTES

_HEAD_LIMIT = 16 * 1024  # the fetch answer's head


class FetchError(Exception):
    """The module could not be had: the message says which URL and why."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModuleCache:
    """Modules by sha256, the most recently used kept (bounded)."""

    def __init__(self, entries: int = WASM_FETCHED_MODULES) -> None:
        self._entries = entries
        self._modules: OrderedDict[str, bytes] = OrderedDict()

    def get(self, sha256: str) -> bytes | None:
        module = self._modules.get(sha256)
        if module is not None:
            self._modules.move_to_end(sha256)
        return module

    def put(self, sha256: str, module: bytes) -> None:
        self._modules[sha256] = module
        self._modules.move_to_end(sha256)
        while len(self._modules) > self._entries:
            self._modules.popitem(last=False)


async def fetch_module(url: str, sha256: str = "", cache: ModuleCache | None = None) -> bytes:
    """The module at ``url``, checked against ``sha256`` (hex) when one is given."""
    sha256 = sha256.lower()
    if sha256 and cache is not None and (held := cache.get(sha256)) is not None:
        return held
    parts = urlsplit(url)
    if parts.scheme == "file":
        module = await _read_file(url, parts.path)
    elif parts.scheme in ("http", "https"):
        if not sha256:
            raise FetchError(f"{url}: a module fetched over {parts.scheme} needs its sha256")
        with trio.move_on_after(WASM_FETCH_TIMEOUT) as scope:
            module = await _get(url, parts.scheme == "https", parts.hostname or "", parts.port,
                                (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        if scope.cancelled_caught:
            raise FetchError(f"{url}: not fetched within {WASM_FETCH_TIMEOUT:g} s")
    else:
        raise FetchError(f"{url}: the scheme {parts.scheme or '(none)'}:// is not supported here "
                         "(file://, http:// and https:// are)")
    if sha256:
        actual = sha256_hex(module)
        if actual != sha256:
            raise FetchError(f"{url}: sha256 {actual} is not the {sha256} the WasmPlugin gives")
        if cache is not None:
            cache.put(sha256, module)
    return module


async def _read_file(url: str, path: str) -> bytes:
    file = trio.Path(path)
    try:
        size = (await file.stat()).st_size
        if size > WASM_MODULE_MAX_BYTES:
            raise FetchError(f"{url}: {size} bytes, over the {WASM_MODULE_MAX_BYTES} bytes a module may have")
        return await file.read_bytes()
    except OSError as exc:
        raise FetchError(f"{url}: {exc.strerror or exc}") from None


async def _get(url: str, tls: bool, host: str, port: int | None, target: str) -> bytes:
    try:
        if tls:
            stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(host, port or 443,
                                                                         ssl_context=ssl.create_default_context())
        else:
            stream = await trio.open_tcp_stream(host, port or 80)
    except (OSError, trio.TooSlowError) as exc:
        raise FetchError(f"{url}: cannot connect: {exc}") from None
    async with stream:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_LIMIT)
        authority = host if port is None else f"{host}:{port}"
        try:
            await stream.send_all(conn.send(h11.Request(method="GET", target=target, headers=[
                ("host", authority), ("user-agent", "ambient-waypoint"), ("accept", "*/*")])) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            body = bytearray()
            status = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(64 * 1024)))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > WASM_MODULE_MAX_BYTES:
                        raise FetchError(f"{url}: over the {WASM_MODULE_MAX_BYTES} bytes a module may have")
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
        except (h11.ProtocolError, trio.BrokenResourceError, OSError) as exc:
            raise FetchError(f"{url}: {exc}") from None
    if status != 200:
        raise FetchError(f"{url}: answered {status}, not 200")
    return bytes(body)
