"""The waypoint objects the control plane writes back: their shape (validated against Kubernetes'
own schemas, strictly, with ``kubernetes-validate``), the Gateway status, and the write-back plan."""

from __future__ import annotations

import kubernetes_validate
import pytest

from controlplane.kube_source import GatewayInfo
from controlplane.kube_waypoints import (
    GATEWAY_NAME_LABEL,
    ROOT_CERT_CONFIG_MAP,
    WaypointGateway,
    WaypointTemplate,
    digest,
    gateway_conditions,
    gateway_status,
    render_waypoint,
    root_cert_config_map,
)
from controlplane.kube_writeback import plan_writeback

KUBERNETES_VERSION = "1.30.0"  # the oldest version whose schemas the renderings must pass
GW = WaypointGateway("shop", "waypoint", "uid-123")
TEMPLATE = WaypointTemplate(image="registry.example/ambient-mesh:1.0")


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, kubernetes_validate.latest_version()])
def test_renderings_pass_kubernetes_schemas_strictly(version):
    for obj in (*render_waypoint(GW, TEMPLATE), root_cert_config_map("shop", "-----BEGIN CERTIFICATE-----\n")):
        kubernetes_validate.validate(obj, version, strict=True)


def test_waypoint_objects_are_named_labelled_and_owned_as_istiod_does():
    account, service, deployment = render_waypoint(GW, TEMPLATE)
    for obj in (account, service, deployment):
        meta = obj["metadata"]
        assert (meta["name"], meta["namespace"]) == ("waypoint", "shop")
        assert meta["labels"][GATEWAY_NAME_LABEL] == meta["labels"]["istio.io/gateway-name"] == "waypoint"
        assert meta["ownerReferences"] == [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                                            "name": "waypoint", "uid": "uid-123"}]
    assert service["spec"]["selector"] == {GATEWAY_NAME_LABEL: "waypoint"}
    assert {p["port"] for p in service["spec"]["ports"]} == {15008, 15021}
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
    assert pod["spec"]["serviceAccountName"] == "waypoint"  # the identity the view gives the waypoint
    container = pod["spec"]["containers"][0]
    assert {p["containerPort"] for p in container["ports"]} == {15008, 15020, 15021}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"}
    command = container["command"]
    assert command[:3] == ["ambient", "waypoint", "run"]
    assert command[command.index("--gateway") + 1] == "shop/waypoint"
    assert command[command.index("--discovery-address") + 1] == "istiod.istio-system.svc:15012"
    # The paths the command reads are the pod's mounts.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for flag in ("--ca-root", "--token-file", "--state-dir"):
        path = command[command.index(flag) + 1]
        assert any(path.startswith(m + "/") for m in mounts), flag
    token = next(v for v in pod["spec"]["volumes"] if v["name"] == "istio-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "istio-ca"
    assert next(v for v in pod["spec"]["volumes"] if "configMap" in v)["configMap"]["name"] == ROOT_CERT_CONFIG_MAP
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"] and security["capabilities"] == {
        "drop": ["ALL"]} and not security["allowPrivilegeEscalation"]
    assert pod["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize(("kwargs", "field"), [({"image": ""}, "image"), ({"image": "a b"}, "image"),
                                               ({"discovery_address": "istiod"}, "discovery address"),
                                               ({"image_pull_policy": "Sometimes"}, "pull policy")])
def test_a_bad_template_is_refused_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        WaypointTemplate(**kwargs)


def test_gateway_status_conditions_and_addresses():
    accepted, programmed = gateway_conditions((), "10.96.0.20", "waypoint.shop.svc.cluster.local")
    body = gateway_status(GW, 3, (accepted, programmed), "10.96.0.20", None, "2026-01-01T00:00:00Z")
    status = body["status"]
    assert status["addresses"] == [{"type": "IPAddress", "value": "10.96.0.20"}]
    assert [(c["type"], c["status"], c["reason"], c["observedGeneration"]) for c in status["conditions"]] == [
        ("Accepted", "True", "Accepted", 3), ("Programmed", "True", "Programmed", 3)]
    # Unchanged conditions keep their transition time; a changed one gets the new time.
    pending = gateway_conditions((), "", "waypoint.shop.svc.cluster.local")
    later = gateway_status(GW, 3, pending, "", body, "2026-01-02T00:00:00Z")["status"]
    assert [c["lastTransitionTime"] for c in later["conditions"]] == ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]
    assert "addresses" not in later
    assert later["conditions"][1]["reason"] == "AddressNotAssigned"


def test_an_invalid_gateway_is_not_accepted_with_its_findings():
    accepted, programmed = gateway_conditions(("Gateway shop/waypoint: spec.listeners: needs mesh",), "", "h")
    assert (accepted.status, accepted.reason, programmed.status) == ("False", "Invalid", "False")
    assert "spec.listeners" in accepted.message


def info(name: str = "waypoint", cls: str = "istio-waypoint", problems: tuple[str, ...] = ()) -> GatewayInfo:
    return GatewayInfo("shop", name, f"uid-{name}", 1, cls, problems)


def test_plan_applies_only_what_changed():
    gateways = {("shop", "waypoint"): info(), ("shop", "ingress"): info("ingress", "istio")}
    plan = plan_writeback(gateways, {}, TEMPLATE, "PEM", {}, {}, "t0")
    kinds = [key for key, _, _ in plan.applies]
    assert kinds == [("ConfigMap", "istio-system", ROOT_CERT_CONFIG_MAP),  # for ztunnel's DaemonSet
                     ("ConfigMap", "shop", ROOT_CERT_CONFIG_MAP), ("ServiceAccount", "shop", "waypoint"),
                     ("Service", "shop", "waypoint"), ("Deployment", "shop", "waypoint")]  # not the ingress
    assert [key for key, _ in plan.statuses] == [("shop", "waypoint")]
    applied = {key: fingerprint for key, _, fingerprint in plan.applies}
    statuses = dict(plan.statuses)
    again = plan_writeback(gateways, {}, TEMPLATE, "PEM", applied, statuses, "t1")
    assert again.applies == () and again.statuses == ()
    # The Service got its IP: only the status changes. A new image: only the Deployment.
    with_ip = plan_writeback(gateways, {("shop", "waypoint"): "10.96.0.9"}, TEMPLATE, "PEM", applied, statuses, "t2")
    assert with_ip.applies == () and with_ip.statuses[0][1]["status"]["addresses"][0]["value"] == "10.96.0.9"
    new_image = WaypointTemplate(image="registry.example/ambient-mesh:1.1")
    upgraded = plan_writeback(gateways, {}, new_image, "PEM", applied, statuses, "t3")
    assert [key[0] for key, _, _ in upgraded.applies] == ["Deployment"]


def test_plan_renders_nothing_for_an_invalid_gateway_but_reports_it():
    plan = plan_writeback({("shop", "waypoint"): info(problems=("bad",))}, {}, TEMPLATE, "PEM", {}, {}, "t0")
    assert [key for key, _, _ in plan.applies] == [("ConfigMap", "istio-system", ROOT_CERT_CONFIG_MAP)]
    assert plan.statuses[0][1]["status"]["conditions"][0]["status"] == "False"


def test_digest_is_stable_over_key_order():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
