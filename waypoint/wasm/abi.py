"""The Proxy-Wasm ABI as data: status codes, enums, versions and the two wire formats (pure, no wasmtime).

The values follow proxy-wasm/spec (abi-versions/v0.1.0, v0.2.0, v0.2.1) and the SDKs that implement it
(the Rust SDK's types.rs, the Go SDK's internal/types): a host function answers a ``Status``; a stream
callback answers an ``Action`` (0 Continue, 1 Pause, which Envoy reads as StopIteration for headers
and StopIterationAndBuffer for a body).

Versions differ in a few places only, kept in ``AbiVersion``: 0.1.0 stream-header callbacks take
(context_id, num_headers) and 0.2.x add end_of_stream; 0.1.0 resumes with ``proxy_continue_request`` /
``proxy_continue_response`` where 0.2.x has ``proxy_continue_stream(stream_type)``; 0.1.0 reads its
configuration with ``proxy_get_configuration``. A module says its version by exporting an empty function
named ``proxy_abi_version_X_Y_Z``; one that exports none is judged by its callbacks' arity.

Wire formats: a header map is serialized as ``u32 count``, then ``count`` pairs of ``u32 key length,
u32 value length``, then each key and each value followed by a NUL byte (all little-endian). A property
path is its segments separated by NUL bytes (``request\\0path``); a dotted ``request.path`` is accepted too.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping


class Status(enum.IntEnum):
    OK = 0
    NOT_FOUND = 1
    BAD_ARGUMENT = 2
    SERIALIZATION_FAILURE = 3
    PARSE_FAILURE = 4
    BAD_EXPRESSION = 5
    INVALID_MEMORY_ACCESS = 6
    EMPTY = 7
    CAS_MISMATCH = 8
    RESULT_MISMATCH = 9
    INTERNAL_FAILURE = 10
    BROKEN_CONNECTION = 11
    UNIMPLEMENTED = 12


class Action(enum.IntEnum):
    """What a stream callback answers (0.2.x names it Action; Envoy's filter statuses share the values)."""

    CONTINUE = 0
    PAUSE = 1


class FilterHeadersStatus(enum.IntEnum):
    CONTINUE = 0
    STOP_ITERATION = 1
    CONTINUE_AND_END_STREAM = 2
    STOP_ALL_ITERATION_AND_BUFFER = 3
    STOP_ALL_ITERATION_AND_WATERMARK = 4


class FilterDataStatus(enum.IntEnum):
    CONTINUE = 0
    STOP_ITERATION_AND_BUFFER = 1
    STOP_ITERATION_AND_WATERMARK = 2
    STOP_ITERATION_NO_BUFFER = 3


class MapType(enum.IntEnum):
    HTTP_REQUEST_HEADERS = 0
    HTTP_REQUEST_TRAILERS = 1
    HTTP_RESPONSE_HEADERS = 2
    HTTP_RESPONSE_TRAILERS = 3
    GRPC_RECEIVE_INITIAL_METADATA = 4
    GRPC_RECEIVE_TRAILING_METADATA = 5
    HTTP_CALL_RESPONSE_HEADERS = 6
    HTTP_CALL_RESPONSE_TRAILERS = 7


class BufferType(enum.IntEnum):
    HTTP_REQUEST_BODY = 0
    HTTP_RESPONSE_BODY = 1
    DOWNSTREAM_DATA = 2
    UPSTREAM_DATA = 3
    HTTP_CALL_RESPONSE_BODY = 4
    GRPC_RECEIVE_BUFFER = 5
    VM_CONFIGURATION = 6
    PLUGIN_CONFIGURATION = 7


class LogLevel(enum.IntEnum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4
    CRITICAL = 5


class StreamType(enum.IntEnum):
    REQUEST = 0
    RESPONSE = 1
    DOWNSTREAM = 2
    UPSTREAM = 3


class MetricType(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


class AbiVersion(enum.Enum):
    V0_1_0 = "0.1.0"
    V0_2_0 = "0.2.0"
    V0_2_1 = "0.2.1"

    @property
    def headers_have_end_of_stream(self) -> bool:
        return self is not AbiVersion.V0_1_0


ABI_MARKERS: Mapping[str, AbiVersion] = {
    "proxy_abi_version_0_2_1": AbiVersion.V0_2_1,
    "proxy_abi_version_0_2_0": AbiVersion.V0_2_0,
    "proxy_abi_version_0_1_0": AbiVersion.V0_1_0,
}


class AbiError(ValueError):
    """A module that is not a Proxy-Wasm plugin of a version we serve."""


def detect_version(exports: Mapping[str, int]) -> AbiVersion:
    """The ABI version of a module from its exported functions' names and parameter counts.

    The marker wins; without one, proxy_on_request_headers' arity tells 0.1.0 (2) from 0.2.x (3), which
    is then taken as 0.2.1 (0.2.0 and 0.2.1 callbacks are the same). ``exports`` maps name → param count.
    """
    for marker, version in ABI_MARKERS.items():
        if marker in exports:
            return version
    if not any(name.startswith("proxy_on_") and name != "proxy_on_memory_allocate" for name in exports):
        raise AbiError("no proxy_abi_version_* marker and no proxy_on_* callback: not a Proxy-Wasm module")
    arity = exports.get("proxy_on_request_headers", exports.get("proxy_on_response_headers"))
    return AbiVersion.V0_1_0 if arity == 2 else AbiVersion.V0_2_1


# Every callback the host may call, with its parameter count per version (None: absent in that version).
# The host calls a callback with as many arguments as the module's own export takes, so a plugin whose
# SDK declared one differently (an arity mismatch) is caught at load time, not per request.
CALLBACK_ARITY: Mapping[str, tuple[int, int]] = {
    #                               0.1.0, 0.2.x
    "proxy_on_context_create": (2, 2),
    "proxy_on_vm_start": (2, 2),
    "proxy_on_configure": (2, 2),
    "proxy_on_tick": (1, 1),
    "proxy_on_done": (1, 1),
    "proxy_on_log": (1, 1),
    "proxy_on_delete": (1, 1),
    "proxy_on_request_headers": (2, 3),
    "proxy_on_request_body": (3, 3),
    "proxy_on_request_trailers": (2, 2),
    "proxy_on_response_headers": (2, 3),
    "proxy_on_response_body": (3, 3),
    "proxy_on_response_trailers": (2, 2),
    "proxy_on_http_call_response": (5, 5),
    "proxy_on_queue_ready": (2, 2),
    "proxy_on_memory_allocate": (1, 1),
}


def expected_arity(callback: str, version: AbiVersion) -> int | None:
    arity = CALLBACK_ARITY.get(callback)
    if arity is None:
        return None
    return arity[0] if version is AbiVersion.V0_1_0 else arity[1]


# ---------------------------------------------------------------- header maps

class MapFormatError(ValueError):
    """Bytes that are not a serialized header map (or are one past the bounds given)."""


def encode_map(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Serialize (name, value) byte pairs in the spec's format."""
    items = list(pairs)
    sizes = b"".join(struct.pack("<II", len(k), len(v)) for k, v in items)
    data = b"".join(k + b"\0" + v + b"\0" for k, v in items)
    return struct.pack("<I", len(items)) + sizes + data


def decode_map(data: bytes, max_pairs: int) -> list[tuple[bytes, bytes]]:
    """Parse a serialized map; every length is checked against ``data`` before it is used."""
    if len(data) < 4:
        if not data:
            return []
        raise MapFormatError("shorter than its count")
    (count,) = struct.unpack_from("<I", data, 0)
    if count > max_pairs:
        raise MapFormatError(f"{count} pairs, more than {max_pairs}")
    offset = 4 + 8 * count
    if offset > len(data):
        raise MapFormatError("sizes run past the end")
    pairs = []
    for i in range(count):
        key_len, value_len = struct.unpack_from("<II", data, 4 + 8 * i)
        end = offset + key_len + 1 + value_len + 1
        if end > len(data):
            raise MapFormatError("a pair runs past the end")
        key = data[offset:offset + key_len]
        value = data[offset + key_len + 1:end - 1]
        if data[offset + key_len] != 0 or data[end - 1] != 0:
            raise MapFormatError("a key or value is not NUL-terminated")
        pairs.append((key, value))
        offset = end
    return pairs


# ---------------------------------------------------------------- property paths

def split_path(raw: bytes) -> tuple[str, ...]:
    """Property path segments: NUL-separated as the spec says, or dotted (``request.path``) as some SDKs send.

    A NUL-separated path is taken as is (its segments may contain dots: ``node.metadata`` keys);
    only a path without NUL is split on dots.
    """
    text = raw.decode("utf-8", "replace").rstrip("\0")
    if "\0" in text:
        return tuple(text.split("\0"))
    return tuple(text.split(".")) if text else ()
