"""The lab's kube-proxy without root: the endpoints of Services from YAML and the pods' status (named
ports, readiness, selectors, headless), each node's nftables ruleset as tables (one endpoint, several,
none, Local with and without a local endpoint), and the driver: one script per node, only when it
changed, a failed node retried, and a netns outside the lab refused before anything runs."""

from __future__ import annotations

import dataclasses
import re
from ipaddress import IPv4Address, IPv4Network

import pytest

from controlplane.view import ClusterState, PodStatus
from lab import kube_proxy
from lab.kube_proxy import TABLE, Endpoint, KubeProxy, ServicePort, ruleset, service_ports
from lab.topology import PodSpec, plan_lab
from mesh.parse import parse_text

A = IPv4Address
NODE0_CIDR, NODE0_BRIDGE = IPv4Network("10.244.0.0/24"), A("10.244.0.1")

YAML = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 9000, targetPort: 9001}]
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: shop}
spec:
  selector: {app: web}
  internalTrafficPolicy: Local
  externalTrafficPolicy: Local
  ports: [{name: dns, port: 53, targetPort: 5353, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  selector: {app: nothing}
  ports: [{port: 80}]
""" + "".join(f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: web}}}}
spec:
  containers:
  - name: c
    command: [sleep, infinity]
    ports: [{ports}]
""" for name, ports in [("web-a", "{name: http, containerPort: 8080}"),
                        ("web-b", "{name: http, containerPort: 8081}"),
                        ("web-c", "{name: other, containerPort: 8080}"),
                        ("web-d", "{name: http, containerPort: 8080}")])
VIPS = {("shop", "web"): "10.96.0.10", ("shop", "local"): "10.96.0.11", ("shop", "empty"): "10.96.0.12"}
STATUS = {
    ("shop", "web-a"): PodStatus("10.244.0.2", "node-0", True),
    ("shop", "web-b"): PodStatus("10.244.1.2", "node-1", True),
    ("shop", "web-c"): PodStatus("10.244.1.3", "node-1", True),  # no port named http
    ("shop", "web-d"): PodStatus("10.244.0.3", "node-0", False),  # not ready
}


def state() -> ClusterState:
    result = parse_text(YAML, "apps.yaml")
    assert not result.errors, result.errors
    return ClusterState.build(result.resources, vips=VIPS)


def test_service_ports_from_yaml_and_status():
    ports = {(p.name, p.port): p for p in service_ports(state(), STATUS)}
    assert set(ports) == {("web", 80), ("web", 9000), ("local", 53), ("empty", 80)}  # headless db: none
    # named targetPort: each pod's own container port of that name; a pod without it is no endpoint
    assert ports["web", 80].endpoints == (Endpoint(A("10.244.0.2"), 8080, "node-0"),
                                          Endpoint(A("10.244.1.2"), 8081, "node-1"))
    assert [(str(e.ip), e.port) for e in ports["web", 9000].endpoints] == [
        ("10.244.0.2", 9001), ("10.244.1.2", 9001), ("10.244.1.3", 9001)]
    assert ports["local", 53].local and ports["local", 53].protocol == "udp"
    assert ports["empty", 80].endpoints == ()
    assert ports["web", 80].vip == A("10.96.0.10") and ports["web", 80].port_name == "http"


def test_not_ready_pods_are_endpoints_only_with_publish_not_ready_addresses():
    before = state()
    assert A("10.244.0.3") not in {e.ip for p in service_ports(before, STATUS) for e in p.endpoints}
    svc = dataclasses.replace(before.services[("shop", "web")], publish_not_ready_addresses=True)
    published = dataclasses.replace(before, services={**before.services, ("shop", "web"): svc})
    ports = {(p.name, p.port): p for p in service_ports(published, STATUS)}
    assert A("10.244.0.3") in {e.ip for e in ports["web", 80].endpoints}


def one(ports: tuple[ServicePort, ...], node: str = "node-0") -> str:
    return ruleset(ports, node, NODE0_CIDR, NODE0_BRIDGE)


def lines(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines()]


def port(endpoints: tuple[Endpoint, ...], local: bool = False, protocol: str = "tcp") -> ServicePort:
    return ServicePort("shop", "web", A("10.96.0.10"), protocol, 80, "http", local, endpoints)


E0 = Endpoint(A("10.244.0.2"), 8080, "node-0")
E1 = Endpoint(A("10.244.1.2"), 8081, "node-1")


def test_the_script_replaces_the_whole_table_in_one_transaction():
    script = one(())
    assert script.splitlines()[:3] == [f"table ip {TABLE}", f"delete table ip {TABLE}", f"table ip {TABLE} {{"]
    assert script.count(f"table ip {TABLE}") == 3  # one table, nothing outside it


@pytest.mark.parametrize(("endpoints", "local", "dispatch", "refused", "dnats"), [
    # one endpoint: every connection goes to it
    ((E0,), False, "10.96.0.10 . tcp . 80 : goto service-shop/web/tcp/80", None,
     ["meta l4proto tcp dnat to 10.244.0.2:8080"]),
    # several: numgen random over all, on any node
    ((E0, E1), False, "10.96.0.10 . tcp . 80 : goto service-shop/web/tcp/80", None,
     ["meta l4proto tcp dnat to 10.244.0.2:8080", "meta l4proto tcp dnat to 10.244.1.2:8081"]),
    # none: refused (TCP reset, ICMP port unreachable otherwise), as kube-proxy rejects
    ((), False, None, "10.96.0.10 . tcp . 80 : goto reject-chain", []),
    # Local: only this node's endpoint
    ((E0, E1), True, "10.96.0.10 . tcp . 80 : goto service-shop/web/tcp/80", None,
     ["meta l4proto tcp dnat to 10.244.0.2:8080"]),
    # Local with no endpoint on this node: dropped (kube-proxy), not sent to another node
    ((E1,), True, None, "10.96.0.10 . tcp . 80 : drop", []),
    # Local with no endpoint at all: refused like any Service without endpoints
    ((), True, None, "10.96.0.10 . tcp . 80 : goto reject-chain", []),
])
def test_ruleset_table(endpoints, local, dispatch, refused, dnats):
    script = one((port(endpoints, local),))
    elements = re.findall(r"map (\S+) \{\n[^}]*?(?:elements = \{ (.*) \})?\n\t\}", script)
    assert dict(elements) == {"service-ips": dispatch or "", "no-endpoint-services": refused or ""}
    assert [line for line in lines(script) if "dnat to" in line] == dnats
    picks = [line for line in lines(script) if "numgen" in line]
    if dnats:
        (pick,) = picks
        assert f"numgen random mod {len(dnats)} vmap" in pick
        assert pick.count("goto endpoint-") == len(dnats)
    else:
        assert picks == []


def test_udp_and_named_ports_dnat_with_their_protocol_and_target():
    script = one((ServicePort("shop", "dns", A("10.96.0.11"), "udp", 53, "dns", False,
                              (Endpoint(A("10.244.0.2"), 5353, "node-0"),)),))
    assert "10.96.0.11 . udp . 53 : goto service-shop/dns/udp/53" in script
    assert "meta l4proto udp dnat to 10.244.0.2:5353" in lines(script)
    assert 'comment "shop/dns:dns"' in script


def test_checks_after_dnat_refuse_unknown_ports_and_drop_unallocated_vips():
    script = one((port((E0,)),))
    assert "elements = { 10.96.0.10 }" in script  # cluster-ips
    for hook in ("prerouting", "output"):
        chain = script.split(f"chain filter-{hook} {{")[1].split("}")[0]
        assert f"type filter hook {hook} priority -90" in chain  # after the DNAT (-100)
        assert "ct state new ip daddr @cluster-ips reject" in chain
        assert "ct state new ip daddr 10.96.0.0/16 drop" in chain
    assert "meta l4proto tcp reject with tcp reset" in script


def test_same_node_connections_are_masqueraded_to_the_node_s_bridge_only():
    script = ruleset((port((E0,)),), "node-1", IPv4Network("10.244.1.0/24"), A("10.244.1.1"))
    assert 'ct status dnat ip saddr 10.244.1.0/24 oifname "br-pods" snat to 10.244.1.1' in lines(script)


def test_each_node_gets_its_own_local_endpoints():
    ports = (port((E0, E1), local=True),)
    assert "dnat to 10.244.0.2:8080" in one(ports, "node-0") and "10.244.1.2" not in one(ports, "node-0")
    node1 = ruleset(ports, "node-1", IPv4Network("10.244.1.0/24"), A("10.244.1.1"))
    assert "dnat to 10.244.1.2:8081" in node1 and "dnat to 10.244.0.2" not in node1


def plan():
    return plan_lab("kp", [PodSpec("shop", "web-a", 0), PodSpec("shop", "web-b", 1)], 2)


def test_driver_applies_each_node_once_until_something_changes():
    calls = []
    proxy = KubeProxy("kp", run=lambda lab, netns, script: calls.append((lab, netns, script)))
    the_plan, the_state = plan(), state()
    assert proxy.sync(the_plan, the_state, STATUS)
    assert [(lab, netns) for lab, netns, _ in calls] == [("kp", node.netns) for node in the_plan.nodes]
    assert "for node-0" in calls[0][2] and "for node-1" in calls[1][2]
    calls.clear()
    assert not proxy.sync(the_plan, the_state, STATUS) and calls == []  # nothing changed: nothing run
    unready = {**STATUS, ("shop", "web-b"): PodStatus("10.244.1.2", "node-1", False)}
    assert proxy.sync(the_plan, the_state, unready)
    assert len(calls) == 2 and all("10.244.1.2:8081" not in script for _, _, script in calls)


def test_driver_keeps_going_when_a_node_fails_and_retries_it():
    calls = []

    def run(lab, netns, script):
        calls.append(netns)
        if netns.endswith("node-0") and len(calls) == 1:
            raise RuntimeError("nft -f exited 1: boom")

    proxy = KubeProxy("kp", run=run)
    the_plan = plan()
    assert proxy.sync(the_plan, state(), STATUS)  # node-1 took its table
    assert proxy.error is not None and "boom" in proxy.error
    assert proxy.sync(the_plan, state(), STATUS) and calls[-1].endswith("node-0")
    assert proxy.error is None and len(calls) == 3


def test_apply_refuses_a_netns_outside_the_lab_before_running_anything(monkeypatch):
    monkeypatch.setattr(kube_proxy, "run_nft", lambda *a, **k: pytest.fail("nft ran"))
    with pytest.raises(ValueError, match="not a netns of lab"):
        kube_proxy.apply("kp", "amb-other.node-0", "")
    with pytest.raises(ValueError, match="not a netns of lab"):
        kube_proxy.apply("kp", "", "")


def test_apply_refuses_the_netns_the_lab_runs_in(monkeypatch, tmp_path):
    # A lab-named netns that is, in fact, this process's own (the host's): refused on the opened file.
    monkeypatch.setattr(kube_proxy, "netns_path", lambda name: kube_proxy.OWN_NETNS)
    monkeypatch.setattr(kube_proxy, "run_nft", lambda *a, **k: pytest.fail("nft ran"))
    with pytest.raises(ValueError, match="the netns the lab runs in"):
        kube_proxy.apply("kp", "amb-kp.node-0", "")
