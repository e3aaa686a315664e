"""``/config_dump`` in the shape of Istio's ztunnel, from a real view and a real certificate, and read
back by ``ambient ztunnel-config`` as a user sees it."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pytest

from ambient.ztunnel_config import render
from ca.authority import SigningAuthority
from mesh.api.types import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from mesh.identity import SpiffeId
from mesh.proxy_state import ProxyState
from tests.ztunnel.pki import TD, certified
from tests.ztunnel.worlds import WAYPOINT_IPS, WAYPOINT_PODS, discovery_view, uid
from ztunnel.dump import config_dump
from ztunnel.proxy import ZtunnelConfig

DOCS = WAYPOINT_PODS + """---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: grpc-api, port: 9090, targetPort: 9090},
          {name: db, port: 5432, targetPort: 5432}]
  internalTrafficPolicy: Local
  publishNotReadyAddresses: true
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client], notNamespaces: [legacy]}}]
    to: [{operation: {ports: ["8080"]}}]
"""
VIPS = {"shop/web": "10.96.0.10", "shop/wp": "10.96.0.99"}
WEB = SpiffeId(TD, "shop", "web")
DB = SpiffeId(TD, "shop", "db")


class _Secrets:
    def __init__(self, held: dict[SpiffeId, object]) -> None:
        self.held = held

    def identities(self) -> list[SpiffeId]:
        return sorted(self.held, key=str)

    def current(self, identity: SpiffeId):
        return self.held[identity]


@pytest.fixture(scope="module")
def dump() -> dict:
    view = discovery_view(DOCS, WAYPOINT_IPS, VIPS)
    state = ProxyState.from_addresses(view[ADDRESS_TYPE_URL], view[AUTHORIZATION_TYPE_URL])
    authority = SigningAuthority.self_signed(TD)
    ztunnel = SimpleNamespace(
        state=state, pods=SimpleNamespace(pods={uid("shop/web-0"): object()}),
        config=ZtunnelConfig(node="node-a"), secrets=_Secrets({WEB: certified(authority, WEB), DB: None}),
        tracker=SimpleNamespace(snapshot=lambda: []))
    return json.loads(json.dumps(config_dump(ztunnel)))  # what the admin port serves: plain JSON


def only(entries: list[dict], **fields) -> dict:
    (entry,) = [e for e in entries if all(e.get(k) == v for k, v in fields.items())]
    return entry


def test_the_top_level_is_istios_with_ours_beside_it(dump):
    assert {"workloads", "services", "policies", "certificates", "config", "version"} <= set(dump)
    assert dump["config"]["node"] == dump["node"] == "node-a"
    assert dump["config"]["trustDomain"] == "cluster.local"
    # The connection bounds in force (ztunnel.limits), as ztunnel runs with them.
    assert {key: dump["config"][key] for key in ("maxConnectionsPerPod", "maxConnectionsPerNode",
                                                 "hboneHandshakeTimeout", "plaintextIdleTimeout")} == {
        "maxConnectionsPerPod": 4_000, "maxConnectionsPerNode": 20_000, "hboneHandshakeTimeout": 10.0,
        "plaintextIdleTimeout": 3600.0}


def test_workloads_use_istios_camel_case_names(dump):
    web = only(dump["workloads"], name="web-0")
    assert {k: web[k] for k in ("uid", "workloadIps", "protocol", "namespace", "serviceAccount", "node",
                                "status", "trustDomain", "local")} == {
        "uid": uid("shop/web-0"), "workloadIps": ["10.244.0.11"], "protocol": "HBONE", "namespace": "shop",
        "serviceAccount": "web", "node": "node-a", "status": "Healthy", "trustDomain": "cluster.local",
        "local": True}
    assert web["authorizationPolicies"] == ["shop/allow-client"]
    assert "waypoint" not in web  # Istio leaves it out when there is none
    assert only(dump["workloads"], name="db")["waypoint"] == {"destination": "shop/wp.shop.svc.cluster.local"}
    assert only(dump["workloads"], name="client")["local"] is False


def test_services_list_their_endpoints_by_workload_uid(dump):
    web = only(dump["services"], name="web")
    assert web["vips"] == ["/10.96.0.10"]  # <network>/<ip>, the default network being ""
    assert web["ports"] == {"80": 8080, "9090": 9090, "5432": 5432}
    assert list(web["endpoints"]) == [uid("shop/web-0")]
    assert web["endpoints"][uid("shop/web-0")] == {
        "workloadUid": uid("shop/web-0"), "service": "shop/web.shop.svc.cluster.local",
        "address": "/10.244.0.11", "port": {"80": 8080, "9090": 9090, "5432": 5432}}


def test_services_show_app_protocols_and_load_balancing_as_istio_names_them(dump):
    web = only(dump["services"], name="web")
    assert web["appProtocols"] == {"80": "Http11", "9090": "Grpc"}  # the unknown protocol is left out
    assert web["loadBalancer"] == {"routingPreferences": ["Node"], "mode": "Strict", "healthPolicy": "AllowAll"}
    assert "appProtocols" not in only(dump["services"], name="wp")  # HBONE's port 15008 has none
    assert "loadBalancer" not in only(dump["services"], name="wp")


def test_workloads_show_their_capacity(dump):
    assert only(dump["workloads"], name="web-0")["capacity"] == 1  # unset reads as 1, as Istio's


def test_policies_carry_their_rules_nested_as_istio_nests_them(dump):
    policy = only(dump["policies"], name="allow-client")
    assert (policy["scope"], policy["action"], policy["dryRun"]) == ("WorkloadSelector", "Allow", False)
    matches = [match for group in policy["rules"] for rules in group for match in rules]
    assert matches == [  # the rule's from and to, each a clause of its own; empty fields left out
        {"principals": [{"Exact": "cluster.local/ns/shop/sa/client"}], "notNamespaces": [{"Exact": "legacy"}]},
        {"destinationPorts": [8080]}]


def test_certificates_carry_the_chain_and_the_root(dump):
    web = only(dump["certificates"], identity=str(WEB))
    assert web["state"] == "Available"
    (leaf,) = web["certChain"]
    (root,) = web["rootCerts"]
    assert leaf["pem"].startswith("-----BEGIN CERTIFICATE-----") and root["pem"] != leaf["pem"]
    assert dt.datetime.fromisoformat(leaf["validFrom"]) < dt.datetime.fromisoformat(leaf["expirationTime"])
    assert int(leaf["serialNumber"], 16) > 0
    assert only(dump["certificates"], identity=str(DB)) == {
        "identity": str(DB), "state": "Initializing", "certChain": [], "rootCerts": [], "error": None}


def test_ztunnel_config_reads_what_ztunnel_wrote(dump):
    now = dt.datetime.now(dt.UTC)
    workloads = render("workloads", dump).splitlines()
    assert any(line.split()[:3] == ["shop", "web-0", "10.244.0.11"] for line in workloads)
    assert any("shop/wp.shop.svc.cluster.local" in line for line in workloads if " db " in line)
    services = render("services", dump).splitlines()
    assert any(line.split()[:3] == ["shop", "web", "10.96.0.10"] and line.split()[-1] == "1" for line in services)
    assert "shop       allow-client  Allow   WorkloadSelector" in render("policies", dump)
    certificates = render("certificates", dump, now=now)
    (web,) = [line.split() for line in certificates.splitlines() if line.startswith(str(WEB))]
    assert web[1:4] == ["Leaf", "Available", "true"]
