"""manifests/install/ read as the tests need it: the declared Kubernetes version, the documents of each
file the kustomization lists, and small lookups (a workload's containers, a flag's value, whether a
set of RBAC rules grants a verb)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "manifests" / "install"
KUSTOMIZATION = INSTALL / "kustomization.yaml"
# The one place the target version is written: a comment of kustomization.yaml (kustomize has no field
# for it), read here so that what the tests validate against is what the files say they target.
VERSION_LINE = re.compile(r"^# kubernetes-version: (\d+\.\d+)$", re.MULTILINE)

Doc = dict[str, Any]


@dataclass(frozen=True)
class Document:
    file: str
    doc: Doc

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def id(self) -> str:
        return f"{self.file}:{self.kind}/{self.name}"


def declared_version() -> str:
    found = VERSION_LINE.findall(KUSTOMIZATION.read_text())
    if len(found) != 1:
        raise AssertionError(f"{KUSTOMIZATION}: expected one '# kubernetes-version: X.Y' line, found {found}")
    return str(found[0])


def kustomization() -> Doc:
    loaded = yaml.safe_load(KUSTOMIZATION.read_text())
    assert isinstance(loaded, dict)
    return loaded


def documents() -> list[Document]:
    """Every document of every file the kustomization lists, in its order."""
    found = []
    for file in kustomization()["resources"]:
        for doc in yaml.safe_load_all((INSTALL / file).read_text()):
            if doc is not None:
                found.append(Document(file, doc))
    return found


def one(kind: str, name: str) -> Doc:
    matches = [d.doc for d in documents() if d.kind == kind and d.name == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: Doc) -> Doc:
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def containers(workload: Doc) -> Iterator[Doc]:
    """Init containers first, then the others."""
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def container(workload: Doc, name: str) -> Doc:
    matches = [c for c in containers(workload) if c["name"] == name]
    assert len(matches) == 1, f"expected one container {name}, found {len(matches)}"
    return matches[0]


def workloads() -> list[Document]:
    return [d for d in documents() if d.kind in ("Deployment", "DaemonSet", "StatefulSet", "Job")]


def flag(args: list[str], name: str) -> str:
    """The value after ``name`` in an argument list (given once)."""
    positions = [i for i, arg in enumerate(args) if arg == name]
    assert len(positions) == 1, f"{name} given {len(positions)} times in {args}"
    assert positions[0] + 1 < len(args), f"{name} has no value in {args}"
    return args[positions[0] + 1]


def mount_for(workload: Doc, container_doc: Doc, path: str) -> tuple[Doc, Doc]:
    """The volume mount of ``container_doc`` whose mount path holds ``path`` (the deepest), and its volume."""
    best = None
    for mount in container_doc.get("volumeMounts", []):
        point = mount["mountPath"].rstrip("/")
        if (path == point or path.startswith(point + "/")) and (best is None or len(point) > len(best["mountPath"])):
            best = mount
    assert best is not None, f"{path}: no volume of container {container_doc['name']} is mounted there"
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    return best, volumes[best["name"]]


def _matches(granted: list[str], wanted: str) -> bool:
    return "*" in granted or wanted in granted


def allows(rules: list[Doc], group: str, resource: str, verb: str) -> bool:
    """Whether RBAC ``rules`` grant ``verb`` on ``resource`` (``kind/subresource`` too) of API ``group``,
    as the API server's RBAC authorizer matches them: "*" is everything, a subresource is named whole."""
    return any(_matches(rule.get("apiGroups", []), group) and _matches(rule.get("resources", []), resource)
               and _matches(rule.get("verbs", []), verb) for rule in rules)


def rules_bound_to(namespace: str, service_account: str) -> list[Doc]:
    """The rules of every ClusterRole a ClusterRoleBinding of these files gives the service account."""
    roles = {d.name: d.doc for d in documents() if d.kind == "ClusterRole"}
    rules: list[Doc] = []
    for binding in (d.doc for d in documents() if d.kind == "ClusterRoleBinding"):
        if any(s["kind"] == "ServiceAccount" and s["name"] == service_account and s.get("namespace") == namespace
               for s in binding["subjects"]):
            rules.extend(roles[binding["roleRef"]["name"]]["rules"])
    return rules


def plural(kind: str) -> str:
    """The API's resource name of a kind (the plural the mesh's kinds use)."""
    lower = kind.lower()
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    if lower.endswith("s"):
        return lower + "es"
    return lower + "s"
