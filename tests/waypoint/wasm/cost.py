"""What a header-adding plugin costs per request (not a test): ``.venv/bin/python -m tests.waypoint.wasm.cost``.

Prints CPU-µs per stream (context create, request headers with one header added, response headers, done:
on_done/on_log/on_delete), and the raw costs under it: one guest call, one host call.
"""

from __future__ import annotations

import time

import trio

from waypoint.wasm import raw
from waypoint.wasm.plugin import LoadedPlugin
from waypoint.wasm.types import RequestInfo

from . import plugins, wat

HEADERS = [(":method", "GET"), (":path", "/"), (":authority", "svc"), ("x-a", "1"), ("user-agent", "bench")]
RESPONSE = [(":status", "200"), ("content-length", "2")]


async def no_calls(*args: object) -> None:
    raise AssertionError


def per_call(fn: object, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.process_time() - start) / n * 1e6


async def main(n: int = 20_000) -> None:
    plugin = LoadedPlugin.load(wat.config(plugins.HEADER, configuration=b"on"), no_calls, wat.LOG)
    info = RequestInfo()

    async def one() -> None:
        stream = plugin.stream(info)
        await stream.request_headers(HEADERS, True)
        await stream.response_headers(RESPONSE, False)
        stream.done()

    for _ in range(1000):
        await one()
    start = time.process_time()
    for _ in range(n):
        await one()
    per_stream = (time.process_time() - start) / n * 1e6
    vm = plugin.vm
    guest = per_call(lambda: vm.call("get_done"), n)
    func = vm.funcs["get_done"]
    bare = per_call(func, n)
    probe = LoadedPlugin.load(wat.config(wat.probe()), no_calls, wat.LOG)
    probe.vm.memory.write(wat.SCRATCH, bytes(8))
    host = per_call(lambda: probe.vm.call("t_proxy_get_log_level", wat.SCRATCH), n)
    print(f"per stream (create, request headers +1 header, response headers, done): {per_stream:.1f} CPU-µs")
    print(f"guest call: {bare:.2f} µs raw, {guest:.2f} µs with fuel refill; "
          f"guest→host→guest round trip {host:.2f} µs; via raw: {raw.__name__}")


if __name__ == "__main__":
    trio.run(main)
