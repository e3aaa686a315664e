"""WasmPlugins for the waypoints, as tables: YAML in (parse → registry → view), ``ambient.waypoint.WasmPlugin``
out, and what ``ambient validate`` says of the plugins no waypoint runs."""

from __future__ import annotations

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.registry import Registry
from controlplane.server import snapshot_resources
from controlplane.validate import validate
from controlplane.view import MeshConfig, compute_view
from controlplane.xds.protocol import DeltaStream
from controlplane.xds.snapshot import Snapshot
from mesh.api import waypoint_pb2 as wp
from mesh.api.types import WASM_PLUGIN_TYPE_URL, pack, unpack, wasm_plugin_key
from mesh.parse import parse_text
from mesh.source import Code
from tests.controlplane.test_waypoint_config import BASE, WEB, with_base

DIGEST = "1ef0c9a92b0420cf25f7fe5d481b231464bc88f486ca3b9c83ed5cc21d2f6210"
GATEWAY = "{kind: Gateway, group: gateway.networking.k8s.io, name: wp}"
WEB_SERVICE = "{kind: Service, group: '', name: web}"
CLASS = "{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}"


def plugin_yaml(spec: str, namespace: str = "shop", name: str = "w") -> str:
    return (f"apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: "
            f"{namespace}}}\nspec:\n  url: file:///plugins/w.wasm\n{spec}")


def wasm_view(text: str) -> dict[str, wp.WasmPlugin]:
    parsed = parse_text(text, "t.yaml")
    assert parsed.errors == []
    registry = Registry()
    registry.set_file("t.yaml", parsed.resources)
    return dict(compute_view(registry.state(), MeshConfig()).wasm_plugins)


def targets(text: str) -> dict[str, tuple[list[str], list[str]]]:
    return {key: (list(p.gateways), list(p.services)) for key, p in wasm_view(text).items()}


# A second waypoint, in another namespace, for the root-namespace rows.
OTHER_WAYPOINT = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: owp, namespace: other}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""

RESOLUTION = [
    ("gateway", plugin_yaml(f"  targetRefs: [{GATEWAY}]\n"), {"shop/w": (["shop/wp"], [])}),
    ("service", plugin_yaml(f"  targetRefs: [{WEB_SERVICE}]\n"), {"shop/w": ([], [WEB])}),
    ("both, each once", plugin_yaml(f"  targetRefs: [{GATEWAY}, {WEB_SERVICE}, {GATEWAY}]\n"),
     {"shop/w": (["shop/wp"], [WEB])}),
    ("the singular targetRef", plugin_yaml(f"  targetRef: {GATEWAY}\n"), {"shop/w": (["shop/wp"], [])}),
    # Istio: a targetRef in another namespace is not supported (the plugin's own namespace only).
    ("a Gateway of another namespace", plugin_yaml(f"  targetRefs: [{GATEWAY}]\n", namespace="other"), {}),
    ("a Service of another namespace",
     plugin_yaml("  targetRefs: [{kind: Service, group: '', name: web, namespace: shop}]\n", namespace="other"), {}),
    ("a missing Gateway", plugin_yaml("  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, "
                                      "name: gone}]\n"), {}),
    ("a Service with the Gateway API's group",
     plugin_yaml("  targetRefs: [{kind: Service, group: gateway.networking.k8s.io, name: web}]\n"), {}),
    # Waypoints never apply a plugin without targetRefs (Istio's policy matcher), root namespace included.
    ("no targetRefs", plugin_yaml(""), {}),
    ("a selector", plugin_yaml("  selector: {matchLabels: {app: web}}\n"), {}),
    ("root namespace without targetRefs", plugin_yaml("", namespace="istio-system"), {}),
    ("root namespace, GatewayClass: every waypoint",
     OTHER_WAYPOINT + "---\n" + plugin_yaml(f"  targetRefs: [{CLASS}]\n", namespace="istio-system"),
     {"istio-system/w": (["other/owp", "shop/wp"], [])}),
    ("GatewayClass outside the root namespace", plugin_yaml(f"  targetRefs: [{CLASS}]\n"), {}),
    ("a CLIENT-only match", plugin_yaml(f"  targetRefs: [{GATEWAY}]\n  match: [{{mode: CLIENT}}]\n"), {}),
]


@pytest.mark.parametrize("extra, expected", [row[1:] for row in RESOLUTION], ids=[row[0] for row in RESOLUTION])
def test_targets_resolve_as_istio_attaches_them(extra, expected):
    assert targets(with_base(extra)) == expected


@pytest.mark.parametrize("match, ports", [
    ("", []),
    ("  match: [{mode: SERVER, ports: [{number: 8080}, {number: 80}]}]\n", [80, 8080]),
    ("  match: [{ports: [{number: 80}]}, {mode: CLIENT_AND_SERVER, ports: [{number: 90}]}]\n", [80, 90]),
    # CLIENT entries never hold on a waypoint: their ports are not the plugin's.
    ("  match: [{mode: CLIENT, ports: [{number: 81}]}, {mode: SERVER, ports: [{number: 80}]}]\n", [80]),
    ("  match: [{mode: SERVER, ports: [{number: 80}]}, {mode: SERVER}]\n", []),  # one entry takes every port
])
def test_match_becomes_the_ports_a_waypoint_runs_the_plugin_for(match, ports):
    (plugin,) = wasm_view(with_base(plugin_yaml(f"  targetRefs: [{GATEWAY}]\n" + match))).values()
    assert list(plugin.ports) == ports


def test_the_resource_carries_everything_resolved():
    text = with_base(f"""\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: openid, namespace: shop}}
spec:
  targetRefs: [{GATEWAY}, {WEB_SERVICE}]
  url: https://example.com/openid.wasm
  sha256: {DIGEST}
  pluginName: oidc
  phase: AUTHZ
  priority: 10
  failStrategy: FAIL_OPEN
  pluginConfig: {{realm: ingress, server: authn}}
  vmConfig:
    env:
    - {{name: TRUST_DOMAIN, value: cluster.local}}
    - {{name: POD_NAME, valueFrom: HOST}}
  match: [{{mode: SERVER, ports: [{{number: 80}}]}}]
""")
    expected = wp.WasmPlugin(
        name="openid", namespace="shop", url="https://example.com/openid.wasm", sha256=DIGEST, plugin_name="oidc",
        phase=wp.WasmPlugin.AUTHZ, priority=10, plugin_config=b'{"realm":"ingress","server":"authn"}',
        fail_open=True, vm_env={"TRUST_DOMAIN": "cluster.local"}, vm_host_env=["POD_NAME"],
        gateways=["shop/wp"], services=[WEB], ports=[80])
    assert wasm_view(text) == {"shop/openid": expected}
    # Packed as discovery sends it, and back.
    packed = pack(expected)
    assert packed.type_url == WASM_PLUGIN_TYPE_URL == "type.googleapis.com/ambient.waypoint.WasmPlugin"
    assert unpack(packed, WASM_PLUGIN_TYPE_URL) == expected
    assert wasm_plugin_key("shop", "openid") == "shop/openid"


@pytest.mark.parametrize("strategy, fail_open", [("", False), ("  failStrategy: FAIL_CLOSE\n", False),
                                                 ("  failStrategy: FAIL_RELOAD\n", False),
                                                 ("  failStrategy: FAIL_OPEN\n", True)])
def test_fail_open_only_for_fail_open(strategy, fail_open):
    (plugin,) = wasm_view(with_base(plugin_yaml(f"  targetRefs: [{GATEWAY}]\n" + strategy))).values()
    assert plugin.fail_open is fail_open
    assert (plugin.sha256, plugin.plugin_config, plugin.phase) == ("", b"", wp.WasmPlugin.UNSPECIFIED_PHASE)


def test_the_type_is_published_and_served_to_who_asks():
    text = with_base(plugin_yaml(f"  targetRefs: [{GATEWAY}]\n") + "---\n"
                     + plugin_yaml(f"  targetRefs: [{WEB_SERVICE}]\n", name="v"))
    parsed = parse_text(text, "t.yaml")
    registry = Registry()
    registry.set_file("t.yaml", parsed.resources)
    snapshot = Snapshot(1, snapshot_resources(compute_view(registry.state())))
    outcome = DeltaStream().on_request(discovery_pb2.DeltaDiscoveryRequest(type_url=WASM_PLUGIN_TYPE_URL), snapshot)
    (response,) = outcome.responses
    assert [r.name for r in response.resources] == ["shop/v", "shop/w"]
    assert all(r.resource.type_url == WASM_PLUGIN_TYPE_URL for r in response.resources)
    assert unpack(response.resources[0].resource, WASM_PLUGIN_TYPE_URL).services == [WEB]


# ---------------------------------------------------------------- ambient validate


def findings(tmp_path, text: str) -> list[tuple[str, str, str, str]]:
    (tmp_path / "a.yaml").write_text(text)
    _, problems = validate([tmp_path])
    return [(p.code, p.resource, p.field, p.message) for p in problems
            if p.resource.startswith("WasmPlugin")]


SIDECARS_ONLY = ("the plugin is for sidecars only (Istio: waypoints apply WasmPlugins by targetRefs alone, even from "
                 "the root namespace), so no waypoint runs it; target the waypoint: targetRefs: [{kind: Gateway, "
                 "group: gateway.networking.k8s.io, name: <waypoint>}]")
VALIDATE = [
    ("no targetRefs", plugin_yaml(""),
     [(Code.WASM_NO_WAYPOINT, "WasmPlugin shop/w", "spec", "with no targetRefs, " + SIDECARS_ONLY)]),
    ("root namespace", plugin_yaml("", namespace="istio-system"),
     [(Code.WASM_NO_WAYPOINT, "WasmPlugin istio-system/w", "spec", "with no targetRefs, " + SIDECARS_ONLY)]),
    ("selector", plugin_yaml("  selector: {matchLabels: {app: web}}\n"),
     [(Code.WASM_NO_WAYPOINT, "WasmPlugin shop/w", "spec.selector", "with a selector, " + SIDECARS_ONLY)]),
    ("CLIENT match", plugin_yaml(f"  targetRefs: [{GATEWAY}]\n  match: [{{mode: CLIENT}}]\n"),
     [(Code.WASM_NO_WAYPOINT, "WasmPlugin shop/w", "spec.match",
       "every entry has mode CLIENT, and a waypoint sees server-side traffic only (as Istio's waypoint), so no "
       "waypoint runs the plugin; use SERVER or CLIENT_AND_SERVER")]),
    ("missing Gateway", plugin_yaml("  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gone}]\n"),
     [(Code.NOT_FOUND, "WasmPlugin shop/w", "spec.targetRefs[0]", "no Gateway shop/gone")]),
    ("Service of a namespace without waypoint",
     plugin_yaml("  targetRefs: [{kind: Service, group: '', name: far}]\n", namespace="other"),
     [(Code.WASM_SERVICE_NO_WAYPOINT, "WasmPlugin other/w", "spec.targetRefs[0]",
       "Service other/far uses no waypoint (label istio.io/use-waypoint on it or its namespace, naming a waypoint "
       "that admits it and takes service traffic), so the plugin never sees its traffic")]),
    ("GatewayClass outside the root namespace", plugin_yaml(f"  targetRefs: [{CLASS}]\n"),
     [(Code.INVALID, "WasmPlugin shop/w", "spec.targetRefs[0].kind",
       "'GatewayClass' cannot be targeted (Gateway, Service, or GatewayClass from the root namespace)")]),
    ("fine", plugin_yaml(f"  targetRefs: [{GATEWAY}, {WEB_SERVICE}]\n"), []),
    ("fine from the root namespace", plugin_yaml(f"  targetRefs: [{CLASS}]\n", namespace="istio-system"), []),
]


@pytest.mark.parametrize("extra, expected", [row[1:] for row in VALIDATE], ids=[row[0] for row in VALIDATE])
def test_validate_says_why_no_waypoint_runs_a_plugin(tmp_path, extra, expected):
    assert findings(tmp_path, with_base(extra)) == expected


def test_validate_reports_a_broken_plugin_with_its_field(tmp_path, capsys):
    from controlplane.validate import run

    (tmp_path / "a.yaml").write_text(with_base(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: w, namespace: shop}\nspec:\n"
        f"  url: https://example.com/w.wasm\n  targetRefs: [{GATEWAY}]\n"))

    class Args:
        paths = [tmp_path]
        output = "text"

    assert run(Args()) == 1
    out = capsys.readouterr().out.splitlines()
    # sha256 is missing: reported at spec's mapping, which starts on its first field (url).
    line = len(BASE.splitlines()) + len(["---", "apiVersion", "kind", "metadata", "spec", "url"])
    assert [text for text in out if "WasmPlugin" in text] == [
        f"{tmp_path}/a.yaml:{line}: WasmPlugin shop/w: spec.sha256: is required for an http(s):// url: the "
        "waypoint checks the module it fetches against it (and caches it by it) [AMB0002]"]
