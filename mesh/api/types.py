"""Type URLs of the discovery resources and packing them into ``google.protobuf.Any``.

Delta xDS carries each resource as an ``Any`` whose type URL names the message. ``pack`` wraps a
message; ``unpack`` checks that the URL is the one the caller expects before decoding, so a
server that sends the wrong type is reported as such instead of yielding a garbled message.
"""

from __future__ import annotations

from google.protobuf.any_pb2 import Any
from google.protobuf.message import DecodeError, Message

from mesh.api.authorization_pb2 import Authorization
from mesh.api.waypoint_pb2 import L7Policy, Route, WasmPlugin
from mesh.api.workload_pb2 import Address

_PREFIX = "type.googleapis.com/"

# type.googleapis.com/istio.workload.Address: a Workload or a Service.
ADDRESS_TYPE_URL = _PREFIX + Address.DESCRIPTOR.full_name
# type.googleapis.com/istio.security.Authorization
AUTHORIZATION_TYPE_URL = _PREFIX + Authorization.DESCRIPTOR.full_name
# The waypoint's own (mesh/api/waypoint.proto): type.googleapis.com/ambient.waypoint.L7Policy and .Route
L7_POLICY_TYPE_URL = _PREFIX + L7Policy.DESCRIPTOR.full_name
ROUTE_TYPE_URL = _PREFIX + Route.DESCRIPTOR.full_name
# type.googleapis.com/ambient.waypoint.WasmPlugin
WASM_PLUGIN_TYPE_URL = _PREFIX + WasmPlugin.DESCRIPTOR.full_name

# Envoy's delta xDS method, shared by the server (controlplane.xds) and every client (mesh.xds).
SERVICE_NAME = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD_NAME = "DeltaAggregatedResources"
METHOD_PATH = f"/{SERVICE_NAME}/{METHOD_NAME}"
WILDCARD = "*"  # subscribe to every resource of a type

_MESSAGES: dict[str, type[Message]] = {
    ADDRESS_TYPE_URL: Address,
    AUTHORIZATION_TYPE_URL: Authorization,
    L7_POLICY_TYPE_URL: L7Policy,
    ROUTE_TYPE_URL: Route,
    WASM_PLUGIN_TYPE_URL: WasmPlugin,
}


def policy_key(namespace: str, name: str) -> str:
    """The discovery resource name of an Authorization, and how a Workload refers to it."""
    return f"{namespace}/{name}"


def route_key(namespace: str, kind: str, name: str) -> str:
    """The discovery resource name of a Route (an HTTPRoute or GRPCRoute)."""
    return f"{namespace}/{kind}/{name}"


def wasm_plugin_key(namespace: str, name: str) -> str:
    """The discovery resource name of a WasmPlugin."""
    return f"{namespace}/{name}"


def pack(message: Message) -> Any:
    """Wrap ``message`` in an ``Any`` with its ``type.googleapis.com/<full name>`` URL."""
    packed = Any()
    packed.Pack(message, type_url_prefix=_PREFIX)
    return packed


def unpack(packed: Any, type_url: str) -> Message:
    """Decode ``packed`` as the resource ``type_url`` names.

    Raises ValueError if ``packed`` holds another type or its bytes do not decode.
    """
    try:
        cls = _MESSAGES[type_url]
    except KeyError:
        known = ", ".join(sorted(_MESSAGES))
        raise ValueError(f"unknown resource type URL {type_url!r} (known: {known})") from None
    if packed.type_url != type_url:
        raise ValueError(f"expected a resource of type {type_url!r}, got {packed.type_url!r}")
    try:
        return cls.FromString(packed.value)
    except DecodeError as e:
        raise ValueError(f"resource of type {type_url!r} does not decode: {e}") from e
