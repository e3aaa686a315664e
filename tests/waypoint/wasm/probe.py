"""A plugin whose exports call each host function with the test's arguments (see ``wat.probe``)."""

from __future__ import annotations

from waypoint.wasm import raw
from waypoint.wasm.abi import Status
from waypoint.wasm.host import StreamState
from waypoint.wasm.plugin import LoadedPlugin
from waypoint.wasm.types import HttpCallResult, PluginConfig, RequestInfo

from . import wat


class Probe:
    def __init__(self, config: PluginConfig | None = None, info: RequestInfo | None = None) -> None:
        self.calls: list[tuple[object, ...]] = []

        async def http_call(*args: object) -> HttpCallResult | None:
            self.calls.append(args)
            return None

        self.plugin = LoadedPlugin.load(config or wat.config(wat.probe()), http_call, wat.LOG)
        self.stream = self.plugin.stream(info or RequestInfo())
        state = self.stream._state
        assert state is not None
        self.state: StreamState = state
        self.plugin.host.effective = state
        self._next = wat.SCRATCH

    @property
    def memory(self) -> raw.Memory:
        return self.plugin.vm.memory

    def call(self, name: str, *args: int) -> Status:
        result = self.plugin.vm.call(f"t_{name}", *args)
        assert result is not None
        return Status(result)

    def put(self, data: bytes) -> tuple[int, int]:
        """``data`` written to scratch memory: (pointer, length)."""
        ptr = self._next
        self.memory.write(ptr, data)
        self._next += (len(data) + 8) & ~7
        return ptr, len(data)

    def slot(self, size: int = 8) -> int:
        """A zeroed scratch slot for the host to answer into."""
        return self.put(bytes(size))[0]

    def u32(self, ptr: int) -> int:
        return self.memory.read_u32(ptr)

    def given(self, ptr_ptr: int, size_ptr: int) -> bytes:
        """The bytes the host allocated and pointed to."""
        return self.memory.read(self.u32(ptr_ptr), self.u32(size_ptr))
