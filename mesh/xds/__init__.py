"""Discovery's client side: the trio delta-xDS client every component that follows the view uses.

The server side (the snapshot, the per-stream protocol and the gRPC handler) is the control
plane's: ``controlplane.xds``. The names below load on first use.
"""

import importlib
from typing import Any

_HOMES = {
    "Backoff": "mesh.backoff", "Change": "mesh.xds.client", "ChangesLost": "mesh.xds.client",
    "ClientConfig": "mesh.xds.client", "ClientState": "mesh.xds.client", "DiscoveryClient": "mesh.xds.client",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mesh.xds' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
