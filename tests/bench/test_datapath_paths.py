"""The bench's paths: their manifests (checked by the mesh's own parser), config files and endpoints."""

from __future__ import annotations

import pytest
import yaml

from datapath.lab import LabLayout
from datapath.paths import (
    ALLOWED_PATHS,
    BASELINE,
    DENIED_PATH,
    FORWARDS,
    L7_BASELINE,
    L7_SUBJECT,
    PATHS,
    Ambient,
    Direct,
    Haproxy,
    HaproxyL7,
    Stunnel,
    Waypoint,
    haproxy_acl,
    manifests,
    nginx_conf,
    planned_ips,
    planned_pods,
    spiffe_id,
)
from mesh.parse import parse_paths


def layout(tmp_path) -> LabLayout:
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    return LabLayout("bench-dp", tmp_path / "state", config, python="/venv/bin/python")


def pods(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "Pod"}


def test_the_rows_and_the_baseline():
    assert [p.name for p in PATHS] == ["direct", "stunnel", "haproxy", "ambient", "haproxy-l7", "waypoint",
                                       "waypoint-wasm"]
    assert {BASELINE, L7_BASELINE, L7_SUBJECT} <= {p.name for p in PATHS}
    assert len({p.namespace for p in PATHS}) == len(PATHS)
    assert [p.name for p in PATHS if p.enrolled] == ["ambient", "waypoint", "waypoint-wasm"]
    # The L7 rows run the keep-alive figure only, and are the ones checked for their rule.
    assert {p.name: p.figures for p in PATHS if p.figures != ("keepalive", "conn", "bulk")} == {
        "haproxy-l7": ("keepalive",), "waypoint": ("keepalive",), "waypoint-wasm": ("keepalive",)}
    assert [p.name for p in PATHS if p.l7] == ["haproxy-l7", "waypoint", "waypoint-wasm"]
    assert [p.name for p in PATHS if p.warms_up] == ["waypoint-wasm"]  # its plugin loads after the pod is up


def test_manifests_pass_the_mesh_parser(tmp_path):
    lay = layout(tmp_path)
    (lay.config_dir / "pods.yaml").write_text(yaml.safe_dump_all(manifests(PATHS, lay), sort_keys=False))
    result = parse_paths([lay.config_dir])
    assert result.errors == []
    # The waypoint rows' Gateway and policy, and the waypoint-wasm row's WasmPlugin.
    assert len(result.resources) == 3 * len(PATHS) + 2 + 3


def test_pods_clients_on_node_0_servers_on_node_1_apps_first(tmp_path):
    lay = layout(tmp_path)
    docs = manifests(PATHS, lay)
    for (_namespace, name), pod in pods(docs).items():
        containers = [c["name"] for c in pod["spec"]["containers"]]
        assert pod["spec"]["nodeName"] == ("node-1" if name == "server" else "node-0")
        # `ambient exec` joins the first container's cgroup: never a proxy's.
        assert containers[0] == ("nginx" if name == "server" else "client")
    namespaces = {d["metadata"]["name"]: d["metadata"].get("labels", {}) for d in docs if d["kind"] == "Namespace"}
    assert namespaces["dp-ambient"] == {"istio.io/dataplane-mode": "ambient"}
    assert namespaces["dp-direct"] == namespaces["dp-stunnel"] == namespaces["dp-haproxy"] == {}
    assert namespaces["dp-waypoint"] == {"istio.io/dataplane-mode": "ambient"}
    assert pods(docs)[("dp-waypoint", "server")]["metadata"]["labels"] == {
        "app": "server", "istio.io/use-waypoint": "waypoint"}


def test_every_listener_has_a_probe_that_never_connects(tmp_path):
    for pod in pods(manifests(PATHS, layout(tmp_path))).values():
        for c in pod["spec"]["containers"]:
            if c["name"] == "client":
                assert "readinessProbe" not in c
                continue
            probe = c["readinessProbe"]
            assert probe["periodSeconds"] >= 600
            assert probe["exec"]["command"][:2] == ["sh", "-c"] and "ss -Hltn" in probe["exec"]["command"][2]


def test_planned_ips_follow_the_labs_plan(tmp_path):
    ips = planned_ips(manifests(PATHS, layout(tmp_path)), "bench-dp")
    # The lab plans pods in key order and gives each node's lowest free address first.
    assert ips[("dp-ambient", "server")] == "10.244.1.2"
    assert ips[("dp-direct", "server")] == "10.244.1.3"
    assert ips[("dp-stunnel", "client")] == "10.244.0.6"  # after dp-haproxy-l7's
    assert all(ip.startswith("10.244.1.") for (_, name), ip in ips.items() if name == "server")
    # The waypoint's pod has no nodeName: it is planned last (its key sorts last), on the node with the
    # fewest pods, the lowest on a tie: node-0, beside the clients.
    assert planned_pods(manifests(PATHS, layout(tmp_path)), "bench-dp")[("dp-waypoint", "waypoint-waypoint")] == (
        "node-0", "10.244.0.8")


def test_planned_pods_agree_with_the_labs_own_plan(tmp_path):
    """The same YAML through the lab's own scheduling (parse -> registry -> desired pods -> plan), as
    the daemon does: every pod, the waypoint's included, on the same node at the same IP."""
    from controlplane.registry import Registry
    from lab.topology import PodSpec, plan_lab
    from lab.workloads import desired_pods
    from mesh.parse import parse_text

    for paths in (PATHS, (Waypoint(),), (Waypoint(), Direct())):
        docs = manifests(paths, layout(tmp_path))
        parsed = parse_text(yaml.safe_dump_all(docs, sort_keys=False), "pods.yaml")
        assert parsed.errors == []
        registry = Registry()
        registry.set_file("pods.yaml", parsed.resources)
        desired = desired_pods(registry.state(), 2)
        plan = plan_lab("bench-dp", [PodSpec(*key, node=p.node) for key, p in desired.items()], 2)
        lab = {(p.namespace, p.name): (f"node-{p.node}", str(p.address.ip)) for p in plan.pods}
        assert planned_pods(docs, "bench-dp") == lab


WAYPOINT_KEY = "dp-waypoint/waypoint"


def test_the_waypoint_row_is_a_workload_waypoint_for_the_server_only(tmp_path):
    """Through the control plane's own pipeline: the server pod's workload names the waypoint, the
    client's does not (so only traffic to the server passes it), and one ALLOW policy on the Gateway."""
    from tests.controlplane.waypoint_yaml import l7_config_from_yaml

    text = yaml.safe_dump_all(Waypoint().manifests(layout(tmp_path)), sort_keys=False)
    policies, _routes, addresses = l7_config_from_yaml(text)
    workloads = {a.workload.name: a.workload for a in addresses.values() if a.HasField("workload")}
    assert set(workloads) == {"client", "server", "waypoint-waypoint"}
    assert workloads["server"].HasField("waypoint") and not workloads["client"].HasField("waypoint")
    [policy] = policies
    assert (policy.namespace, policy.name, list(policy.gateways)) == ("dp-waypoint", "l7-paths", [WAYPOINT_KEY])
    assert [list(op.paths) for rule in policy.rules for op in rule.to] == [list(ALLOWED_PATHS)]


@pytest.mark.parametrize(("request_path", "allowed"), [
    ("/", True), ("/public/a", True), (DENIED_PATH, False), ("/publicity", False), ("/x/", False)])
def test_the_waypoint_rule_decides_as_haproxys_acl(tmp_path, request_path, allowed):
    """The rule as the waypoint evaluates it (waypoint.authz) and as haproxy's ACL reads: the same."""
    from dataclasses import replace

    from tests.controlplane.waypoint_yaml import l7_config_from_yaml
    from tests.waypoint.test_authz import BASE
    from waypoint.authz import L7Authorizer

    text = yaml.safe_dump_all(Waypoint().manifests(layout(tmp_path)), sort_keys=False)
    policies, _routes, _addresses = l7_config_from_yaml(text)
    request = replace(BASE, path=request_path)
    assert L7Authorizer.compile(policies).policies_for(WAYPOINT_KEY, None).authorize(request).allowed is allowed
    # haproxy: denied when the path is not "/" and does not begin with "/public/".
    assert (request_path == "/" or request_path.startswith("/public/")) is allowed


def test_haproxy_acl():
    assert haproxy_acl() == "!{ path / } !{ path_beg /public/ }"
    assert haproxy_acl(("/a", "/b/*", "/c")) == "!{ path /a } !{ path_beg /b/ } !{ path /c }"


def test_haproxy_l7_is_http_mode_with_the_acl_and_reuse(tmp_path):
    lay = layout(tmp_path)
    path = HaproxyL7()
    path.prepare(lay, "10.244.1.9")
    client = (lay.config_dir / "haproxy-dp-haproxy-l7-client.cfg").read_text()
    server = (lay.config_dir / "haproxy-dp-haproxy-l7-server.cfg").read_text()
    for conf in (client, server):
        assert "mode http" in conf and "mode tcp" not in conf
        assert conf.count("verify required ssl-min-ver TLSv1.3") == 1  # the HTTP forward only: no iperf3
        assert "http-reuse always" in conf
    assert "server peer 10.244.1.9:8443 ssl crt" in client and "bind 127.0.0.1:18080" in client
    assert "    http-request deny if !{ path / } !{ path_beg /public/ }" in server.splitlines()
    assert "http-request deny" not in client
    assert "server app 127.0.0.1:8080" in server
    # Its own namespace, token and identity; its proxies listen on the HTTP forward only.
    assert spiffe_id(path.namespace) == "spiffe://cluster.local/ns/dp-haproxy-l7/sa/default"
    proxies = [c for pod in pods(path.manifests(lay)).values() for c in pod["spec"]["containers"]
               if c["name"] == "haproxy"]
    assert [c["readinessProbe"]["exec"]["command"][2].count("ss -Hltn") for c in proxies] == [1, 1]


def test_endpoints_as_the_client_sees_them():
    assert Direct().http_endpoint("10.244.1.3").url() == "http://10.244.1.3:8080/"
    assert Ambient().iperf_endpoint("10.244.1.2").port == 5201
    assert Stunnel().http_endpoint("10.244.1.5").url() == f"http://127.0.0.1:{FORWARDS[0].local}/"
    assert Haproxy().iperf_endpoint("10.244.1.4").host == "127.0.0.1"
    assert Waypoint().http_endpoint("10.244.1.6").url(DENIED_PATH) == "http://10.244.1.6:8080/private"
    assert HaproxyL7().http_endpoint("10.244.1.4").url() == "http://127.0.0.1:18080/"


def test_accounted_cgroups(tmp_path):
    lay = layout(tmp_path)
    assert Direct().accounted(lay) == {}
    stunnel = Stunnel().accounted(lay)
    assert set(stunnel) == {"client", "server"}
    assert stunnel["client"].name.startswith("dp-stunnel_client_stunnel-")
    assert stunnel["client"].parent.name == "amb-bench-dp.lab"
    assert Ambient().accounted(lay)["server"].name.startswith("ztunnel-node-1-")
    waypoint = Waypoint().accounted(lay)
    assert list(waypoint) == ["client", "waypoint", "server"]
    assert waypoint["waypoint"].name.startswith("waypoint-dp-waypoint.waypoint-")
    assert waypoint["client"] == lay.ztunnel_cgroup("node-0") and waypoint["server"] == lay.ztunnel_cgroup("node-1")
    assert HaproxyL7().accounted(lay)["server"].name.startswith("dp-haproxy-l7_server_haproxy-")


def test_nginx_conf():
    conf = nginx_conf(__import__("pathlib").Path("/w/nginx-dp-x"), "127.0.0.1")
    assert "daemon off;" in conf and "access_log off;" in conf
    assert "listen 127.0.0.1:8080" in conf
    assert 'return 200 "hello\\n";' in conf
    assert "keepalive_requests 1000000000;" in conf  # nginx closes after 1,000 by default
    assert "pid /w/nginx-dp-x/nginx.pid;" in conf


def test_prepare_writes_each_side_with_mutual_tls_1_3(tmp_path):
    lay = layout(tmp_path)
    for path in (Stunnel(), Haproxy()):
        path.prepare(lay, "10.244.1.9")
        assert (lay.config_dir / f"nginx-{path.namespace}.conf").is_file()
    stunnel_client = (lay.config_dir / "stunnel-dp-stunnel-client.conf").read_text()
    stunnel_server = (lay.config_dir / "stunnel-dp-stunnel-server.conf").read_text()
    for conf in (stunnel_client, stunnel_server):
        assert "verifyChain = yes" in conf and "sslVersionMin = TLSv1.3" in conf
        assert f"CAfile = {lay.pod_ca_root}" in conf
    assert "connect = 10.244.1.9:8443" in stunnel_client and "accept = 127.0.0.1:18080" in stunnel_client
    assert "connect = 127.0.0.1:8080" in stunnel_server and "accept = 0.0.0.0:8443" in stunnel_server
    haproxy_client = (lay.config_dir / "haproxy-dp-haproxy-client.cfg").read_text()
    haproxy_server = (lay.config_dir / "haproxy-dp-haproxy-server.cfg").read_text()
    assert "mode tcp" in haproxy_client and "mode tcp" in haproxy_server
    assert "server peer 10.244.1.9:8443 ssl crt" in haproxy_client
    assert "bind 0.0.0.0:8443 ssl crt" in haproxy_server
    for conf in (haproxy_client, haproxy_server):
        assert conf.count("verify required ssl-min-ver TLSv1.3") == len(FORWARDS)


def test_proxy_command_gets_its_certificate_with_a_workload_token_it_can_see(tmp_path):
    # Not the node's token, nor the root in the lab's state: pods cannot see the lab's state (issue 18).
    lay = layout(tmp_path)
    client = Stunnel().proxy_command(lay, "client")
    server = Haproxy().proxy_command(lay, "server")
    assert client[:2] == ["sh", "-c"]
    assert "ca request --server 10.255.0.2:15012" in client[2]
    assert f"--identity {spiffe_id('dp-stunnel')}" in client[2]
    assert str(lay.pod_token("dp-stunnel")) in client[2] and str(lay.pod_ca_root) in client[2]
    assert str(lay.pod_token("dp-haproxy")) in server[2]
    for command in (client, server):
        assert str(lay.state_root) not in command[2] and lay.pod_secrets.is_relative_to(lay.config_dir)
    assert client[2].rstrip().endswith(f"exec stunnel {lay.config_dir}/stunnel-dp-stunnel-client.conf")
    assert "crt.pem" in server[2] and "exec haproxy -db -f" in server[2]
    assert spiffe_id("dp-haproxy") == "spiffe://cluster.local/ns/dp-haproxy/sa/default"
