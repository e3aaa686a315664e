"""The ``env.proxy_*`` host functions: what a plugin may ask of the waypoint, acting on its current context.

How it works: one ``Host`` serves one VM. It keeps the VM's contexts (the root context and one
``StreamState`` per HTTP context) and the *effective* context, the one host calls act on: the context of
the callback being run, or another one the plugin names with ``proxy_set_effective_context`` (SDKs do
so in ``proxy_on_http_call_response``, which arrives on the root context). A host function reads its
arguments from guest memory, does its work on plain Python state (header lists, body bytes, the
plugin's ``PluginMetrics``, the process's ``SharedState``), and writes its answer into memory the guest
allocates. Every pointer and length is checked (``raw.Memory``): a bad one answers INVALID_MEMORY_ACCESS.

What needs the owner (waking a paused stream, sending an http_call, a new tick period) goes through the
``HostOwner`` callbacks, so this module does no I/O and is driven in tests by calls alone.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from waypoint.limits import (
    WASM_BODY_BUFFER_BYTES,
    WASM_LOG_BYTES,
    WASM_MAX_ARGUMENT_BYTES,
    WASM_MAX_MAP_BYTES,
    WASM_MAX_MAP_PAIRS,
)
from waypoint.wasm import abi, raw
from waypoint.wasm.abi import BufferType, MapType, Status, StreamType
from waypoint.wasm.state import PluginMetrics, SharedState
from waypoint.wasm.types import Headers, HttpCallResult, LocalReply, PluginConfig, RequestInfo
from waypoint.wasm.vm import HostImport, Vm

_I, _L = raw.I32, raw.I64
_LEVELS: dict[int, int] = {
    abi.LogLevel.TRACE: 5, abi.LogLevel.DEBUG: logging.DEBUG, abi.LogLevel.INFO: logging.INFO,
    abi.LogLevel.WARN: logging.WARNING, abi.LogLevel.ERROR: logging.ERROR, abi.LogLevel.CRITICAL: logging.CRITICAL}
_LEVELS_UP = sorted(_LEVELS.items(), key=lambda kv: kv[1])     # Python's levels, lowest first


@dataclass
class StreamState:
    """The host's side of one HTTP context: what the plugin reads and changes, and how it answered."""

    context_id: int
    info: RequestInfo
    request_headers: Headers | None = None
    request_trailers: Headers | None = None
    response_headers: Headers | None = None
    response_trailers: Headers | None = None
    request_body: bytearray | None = None     # the body seen by the current (or last) body callback
    response_body: bytearray | None = None
    local_reply: LocalReply | None = None
    reset: str | None = None
    paused: StreamType | None = None          # the side waiting for proxy_continue_*
    properties: dict[tuple[str, ...], bytes] = field(default_factory=dict)   # set by the plugin


class HostOwner(Protocol):
    """What a Host asks of the plugin that owns it."""

    def resume(self, stream: StreamState) -> None:
        """The plugin continued, replied to or closed a paused stream: wake whoever waits on it."""

    def dispatch_http_call(self, token: int, upstream: str, headers: Headers, body: bytes, trailers: Headers,
                           timeout: float) -> bool:
        """Start an http_call; False when too many are in flight."""

    def tick_period_changed(self, milliseconds: int) -> None:
        """proxy_set_tick_period_milliseconds was called (0 stops the ticks)."""

    def queue_ready(self, queue_id: int) -> None:
        """An item was enqueued on a queue this plugin registered."""


ROOT_CONTEXT_ID = 1
# The StreamState attribute of each map type a stream has (MapType 0-3, by value).
_STREAM_MAPS = ("request_headers", "request_trailers", "response_headers", "response_trailers")


def _headers_from(pairs: list[tuple[bytes, bytes]]) -> Headers:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in pairs]


def _headers_to(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1", "replace"), v.encode("latin-1", "replace")) for k, v in headers]


def _int64(value: int) -> bytes:
    return struct.pack("<q", value)


class Host:
    """The host functions of one VM (see the module docstring)."""

    def __init__(self, config: PluginConfig, owner: HostOwner, metrics: PluginMetrics, shared: SharedState,
                 log: logging.Logger) -> None:
        self.config = config
        self.owner = owner
        self.metrics = metrics
        self.shared = shared
        self.log = log
        self.vm: Vm | None = None
        self.streams: dict[int, StreamState] = {}
        self.effective: StreamState | None = None   # None: the root context
        self.call_response: HttpCallResult | None = None   # while proxy_on_http_call_response runs
        self._next_token = 1

    # ---------------------------------------------------------------- plumbing

    def _memory(self) -> raw.Memory:
        if self.vm is None:
            raise raw.OutOfBounds("no VM yet")
        return self.vm.memory

    def _read(self, ptr: int, size: int, limit: int = WASM_MAX_ARGUMENT_BYTES) -> bytes:
        if size > limit:
            raise _BadArgument(f"{size} bytes, more than {limit}")
        return self._memory().read(ptr, size)

    def _give(self, data: bytes, ptr_ptr: int, size_ptr: int) -> int:
        assert self.vm is not None
        self.vm.give(data, ptr_ptr, size_ptr)
        return Status.OK

    def imports(self) -> dict[tuple[str, str], HostImport]:
        """Every host function, by ("env", name), each guarded so a bad argument answers a status."""
        table: dict[str, tuple[tuple[str, ...], Callable[..., int]]] = {
            "proxy_log": ((_I, _I, _I), self.proxy_log),
            "proxy_get_log_level": ((_I,), self.proxy_get_log_level),
            "proxy_get_current_time_nanoseconds": ((_I,), self.proxy_get_current_time_nanoseconds),
            "proxy_set_tick_period_milliseconds": ((_I,), self.proxy_set_tick_period_milliseconds),
            "proxy_set_effective_context": ((_I,), self.proxy_set_effective_context),
            "proxy_done": ((), self.proxy_done),
            "proxy_get_configuration": ((_I, _I), self.proxy_get_configuration),
            "proxy_get_buffer_bytes": ((_I, _I, _I, _I, _I), self.proxy_get_buffer_bytes),
            "proxy_get_buffer_status": ((_I, _I, _I), self.proxy_get_buffer_status),
            "proxy_set_buffer_bytes": ((_I, _I, _I, _I, _I), self.proxy_set_buffer_bytes),
            "proxy_get_header_map_pairs": ((_I, _I, _I), self.proxy_get_header_map_pairs),
            "proxy_set_header_map_pairs": ((_I, _I, _I), self.proxy_set_header_map_pairs),
            "proxy_get_header_map_value": ((_I, _I, _I, _I, _I), self.proxy_get_header_map_value),
            "proxy_add_header_map_value": ((_I, _I, _I, _I, _I), self.proxy_add_header_map_value),
            "proxy_replace_header_map_value": ((_I, _I, _I, _I, _I), self.proxy_replace_header_map_value),
            "proxy_remove_header_map_value": ((_I, _I, _I), self.proxy_remove_header_map_value),
            "proxy_get_header_map_size": ((_I, _I), self.proxy_get_header_map_size),
            "proxy_get_property": ((_I, _I, _I, _I), self.proxy_get_property),
            "proxy_set_property": ((_I, _I, _I, _I), self.proxy_set_property),
            "proxy_send_local_response": ((_I,) * 8, self.proxy_send_local_response),
            "proxy_continue_stream": ((_I,), self.proxy_continue_stream),
            "proxy_close_stream": ((_I,), self.proxy_close_stream),
            "proxy_continue_request": ((), lambda: self.proxy_continue_stream(StreamType.REQUEST)),
            "proxy_continue_response": ((), lambda: self.proxy_continue_stream(StreamType.RESPONSE)),
            "proxy_http_call": ((_I,) * 10, self.proxy_http_call),
            "proxy_dispatch_http_call": ((_I,) * 10, self.proxy_http_call),
            "proxy_define_metric": ((_I, _I, _I, _I), self.proxy_define_metric),
            "proxy_increment_metric": ((_I, _L), self.proxy_increment_metric),
            "proxy_record_metric": ((_I, _L), self.proxy_record_metric),
            "proxy_get_metric": ((_I, _I), self.proxy_get_metric),
            "proxy_get_shared_data": ((_I, _I, _I, _I, _I), self.proxy_get_shared_data),
            "proxy_set_shared_data": ((_I, _I, _I, _I, _I), self.proxy_set_shared_data),
            "proxy_register_shared_queue": ((_I, _I, _I), self.proxy_register_shared_queue),
            "proxy_resolve_shared_queue": ((_I, _I, _I, _I, _I), self.proxy_resolve_shared_queue),
            "proxy_enqueue_shared_queue": ((_I, _I, _I), self.proxy_enqueue_shared_queue),
            "proxy_dequeue_shared_queue": ((_I, _I, _I), self.proxy_dequeue_shared_queue),
        }
        return {("env", name): HostImport(params, (_I,), fn, _ANSWERS) for name, (params, fn) in table.items()}

    # ---------------------------------------------------------------- logging, time, contexts

    def proxy_log(self, level: int, ptr: int, size: int) -> int:
        py_level = _LEVELS.get(level)     # by the int: a LogLevel(level) call costs more than the rest
        if py_level is None:
            return Status.BAD_ARGUMENT
        memory = self._memory()
        memory.check(ptr, size)
        if self.log.isEnabledFor(py_level):     # SDKs log at debug and trace per request: skip the copy
            message = memory.read(ptr, min(size, WASM_LOG_BYTES)).decode("utf-8", "replace")
            self.log.log(py_level, "%s: %s", self.config.name, message)
        return Status.OK

    def proxy_get_log_level(self, level_ptr: int) -> int:
        effective = self.log.getEffectiveLevel()
        level = next((wasm for wasm, py in _LEVELS_UP if py >= effective), abi.LogLevel.CRITICAL)
        self._memory().write_u32(level_ptr, level)
        return Status.OK

    def proxy_get_current_time_nanoseconds(self, time_ptr: int) -> int:
        self._memory().write_u64(time_ptr, time.time_ns())
        return Status.OK

    def proxy_set_tick_period_milliseconds(self, period: int) -> int:
        self.owner.tick_period_changed(period)
        return Status.OK

    def proxy_set_effective_context(self, context_id: int) -> int:
        if context_id == ROOT_CONTEXT_ID:
            self.effective = None
        elif context_id in self.streams:
            self.effective = self.streams[context_id]
        else:
            return Status.BAD_ARGUMENT
        return Status.OK

    def proxy_done(self) -> int:
        return Status.OK    # we never wait for a root context's proxy_done: close() drops the VM anyway

    # ---------------------------------------------------------------- buffers

    def _buffer(self, kind: int) -> bytes | bytearray | None:
        stream = self.effective
        if kind == BufferType.HTTP_REQUEST_BODY:
            return stream.request_body if stream else None
        if kind == BufferType.HTTP_RESPONSE_BODY:
            return stream.response_body if stream else None
        if kind == BufferType.HTTP_CALL_RESPONSE_BODY:
            return self.call_response.body if self.call_response else None
        if kind == BufferType.VM_CONFIGURATION:
            return self.config.vm_configuration
        if kind == BufferType.PLUGIN_CONFIGURATION:
            return self.config.configuration
        raise _BadArgument(f"buffer type {kind}")

    def proxy_get_configuration(self, ptr_ptr: int, size_ptr: int) -> int:
        return self._give(self.config.configuration, ptr_ptr, size_ptr)

    def proxy_get_buffer_bytes(self, kind: int, start: int, max_size: int, ptr_ptr: int, size_ptr: int) -> int:
        buffer = self._buffer(kind)
        if buffer is None:
            return Status.NOT_FOUND
        if start > len(buffer):
            return Status.BAD_ARGUMENT
        return self._give(bytes(buffer[start:start + max_size]), ptr_ptr, size_ptr)

    def proxy_get_buffer_status(self, kind: int, length_ptr: int, flags_ptr: int) -> int:
        buffer = self._buffer(kind)
        if buffer is None:
            return Status.NOT_FOUND
        memory = self._memory()
        memory.check(flags_ptr, 4)
        memory.write_u32(length_ptr, len(buffer))
        memory.write_u32(flags_ptr, 0)
        return Status.OK

    def proxy_set_buffer_bytes(self, kind: int, start: int, size: int, data_ptr: int, data_size: int) -> int:
        # A splice: (0, 0) prepends, (0, len) replaces, (len, 0) appends, as Envoy's copyFrom allows.
        buffer = self._buffer(kind)
        if buffer is None:
            return Status.NOT_FOUND
        if not isinstance(buffer, bytearray):
            return Status.BAD_ARGUMENT     # configurations and an http_call answer are read-only
        data = self._read(data_ptr, data_size, WASM_BODY_BUFFER_BYTES)
        if start > len(buffer) or len(buffer) - min(size, len(buffer) - start) + len(data) > WASM_BODY_BUFFER_BYTES:
            return Status.BAD_ARGUMENT
        buffer[start:start + size] = data
        return Status.OK

    # ---------------------------------------------------------------- header maps

    def _map(self, kind: int) -> Headers | None:
        if kind == MapType.HTTP_CALL_RESPONSE_HEADERS:
            return self.call_response.headers if self.call_response else None
        if kind == MapType.HTTP_CALL_RESPONSE_TRAILERS:
            return self.call_response.trailers if self.call_response else None
        if not 0 <= kind < len(_STREAM_MAPS):
            raise _BadArgument(f"map type {kind}")
        stream = self.effective
        if stream is None:
            return None
        attr = _STREAM_MAPS[kind]
        headers: Headers | None = getattr(stream, attr)
        if headers is None and attr.endswith("trailers"):
            # Trailers a plugin adds before any arrived are sent: the map exists (empty) once asked for.
            headers = []
            setattr(stream, attr, headers)
        return headers

    def _key(self, ptr: int, size: int) -> str:
        return self._read(ptr, size).decode("latin-1").lower()

    def _value(self, ptr: int, size: int) -> str:
        return self._read(ptr, size).decode("latin-1")

    def proxy_get_header_map_pairs(self, kind: int, ptr_ptr: int, size_ptr: int) -> int:
        headers = self._map(kind)
        if headers is None:
            return Status.NOT_FOUND
        return self._give(abi.encode_map(_headers_to(headers)), ptr_ptr, size_ptr)

    def proxy_set_header_map_pairs(self, kind: int, ptr: int, size: int) -> int:
        headers = self._map(kind)
        if headers is None:
            return Status.NOT_FOUND
        try:
            pairs = abi.decode_map(self._read(ptr, size, WASM_MAX_MAP_BYTES), WASM_MAX_MAP_PAIRS)
        except abi.MapFormatError:
            return Status.BAD_ARGUMENT
        headers[:] = _headers_from(pairs)
        return Status.OK

    def proxy_get_header_map_value(self, kind: int, key_ptr: int, key_size: int, ptr_ptr: int, size_ptr: int
                                   ) -> int:
        headers = self._map(kind)
        key = self._key(key_ptr, key_size)
        if headers is None:
            return Status.NOT_FOUND
        for name, value in headers:          # the first value, as Envoy answers
            if name == key:
                return self._give(value.encode("latin-1", "replace"), ptr_ptr, size_ptr)
        return Status.NOT_FOUND

    def proxy_add_header_map_value(self, kind: int, key_ptr: int, key_size: int, value_ptr: int,
                                   value_size: int) -> int:
        headers = self._map(kind)
        key, value = self._key(key_ptr, key_size), self._value(value_ptr, value_size)
        if headers is None:
            return Status.NOT_FOUND
        if len(headers) >= WASM_MAX_MAP_PAIRS:
            return Status.BAD_ARGUMENT
        headers.append((key, value))
        return Status.OK

    def proxy_replace_header_map_value(self, kind: int, key_ptr: int, key_size: int, value_ptr: int,
                                       value_size: int) -> int:
        headers = self._map(kind)
        key, value = self._key(key_ptr, key_size), self._value(value_ptr, value_size)
        if headers is None:
            return Status.NOT_FOUND
        at = next((i for i, (name, _) in enumerate(headers) if name == key), None)
        if at is None:
            headers.append((key, value))
        else:   # the first keeps its place with the new value, the others go
            headers[:] = [(n, value if i == at else v) for i, (n, v) in enumerate(headers) if n != key or i == at]
        return Status.OK

    def proxy_remove_header_map_value(self, kind: int, key_ptr: int, key_size: int) -> int:
        headers = self._map(kind)
        key = self._key(key_ptr, key_size)
        if headers is None:
            return Status.NOT_FOUND
        headers[:] = [(n, v) for n, v in headers if n != key]
        return Status.OK

    def proxy_get_header_map_size(self, kind: int, size_ptr: int) -> int:
        headers = self._map(kind)
        if headers is None:
            return Status.NOT_FOUND
        self._memory().write_u32(size_ptr, len(abi.encode_map(_headers_to(headers))))
        return Status.OK

    # ---------------------------------------------------------------- properties

    def property(self, path: tuple[str, ...]) -> bytes | None:
        """A property's bytes as Envoy serializes it (strings raw, ints int64 LE, bools one byte, maps)."""
        config = self.config
        plugin = {("plugin_name",): config.name, ("plugin_root_id",): config.root_id,
                  ("plugin_vm_id",): config.vm_id}
        if path in plugin:
            return plugin[path].encode()
        stream = self.effective
        if stream is None:
            return None
        info = stream.info
        if path in stream.properties:
            return stream.properties[path]
        if path[:2] == ("request", "headers") and stream.request_headers is not None:
            return self._map_property(path[2:], stream.request_headers)
        if path[:2] == ("response", "headers") and stream.response_headers is not None:
            return self._map_property(path[2:], stream.response_headers)
        if path[:2] == ("node", "metadata") and len(path) == 3:
            value = info.node_metadata.get(path[2])
            return None if value is None else value.encode()
        url_path, _, query = info.path.partition("?")
        status = next((v for k, v in stream.response_headers or [] if k == ":status"), None)
        simple: dict[tuple[str, ...], str | int | bool | None] = {
            ("request", "path"): info.path, ("request", "url_path"): url_path, ("request", "query"): query,
            ("request", "method"): info.method, ("request", "host"): info.authority,
            ("request", "scheme"): info.scheme, ("request", "protocol"): info.protocol,
            ("request", "id"): info.request_id, ("request", "time"): info.time_ns,
            ("source", "address"): f"{info.source_address}:{info.source_port}" if info.source_address else None,
            ("source", "port"): info.source_port, ("source", "principal"): info.source_principal or None,
            ("destination", "address"): (f"{info.destination_address}:{info.destination_port}"
                                         if info.destination_address else None),
            ("destination", "port"): info.destination_port,
            ("destination", "principal"): info.destination_principal or None,
            ("connection", "mtls"): info.mtls, ("node", "id"): info.node_id,
            ("response", "code"): int(status) if status and status.isdigit() else None,
        }
        found = simple.get(path)
        if found is None:
            return None
        if isinstance(found, bool):
            return b"\x01" if found else b"\x00"
        if isinstance(found, int):
            return _int64(found)
        return found.encode("utf-8")

    @staticmethod
    def _map_property(rest: tuple[str, ...], headers: Headers) -> bytes | None:
        if not rest:
            return abi.encode_map(_headers_to(headers))
        if len(rest) == 1:
            values = [v for k, v in headers if k == rest[0].lower()]
            return ",".join(values).encode("latin-1", "replace") if values else None
        return None

    def proxy_get_property(self, path_ptr: int, path_size: int, ptr_ptr: int, size_ptr: int) -> int:
        value = self.property(abi.split_path(self._read(path_ptr, path_size)))
        if value is None:
            return Status.NOT_FOUND
        return self._give(value, ptr_ptr, size_ptr)

    def proxy_set_property(self, path_ptr: int, path_size: int, value_ptr: int, value_size: int) -> int:
        # Plugin-set properties live on the stream (Envoy's filter state) and are read back by get;
        # the request's own attributes are not writable.
        path = abi.split_path(self._read(path_ptr, path_size))
        value = self._read(value_ptr, value_size)
        stream = self.effective
        if stream is None or not path:
            return Status.BAD_ARGUMENT
        if path in stream.properties or self.property(path) is None:
            stream.properties[path] = value
            return Status.OK
        return Status.BAD_ARGUMENT

    # ---------------------------------------------------------------- stream control

    def proxy_send_local_response(self, status: int, details_ptr: int, details_size: int, body_ptr: int,
                                  body_size: int, headers_ptr: int, headers_size: int, grpc_status: int) -> int:
        details = self._read(details_ptr, details_size).decode("utf-8", "replace")
        body = self._read(body_ptr, body_size, WASM_BODY_BUFFER_BYTES)
        try:
            pairs = abi.decode_map(self._read(headers_ptr, headers_size, WASM_MAX_MAP_BYTES), WASM_MAX_MAP_PAIRS)
        except abi.MapFormatError:
            return Status.BAD_ARGUMENT
        stream = self.effective
        if stream is None or not 200 <= status <= 599:
            return Status.BAD_ARGUMENT
        headers = _headers_from(pairs)
        if grpc_status != 0xFFFFFFFF and not any(k == "grpc-status" for k, _ in headers):
            headers.append(("grpc-status", str(grpc_status)))   # -1 (as u32) means "not gRPC"
        stream.local_reply = LocalReply(status, body, headers, details or "wasm_local_reply")
        self.owner.resume(stream)
        return Status.OK

    def proxy_continue_stream(self, kind: int) -> int:
        stream = self.effective
        if kind not in (StreamType.REQUEST, StreamType.RESPONSE):
            return Status.BAD_ARGUMENT if kind > StreamType.UPSTREAM else Status.UNIMPLEMENTED
        if stream is None:
            return Status.BAD_ARGUMENT
        if stream.paused == kind:
            stream.paused = None
            self.owner.resume(stream)
        return Status.OK

    def proxy_close_stream(self, kind: int) -> int:
        stream = self.effective
        if stream is None or kind > StreamType.UPSTREAM:
            return Status.BAD_ARGUMENT
        stream.reset = f"closed by the plugin ({StreamType(kind).name.lower()})"
        self.owner.resume(stream)
        return Status.OK

    def proxy_http_call(self, upstream_ptr: int, upstream_size: int, headers_ptr: int, headers_size: int,
                        body_ptr: int, body_size: int, trailers_ptr: int, trailers_size: int, timeout_ms: int,
                        token_ptr: int) -> int:
        memory = self._memory()
        upstream = self._read(upstream_ptr, upstream_size).decode("utf-8", "replace")
        try:
            headers = _headers_from(abi.decode_map(self._read(headers_ptr, headers_size, WASM_MAX_MAP_BYTES),
                                                   WASM_MAX_MAP_PAIRS))
            trailers = _headers_from(abi.decode_map(self._read(trailers_ptr, trailers_size, WASM_MAX_MAP_BYTES),
                                                    WASM_MAX_MAP_PAIRS))
        except abi.MapFormatError:
            return Status.BAD_ARGUMENT
        body = self._read(body_ptr, body_size, WASM_BODY_BUFFER_BYTES)
        memory.check(token_ptr, 4)
        names = {k for k, _ in headers}
        if not upstream or not {":method", ":path", ":authority"} <= names:
            return Status.BAD_ARGUMENT        # Envoy refuses a call without them too
        token = self._next_token
        if not self.owner.dispatch_http_call(token, upstream, headers, body, trailers, timeout_ms / 1000):
            return Status.INTERNAL_FAILURE
        self._next_token = token % 0xFFFFFFFF + 1
        memory.write_u32(token_ptr, token)
        return Status.OK

    # ---------------------------------------------------------------- metrics

    def proxy_define_metric(self, kind: int, name_ptr: int, name_size: int, id_ptr: int) -> int:
        name = self._read(name_ptr, name_size).decode("utf-8", "replace")
        self._memory().check(id_ptr, 4)
        status, metric_id = self.metrics.define(kind, name)
        if status == Status.OK:
            self._memory().write_u32(id_ptr, metric_id)
        return status

    def proxy_increment_metric(self, metric_id: int, offset: int) -> int:
        return self.metrics.increment(metric_id, offset)

    def proxy_record_metric(self, metric_id: int, value: int) -> int:
        return self.metrics.record(metric_id, value & 0xFFFFFFFFFFFFFFFF)

    def proxy_get_metric(self, metric_id: int, value_ptr: int) -> int:
        self._memory().check(value_ptr, 8)
        status, value = self.metrics.get(metric_id)
        if status == Status.OK:
            self._memory().write_u64(value_ptr, value)
        return status

    # ---------------------------------------------------------------- shared data and queues

    def proxy_get_shared_data(self, key_ptr: int, key_size: int, ptr_ptr: int, size_ptr: int, cas_ptr: int) -> int:
        key = self._read(key_ptr, key_size)
        self._memory().check(cas_ptr, 4)
        status, value, cas = self.shared.get(self.config.vm_id, key)
        if status != Status.OK:
            return status
        self._give(value, ptr_ptr, size_ptr)
        self._memory().write_u32(cas_ptr, cas)
        return Status.OK

    def proxy_set_shared_data(self, key_ptr: int, key_size: int, value_ptr: int, value_size: int, cas: int) -> int:
        key = self._read(key_ptr, key_size)
        value = self._read(value_ptr, value_size)
        return self.shared.set(self.config.vm_id, key, value, cas)

    def proxy_register_shared_queue(self, name_ptr: int, name_size: int, id_ptr: int) -> int:
        name = self._read(name_ptr, name_size).decode("utf-8", "replace")
        self._memory().check(id_ptr, 4)
        status, queue_id = self.shared.register_queue(self.config.vm_id, name, self.owner.queue_ready)
        if status == Status.OK:
            self._memory().write_u32(id_ptr, queue_id)
        return status

    def proxy_resolve_shared_queue(self, vm_ptr: int, vm_size: int, name_ptr: int, name_size: int,
                                   id_ptr: int) -> int:
        vm_id = self._read(vm_ptr, vm_size).decode("utf-8", "replace")
        name = self._read(name_ptr, name_size).decode("utf-8", "replace")
        self._memory().check(id_ptr, 4)
        status, queue_id = self.shared.resolve_queue(vm_id or self.config.vm_id, name)
        if status == Status.OK:
            self._memory().write_u32(id_ptr, queue_id)
        return status

    def proxy_enqueue_shared_queue(self, queue_id: int, ptr: int, size: int) -> int:
        return self.shared.enqueue(queue_id, self._read(ptr, size))

    def proxy_dequeue_shared_queue(self, queue_id: int, ptr_ptr: int, size_ptr: int) -> int:
        memory = self._memory()
        memory.check(ptr_ptr, 4)
        memory.check(size_ptr, 4)
        status, item = self.shared.dequeue(queue_id)
        if status != Status.OK:
            return status
        return self._give(item, ptr_ptr, size_ptr)


class _BadArgument(Exception):
    """An argument the spec says is a BAD_ARGUMENT (an unknown enum value, a length past our bounds)."""


# How a host function's refusal reaches the guest: raised, answered as a status by raw's callback itself.
_ANSWERS = ((raw.OutOfBounds, int(Status.INVALID_MEMORY_ACCESS)), (_BadArgument, int(Status.BAD_ARGUMENT)))
