"""What the lab runs for the mesh itself: the node token it mints (no root needed)."""

from __future__ import annotations

from ipaddress import IPv4Address

from ca.tokens import TOKEN_FILE, NodeCaller, TokenStore
from controlplane.server import CA_SUBDIR
from lab import components
from lab.state import LabPaths
from lab.topology import plan_lab


def test_a_node_token_is_valid_from_its_node_s_fabric_address_only(tmp_path):
    paths = LabPaths.of("shop", tmp_path)
    plan = plan_lab("shop", node_count=2)
    (paths.controlplane / CA_SUBDIR).mkdir(parents=True)
    for node in plan.nodes:
        components.prepare_node(paths, node)
    tokens = TokenStore(paths.controlplane / CA_SUBDIR / TOKEN_FILE)
    node_0 = tokens.authenticate(components.node_token_path(paths, plan.nodes[0]).read_text().strip())
    assert node_0 == NodeCaller("node-0", frozenset({IPv4Address("10.255.0.10")}))
    # The ways a stolen token would come: from the other node, or from a pod of either.
    assert node_0.allows_peer(plan.nodes[0].fabric_address.ip)
    assert not node_0.allows_peer(plan.nodes[1].fabric_address.ip)
    assert not node_0.allows_peer(IPv4Address("10.244.0.2")) and not node_0.allows_peer(IPv4Address("10.244.1.2"))
