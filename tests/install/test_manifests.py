"""manifests/install/: valid for the Kubernetes version it declares (kubernetes-validate's schemas,
strict, offline), one source (the kustomization lists exactly its files), and the properties an
operator relies on: the node DaemonSet is not privileged and holds exactly the capabilities it
documents, the CA key never reaches a node, the RBAC grants what the control plane reads and writes,
the flags of one container agree with the paths and ports of the others.

No API server runs here: `kubectl kustomize` (when kubectl is installed) is the only tool run."""

from __future__ import annotations

import shutil
import socket
import subprocess
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from kubernetes_validate.utils import all_versions, major_minor  # type: ignore[import-untyped]

import mesh
from mesh.parse import API_VERSIONS
from tests.install.manifests import (
    INSTALL,
    Doc,
    allows,
    container,
    containers,
    declared_version,
    documents,
    flag,
    kustomization,
    mount_for,
    one,
    plural,
    pod_spec,
    rules_bound_to,
    workloads,
)

NAMESPACE = "istio-system"
# The capabilities each container of the node DaemonSet adds, as ztunnel.yaml's header justifies them.
# A change here is a change of what every node grants the mesh: it is reviewed, never incidental.
NODE_CAPABILITIES = {
    "install-cni": set(),
    "ztunnel": {"NET_ADMIN", "SYS_ADMIN"},
    "node-agent": {"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"},
}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test: validation must use the schemas the package ships."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access during validation: {args[1:]}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_declared_version_has_its_own_schemas() -> None:
    # kubernetes-validate silently falls back to the newest schemas older than the version asked for.
    version = declared_version()
    assert version in {major_minor(v) for v in all_versions()}, (
        f"kubernetes-validate {kubernetes_validate.__version__} ships no schemas for {version}")


@pytest.mark.parametrize("document", documents(), ids=lambda d: d.id)
def test_each_document_is_valid_for_the_declared_version(document: Any, no_network: None) -> None:
    kubernetes_validate.validate(document.doc, declared_version(), strict=True)


def test_strict_validation_refuses_a_misspelt_field(no_network: None) -> None:
    # The control for the test above: the same validation catches what an apply would not apply.
    deployment = yaml.safe_load(yaml.safe_dump(one("Deployment", "istiod")))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, declared_version(), strict=True)


def test_the_kustomization_lists_exactly_the_files_of_the_directory() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    present = {p.name for p in INSTALL.iterdir()} - {"kustomization.yaml"}
    assert set(listed) == present


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed")
def test_kustomize_renders_every_document() -> None:
    rendered = subprocess.run(["kubectl", "kustomize", str(INSTALL)], capture_output=True, text=True,
                              timeout=60, check=True).stdout
    keys = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in yaml.safe_load_all(rendered)}
    assert keys == {(d.kind, d.doc["metadata"].get("namespace"), d.name) for d in documents()}


def test_everything_namespaced_is_in_istio_system() -> None:
    one("Namespace", NAMESPACE)
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for document in documents():
        expected = None if document.kind in cluster_scoped else NAMESPACE
        assert document.doc["metadata"].get("namespace") == expected, document.id


def test_every_image_is_the_one_image_at_the_mesh_version() -> None:
    images = {c["image"] for w in workloads() for c in containers(w.doc)}
    assert images == {f"ambient-mesh:{mesh.__version__}"}
    # and the waypoints the control plane deploys run it too
    (discovery,) = [c for w in workloads() for c in containers(w.doc) if "controlplane" in c.get("args", [])]
    args = discovery["args"]
    assert args[args.index("--waypoint-image") + 1] == f"ambient-mesh:{mesh.__version__}"


# ------------------------------------------------------------------ every container


def all_containers() -> list[tuple[str, Doc, Doc]]:
    return [(f"{w.kind}/{w.name}/{c['name']}", w.doc, c) for w in workloads() for c in containers(w.doc)]


@pytest.mark.parametrize(("label", "workload", "spec"), all_containers(), ids=[c[0] for c in all_containers()])
def test_every_container_has_resources_and_a_locked_down_security_context(label: str, workload: Doc,
                                                                         spec: Doc) -> None:
    resources = spec["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]), label
    assert "memory" in resources["limits"], label
    context = spec["securityContext"]
    assert context["capabilities"]["drop"] == ["ALL"], label
    assert context["readOnlyRootFilesystem"] is True, label
    assert context.get("privileged", False) is False, label
    if "SYS_ADMIN" in context["capabilities"].get("add", []):
        # The API refuses allowPrivilegeEscalation: false together with SYS_ADMIN.
        assert "allowPrivilegeEscalation" not in context, label
    else:
        assert context["allowPrivilegeEscalation"] is False, label
    pod = pod_spec(workload)
    assert (context.get("seccompProfile") or pod["securityContext"]["seccompProfile"])["type"] == "RuntimeDefault"
    assert not (pod.get("hostPID") or pod.get("hostNetwork") or pod.get("hostIPC")), label
    assert spec.get("imagePullPolicy") == "IfNotPresent", label


# ------------------------------------------------------------------ the node DaemonSet


def test_the_daemonset_adds_exactly_the_documented_capabilities_and_is_not_privileged() -> None:
    daemonset = one("DaemonSet", "ztunnel")
    added = {c["name"]: set(c["securityContext"]["capabilities"].get("add", [])) for c in containers(daemonset)}
    assert added == NODE_CAPABILITIES
    assert all(c["securityContext"].get("privileged") is False for c in containers(daemonset))
    # Added capabilities reach uid 0 only; the non-root default of the image is overridden here on purpose.
    for name, capabilities in NODE_CAPABILITIES.items():
        if capabilities:
            assert container(daemonset, name)["securityContext"]["runAsUser"] == 0


def test_the_node_agent_keeps_its_pins_in_the_hosts_bpffs() -> None:
    daemonset = one("DaemonSet", "ztunnel")
    agent = container(daemonset, "node-agent")
    state_dir = flag(agent["args"], "--state-dir")
    mount, volume = mount_for(daemonset, agent, f"{state_dir}/bpf")
    # The agent takes <state-dir>/bpf as its bpffs when one is mounted there exactly (bpf/bpffs.py).
    assert mount["mountPath"] == f"{state_dir}/bpf"
    assert volume["hostPath"]["path"].startswith("/sys/fs/bpf/")


def test_ztunnel_and_the_node_agent_share_the_zds_socket_through_the_pod_only() -> None:
    daemonset = one("DaemonSet", "ztunnel")
    agent, ztunnel = container(daemonset, "node-agent"), container(daemonset, "ztunnel")
    state_dir = flag(agent["args"], "--state-dir")
    zds = flag(ztunnel["args"], "--zds")
    assert zds == f"{state_dir}/zds.sock"
    (agent_mount, volume), (ztunnel_mount, _) = mount_for(daemonset, agent, zds), mount_for(daemonset, ztunnel, zds)
    assert agent_mount["name"] == ztunnel_mount["name"]
    assert "emptyDir" in volume


def test_the_cni_plugin_is_configured_with_the_socket_the_node_agent_serves_on_the_host() -> None:
    daemonset = one("DaemonSet", "ztunnel")
    agent, installer = container(daemonset, "node-agent"), container(daemonset, "install-cni")
    socket_path = flag(agent["args"], "--cni-socket")
    assert flag(installer["args"], "--agent-socket") == socket_path
    mount, volume = mount_for(daemonset, agent, socket_path)
    # The plugin runs on the host: the socket must be at the same path there.
    assert volume["hostPath"]["path"] == mount["mountPath"]
    for directory in (flag(installer["args"], "--bin-dir"), flag(installer["args"], "--conf-dir")):
        _, volume = mount_for(daemonset, installer, directory)
        assert "/host" + volume["hostPath"]["path"] == directory


def test_the_node_agent_sees_the_hosts_processes_through_a_mount_not_host_pid() -> None:
    daemonset = one("DaemonSet", "ztunnel")
    agent = container(daemonset, "node-agent")
    proc = flag(agent["args"], "--proc-root")
    mount, volume = mount_for(daemonset, agent, proc)
    assert volume["hostPath"]["path"] == "/proc" and mount["readOnly"] is True
    assert not pod_spec(daemonset).get("hostPID")
    holders = {c["name"] for c in containers(daemonset)
               for m in c.get("volumeMounts", []) if m["name"] == mount["name"]}
    assert holders == {"node-agent"}


@pytest.mark.parametrize("name", ["ztunnel", "node-agent"])
def test_the_node_identity_is_a_projected_token_for_the_ca_and_the_root_a_configmap(name: str) -> None:
    daemonset = one("DaemonSet", "ztunnel")
    spec = container(daemonset, name)
    token_file = flag(spec["args"], "--token-file")
    mount, volume = mount_for(daemonset, spec, token_file)
    sources = [s["serviceAccountToken"] for s in volume["projected"]["sources"]]
    assert [s["audience"] for s in sources if f"{mount['mountPath']}/{s['path']}" == token_file] == ["istio-ca"]
    _, root = mount_for(daemonset, spec, flag(spec["args"], "--ca-root"))
    assert root["configMap"]["name"] == "istio-ca-root-cert"
    assert flag(spec["args"], "--discovery-address") == f"istiod.{NAMESPACE}.svc:15012"


def test_no_secret_is_mounted_on_a_node_and_only_the_node_agent_holds_an_api_token() -> None:
    daemonset = one("DaemonSet", "ztunnel")
    pod = pod_spec(daemonset)
    assert all("secret" not in v for v in pod["volumes"])
    assert pod["automountServiceAccountToken"] is False
    api_token = "/var/run/secrets/kubernetes.io/serviceaccount"
    holders = {c["name"] for c in containers(daemonset)
               if any(m["mountPath"] == api_token for m in c.get("volumeMounts", []))}
    assert holders == {"node-agent"}


def test_the_daemonset_runs_on_every_node_first_and_one_node_at_a_time() -> None:
    daemonset = one("DaemonSet", "ztunnel")
    pod = pod_spec(daemonset)
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "system-node-critical"
    strategy = daemonset["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxSurge"] == 0
    probe = container(daemonset, "ztunnel")["readinessProbe"]["httpGet"]
    assert (probe["port"], probe["path"]) == (15021, "/healthz/ready")


# ------------------------------------------------------------------ the control plane


def test_the_control_plane_runs_unprivileged_with_its_ca_from_the_cacerts_secret() -> None:
    deployment = one("Deployment", "istiod")
    pod = pod_spec(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert all(not c["securityContext"]["capabilities"].get("add") for c in containers(deployment))
    volumes = {v["name"]: v for v in pod["volumes"]}
    secrets = [v["secret"] for v in volumes.values() if "secret" in v]
    assert [s["secretName"] for s in secrets] == ["cacerts"] and not secrets[0].get("optional", False)
    # The imported store (with the key) lives in memory, not on the node's disk.
    discovery = container(deployment, "discovery")
    _, state = mount_for(deployment, discovery, flag(discovery["args"], "--state"))
    assert state["emptyDir"]["medium"] == "Memory"


def test_the_service_exposes_what_the_control_plane_listens_on() -> None:
    deployment, service = one("Deployment", "istiod"), one("Service", "istiod")
    args = container(deployment, "discovery")["args"]
    assert args[:2] == ["controlplane", "--kubernetes"]
    listening = {int(flag(args, "--listen").rsplit(":", 1)[1]), int(flag(args, "--metrics-listen").rsplit(":", 1)[1])}
    ports = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert ports == {15012: 15012, 15014: 15014}
    assert set(ports.values()) == listening
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = one("PodDisruptionBudget", "istiod")
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


READ_KINDS = sorted({(_group(v), plural(kind)) for kind, versions in API_VERSIONS.items() for v in versions}
                    | {("discovery.k8s.io", "endpointslices")})


@pytest.mark.parametrize(("group", "resource"), READ_KINDS, ids=[f"{g or 'core'}/{r}" for g, r in READ_KINDS])
def test_the_control_plane_may_list_and_watch_each_kind_it_reads(group: str, resource: str) -> None:
    rules = rules_bound_to(NAMESPACE, "istiod")
    for verb in ("get", "list", "watch"):
        assert allows(rules, group, resource, verb), f"{verb} {group or 'core'}/{resource}"


def test_the_control_plane_may_review_tokens_write_gateway_status_and_deploy_waypoints() -> None:
    rules = rules_bound_to(NAMESPACE, "istiod")
    assert allows(rules, "authentication.k8s.io", "tokenreviews", "create")
    assert allows(rules, "gateway.networking.k8s.io", "gateways/status", "patch")
    for group, resource in (("apps", "deployments"), ("", "services"), ("", "serviceaccounts")):
        for verb in ("create", "update", "patch", "delete"):
            assert allows(rules, group, resource, verb), f"{verb} {resource}"


def test_nobody_in_the_mesh_may_read_secrets_or_write_what_it_only_reads() -> None:
    control_plane, node = rules_bound_to(NAMESPACE, "istiod"), rules_bound_to(NAMESPACE, "ztunnel")
    for rules in (control_plane, node):
        assert not any(allows(rules, "", "secrets", verb) for verb in ("get", "list", "watch"))
    assert not allows(control_plane, "", "pods", "delete")
    assert not allows(control_plane, "security.istio.io", "authorizationpolicies", "update")
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in node)


def test_the_cni_plugin_never_waits_on_the_agent_for_the_mesh_s_own_pods() -> None:
    # A node whose conflist outlives its agent (reboot, rolling update) must still start this DaemonSet.
    args = container(one("DaemonSet", "ztunnel"), "install-cni")["args"]
    excluded = {args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--exclude-namespace"}
    assert {NAMESPACE, "kube-system"} <= excluded


def test_the_imported_ca_is_the_store_the_control_plane_opens_for_the_one_trust_domain() -> None:
    from controlplane.server import CA_SUBDIR
    from tests.install.test_commands import ambient_argv

    deployment, daemonset = one("Deployment", "istiod"), one("DaemonSet", "ztunnel")
    ca_init = ambient_argv(container(deployment, "ca-import"))
    discovery = container(deployment, "discovery")["args"]
    assert flag(ca_init, "--dir") == f"{flag(discovery, '--state')}/{CA_SUBDIR}"
    _, cacerts = mount_for(deployment, container(deployment, "ca-import"), flag(ca_init, "--plugin-certs"))
    assert cacerts["secret"]["secretName"] == "cacerts"
    domains = {flag(ca_init, "--trust-domain"), flag(discovery, "--trust-domain"),
               flag(container(daemonset, "ztunnel")["args"], "--trust-domain")}
    assert domains == {"cluster.local"}
