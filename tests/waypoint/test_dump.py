"""The waypoint's ``/config_dump`` from plain data, with a real certificate from an in-memory CA."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ca.authority import SigningAuthority
from hbone.tls import WorkloadCredentials
from mesh.api import waypoint_pb2 as wp
from mesh.identity import SpiffeId
from tests.ztunnel.pki import TD, creds
from waypoint.dump import config_dump
from waypoint.wasm_manager import PluginStatus

IDENTITY = SpiffeId(TD, "shop", "waypoint")
WEB = "shop/web.shop.svc.cluster.local"
OTHER = "shop/other.shop.svc.cluster.local"


def route(name: str, parents: list[str], problems: tuple[str, ...] = ()) -> wp.Route:
    rule = wp.RouteRule(
        name="split",
        matches=[wp.RouteMatch(path=wp.StringMatch(prefix="/api"), method="GET",
                               headers=[wp.HeaderMatch(name="x-user", value=wp.StringMatch(exact="a"))])],
        backends=[wp.Backend(service=WEB, port=80, weight=90), wp.Backend(service="shop/gone", port=80, weight=10,
                                                                          error="no Service shop/gone")],
        request_headers=wp.HeaderModifier(set=[wp.Header(name="x-a", value="1")]),
        timeout_seconds=2.0, retry=wp.Retry(attempts=2, codes=[503]))
    return wp.Route(name=name, namespace="shop", kind="HTTPRoute",
                    parents=[wp.ParentRef(service=p, port=80) for p in parents], hostnames=["web"],
                    rules=[rule, wp.RouteRule()], problems=list(problems))


POLICIES = [
    wp.L7Policy(name="only-get", namespace="shop", action=wp.L7Policy.ALLOW, gateways=["shop/waypoint"],
                rules=[wp.Rule(to=[wp.Operation(methods=["GET"])])]),
    wp.L7Policy(name="ext", namespace="shop", action=wp.L7Policy.CUSTOM, services=[WEB]),
    wp.L7Policy(name="audit", namespace="shop", action=wp.L7Policy.DENY, services=[OTHER], dry_run=True),
]


@dataclass
class View:
    certificate: WorkloadCredentials | None = None
    hbone_address: tuple[str, int] | None = ("0.0.0.0", 15008)
    gateway: str = "shop/waypoint"
    identity: SpiffeId = IDENTITY
    policies: list[wp.L7Policy] = field(default_factory=lambda: list(POLICIES))
    routes: list[wp.Route] = field(default_factory=lambda: [route("web", [WEB]), route("bad", [OTHER], ("no parent",))])
    served_services: list[str] = field(default_factory=lambda: [WEB])
    wasm_plugins: list[PluginStatus] = field(default_factory=list)


def test_the_dump_names_the_gateway_listener_services_and_is_json():
    dump = config_dump(View())
    assert json.loads(json.dumps(dump)) == dump
    assert (dump["gateway"], dump["identity"]) == ("shop/waypoint", "spiffe://cluster.local/ns/shop/sa/waypoint")
    assert dump["listeners"] == [{"name": "mesh", "address": "0.0.0.0:15008", "protocol": "HBONE"}]
    assert dump["services"] == [WEB]
    assert config_dump(View(hbone_address=None))["listeners"] == []


def test_policies_with_their_targets_and_whether_they_are_enforced():
    policies = {p["name"]: p for p in config_dump(View())["policies"]}
    assert list(policies) == ["audit", "ext", "only-get"]  # sorted
    assert policies["only-get"] == {"name": "only-get", "namespace": "shop", "action": "Allow",
                                    "targets": {"gateways": ["shop/waypoint"], "services": []}, "dryRun": False,
                                    "rules": 1, "enforced": True, "applies": True}
    assert (policies["ext"]["enforced"], policies["ext"]["applies"]) == (False, True)  # CUSTOM is skipped
    assert (policies["audit"]["enforced"], policies["audit"]["applies"]) == (False, False)


def test_routes_are_summarised_with_their_status_and_attachment():
    routes = {r["name"]: r for r in config_dump(View())["routes"]}
    web, bad = routes["web"], routes["bad"]
    assert (web["status"], web["attached"], web["parents"]) == (
        {"accepted": True, "reason": "Accepted", "problems": []}, True, [f"{WEB}:80"])
    assert (bad["status"]["accepted"], bad["status"]["problems"], bad["attached"]) == (False, ["no parent"], False)
    first, catch_all = web["rules"]
    assert first == {
        "name": "split",
        "matches": [{"path": "PathPrefix /api", "headers": ["x-user: Exact a"], "method": "GET"}],
        "backends": [{"service": WEB, "port": 80, "weight": 90},
                     {"service": "shop/gone", "port": 80, "weight": 10, "error": "no Service shop/gone"}],
        "filters": ["RequestHeaderModifier"], "timeouts": {"request": 2.0}, "retry": {"attempts": 2, "codes": [503]}}
    assert catch_all == {"matches": [{"path": "PathPrefix /"}], "backends": []}


def test_the_certificate_without_its_key():
    authority = SigningAuthority.self_signed(TD)
    credentials = creds(authority, IDENTITY)
    dump = config_dump(View(certificate=credentials))
    (cert,) = dump["certificates"]
    assert (cert["identity"], cert["state"]) == (str(IDENTITY), "Available")
    assert len(cert["certChain"]) == 1 and len(cert["rootCerts"]) == 1
    assert set(cert["certChain"][0]) == {"serialNumber", "subject", "validFrom", "expirationTime"}
    text = json.dumps(dump)
    assert "PRIVATE KEY" not in text and credentials.key_pem.decode().splitlines()[1] not in text
    assert config_dump(View())["certificates"] == [{"identity": str(IDENTITY), "state": "Initializing",
                                                    "certChain": [], "rootCerts": []}]


def test_the_dump_shows_each_wasm_plugin_and_why_one_failed():
    plugins = [PluginStatus("shop/add", "file:///p/add.wasm", "ab" * 32, "AUTHZ", 5, False, "loaded", None),
               PluginStatus("shop/gone", "http://h/g.wasm", "cd" * 32, "UNSPECIFIED", 0, True, "failed",
                            "http://h/g.wasm: answered 404, not 200")]
    dump = config_dump(View(wasm_plugins=plugins))
    assert dump["wasmPlugins"] == [
        {"name": "shop/add", "url": "file:///p/add.wasm", "sha256": "ab" * 32, "phase": "AUTHZ", "priority": 5,
         "failOpen": False, "state": "loaded"},
        {"name": "shop/gone", "url": "http://h/g.wasm", "sha256": "cd" * 32, "phase": "UNSPECIFIED", "priority": 0,
         "failOpen": True, "state": "failed", "error": "http://h/g.wasm: answered 404, not 200"}]
    assert config_dump(View())["wasmPlugins"] == []
