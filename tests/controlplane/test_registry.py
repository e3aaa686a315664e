"""The registry: Service VIPs, files replaced as units, and the watched sources (YAML directory, pods.json).

File tests write through a temporary file and a rename, as kubectl, editors and the lab do, so that
every write is a new inode and a scan sees it without sleeping for the clock to tick. A change after
the first scan is applied once it has settled: the tests drive the directory's clock (``Clock``)
rather than sleep.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from pathlib import Path

import pytest

from controlplane.registry import (
    ConfigDirectory,
    PodStatusFile,
    Registry,
    VipAllocator,
    parse_pod_statuses,
    write_pod_statuses,
)
from controlplane.view import PodStatus
from mesh import resources as r, source
from mesh.parse import parse_text
from mesh.watched_file import SETTLE_INTERVAL
from tests.controlplane.test_view import namespace, pod, resources_of, service, waypoint
from tests.mesh.test_source import billion_laughs

POLL = 0.25  # as the control plane and the lab poll the directory (SCAN_INTERVAL)


def svc(name: str, ns: str = "shop", cluster_ip: str = "") -> r.Service:
    return r.Service(r.Meta(name, ns), r.Origin("t.yaml", 1), None, (), cluster_ip)


def services(*items: r.Service) -> dict[tuple[str, str], r.Service]:
    return {(s.meta.namespace, s.meta.name): s for s in items}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- VipAllocator


def test_explicit_cluster_ip_is_honoured_and_headless_gets_none():
    vips = VipAllocator().assign(services(svc("a", cluster_ip="10.96.7.7"), svc("h", cluster_ip="None"), svc("b")))
    assert vips[("shop", "a")] == "10.96.7.7"
    assert ("shop", "h") not in vips
    assert ipaddress.ip_address(vips[("shop", "b")]) in ipaddress.ip_network("10.96.0.0/16")


def test_assignments_are_stable_across_calls_and_restarts():
    wanted = services(*(svc(f"s{i}") for i in range(20)))
    first = VipAllocator().assign(wanted)
    assert VipAllocator().assign(wanted) == first  # a fresh allocator (restart) agrees: hash of the name
    allocator = VipAllocator()
    assert allocator.assign(wanted) == allocator.assign(wanted) == first


def test_adding_services_never_moves_an_assigned_one():
    # On a /29 (5 usable addresses) the hash of every new name lands on taken addresses often.
    allocator = VipAllocator("10.96.0.0/29")
    current: dict[tuple[str, str], r.Service] = {}
    assigned: dict[tuple[str, str], str] = {}
    for name in ("m", "c", "a", "z", "b"):  # not in sorted order: new names sort before old ones
        current.update(services(svc(name)))
        vips = allocator.assign(current)
        assert {k: vips[k] for k in assigned} == assigned, name
        assigned = vips
    assert len(set(assigned.values())) == 5


def test_never_the_network_broadcast_or_first_address():
    vips = VipAllocator("10.96.0.0/29").assign(services(*(svc(n) for n in "abcde")))
    assert sorted(vips.values()) == [f"10.96.0.{i}" for i in range(2, 7)]


def test_exhaustion_and_a_cidr_too_small():
    with pytest.raises(RuntimeError, match="service CIDR 10.96.0.0/30 is exhausted"):
        VipAllocator("10.96.0.0/30").assign(services(svc("a"), svc("b")))
    with pytest.raises(ValueError, match="too small"):
        VipAllocator("10.96.0.0/31")


def test_duplicate_explicit_cluster_ip(caplog):
    vips = VipAllocator().assign(services(svc("a", cluster_ip="10.96.1.1"), svc("b", cluster_ip="10.96.1.1")))
    assert vips[("shop", "a")] == "10.96.1.1"
    assert vips[("shop", "b")] not in ("10.96.1.1", "")
    assert "Service shop/b: clusterIP 10.96.1.1 is already taken; assigning another" in caplog.text


def test_an_explicit_cluster_ip_takes_over_an_assigned_one():
    allocator = VipAllocator()
    before = allocator.assign(services(svc("a")))[("shop", "a")]
    after = allocator.assign(services(svc("a"), svc("b", cluster_ip=before)))
    assert after[("shop", "b")] == before and after[("shop", "a")] != before


# ---------------------------------------------------------------- Registry


class Counter:
    def __init__(self, registry: Registry) -> None:
        self.calls = 0
        registry.on_change(self)

    def __call__(self) -> None:
        self.calls += 1


def keys(registry: Registry) -> set[tuple[str, str, str]]:
    return {res.key for res in registry.resources()}


def test_set_file_replaces_the_files_resources_as_a_unit():
    registry = Registry()
    registry.set_file("a.yaml", resources_of(namespace("shop"), pod("one")))
    registry.set_file("b.yaml", resources_of(pod("two")))
    registry.set_file("a.yaml", resources_of(pod("three")))
    assert keys(registry) == {("Pod", "shop", "three"), ("Pod", "shop", "two")}
    registry.remove_file("b.yaml")
    assert keys(registry) == {("Pod", "shop", "three")}


def test_first_file_wins_on_a_duplicate(caplog):
    registry = Registry()
    registry.set_file("b.yaml", resources_of(pod("web", sa="from-b")))
    registry.set_file("a.yaml", resources_of(pod("web", sa="from-a")))
    (res,) = registry.resources()
    assert res.spec.service_account == "from-a"
    assert "b.yaml: Pod shop/web is also declared in t.yaml; using that one" in caplog.text


def test_version_and_listeners_fire_only_on_a_real_change():
    registry = Registry()
    counter = Counter(registry)
    changes = [
        (lambda: registry.set_file("a.yaml", resources_of(pod("one"))), 1),
        (lambda: registry.set_file("a.yaml", resources_of(pod("one"))), 0),  # equal resources, parsed again
        (lambda: registry.remove_file("missing.yaml"), 0),
        (lambda: registry.set_pod_status("shop", "one", PodStatus("10.244.0.2", "node-a")), 1),
        (lambda: registry.set_pod_status("shop", "one", PodStatus("10.244.0.2", "node-a")), 0),
        (lambda: registry.set_pod_status("shop", "one", PodStatus("10.244.0.2", "node-a", ready=False)), 1),
        (lambda: registry.set_pod_status("shop", "gone", None), 0),
        (lambda: registry.replace_pod_statuses({("shop", "one"): PodStatus("10.244.0.2", "node-a", False)}), 0),
        (lambda: registry.set_pod_status("shop", "one", None), 1),
        (lambda: registry.remove_file("a.yaml"), 1),
    ]
    for i, (change, expected) in enumerate(changes):
        before = (registry.version, counter.calls)
        change()
        assert (registry.version - before[0], counter.calls - before[1]) == (expected, expected), i


def test_pod_status_set_and_remove():
    registry = Registry()
    registry.set_pod_status("shop", "a", PodStatus("10.244.0.2", "node-a"))
    registry.set_pod_status("shop", "b", PodStatus("10.244.0.3", "node-a"))
    registry.set_pod_status("shop", "a", None)
    assert registry.pod_statuses() == {("shop", "b"): PodStatus("10.244.0.3", "node-a")}
    registry.replace_pod_statuses({("shop", "c"): PodStatus("10.244.0.4", "node-b"), ("shop", "d"): None})
    assert registry.state().pod_status == {("shop", "c"): PodStatus("10.244.0.4", "node-b")}


def test_state_assigns_vips_to_services_and_waypoint_services():
    registry = Registry()
    registry.set_file("a.yaml", resources_of(service("web"), service("db", cluster_ip="None"), waypoint("wp"),
                                             service("fixed", cluster_ip="10.96.9.9")))
    state = registry.state()
    assert set(state.vips) == {("shop", "web"), ("shop", "wp"), ("shop", "fixed")}
    assert state.vips[("shop", "fixed")] == "10.96.9.9"
    assert registry.state().vips == state.vips


# ---------------------------------------------------------------- ConfigDirectory

A = "\n---\n".join([namespace("shop"), pod("one")])
B = pod("two")


class Clock:
    """The directory's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settle(directory: ConfigDirectory, clock: Clock) -> bool:
    """Scan as the control plane does until a change has had time to settle; True if one was applied."""
    changed = directory.scan()
    for _ in range(int(SETTLE_INTERVAL / POLL) + 1):
        clock.now += POLL
        changed = directory.scan() or changed
    return changed


def test_initial_scan_and_an_idle_scan(tmp_path):
    write(tmp_path / "a.yaml", A)
    write(tmp_path / "sub" / "b.yml", B)
    registry = Registry()
    directory = ConfigDirectory(tmp_path, registry)
    assert directory.scan() is True
    assert keys(registry) == {("Namespace", "", "shop"), ("Pod", "shop", "one"), ("Pod", "shop", "two")}
    version = registry.version
    assert directory.scan() is False and registry.version == version


def test_editing_one_file_changes_only_its_resources(tmp_path):
    write(tmp_path / "a.yaml", A)
    write(tmp_path / "b.yaml", B)
    registry, clock = Registry(), Clock()
    directory = ConfigDirectory(tmp_path, registry, clock=clock)
    directory.scan()
    (two,) = [res for res in registry.resources() if res.meta.name == "two"]
    version = registry.version
    write(tmp_path / "a.yaml", pod("three"))
    assert directory.scan() is False and registry.version == version  # not settled yet
    assert settle(directory, clock) is True
    assert registry.version == version + 1
    assert keys(registry) == {("Pod", "shop", "three"), ("Pod", "shop", "two")}
    assert [res for res in registry.resources() if res.meta.name == "two"][0] is two  # not even re-parsed


def test_a_broken_edit_keeps_the_previous_resources_and_logs_why(tmp_path, caplog):
    write(tmp_path / "a.yaml", A)
    registry, clock = Registry(), Clock()
    directory = ConfigDirectory(tmp_path, registry, clock=clock)
    directory.scan()
    before, version = keys(registry), registry.version
    broken = pod("one").replace('"containers"', '"containerz"')
    write(tmp_path / "a.yaml", "\n---\n".join([namespace("shop"), broken]))
    with caplog.at_level(logging.INFO, logger="ambient.registry"):
        settle(directory, clock)
    assert keys(registry) == before and registry.version == version
    assert "a.yaml:3: Pod shop/one: spec.containers: is required" in caplog.text
    assert "a.yaml: 1 error(s); keeping its previous resources in force" in caplog.text
    write(tmp_path / "a.yaml", pod("fixed"))
    settle(directory, clock)
    assert keys(registry) == {("Pod", "shop", "fixed")}


def test_a_file_broken_from_the_start_contributes_nothing(tmp_path, caplog):
    write(tmp_path / "a.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [\n")
    write(tmp_path / "b.yaml", B)
    registry = Registry()
    ConfigDirectory(tmp_path, registry).scan()
    assert keys(registry) == {("Pod", "shop", "two")}
    assert "a.yaml:5: not valid YAML" in caplog.text


def test_deleting_a_file_withdraws_its_resources(tmp_path):
    write(tmp_path / "a.yaml", A)
    write(tmp_path / "b.yaml", B)
    registry, clock = Registry(), Clock()
    directory = ConfigDirectory(tmp_path, registry, clock=clock)
    directory.scan()
    (tmp_path / "a.yaml").unlink()
    assert settle(directory, clock) is True
    assert keys(registry) == {("Pod", "shop", "two")}
    write(tmp_path / "a.yaml", A)  # and it comes back
    assert settle(directory, clock) is True
    assert ("Pod", "shop", "one") in keys(registry)


# An ALLOW policy in two parts: the head alone is a valid policy that allows nothing.
POLICY_HEAD = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
"""
POLICY_RULES = """  rules:
  - from:
    - source: {namespaces: [shop]}
"""


def policy_rules(registry: Registry) -> dict[str, int]:
    return {res.meta.name: len(res.rules) for res in registry.resources() if isinstance(res, r.AuthorizationPolicy)}


def test_a_policy_caught_half_written_is_never_applied(tmp_path):
    (head_only,) = parse_text(POLICY_HEAD, "policy.yaml").resources
    assert isinstance(head_only, r.AuthorizationPolicy) and head_only.rules == ()  # applied, it denies all
    registry, clock = Registry(), Clock()
    published: list[dict[str, int]] = []
    registry.on_change(lambda: published.append(policy_rules(registry)))
    directory = ConfigDirectory(tmp_path, registry, clock=clock)
    directory.scan()
    with open(tmp_path / "policy.yaml", "w") as policy:  # saved in two steps, as `cat >` or an editor may
        policy.write(POLICY_HEAD)
        policy.flush()
        for _ in range(2):  # the control plane polls while the writer is between its steps
            clock.now += POLL
            directory.scan()
        policy.write(POLICY_RULES)
    assert settle(directory, clock) is True
    assert published == [{"allow-web": 1}]


def test_a_file_that_keeps_changing_waits_until_it_stops(tmp_path):
    registry, clock = Registry(), Clock()
    directory = ConfigDirectory(tmp_path, registry, clock=clock)
    directory.scan()
    for i in range(10):  # rewritten at every poll, for longer than the settle interval
        write(tmp_path / "a.yaml", pod(f"p{i}"))
        clock.now += POLL
        assert directory.scan() is False
    assert settle(directory, clock) is True
    assert keys(registry) == {("Pod", "shop", "p9")}


def test_a_file_deleted_and_written_again_before_it_settles_is_not_withdrawn(tmp_path):
    write(tmp_path / "a.yaml", A)
    registry, clock = Registry(), Clock()
    directory = ConfigDirectory(tmp_path, registry, clock=clock)
    directory.scan()
    version = registry.version
    (tmp_path / "a.yaml").unlink()  # an editor that deletes, then writes the file anew
    assert directory.scan() is False
    write(tmp_path / "a.yaml", A)
    assert settle(directory, clock) is True  # the new inode, with the same resources
    assert registry.version == version and ("Pod", "shop", "one") in keys(registry)


def test_the_first_scan_applies_what_is_on_disk_at_once(tmp_path):
    write(tmp_path / "a.yaml", A)
    registry = Registry()
    assert ConfigDirectory(tmp_path, registry, clock=Clock()).scan() is True
    assert ("Pod", "shop", "one") in keys(registry)


def test_a_yaml_bomb_keeps_the_files_previous_resources(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(source, "MAX_NODES", 10_000)  # the bound itself: tests/mesh/test_source.py
    write(tmp_path / "a.yaml", service("web"))
    registry, clock = Registry(), Clock()
    directory = ConfigDirectory(tmp_path, registry, clock=clock)
    directory.scan()
    before, version = keys(registry), registry.version
    write(tmp_path / "a.yaml", billion_laughs())
    settle(directory, clock)
    assert keys(registry) == before == {("Service", "shop", "web")} and registry.version == version
    assert "a.yaml:7: metadata.annotations.a" in caplog.text
    assert "aliases expand to more than 10000 nodes; file refused" in caplog.text
    assert "a.yaml: 1 error(s); keeping its previous resources in force" in caplog.text


def test_a_file_over_the_size_bound_is_refused_unread(tmp_path, caplog, monkeypatch):
    write(tmp_path / "a.yaml", B)
    registry, clock = Registry(), Clock()
    directory = ConfigDirectory(tmp_path, registry, clock=clock)
    directory.scan()
    with open(tmp_path / "a.yaml", "a") as f:
        f.truncate(source.MAX_FILE_BYTES + 1)  # sparse: no need to write 4 MiB
    read = []
    monkeypatch.setattr("controlplane.registry.parse_text", lambda *args: read.append(args))
    settle(directory, clock)
    assert read == [] and keys(registry) == {("Pod", "shop", "two")}
    assert f"a.yaml:1: larger than {source.MAX_FILE_BYTES} bytes; file refused" in caplog.text
    assert "a.yaml: 1 error(s); keeping its previous resources in force" in caplog.text


@pytest.mark.parametrize("name", [".hidden.yaml", "notes.txt", "a.yaml~", "a.yaml.swp", ".git/x.yaml",
                                  "..2024_01_01/x.yaml", "sub/.hidden.yml"])
def test_dotfiles_and_other_files_are_ignored(tmp_path, name):
    write(tmp_path / name, B)
    registry = Registry()
    assert ConfigDirectory(tmp_path, registry).scan() is False
    assert registry.resources() == []


def test_a_missing_directory_is_empty(tmp_path):
    registry = Registry()
    assert ConfigDirectory(tmp_path / "nope", registry).scan() is False


def test_cross_references_are_logged(tmp_path, caplog):
    write(tmp_path / "a.yaml", namespace("shop", {r.USE_WAYPOINT: "missing"}))
    ConfigDirectory(tmp_path, Registry()).scan()
    assert "a.yaml:1: Namespace shop: metadata.labels[istio.io/use-waypoint]: no waypoint Gateway shop/missing" \
        in caplog.text


# ---------------------------------------------------------------- PodStatusFile

GOOD = {("shop", "a"): PodStatus("10.244.0.2", "node-a"), ("shop", "b"): PodStatus("10.244.1.2", "node-b", False)}


def test_pod_status_file(tmp_path, caplog):
    path = tmp_path / "pods.json"
    registry = Registry()
    source = PodStatusFile(path, registry)
    assert source.scan() is False and registry.pod_statuses() == {}  # missing from the start: no pods
    write_pod_statuses(path, GOOD)
    assert source.scan() is True and registry.pod_statuses() == GOOD
    assert source.scan() is False
    write(path, '{"pods": {"shop/a": {"ip": "10.244.0.300", "node": "node-a"}}}')
    assert source.scan() is False
    assert registry.pod_statuses() == GOOD
    assert "pods.json: pods.shop/a: " in caplog.text and "keeping the previous pod status in force" in caplog.text
    path.unlink()
    assert source.scan() is True and registry.pod_statuses() == {}


def test_write_pod_statuses_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "pods.json"
    write_pod_statuses(path, GOOD)
    assert [p.name for p in tmp_path.iterdir()] == ["pods.json"]
    assert parse_pod_statuses(json.loads(path.read_text())) == GOOD


@pytest.mark.parametrize("data, message", [
    pytest.param([], 'expected {"pods": {"<namespace>/<name>": {"ip": ..., "node": ...}}}', id="not-an-object"),
    pytest.param({"pods": []}, 'expected {"pods"', id="pods-not-an-object"),
    pytest.param({"pods": {"a": {"ip": "10.0.0.1", "node": "n"}}}, "pods.a: expected <namespace>/<name>",
                 id="key-without-namespace"),
    pytest.param({"pods": {"shop/a": "10.0.0.1"}}, "pods.shop/a: expected an object with ip and node", id="entry"),
    pytest.param({"pods": {"shop/a": {"ip": "x", "node": "n"}}}, "pods.shop/a: pod IP 'x' is not an IPv4 address",
                 id="bad-ip"),
    pytest.param({"pods": {"shop/a": {"ip": "fd00::1", "node": "n"}}},
                 "pods.shop/a: pod IP 'fd00::1' is not an IPv4 address", id="ipv6"),
    pytest.param({"pods": {"shop/a": {"ip": "10.0.0.1"}}}, "pods.shop/a: a running pod needs a node", id="no-node"),
    pytest.param({"pods": {"shop/a": {"ip": "10.0.0.1", "node": "n", "ready": "false"}}},
                 "pods.shop/a: ready: expected true or false", id="ready-not-a-boolean"),
])
def test_bad_pod_status_data(data, message):
    with pytest.raises(ValueError) as raised:
        parse_pod_statuses(data)
    assert str(raised.value).startswith(message)
