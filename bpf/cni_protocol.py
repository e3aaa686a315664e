"""The node agent's side of the CNI plugin, without I/O: one request from ``ambient-cni`` in, a decision out.

The plugin (``bpf/cni/ambient-cni.c``) runs on the host for every pod sandbox and relays, over the
agent's Unix socket, what the container runtime gave it: ``{"command", "env": {CNI_*}, "config":
"<stdin, as a string>"}``. ``parse_request`` checks all of it as the CNI spec (containernetworking/cni
SPEC.md) and istio-cni do, and says what to do:

- ``AddPod``: an ADD for a Kubernetes pod (``K8S_POD_NAMESPACE``/``K8S_POD_NAME`` in ``CNI_ARGS``), with
  the netns path (``CNI_NETNS``) and the pod's IPv4 address in ``prevResult`` on ``CNI_IFNAME``. Whether
  it is captured is the agent's lookup (the pod's and namespace's labels), which is I/O.
- ``DeletePod``: a DEL: release whatever capture the pod has (nothing to undo is not an error).
- ``Reply``: nothing to do (CHECK; a sandbox that is not a Kubernetes pod; an excluded namespace).

The answer to the plugin is ``<exit status>\\n<stdout>``: the plugin prints the rest and exits with the
status, so every CNI decision stays here. A successful ADD prints ``prevResult`` unchanged (the plugin
changes no interface, address or route), with the configuration's ``cniVersion`` kept; a failure prints
the spec's error object ``{"cniVersion", "code", "msg", "details"}`` with a non-zero status.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

# The CNI versions whose result has the ``ips``/``interfaces`` shape we read (0.3.0 and later). The
# plugin answers VERSION itself with the same list (keep them equal: tests/bpf/test_cni_plugin.py checks).
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# The spec's well-known error codes that we return.
ERR_INCOMPATIBLE_VERSION = 1
ERR_INVALID_ENV = 4
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_CAPTURE = 100  # plugin-specific: the capture could not be set up (the runtime retries the sandbox)

COMMANDS = ("ADD", "DEL", "CHECK")
# A request is the runtime's config (a few KiB: the conflist entry plus prevResult) and the CNI_*
# environment. A peer on the socket is root on the node, but a bound still keeps a bug from eating memory.
MAX_REQUEST_BYTES = 256 * 1024
MAX_ENV_VALUE = 4096  # PATH_MAX: the longest CNI_NETNS or CNI_PATH worth reading
# Namespaces never captured: kube-system holds what the node needs before the mesh is up (DNS, the
# cluster's own CNI), as istio-cni's default exclusion. The plugin skips them even with the agent down.
DEFAULT_EXCLUDED_NAMESPACES = ("kube-system",)
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


class CniError(Exception):
    """A request we refuse: ``code`` is the CNI spec's error code, ``msg`` short, ``details`` the why."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code, self.msg, self.details = code, msg, details


@dataclass(frozen=True)
class Reply:
    """Answer the plugin now: exit status and what it prints on stdout."""

    status: int
    stdout: str

    def encode(self) -> bytes:
        return f"{self.status}\n{self.stdout}".encode()


@dataclass(frozen=True)
class AddPod:
    namespace: str
    name: str
    netns: str  # CNI_NETNS: a path, e.g. /var/run/netns/cni-… or /proc/<pid>/ns/net
    ip: str | None  # IPv4 of CNI_IFNAME in prevResult; None: the previous plugins gave none
    container_id: str
    version: str  # the configuration's cniVersion, for an error found later
    result: Reply  # the answer once the pod is captured (or is not to be)


@dataclass(frozen=True)
class DeletePod:
    namespace: str
    name: str
    container_id: str
    version: str
    result: Reply


Decision = AddPod | DeletePod | Reply


def error_reply(version: str, code: int, msg: str, details: str = "") -> Reply:
    error: dict[str, Any] = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        error["details"] = details
    return Reply(1, json.dumps(error))


def refuse(version: str, exc: CniError) -> Reply:
    return error_reply(version, exc.code, exc.msg, exc.details)


def parse_request(data: bytes) -> Decision:
    """The decision for one relayed invocation; a malformed one is answered with the spec's error."""
    version = SUPPORTED_VERSIONS[-1]
    try:
        command, env, config_text = _envelope(data)
        config = _config(config_text)
        version = config["cniVersion"]
        return _decide(command, env, config)
    except CniError as exc:
        return refuse(version, exc)


def _envelope(data: bytes) -> tuple[str, dict[str, str], str]:
    if len(data) > MAX_REQUEST_BYTES:
        raise CniError(ERR_DECODE, "request too large", f"{len(data)} bytes, at most {MAX_REQUEST_BYTES}")
    try:
        request = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CniError(ERR_DECODE, "the plugin's request is not JSON", str(exc)) from None
    if not isinstance(request, dict):
        raise CniError(ERR_DECODE, "the plugin's request is not a JSON object")
    command, env, config = request.get("command"), request.get("env"), request.get("config")
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, "unsupported CNI_COMMAND", f"{command!r}, expected one of {COMMANDS}")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise CniError(ERR_DECODE, "the plugin's request has no env object of strings")
    for key, value in env.items():
        if len(value) > MAX_ENV_VALUE:
            raise CniError(ERR_INVALID_ENV, f"{key} too long", f"{len(value)} characters, at most {MAX_ENV_VALUE}")
    if not isinstance(config, str):
        raise CniError(ERR_DECODE, "the plugin's request has no config string")
    return command, env, config


def _config(text: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser's stack
        raise CniError(ERR_DECODE, "the network configuration on stdin is not JSON", str(exc)) from None
    if not isinstance(config, dict):
        raise CniError(ERR_DECODE, "the network configuration on stdin is not a JSON object")
    version = config.get("cniVersion")
    if not isinstance(version, str):
        raise CniError(ERR_INVALID_CONFIG, "the network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, "unsupported cniVersion",
                       f"{version!r}; supported: {', '.join(SUPPORTED_VERSIONS)}")
    excluded = config.get("exclude_namespaces", list(DEFAULT_EXCLUDED_NAMESPACES))
    if not isinstance(excluded, list) or not all(isinstance(n, str) for n in excluded):
        raise CniError(ERR_INVALID_CONFIG, "exclude_namespaces must be a list of namespace names")
    prev = config.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(ERR_INVALID_CONFIG, "prevResult is not a JSON object")
    return config


def cni_args(text: str) -> dict[str, str]:
    """``CNI_ARGS``: ``KEY=VALUE`` pairs separated by ';' (the spec's format)."""
    pairs = {}
    for item in filter(None, text.split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(ERR_INVALID_ENV, "malformed CNI_ARGS", f"{item!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


def _decide(command: str, env: dict[str, str], config: dict[str, Any]) -> Decision:
    version = config["cniVersion"]
    prev = config.get("prevResult")
    passed = Reply(0, json.dumps({**prev, "cniVersion": version}) if prev else json.dumps({"cniVersion": version}))
    if command == "CHECK":
        return Reply(0, "")  # the spec: CHECK prints nothing on success; our capture has no CNI state
    args = cni_args(env.get("CNI_ARGS", ""))
    namespace, name = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    if not namespace or not name:
        return passed if command == "ADD" else Reply(0, "")  # not a Kubernetes pod: not ours to capture
    for value, what in ((namespace, "K8S_POD_NAMESPACE"), (name, "K8S_POD_NAME")):
        if not _K8S_NAME.fullmatch(value):
            raise CniError(ERR_INVALID_ENV, f"invalid {what}", f"{value!r} is not a Kubernetes name")
    if namespace in config.get("exclude_namespaces", DEFAULT_EXCLUDED_NAMESPACES):
        return passed if command == "ADD" else Reply(0, "")
    container_id = env.get("CNI_CONTAINERID", "")
    if not container_id:
        raise CniError(ERR_INVALID_ENV, "CNI_CONTAINERID is missing")
    if command == "DEL":
        return DeletePod(namespace, name, container_id, version, Reply(0, ""))
    netns = env.get("CNI_NETNS", "")
    if not netns.startswith("/"):
        raise CniError(ERR_INVALID_ENV, "CNI_NETNS must be an absolute path", repr(netns))
    ifname = env.get("CNI_IFNAME", "")
    if not ifname:
        raise CniError(ERR_INVALID_ENV, "CNI_IFNAME is missing")
    ip = pod_ip(prev, ifname) if prev else None
    return AddPod(namespace, name, netns, ip, container_id, version, passed)


def pod_ip(result: dict[str, Any], ifname: str) -> str | None:
    """The IPv4 address that ``result`` (a CNI Result) gives the sandbox interface ``ifname``.

    An ``ips`` entry names its interface by index into ``interfaces``; an entry without one belongs to
    the sandbox when the result names no other sandbox interface (as a bare IPAM result).
    """
    interfaces = result.get("interfaces", [])
    ips = result.get("ips", [])
    if not isinstance(interfaces, list) or not isinstance(ips, list):
        raise CniError(ERR_INVALID_CONFIG, "prevResult's interfaces and ips must be lists")
    ours = {i for i, iface in enumerate(interfaces)
            if isinstance(iface, dict) and iface.get("name") == ifname and iface.get("sandbox")}
    sandboxes = [i for i, iface in enumerate(interfaces) if isinstance(iface, dict) and iface.get("sandbox")]
    found = []
    for entry in ips:
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            raise CniError(ERR_INVALID_CONFIG, "prevResult has an ips entry without an address")
        index = entry.get("interface")
        if index is None and sandboxes and not ours:
            continue
        if index is not None and index not in ours:
            continue
        try:
            address = ipaddress.ip_interface(entry["address"])
        except ValueError:
            raise CniError(ERR_INVALID_CONFIG, "prevResult has an invalid address", repr(entry["address"])) from None
        if address.version == 4:
            found.append(str(address.ip))
    return found[0] if found else None
