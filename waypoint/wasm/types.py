"""What the pipeline and the Proxy-Wasm host exchange: the plugin's configuration, a request's facts and
the verdicts of a plugin (pure data, no wasmtime: importing this never loads the engine)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class PluginConfig:
    """What the control plane resolved for one WasmPlugin."""

    name: str                       # "<ns>/<name>" of the WasmPlugin
    root_id: str                    # pluginName (the root_id), "" when unset
    vm_id: str
    module: bytes                   # the .wasm bytes, fetched and verified by the caller
    sha256: str
    configuration: bytes = b""      # pluginConfig as JSON bytes, b"" when absent
    vm_env: Mapping[str, str] = field(default_factory=dict)   # vmConfig.env, given to the guest's environ
    fail_open: bool = False         # failStrategy FAIL_OPEN
    vm_configuration: bytes = b""   # what proxy_on_vm_start reads (Istio sends none)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a plugin needs a name")
        for key, value in self.vm_env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise ValueError(f"vmConfig.env entry {key!r} cannot be an environment variable")


class RequestInfo(NamedTuple):
    """The facts of one request that plugins read as properties (Envoy's attribute names).

    A NamedTuple rather than a frozen dataclass: one is built per request through a plugin, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) costs three times as much; it is as
    immutable, and nothing reads it but by attribute.
    """

    method: str = "GET"
    path: str = "/"
    authority: str = ""
    scheme: str = "http"
    protocol: str = "HTTP/1.1"
    request_id: str = ""
    time_ns: int = 0
    source_address: str = ""
    source_port: int = 0
    source_principal: str = ""
    destination_address: str = ""
    destination_port: int = 0
    destination_principal: str = ""
    mtls: bool = False
    node_id: str = ""
    node_metadata: Mapping[str, str] = MappingProxyType({})     # read-only: the default is shared


@dataclass(frozen=True)
class HttpCallResult:
    """The answer to a plugin's http_call: status, headers, body and trailers."""

    status: int
    headers: Headers
    body: bytes = b""
    trailers: Headers = field(default_factory=list)


# (upstream/cluster name as the plugin gave it, headers incl. :method :path :authority, body, trailers,
#  timeout seconds) → the answer, or None when the call failed (the plugin then sees 0 headers).
HttpCaller = Callable[[str, Headers, bytes, Headers, float], Awaitable[HttpCallResult | None]]


@dataclass(frozen=True)
class Continue:
    """Go on with the request: the headers (or body bytes to pass on now) as the plugin left them.

    For headers, ``headers`` is the whole map (pseudo-headers included); for a body, ``body`` is what to
    forward now: b"" while the plugin buffers (StopIterationAndBuffer), everything held when it lets go.
    """

    headers: Headers | None = None
    body: bytes | None = None


@dataclass(frozen=True)
class LocalReply:
    """The plugin answered itself (proxy_send_local_response), or a body outgrew the buffer bound."""

    status: int
    body: bytes
    headers: Headers
    details: str


@dataclass(frozen=True)
class Failed:
    """The plugin failed this call (trap, fuel, memory, pause timeout): the caller applies failStrategy."""

    reason: str


@dataclass(frozen=True)
class Reset(Failed):
    """The plugin closed the stream (proxy_close_stream): the caller should reset it, whatever failStrategy says.

    A ``Failed`` too, so that a caller which knows only Continue / LocalReply / Failed fails the request
    (as its failStrategy says) rather than mistaking it for a reply; test for ``Reset`` first to reset.
    """


Verdict = Continue | LocalReply | Failed | Reset


class PluginLoadError(Exception):
    """A plugin that could not be compiled, instantiated, started or configured."""


class PluginTrap(Exception):
    """A call into a plugin's VM trapped (or ran out of fuel, or hit the memory limit); the VM is tainted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
