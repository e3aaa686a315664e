"""Bearer tokens: random, stored only as digests, seen by a running CA as soon as they are made."""

import json
import stat
from ipaddress import IPv4Address, ip_address

import pytest

from ca.placement import FilePodPlacement
from ca.tokens import NodeCaller, TokenStore, WorkloadCaller, parse_peer, token_digest
from mesh.identity import SpiffeId
from mesh.watched_file import write_json_atomic


def test_tokens_authenticate_and_only_digests_are_stored(tmp_path, identity):
    tokens = TokenStore(tmp_path / "tokens.json")
    workload = tokens.create(WorkloadCaller(identity))
    node = tokens.create(NodeCaller("node-1"))
    assert workload != node and workload.startswith("amt_") and len(workload) > 40
    assert tokens.authenticate(workload) == WorkloadCaller(identity)
    assert tokens.authenticate(node) == NodeCaller("node-1")
    assert tokens.authenticate(workload + "x") is None
    text = (tmp_path / "tokens.json").read_text()
    assert workload not in text and node not in text and token_digest(workload) in text
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600


def test_a_running_store_sees_tokens_created_by_another_process(tmp_path, identity):
    serving = TokenStore(tmp_path / "tokens.json")
    assert serving.authenticate("amt_nothing") is None  # loaded (empty) before the token exists
    token = TokenStore(tmp_path / "tokens.json").create(WorkloadCaller(identity))
    assert serving.authenticate(token) == WorkloadCaller(identity)


def test_a_corrupt_file_keeps_the_previous_tokens(tmp_path, identity, caplog):
    path = tmp_path / "tokens.json"
    tokens = TokenStore(path)
    token = tokens.create(WorkloadCaller(identity))
    assert tokens.authenticate(token)
    path.write_text("{ not json")
    assert tokens.authenticate(token) == WorkloadCaller(identity)
    assert "keeping the previous contents" in caplog.text
    path.write_text(json.dumps({"tokens": [{"sha256": "x", "identity": "not-spiffe"}]}))
    assert tokens.authenticate(token) == WorkloadCaller(identity)
    assert "tokens[0]" in caplog.text


def test_placements_follow_the_file(tmp_path, identity):
    path = tmp_path / "placements.json"
    placement = FilePodPlacement(path)
    assert not placement.has_pod("node-1", identity)  # no file: nothing is placed anywhere
    write_json_atomic(path, {"nodes": {"node-1": [str(identity)]}})
    assert placement.has_pod("node-1", identity)
    assert not placement.has_pod("node-2", identity)
    assert not placement.has_pod("node-1", SpiffeId("cluster.local", "default", "other"))
    write_json_atomic(path, {"nodes": {}})
    assert not placement.has_pod("node-1", identity)


def test_a_node_token_bound_to_addresses_keeps_them_and_allows_only_those_peers(tmp_path):
    tokens = TokenStore(tmp_path / "tokens.json")
    token = tokens.create(NodeCaller("node-0", frozenset({IPv4Address("10.255.0.10")})))
    caller = tokens.authenticate(token)
    assert caller == NodeCaller("node-0", frozenset({IPv4Address("10.255.0.10")}))
    assert json.loads((tmp_path / "tokens.json").read_text())["tokens"][0]["addresses"] == ["10.255.0.10"]
    assert caller.allows_peer(IPv4Address("10.255.0.10"))
    assert caller.allows_peer(ip_address("::ffff:10.255.0.10"))  # a dual-stack listener's view of it
    for other in (IPv4Address("10.255.0.11"), IPv4Address("10.244.0.2"), None):
        assert not caller.allows_peer(other)
    # An unbound token (made before tokens had addresses) is valid from anywhere, as it was.
    unbound = tokens.authenticate(tokens.create(NodeCaller("node-1")))
    assert unbound.allows_peer(IPv4Address("10.244.0.2")) and unbound.allows_peer(None)


def test_a_record_with_bad_addresses_is_refused_naming_it(tmp_path, caplog):
    path = tmp_path / "tokens.json"
    tokens = TokenStore(path)
    token = tokens.create(NodeCaller("node-0"))
    assert tokens.authenticate(token) == NodeCaller("node-0")
    write_json_atomic(path, {"tokens": [{"sha256": token_digest(token), "node": "node-0", "addresses": ["nope"]}]})
    assert tokens.authenticate(token) == NodeCaller("node-0")  # the previous contents stay
    assert "tokens[0]: addresses" in caplog.text


@pytest.mark.parametrize("peer, address", [
    ("ipv4:10.255.0.10:43210", IPv4Address("10.255.0.10")),
    ("ipv6:[::1]:43210", ip_address("::1")),
    ("ipv6:[::ffff:10.255.0.10]:43210", IPv4Address("10.255.0.10")),
    ("ipv6:[fe80::1%eth0]:43210", ip_address("fe80::1")),
    ("unix:/run/ca.sock", None),
    ("ipv4:not-an-address:1", None),
    ("", None),
])
def test_parse_peer(peer, address):
    assert parse_peer(peer) == address
