"""Resources for discovery tests: small Address and Authorization messages and snapshots of them."""

from __future__ import annotations

import ipaddress

from controlplane.xds.snapshot import VersionedResource
from mesh.api import authorization_pb2 as authz, workload_pb2 as wl
from mesh.api.types import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, pack

ADDRESS = ADDRESS_TYPE_URL
AUTHZ = AUTHORIZATION_TYPE_URL


def workload(uid: str, ip: str = "10.0.0.1", node: str = "node-a") -> wl.Address:
    return wl.Address(workload=wl.Workload(
        uid=uid, name=uid.rsplit("/", 1)[-1], namespace="default", node=node,
        addresses=[ipaddress.ip_address(ip).packed], tunnel_protocol=wl.HBONE,
    ))


def policy(name: str, namespace: str = "default") -> authz.Authorization:
    return authz.Authorization(name=name, namespace=namespace, action=authz.ALLOW)


def resources(**by_type) -> dict[str, dict[str, VersionedResource]]:
    """``resources(address={name: msg}, authz={name: msg})`` → the mapping ``publish`` takes."""
    urls = {"address": ADDRESS, "authz": AUTHZ}
    return {
        urls[key]: {name: VersionedResource.of(name, pack(message)) for name, message in messages.items()}
        for key, messages in by_type.items()
    }
