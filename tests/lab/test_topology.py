"""The lab's network plan as tables: names, addresses, placement, routes; no namespaces, no root."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from lab.topology import (
    FABRIC_BRIDGE,
    FABRIC_SUBNET,
    IFNAMSIZ,
    POD_BRIDGE,
    POD_NETWORK,
    UPLINK,
    LabPlan,
    LabPlanError,
    PodSpec,
    Route,
    netns_prefix,
    plan_lab,
    pod_netns_name,
)

FOUR_PODS = [PodSpec("shop", "a"), PodSpec("shop", "b"), PodSpec("bank", "c"), PodSpec("bank", "d")]


def interface_names(plan: LabPlan) -> list[str]:
    names = [FABRIC_BRIDGE, POD_BRIDGE, UPLINK, plan.control_plane.fabric_veth]
    names += [node.fabric_veth for node in plan.nodes]
    names += [pod.node_veth for pod in plan.pods]
    return names


def placement(plan: LabPlan) -> dict[str, tuple[int, str]]:
    return {pod.key: (pod.node, str(pod.address)) for pod in plan.pods}


# ---------------------------------------------------------------- names


def test_every_netns_carries_the_labs_prefix_and_is_unique():
    plan = plan_lab("demo", FOUR_PODS, node_count=3)
    assert plan.netns_prefix == "amb-demo."
    assert all(name.startswith("amb-demo.") for name in plan.all_netns)
    assert len(set(plan.all_netns)) == len(plan.all_netns) == 1 + 1 + 3 + 4
    assert plan.fabric_netns == "amb-demo.fabric"
    assert plan.control_plane.netns == "amb-demo.cp"
    assert [node.netns for node in plan.nodes] == ["amb-demo.node-0", "amb-demo.node-1", "amb-demo.node-2"]


def test_no_lab_prefix_matches_another_labs_names():
    # "a" and "a-node" would collide with a plain "-" separator ("amb-a-node-0" ...).
    for first, second in [("a", "a-node"), ("a", "a-pod"), ("lab", "lab-1")]:
        assert not any(n.startswith(netns_prefix(first)) for n in plan_lab(second, FOUR_PODS).all_netns)


@pytest.mark.parametrize("node_count", [1, 2, 64])
def test_interface_names_fit_ifnamsiz_and_are_unique_per_netns(node_count):
    pods = [PodSpec(f"namespace-{i}" * 5, f"pod-with-a-long-name-{i}" * 5) for i in range(20)]
    plan = plan_lab("x" * 63, pods, node_count=node_count)
    assert all(0 < len(name) <= IFNAMSIZ for name in interface_names(plan))
    for node in plan.nodes:
        veths = [pod.node_veth for pod in plan.pods if pod.node == node.index]
        assert len(set(veths)) == len(veths)
    assert len({node.fabric_veth for node in plan.nodes} | {plan.control_plane.fabric_veth}) == node_count + 1


def test_a_pods_names_do_not_depend_on_the_other_pods():
    alone = plan_lab("demo", [PodSpec("shop", "a")]).pod("shop", "a")
    among_others = plan_lab("demo", FOUR_PODS).pod("shop", "a")
    assert (alone.netns, alone.node_veth) == (among_others.netns, among_others.node_veth)


@pytest.mark.parametrize(
    "name",
    ["", "Demo", "-demo", "demo-", "de_mo", "de.mo", "de/mo", "x" * 64, "démo", None],
)
def test_invalid_lab_names_are_rejected_clearly(name):
    with pytest.raises(LabPlanError, match="must be a DNS label"):
        plan_lab(name, FOUR_PODS)


@pytest.mark.parametrize("name", ["a", "demo", "lab-2", "0", "x" * 63])
def test_dns_labels_are_valid_lab_names(name):
    assert plan_lab(name).name == name


# ---------------------------------------------------------------- addresses and placement


def test_node_cidrs_bridges_and_fabric_addresses():
    plan = plan_lab("demo", node_count=3)
    assert plan.fabric_subnet == FABRIC_SUBNET == IPv4Network("10.255.0.0/24")
    assert plan.control_plane.address == IPv4Interface("10.255.0.2/24")
    assert [(str(n.pod_cidr), str(n.bridge_address), str(n.fabric_address)) for n in plan.nodes] == [
        ("10.244.0.0/24", "10.244.0.1/24", "10.255.0.10/24"),
        ("10.244.1.0/24", "10.244.1.1/24", "10.255.0.11/24"),
        ("10.244.2.0/24", "10.244.2.1/24", "10.255.0.12/24"),
    ]


def test_pods_without_a_node_are_spread_round_robin():
    plan = plan_lab("demo", FOUR_PODS + [PodSpec("bank", "e")])
    assert placement(plan) == {
        "shop/a": (0, "10.244.0.2/24"),
        "shop/b": (1, "10.244.1.2/24"),
        "bank/c": (0, "10.244.0.3/24"),
        "bank/d": (1, "10.244.1.3/24"),
        "bank/e": (0, "10.244.0.4/24"),
    }


def test_a_pod_may_ask_for_its_node():
    plan = plan_lab("demo", [PodSpec("shop", "a", node=1), PodSpec("shop", "b"), PodSpec("shop", "c", node=1)])
    assert placement(plan) == {
        "shop/a": (1, "10.244.1.2/24"),
        "shop/b": (0, "10.244.0.2/24"),
        "shop/c": (1, "10.244.1.3/24"),
    }


def test_adding_a_pod_keeps_every_other_pods_node_and_ip():
    before = plan_lab("demo", FOUR_PODS)
    after = plan_lab("demo", [PodSpec("new", "z")] + FOUR_PODS, previous=before)
    assert {k: v for k, v in placement(after).items() if k != "new/z"} == placement(before)
    assert after.pod("new", "z").address == IPv4Interface("10.244.0.4/24")


def test_removing_a_pod_keeps_the_others_and_frees_its_ip():
    before = plan_lab("demo", FOUR_PODS)
    without_a = plan_lab("demo", FOUR_PODS[1:], previous=before)
    assert placement(without_a) == {k: v for k, v in placement(before).items() if k != "shop/a"}
    # The freed address is the lowest free one of the least-loaded node: the next new pod takes it.
    again = plan_lab("demo", FOUR_PODS[1:] + [PodSpec("new", "z")], previous=without_a)
    assert again.pod("new", "z").address == IPv4Interface("10.244.0.2/24")
    assert placement(again) == placement(without_a) | {"new/z": (0, "10.244.0.2/24")}


def test_a_pod_that_now_asks_for_another_node_moves():
    before = plan_lab("demo", FOUR_PODS)
    moved = plan_lab("demo", [PodSpec("shop", "a", node=1)] + FOUR_PODS[1:], previous=before)
    assert moved.pod("shop", "a").node == 1
    assert moved.pod("shop", "a").address == IPv4Interface("10.244.1.4/24")


def test_pods_on_a_node_that_is_gone_are_placed_again():
    before = plan_lab("demo", FOUR_PODS, node_count=2)
    fewer_nodes = plan_lab("demo", FOUR_PODS, node_count=1, previous=before)
    assert {pod.node for pod in fewer_nodes.pods} == {0}
    assert len({pod.address for pod in fewer_nodes.pods}) == 4


def test_every_pod_ip_is_unique_and_in_its_nodes_cidr():
    plan = plan_lab("demo", [PodSpec("ns", f"p{i}") for i in range(300)], node_count=3)
    assert len({pod.address for pod in plan.pods}) == 300
    for pod in plan.pods:
        node = plan.node_of(pod)
        assert pod.ip in node.pod_cidr and pod.ip != node.bridge_address.ip
        assert pod.ip not in (node.pod_cidr.network_address, node.pod_cidr.broadcast_address)


@pytest.mark.parametrize(
    "pods, node_count, message",
    [
        ([PodSpec("ns", "a"), PodSpec("ns", "a")], 2, "listed twice"),
        ([PodSpec("ns", "a", node=2)], 2, "asks for node 2"),
        ([PodSpec("ns", "a", node=-1)], 2, "asks for node -1"),
        ([PodSpec("ns", f"p{i}", node=0) for i in range(254)], 2, "no free pod address"),
        ([], 0, "1 to 64 nodes"),
        ([], 65, "1 to 64 nodes"),
    ],
)
def test_impossible_labs_are_rejected(pods, node_count, message):
    with pytest.raises(LabPlanError, match=message):
        plan_lab("demo", pods, node_count=node_count)


def test_a_previous_plan_of_another_lab_is_refused():
    with pytest.raises(LabPlanError, match="previous plan is of lab 'other'"):
        plan_lab("demo", FOUR_PODS, previous=plan_lab("other", FOUR_PODS))


# ---------------------------------------------------------------- routes


def test_routes():
    plan = plan_lab("demo", FOUR_PODS, node_count=3)
    via = IPv4Address
    net = IPv4Network
    assert plan.nodes[0].routes == (
        Route(net("10.244.1.0/24"), via("10.255.0.11")),
        Route(net("10.244.2.0/24"), via("10.255.0.12")),
    )
    assert plan.nodes[2].routes == (
        Route(net("10.244.0.0/24"), via("10.255.0.10")),
        Route(net("10.244.1.0/24"), via("10.255.0.11")),
    )
    assert plan.control_plane.routes == tuple(
        Route(net(f"10.244.{i}.0/24"), via(f"10.255.0.{10 + i}")) for i in range(3)
    )
    assert plan.pod("shop", "b").routes == (Route(net("0.0.0.0/0"), via("10.244.1.1")),)


def test_no_route_leaves_the_labs_networks():
    plan = plan_lab("demo", FOUR_PODS, node_count=4)
    routes = [r for n in plan.nodes for r in n.routes] + list(plan.control_plane.routes)
    assert all(r.destination.subnet_of(POD_NETWORK) for r in routes)
    assert all(r.gateway in FABRIC_SUBNET for r in routes)
    # Only pods have a default route, and it points at their own node's bridge.
    for pod in plan.pods:
        assert [(r.is_default, r.gateway) for r in pod.routes] == [(True, plan.node_of(pod).bridge_address.ip)]


def test_the_node_agent_finds_each_pod_netns_by_name_as_the_plan_made_it():
    plan = plan_lab("lab", FOUR_PODS, 2)
    assert [pod_netns_name("lab", p.namespace, p.name) for p in plan.pods] == [p.netns for p in plan.pods]
    assert pod_netns_name("lab", "shop", "a") != pod_netns_name("other", "shop", "a")
