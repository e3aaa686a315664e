import ipaddress

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from mesh.api import authorization_pb2 as authz, workload_pb2 as wl
from mesh.api.types import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, pack, unpack


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def make_workload() -> wl.Workload:
    return wl.Workload(
        uid="Kubernetes//Pod/default/echo-7d9f",
        name="echo-7d9f",
        namespace="default",
        service_account="echo",
        trust_domain="cluster.local",
        addresses=[ip("10.244.1.7")],
        node="node-a",
        network="net1",
        tunnel_protocol=wl.HBONE,
        waypoint=wl.GatewayAddress(
            address=wl.NetworkAddress(network="net1", address=ip("10.244.1.2")),
            hbone_mtls_port=15008,
        ),
        services={
            "default/echo.default.svc.cluster.local": wl.PortList(
                ports=[wl.Port(service_port=80, target_port=8080)]
            )
        },
        authorization_policies=["default/allow-client"],
        workload_name="echo",
        canonical_name="echo",
        cluster_id="Kubernetes",
        status=wl.HEALTHY,
    )


def make_service() -> wl.Service:
    return wl.Service(
        name="echo",
        namespace="default",
        hostname="echo.default.svc.cluster.local",
        addresses=[wl.NetworkAddress(network="net1", address=ip("10.96.0.10"))],
        ports=[wl.Port(service_port=80, target_port=8080)],
        waypoint=wl.GatewayAddress(
            hostname=wl.NamespacedHostname(
                namespace="default", hostname="waypoint.default.svc.cluster.local"
            ),
            hbone_mtls_port=15008,
        ),
        subject_alt_names=["spiffe://cluster.local/ns/default/sa/echo"],
    )


def make_authorization() -> authz.Authorization:
    match = authz.Match(
        namespaces=[authz.StringMatch(exact="default")],
        not_namespaces=[authz.StringMatch(prefix="kube-")],
        service_accounts=[authz.ServiceAccountMatch(namespace="default", service_account="client")],
        not_service_accounts=[authz.ServiceAccountMatch(namespace="default", service_account="evil")],
        principals=[authz.StringMatch(suffix="/sa/client")],
        not_principals=[authz.StringMatch(presence={})],
        source_ips=[authz.Address(address=ip("10.244.0.0"), length=16)],
        not_source_ips=[authz.Address(address=ip("fd00::"), length=8)],
        destination_ips=[authz.Address(address=ip("10.244.1.7"), length=32)],
        not_destination_ips=[authz.Address(address=ip("10.244.1.8"), length=32)],
        destination_ports=[8080],
        not_destination_ports=[9090],
    )
    return authz.Authorization(
        name="allow-client",
        namespace="default",
        scope=authz.WORKLOAD_SELECTOR,
        action=authz.DENY,
        groups=[authz.Group(rules=[authz.Rules(matches=[match])])],
    )


def test_workload_round_trip():
    workload = make_workload()
    decoded = wl.Workload.FromString(workload.SerializeToString())
    assert decoded == workload
    assert ipaddress.ip_address(decoded.addresses[0]) == ipaddress.ip_address("10.244.1.7")
    assert len(decoded.addresses[0]) == 4
    assert decoded.tunnel_protocol == wl.HBONE
    assert decoded.waypoint.WhichOneof("destination") == "address"
    assert decoded.waypoint.hbone_mtls_port == 15008
    ports = decoded.services["default/echo.default.svc.cluster.local"].ports
    assert [(p.service_port, p.target_port) for p in ports] == [(80, 8080)]


def test_service_round_trip():
    service = make_service()
    decoded = wl.Service.FromString(service.SerializeToString())
    assert decoded == service
    assert decoded.waypoint.WhichOneof("destination") == "hostname"
    assert decoded.addresses[0].address == ip("10.96.0.10")


def test_authorization_round_trip():
    policy = make_authorization()
    decoded = authz.Authorization.FromString(policy.SerializeToString())
    assert decoded == policy
    match = decoded.groups[0].rules[0].matches[0]
    assert match.not_principals[0].WhichOneof("match_type") == "presence"
    assert match.service_accounts[0].service_account == "client"
    assert (match.source_ips[0].address, match.source_ips[0].length) == (ip("10.244.0.0"), 16)


def test_address_is_a_workload_or_a_service():
    assert wl.Address(workload=make_workload()).WhichOneof("type") == "workload"
    assert wl.Address(service=make_service()).WhichOneof("type") == "service"


def test_type_urls():
    assert ADDRESS_TYPE_URL == "type.googleapis.com/istio.workload.Address"
    assert AUTHORIZATION_TYPE_URL == "type.googleapis.com/istio.security.Authorization"
    assert pack(wl.Address()).type_url == ADDRESS_TYPE_URL
    assert pack(authz.Authorization()).type_url == AUTHORIZATION_TYPE_URL


def test_resources_through_a_delta_discovery_response():
    workload = wl.Address(workload=make_workload())
    service = wl.Address(service=make_service())
    response = discovery_pb2.DeltaDiscoveryResponse(
        type_url=ADDRESS_TYPE_URL,
        nonce="n1",
        system_version_info="v1",
        resources=[
            discovery_pb2.Resource(
                name=workload.workload.uid, version="1", resource=pack(workload)
            ),
            discovery_pb2.Resource(
                name="default/echo.default.svc.cluster.local", version="1", resource=pack(service)
            ),
        ],
        removed_resources=["Kubernetes//Pod/default/gone"],
    )
    decoded = discovery_pb2.DeltaDiscoveryResponse.FromString(response.SerializeToString())
    assert decoded.type_url == ADDRESS_TYPE_URL
    assert [r.resource.type_url for r in decoded.resources] == [ADDRESS_TYPE_URL] * 2
    assert [r.name for r in decoded.resources] == [
        "Kubernetes//Pod/default/echo-7d9f",
        "default/echo.default.svc.cluster.local",
    ]
    assert unpack(decoded.resources[0].resource, ADDRESS_TYPE_URL) == workload
    assert unpack(decoded.resources[1].resource, ADDRESS_TYPE_URL) == service
    assert list(decoded.removed_resources) == ["Kubernetes//Pod/default/gone"]


def test_authorization_through_a_delta_discovery_response():
    policy = make_authorization()
    response = discovery_pb2.DeltaDiscoveryResponse(
        type_url=AUTHORIZATION_TYPE_URL,
        nonce="n2",
        resources=[
            discovery_pb2.Resource(name="default/allow-client", version="7", resource=pack(policy))
        ],
    )
    decoded = discovery_pb2.DeltaDiscoveryResponse.FromString(response.SerializeToString())
    (resource,) = decoded.resources
    assert resource.resource.type_url == AUTHORIZATION_TYPE_URL
    assert resource.version == "7"
    assert unpack(resource.resource, AUTHORIZATION_TYPE_URL) == policy


def test_unpack_rejects_the_wrong_type_url():
    packed = pack(make_authorization())
    with pytest.raises(ValueError) as caught:
        unpack(packed, ADDRESS_TYPE_URL)
    assert ADDRESS_TYPE_URL in str(caught.value)
    assert AUTHORIZATION_TYPE_URL in str(caught.value)


def test_unpack_rejects_an_unknown_type_url_and_bad_bytes():
    with pytest.raises(ValueError, match="unknown resource type URL"):
        unpack(pack(wl.Address()), "type.googleapis.com/istio.workload.Workload")
    garbled = pack(wl.Address())
    garbled.value = b"\x0a\x05ab"  # field 1, length 5, only 2 bytes follow
    with pytest.raises(ValueError, match="does not decode"):
        unpack(garbled, ADDRESS_TYPE_URL)


# Field numbers taken from Istio, pinned so a later edit cannot drift from them.
# W = istio/ztunnel proto/workload.proto (same numbers in istio/istio pkg/workloadapi/workload.proto)
# A = istio/istio pkg/workloadapi/security/authorization.proto (same in istio/ztunnel
#     proto/authorization.proto); service_accounts / not_service_accounts / ServiceAccountMatch are
#     from istio/istio pkg/workloadapi/security/authorization.pb.go (the generated Go code).
ISTIO_FIELD_NUMBERS = [
    # W: Address
    (wl.Address, "workload", 1),
    (wl.Address, "service", 2),
    # W: Workload
    (wl.Workload, "uid", 20),
    (wl.Workload, "name", 1),
    (wl.Workload, "namespace", 2),
    (wl.Workload, "addresses", 3),
    (wl.Workload, "hostname", 21),
    (wl.Workload, "network", 4),
    (wl.Workload, "tunnel_protocol", 5),
    (wl.Workload, "trust_domain", 6),
    (wl.Workload, "service_account", 7),
    (wl.Workload, "waypoint", 8),
    (wl.Workload, "network_gateway", 19),
    (wl.Workload, "node", 9),
    (wl.Workload, "canonical_name", 10),
    (wl.Workload, "canonical_revision", 11),
    (wl.Workload, "workload_type", 12),
    (wl.Workload, "workload_name", 13),
    (wl.Workload, "services", 22),
    (wl.Workload, "authorization_policies", 16),
    (wl.Workload, "status", 17),
    (wl.Workload, "cluster_id", 18),
    (wl.Workload, "locality", 24),
    (wl.Workload, "capacity", 27),
    (wl.Locality, "region", 1),
    (wl.Locality, "zone", 2),
    (wl.Locality, "subzone", 3),
    # W: Service
    (wl.Service, "name", 1),
    (wl.Service, "namespace", 2),
    (wl.Service, "hostname", 3),
    (wl.Service, "addresses", 4),
    (wl.Service, "ports", 5),
    (wl.Service, "subject_alt_names", 6),
    (wl.Service, "waypoint", 7),
    (wl.Service, "load_balancing", 8),
    (wl.LoadBalancing, "routing_preference", 1),
    (wl.LoadBalancing, "mode", 2),
    (wl.LoadBalancing, "health_policy", 3),
    # W: PortList, Port, GatewayAddress, NetworkAddress, NamespacedHostname
    (wl.PortList, "ports", 1),
    (wl.Port, "service_port", 1),
    (wl.Port, "target_port", 2),
    (wl.Port, "app_protocol", 3),
    (wl.GatewayAddress, "hostname", 1),
    (wl.GatewayAddress, "address", 2),
    (wl.GatewayAddress, "hbone_mtls_port", 3),
    (wl.NetworkAddress, "network", 1),
    (wl.NetworkAddress, "address", 2),
    (wl.NamespacedHostname, "namespace", 1),
    (wl.NamespacedHostname, "hostname", 2),
    # A: Authorization, Group, Rules
    (authz.Authorization, "name", 1),
    (authz.Authorization, "namespace", 2),
    (authz.Authorization, "scope", 3),
    (authz.Authorization, "action", 4),
    (authz.Authorization, "groups", 5),
    (authz.Authorization, "dry_run", 6),
    (authz.Group, "rules", 1),
    (authz.Rules, "matches", 2),
    # A: Match
    (authz.Match, "namespaces", 1),
    (authz.Match, "not_namespaces", 2),
    (authz.Match, "principals", 3),
    (authz.Match, "not_principals", 4),
    (authz.Match, "source_ips", 5),
    (authz.Match, "not_source_ips", 6),
    (authz.Match, "destination_ips", 7),
    (authz.Match, "not_destination_ips", 8),
    (authz.Match, "destination_ports", 9),
    (authz.Match, "not_destination_ports", 10),
    (authz.Match, "service_accounts", 11),
    (authz.Match, "not_service_accounts", 12),
    # A: Address, ServiceAccountMatch (Istio names field 2 `serviceAccount`), StringMatch
    (authz.Address, "address", 1),
    (authz.Address, "length", 2),
    (authz.ServiceAccountMatch, "namespace", 1),
    (authz.ServiceAccountMatch, "service_account", 2),
    (authz.StringMatch, "exact", 1),
    (authz.StringMatch, "prefix", 2),
    (authz.StringMatch, "suffix", 3),
    (authz.StringMatch, "presence", 4),
]


@pytest.mark.parametrize(
    "message, field, number",
    ISTIO_FIELD_NUMBERS,
    ids=[f"{m.DESCRIPTOR.name}.{f}" for m, f, _ in ISTIO_FIELD_NUMBERS],
)
def test_field_numbers_match_istio(message, field, number):
    assert message.DESCRIPTOR.fields_by_name[field].number == number


def test_oneofs_and_repeated_bytes_match_istio():
    # W: `oneof type` on Address, `oneof destination` on GatewayAddress, `repeated bytes addresses`;
    # A: `oneof match_type` on StringMatch.
    assert set(wl.Address.DESCRIPTOR.oneofs_by_name["type"].fields) == {
        wl.Address.DESCRIPTOR.fields_by_name[n] for n in ("workload", "service")
    }
    destination = wl.GatewayAddress.DESCRIPTOR.oneofs_by_name["destination"]
    assert {f.name for f in destination.fields} == {"hostname", "address"}
    match_type = authz.StringMatch.DESCRIPTOR.oneofs_by_name["match_type"]
    assert {f.name for f in match_type.fields} == {"exact", "prefix", "suffix", "presence"}
    addresses = wl.Workload.DESCRIPTOR.fields_by_name["addresses"]
    assert addresses.type == addresses.TYPE_BYTES and addresses.is_repeated


@pytest.mark.parametrize(
    "enum, values",
    [
        # W: TunnelProtocol, WorkloadStatus, WorkloadType
        (wl.TunnelProtocol, {"NONE": 0, "HBONE": 1}),
        (wl.WorkloadStatus, {"HEALTHY": 0, "UNHEALTHY": 1}),
        (wl.WorkloadType, {"DEPLOYMENT": 0, "CRONJOB": 1, "POD": 2, "JOB": 3}),
        (wl.AppProtocol, {"UNKNOWN": 0, "HTTP11": 1, "HTTP2": 2, "GRPC": 3}),
        (wl.LoadBalancing.Scope, {"UNSPECIFIED_SCOPE": 0, "REGION": 1, "ZONE": 2, "SUBZONE": 3, "NODE": 4,
                                  "CLUSTER": 5, "NETWORK": 6}),
        (wl.LoadBalancing.Mode, {"UNSPECIFIED_MODE": 0, "STRICT": 1, "FAILOVER": 2}),
        (wl.LoadBalancing.HealthPolicy, {"ONLY_HEALTHY": 0, "ALLOW_ALL": 1}),
        # A: Scope, Action
        (authz.Scope, {"GLOBAL": 0, "NAMESPACE": 1, "WORKLOAD_SELECTOR": 2}),
        (authz.Action, {"ALLOW": 0, "DENY": 1}),
    ],
)
def test_enum_values_match_istio(enum, values):
    assert dict(enum.items()) == values


def test_wire_bytes_are_istios():
    # A Workload with only uid = "x": tag (20 << 3 | 2) = 162 as a varint, length 1, "x".
    assert wl.Workload(uid="x").SerializeToString() == b"\xa2\x01\x01x"
    # Match.service_accounts (11) holding ServiceAccountMatch{namespace = "n"}: tag 0x5a.
    sa = authz.Match(service_accounts=[authz.ServiceAccountMatch(namespace="n")])
    assert sa.SerializeToString() == b"\x5a\x03\x0a\x01n"
