"""The bench's paths: their manifests (checked by the mesh's own parser), config files and endpoints."""

from __future__ import annotations

import yaml

from datapath.lab import LabLayout
from datapath.paths import (
    BASELINE,
    FORWARDS,
    PATHS,
    Ambient,
    Direct,
    Haproxy,
    Stunnel,
    manifests,
    nginx_conf,
    planned_ips,
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
    assert [p.name for p in PATHS] == ["direct", "stunnel", "haproxy", "ambient"]
    assert BASELINE in [p.name for p in PATHS]
    assert len({p.namespace for p in PATHS}) == len(PATHS)
    assert [p.name for p in PATHS if p.enrolled] == ["ambient"]


def test_manifests_pass_the_mesh_parser(tmp_path):
    lay = layout(tmp_path)
    (lay.config_dir / "pods.yaml").write_text(yaml.safe_dump_all(manifests(PATHS, lay), sort_keys=False))
    result = parse_paths([lay.config_dir])
    assert result.errors == []
    assert len(result.resources) == 3 * len(PATHS)


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
    assert ips[("dp-stunnel", "client")] == "10.244.0.5"
    assert all(ip.startswith("10.244.1.") for (_, name), ip in ips.items() if name == "server")


def test_endpoints_as_the_client_sees_them():
    assert Direct().http_endpoint("10.244.1.3").url() == "http://10.244.1.3:8080/"
    assert Ambient().iperf_endpoint("10.244.1.2").port == 5201
    assert Stunnel().http_endpoint("10.244.1.5").url() == f"http://127.0.0.1:{FORWARDS[0].local}/"
    assert Haproxy().iperf_endpoint("10.244.1.4").host == "127.0.0.1"


def test_accounted_cgroups(tmp_path):
    lay = layout(tmp_path)
    assert Direct().accounted(lay) == {}
    stunnel = Stunnel().accounted(lay)
    assert set(stunnel) == {"client", "server"}
    assert stunnel["client"].name.startswith("dp-stunnel_client_stunnel-")
    assert stunnel["client"].parent.name == "amb-bench-dp.lab"
    assert Ambient().accounted(lay)["server"].name.startswith("ztunnel-node-1-")


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
