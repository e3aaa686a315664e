"""Which workload identities run on which node: the relation node impersonation is checked against.

A ztunnel holds a node token and asks for certificates on behalf of the pods on its node. The CA
grants identity X to node N only if ``has_pod(N, X)``. The discovery registry will implement this
protocol from live pod state; until then ``FilePodPlacement`` reads it from a JSON file
``{"nodes": {"<node>": ["spiffe://...", ...]}}`` that may change while the CA runs. A missing file
means no pod anywhere: every impersonation is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from mesh.identity import InvalidSpiffeId, SpiffeId
from mesh.watched_file import WatchedJsonFile

PLACEMENT_FILE = "placements.json"


class PodPlacement(Protocol):
    def has_pod(self, node: str, identity: SpiffeId) -> bool: ...


class StaticPodPlacement:
    """A fixed relation, for in-process use and tests."""

    def __init__(self, nodes: Mapping[str, set[SpiffeId] | frozenset[SpiffeId]]) -> None:
        self._nodes = {node: frozenset(ids) for node, ids in nodes.items()}

    def has_pod(self, node: str, identity: SpiffeId) -> bool:
        return identity in self._nodes.get(node, frozenset())


def parse_placements(data: object) -> StaticPodPlacement:
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), dict):
        raise ValueError('expected {"nodes": {"<node>": ["spiffe://...", ...]}}')
    nodes: dict[str, set[SpiffeId]] = {}
    for node, ids in data["nodes"].items():
        if not isinstance(ids, list):
            raise ValueError(f"nodes.{node}: expected a list of SPIFFE IDs")
        try:
            nodes[node] = {SpiffeId.parse(i) for i in ids}
        except InvalidSpiffeId as exc:
            raise ValueError(f"nodes.{node}: {exc}") from None
    return StaticPodPlacement(nodes)


class FilePodPlacement:
    def __init__(self, path: Path) -> None:
        self._file = WatchedJsonFile(path, parse_placements, StaticPodPlacement({}))

    def has_pod(self, node: str, identity: SpiffeId) -> bool:
        return self._file.get().has_pod(node, identity)
