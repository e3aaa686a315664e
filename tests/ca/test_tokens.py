"""Bearer tokens: random, stored only as digests, seen by a running CA as soon as they are made."""

import json
import stat

from ca.placement import FilePodPlacement
from ca.tokens import NodeCaller, TokenStore, WorkloadCaller, token_digest
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
