"""Discovery: delta xDS (``DeltaAggregatedResources``) serving the dataplane view, and its trio client."""

from mesh.xds.client import Backoff, Change, ChangesLost, ClientConfig, ClientState, DiscoveryClient
from mesh.xds.protocol import DeltaStream, ProtocolError
from mesh.xds.server import DiscoveryMetrics, discovery_handler
from mesh.xds.snapshot import Publisher, Snapshot, VersionedResource

__all__ = [
    "Backoff", "Change", "ChangesLost", "ClientConfig", "ClientState", "DeltaStream", "DiscoveryClient",
    "DiscoveryMetrics", "ProtocolError", "Publisher", "Snapshot", "VersionedResource", "discovery_handler",
]
