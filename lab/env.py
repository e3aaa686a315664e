"""A container's environment as the kubelet makes it: ``envFrom``, then ``env`` (literal values and
``valueFrom``), each later source winning a name over an earlier one.

Pure functions of the pod, where it was placed and the ConfigMaps of its namespace. A ConfigMap or key
a container needs and does not find (not ``optional``) keeps the pod from starting: ``config_problem``
says why in the kubelet's words (its pod waits as ``CreateContainerConfigError``), and the lab starts it
once the ConfigMap appears (``lab.workloads.LabPod.runtime_spec``). As the kubelet, values are read when
the container is made: a later edit of the ConfigMap changes nothing in a running container.

A pod's ``metadata.uid`` is made up, and stable: a name-based UUID of its namespace and name (the lab
keeps no API server to mint random ones), so a recreated pod has the same uid, unlike Kubernetes.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

from mesh import resources as r

# Our own namespace for the made-up pod uids (a uuid4 drawn once): uid = uuid5(this, "<namespace>/<name>").
POD_UID_NAMESPACE = uuid.UUID("5a0c8d1e-7f1b-4b7e-9d52-2c6a3f0e9b41")
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
# A variable name envFrom can set (the kubelet skips other keys of the ConfigMap, with an event).
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_SUBSCRIPTED = re.compile(r"metadata\.(labels|annotations)\['([^']*)'\]")


def pod_uid(namespace: str, name: str) -> str:
    return str(uuid.uuid5(POD_UID_NAMESPACE, f"{namespace}/{name}"))


def referenced_config_maps(pod: r.Pod) -> set[str]:
    """The names of the ConfigMaps (in the pod's namespace) its containers' env reads."""
    names: set[str] = set()
    for container in pod.spec.containers:
        names.update(ref.config_map for ref in container.env_from)
        names.update(ref.config_map for ref in container.env_refs if ref.config_map)
    return names


def config_problem(pod: r.Pod, config_maps: Mapping[str, r.ConfigMap]) -> str | None:
    """Why the pod's containers cannot be made (a ConfigMap or key missing, not optional), in the
    kubelet's words; None if they can. ``config_maps`` are those of the pod's namespace, by name."""
    namespace = pod.meta.namespace
    for container in pod.spec.containers:
        for source in container.env_from:
            if source.config_map not in config_maps and not source.optional:
                return f'{CREATE_CONTAINER_CONFIG_ERROR}: container {container.name!r}: configmap ' \
                       f'"{source.config_map}" not found'
        for ref in container.env_refs:
            if not ref.config_map or ref.optional:
                continue
            config_map = config_maps.get(ref.config_map)
            if config_map is None:
                return f'{CREATE_CONTAINER_CONFIG_ERROR}: container {container.name!r}: configmap ' \
                       f'"{ref.config_map}" not found'
            if ref.key not in config_map.data:
                return f"{CREATE_CONTAINER_CONFIG_ERROR}: container {container.name!r}: couldn't find key " \
                       f"{ref.key} in ConfigMap {namespace}/{ref.config_map}"
    return None


def field_value(pod: r.Pod, path: str, *, pod_ip: str, node: str, host_ip: str) -> str:
    """A downward-API fieldPath's value (``mesh.parse_env`` admits only these); a label or annotation
    the pod lacks is the empty string, as the kubelet gives it."""
    match = _SUBSCRIPTED.fullmatch(path)
    if match:
        values = pod.meta.labels if match.group(1) == "labels" else pod.meta.annotations
        return values.get(match.group(2), "")
    values = {
        "metadata.name": pod.meta.name, "metadata.namespace": pod.meta.namespace,
        "metadata.uid": pod_uid(pod.meta.namespace, pod.meta.name), "spec.nodeName": node,
        "spec.serviceAccountName": pod.spec.service_account, "status.podIP": pod_ip, "status.hostIP": host_ip,
    }
    if path not in values:
        raise ValueError(f"fieldPath {path!r} is not one the lab fills in")  # mesh.parse reports those
    return values[path]


def container_env(pod: r.Pod, container: r.Container, config_maps: Mapping[str, r.ConfigMap], *, pod_ip: str,
                  node: str, host_ip: str) -> dict[str, str]:
    """The container's own variables (under the image's and over the lab's pod variables, see
    ``lab.processes.pod_env``): envFrom's, then env's. Missing optional sources are skipped; call
    ``config_problem`` first for the others (here they are skipped too)."""
    env: dict[str, str] = {}
    for source in container.env_from:
        config_map = config_maps.get(source.config_map)
        for key, value in (config_map.data.items() if config_map else ()):
            if _ENV_NAME.fullmatch(source.prefix + key):
                env[source.prefix + key] = value
    env.update(container.env)
    for ref in container.env_refs:
        if ref.field_path:
            env[ref.name] = field_value(pod, ref.field_path, pod_ip=pod_ip, node=node, host_ip=host_ip)
        elif (config_map := config_maps.get(ref.config_map)) is not None and ref.key in config_map.data:
            env[ref.name] = config_map.data[ref.key]
    return env
