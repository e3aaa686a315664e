"""Discovery: delta xDS (``DeltaAggregatedResources``) serving the dataplane view, and its trio client.

The names below load on first use, so that a process that only follows discovery (ztunnel, the
node agent) does not hold the server's modules in memory.
"""

import importlib

_HOMES = {
    "Backoff": "mesh.xds.client", "Change": "mesh.xds.client", "ChangesLost": "mesh.xds.client",
    "ClientConfig": "mesh.xds.client", "ClientState": "mesh.xds.client", "DiscoveryClient": "mesh.xds.client",
    "DeltaStream": "mesh.xds.protocol", "ProtocolError": "mesh.xds.protocol",
    "DiscoveryMetrics": "mesh.xds.server", "discovery_handler": "mesh.xds.server",
    "Publisher": "mesh.xds.snapshot", "Snapshot": "mesh.xds.snapshot", "VersionedResource": "mesh.xds.snapshot",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mesh.xds' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
