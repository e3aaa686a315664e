"""Fuzz the xDS resources ztunnel takes from the control plane: the client's state, then ztunnel's index.

``mesh.xds.client.ClientState.on_response`` promises (its docstring): a ``DeltaDiscoveryResponse`` is
applied (ACK) or rejected whole (NACK with an INVALID_ARGUMENT ``error_detail`` of at most
MAX_NACK_MESSAGE characters, the view untouched); its ``messages`` counts keep to the known type URLs
and OTHER_TYPE_URL, so a server cannot grow them. Responses here carry any resources under the known
type URLs (and others): messages that decode, protobuf-shaped bytes, bytes at random, wrong ``Any``
type URLs, repeated and removed names.

``mesh.proxy_state.ProxyState.from_addresses`` indexes whatever Address messages discovery delivered,
so for any that decode it must not raise, nor must the lookups a connection makes against it
(endpoints, waypoints), whose docstrings say that what does not resolve is None or empty.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.any_pb2 import Any
from google.rpc import code_pb2
from hypothesis import example, given, strategies as st

from mesh.api import authorization_pb2, workload_pb2
from mesh.api.types import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from mesh.identity import InvalidSpiffeId
from mesh.proxy_state import ProxyState, identity_of, pick_address, service_key_of, subject_alt_names
from mesh.xds.client import KNOWN_TYPE_URLS, MAX_NACK_MESSAGE, OTHER_TYPE_URL, ClientState
from tests.fuzz import fuzz_settings
from tests.fuzz.protobufs import messages, wire_bytes

CLASSES = {ADDRESS_TYPE_URL: workload_pb2.Address, AUTHORIZATION_TYPE_URL: authorization_pb2.Authorization}
type_urls = st.sampled_from([ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, ADDRESS_TYPE_URL + "x", "",
                             "type.googleapis.com/"])
names = st.sampled_from(["ns/a", "ns/b", "ns/c", "", "*"]) | st.text(max_size=6)
addresses = messages(workload_pb2.Address)
authorizations = messages(authorization_pb2.Authorization)


@st.composite
def resources(draw: st.DrawFn, type_url: str) -> discovery_pb2.Resource:
    """A resource, mostly of the response's type; its ``Any`` at times of another type or garbled."""
    packed_url = type_url if draw(st.integers(0, 4)) else draw(type_urls)
    value = draw(st.sampled_from(["matching"] * 3 + ["address", "authorization", "wire", "random"]))
    if value == "matching":
        value = "authorization" if type_url == AUTHORIZATION_TYPE_URL else "address"
    if value == "address":
        payload = draw(addresses).SerializeToString()
    elif value == "authorization":
        payload = draw(authorizations).SerializeToString()
    elif value == "wire":
        payload = draw(wire_bytes())
    else:
        payload = draw(st.binary(max_size=40))
    return discovery_pb2.Resource(name=draw(names), version=draw(st.text(max_size=4)),
                                  resource=Any(type_url=packed_url, value=payload))


@st.composite
def responses(draw: st.DrawFn) -> discovery_pb2.DeltaDiscoveryResponse:
    type_url = draw(type_urls)
    return discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url, nonce=draw(st.text(max_size=4)),
        resources=draw(st.lists(resources(type_url), max_size=5)),
        removed_resources=draw(st.lists(names, max_size=3)))


SUBSCRIPTIONS = [
    {ADDRESS_TYPE_URL: None, AUTHORIZATION_TYPE_URL: None},
    {ADDRESS_TYPE_URL: frozenset({"ns/a", "ns/b"}), AUTHORIZATION_TYPE_URL: None},
]


@fuzz_settings(200)
@given(subscriptions=st.sampled_from(SUBSCRIPTIONS), sequence=st.lists(responses(), min_size=1, max_size=6))
def test_a_response_is_applied_or_rejected_whole(subscriptions, sequence) -> None:
    state = ClientState(subscriptions)
    for response in sequence:
        before = {t: (dict(state.view(t)), dict(state.versions(t))) for t in subscriptions}
        reply, applied, error = state.on_response(response)  # the promise: never raises
        assert reply.type_url == response.type_url and reply.response_nonce == response.nonce
        after = {t: (dict(state.view(t)), dict(state.versions(t))) for t in subscriptions}
        if applied is None:
            assert isinstance(error, str) and error
            assert reply.error_detail.code == code_pb2.INVALID_ARGUMENT
            assert 0 < len(reply.error_detail.message) <= MAX_NACK_MESSAGE
            assert after == before, "a rejected response changed the view"
            continue
        assert error is None and not reply.HasField("error_detail")
        updated, removed = applied
        view, versions = after[response.type_url]
        assert view.keys() == versions.keys()
        for name in updated - removed:  # a name both carried and removed ends removed
            assert isinstance(view[name], CLASSES[response.type_url])
        assert not removed & view.keys()
        wanted = subscriptions[response.type_url]
        assert wanted is None or view.keys() <= wanted
    assert set(state.messages) <= KNOWN_TYPE_URLS | {OTHER_TYPE_URL}
    assert sum(state.messages.values()) == len(sequence)


# Few namespaces, hostnames and IPs, so that services, their workloads and waypoints refer to each other.
NAMESPACES = st.sampled_from(["ns", "waypoints"])
HOSTNAMES = st.sampled_from(["svc", "waypoint", ""])
IPS = st.sampled_from([bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), bytes([10, 96, 0, 1]),
                       bytes.fromhex("fd000000000000000000000000000001"), bytes(3), b""])
PORTS = st.sampled_from([80, 80, 80, 8080, 15008, 15008, 0, 65535, 65536, 2**32 - 1])


@st.composite
def gateways(draw: st.DrawFn) -> workload_pb2.GatewayAddress:
    gateway = workload_pb2.GatewayAddress(hbone_mtls_port=draw(PORTS))
    if draw(st.booleans()):
        gateway.hostname.namespace, gateway.hostname.hostname = draw(NAMESPACES), draw(HOSTNAMES)
    elif draw(st.integers(0, 4)):
        gateway.address.address = draw(IPS)
    return gateway


@st.composite
def meshes(draw: st.DrawFn) -> workload_pb2.Address:
    """An Address of any fields, its names, IPs, ports and waypoint then drawn from a few that meet."""
    address = draw(addresses)
    keys = [f"{namespace}/{hostname}" for namespace in ("ns", "waypoints") for hostname in ("svc", "waypoint", "")]
    if address.HasField("service"):
        service = address.service
        service.namespace, service.hostname = draw(NAMESPACES), draw(HOSTNAMES)
        for vip in service.addresses:
            vip.address = draw(IPS)
        if not service.ports:
            service.ports.add()
        for port in service.ports:
            port.service_port, port.target_port = draw(PORTS), draw(PORTS)
        if draw(st.booleans()):
            service.waypoint.CopyFrom(draw(gateways()))
    else:
        workload = address.workload
        workload.addresses[:] = draw(st.lists(IPS, min_size=1, max_size=2))
        workload.status = draw(st.sampled_from([workload_pb2.HEALTHY, workload_pb2.UNHEALTHY]))
        for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=2)):
            workload.services[key].ports.add(service_port=draw(PORTS), target_port=draw(PORTS))
        if draw(st.booleans()):
            workload.waypoint.CopyFrom(draw(gateways()))
    return address


def _lookups(state: ProxyState, address_list: list[workload_pb2.Address]) -> None:
    """What connections ask of the state, for every service, port and waypoint the addresses name."""
    gateways = []
    for address in address_list:
        if address.HasField("service"):
            service = address.service
            key = service_key_of(service)
            subject_alt_names(service)
            for port in service.ports:
                for endpoint in state.endpoints(key, port.service_port, healthy_only=False):
                    assert endpoint.ip and 0 < endpoint.port <= 65535
                state.endpoints(key, port.service_port, prefer_ip_version=6)
            state.backing(key)
            if service.HasField("waypoint"):
                gateways.append(service.waypoint)
        elif address.HasField("workload"):
            workload = address.workload
            pick_address(workload, 4)
            pick_address(workload, 6)
            try:
                identity_of(workload)
            except InvalidSpiffeId:
                pass  # documented: names that do not form a SPIFFE ID
            if workload.HasField("waypoint"):
                gateways.append(workload.waypoint)
    workloads = list(state.workloads.values())
    for gateway in gateways:
        resolved = state.waypoint_of(gateway)
        if resolved is not None:
            assert all(endpoint.ip and 0 < endpoint.port <= 65535 for endpoint in resolved.endpoints)
        for workload in workloads[:3]:
            assert isinstance(state.is_waypoint(workload, gateway), bool)


@fuzz_settings(300)
@given(address_list=st.lists(meshes() | addresses, max_size=6), keys=st.lists(names, min_size=6, max_size=6))
@example(address_list=[workload_pb2.Address(workload=workload_pb2.Workload(
    uid="w", addresses=[bytes(4), bytes(5)], services={"ns/s": workload_pb2.PortList()},
    waypoint=workload_pb2.GatewayAddress(address=workload_pb2.NetworkAddress(address=bytes(3)))))],
    keys=["a"] * 6)
def test_any_decodable_addresses_index_and_resolve(address_list: list[workload_pb2.Address], keys: list[str]) -> None:
    # Through the wire, as discovery delivers them: each decodes from what the control plane sent.
    decoded = [workload_pb2.Address.FromString(address.SerializeToString()) for address in address_list]
    state = ProxyState.from_addresses(dict(zip(keys, decoded, strict=False)))  # the promise: never raises
    _lookups(state, decoded)


# Found by the target above: ports are uint32 on the wire, and a target_port of 65536 used to reach an
# Endpoint, whose dial raised OverflowError and ended the pod's serving task.
PORT_OUT_OF_RANGE = [
    workload_pb2.Address(service=workload_pb2.Service(
        name="svc", namespace="ns", hostname="svc", ports=[workload_pb2.Port(service_port=80, target_port=65536)])),
    workload_pb2.Address(workload=workload_pb2.Workload(
        uid="w", namespace="ns", addresses=[bytes([10, 0, 0, 1])], status=workload_pb2.HEALTHY,
        services={"ns/svc": workload_pb2.PortList()})),
]


@fuzz_settings(100)
@given(address_list=st.lists(meshes(), max_size=6))
@example(address_list=PORT_OUT_OF_RANGE)
def test_endpoints_are_dialable_tcp_ports(address_list: list[workload_pb2.Address]) -> None:
    state = ProxyState.from_addresses({str(index): address for index, address in enumerate(address_list)})
    for key, service in state.services.items():
        for port in service.ports:
            for endpoint in state.endpoints(key, port.service_port, healthy_only=False):
                assert 0 < endpoint.port <= 65535, f"{key}:{port.service_port} -> {endpoint.ip}:{endpoint.port}"
