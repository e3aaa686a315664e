"""The last good discovery view, saved so that a restarted proxy serves while the control plane is away.

Istio's proxies keep serving the configuration they hold when istiod goes away; a restarted one has
none. Here the discovery client saves what it holds (each resource with its name, version and packed
message) after it changes, at most once per ``SAVE_INTERVAL``, and reads it back at start: the
proxy then serves that view, marked stale, until the control plane answers. On reconnect the saved
versions go out as ``initial_resource_versions``, so the server sends only what changed meanwhile
and removes what is gone.

Format: ``MAGIC``, then per type URL a 4-byte big-endian length and a ``DeltaDiscoveryResponse``
holding that type's resources. The file is private (``mesh.private_files``); what it holds is checked
exactly as a response from the server would be (``ClientState.restore``), so a damaged or
hand-edited file is refused whole and the proxy waits for the server as it would without one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

MAGIC = b"ambient discovery view 1\n"
# A change of the view is saved at most this often: a busy mesh changes many times a second, and
# each save writes the whole view.
SAVE_INTERVAL = 1.0
_LENGTH = struct.Struct(">I")


def encode(views: Mapping[str, Iterable[tuple[str, str, Message]]]) -> bytes:
    """``views``: type URL → (name, version, message) of each resource held."""
    parts = [MAGIC]
    for type_url, resources in views.items():
        response = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url)
        for name, version, message in resources:
            packed = any_pb2.Any()
            packed.Pack(message)
            response.resources.add(name=name, version=version, resource=packed)
        data = response.SerializeToString()
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def decode(data: bytes) -> list[discovery_pb2.DeltaDiscoveryResponse]:
    """The saved responses, one per type URL; ``ValueError`` for a file that is not one of ours."""
    if not data.startswith(MAGIC):
        raise ValueError("not a saved discovery view (wrong header)")
    responses = []
    pos = len(MAGIC)
    while pos < len(data):
        if pos + _LENGTH.size > len(data):
            raise ValueError("truncated saved discovery view")
        (length,) = _LENGTH.unpack_from(data, pos)
        pos += _LENGTH.size
        if pos + length > len(data):
            raise ValueError("truncated saved discovery view")
        response = discovery_pb2.DeltaDiscoveryResponse()
        try:
            response.ParseFromString(data[pos:pos + length])
        except DecodeError as exc:
            raise ValueError(f"damaged saved discovery view: {exc}") from None
        responses.append(response)
        pos += length
    return responses
