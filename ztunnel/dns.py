"""ztunnel's DNS proxy, the decision: answer a pod's query from the mesh's view, or forward it upstream.

How it works, as Istio's ztunnel (``src/dns/server.rs``) does it for a pod in ambient mode:

- ``DnsTable.from_state`` indexes the discovery view once per change: each Service's hostname
  (``<svc>.<ns>.svc.cluster.local``) with its VIPs, or, for a headless Service (no VIP, a Kubernetes
  hostname), the addresses of its healthy workloads. A Service with neither is not held: its names are
  forwarded, so the cluster's DNS answers them.
- ``resolve(query, table, client_namespace)`` is sans-IO: a query's bytes in, a ``Reply`` (the
  response's bytes) or ``Forward`` (send the query upstream unchanged) out. Only A and AAAA of class IN
  are answered here; every other type, and every name the table does not hold, is forwarded.
- A name is tried as asked and as its aliases from the client's side: the Kubernetes forms it may
  expand to (``<svc>`` in the client's namespace, ``<svc>.<ns>``, ``<svc>.<ns>.svc``), and, when it
  ends in one of the client's search domains (``<ns>.svc.<domain>``, ``svc.<domain>``, ``<domain>``),
  the name without it, which saves a resolver walking its search path a round trip per domain. A
  match through a stripped search domain is answered as ztunnel does: a CNAME from the asked name to
  the stripped one, and the A records under the stripped name.
- A name held with no address of the asked family (AAAA: the mesh here is IPv4) is NOERROR with no
  answer, authoritative: the name exists, so it is not NXDOMAIN.

Bounds: one question per query (else FORMERR), and those of ``mesh.dns_wire`` (shared with the lab's
cluster DNS): query sizes, answers truncated to the client's payload, ``MalformedQuery`` dropped.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from mesh.api import workload_pb2 as wpb
from mesh.dns_wire import HEADER_SIZE, MAX_UDP_RESPONSE, UDP, header_reply, query_header, sized, too_long
from mesh.proxy_state import ProxyState, ip_text, service_key_of

CLUSTER_DOMAIN = "cluster.local"
TTL = 30  # ztunnel's DEFAULT_TTL_SECONDS

Address = IPv4Address | IPv6Address


@dataclass(frozen=True)
class HostEntry:
    """A hostname the mesh knows: the Service's namespace (a client's own namespace wins a tie) and
    the addresses a client is given."""

    namespace: str
    addresses: tuple[Address, ...]


@dataclass(frozen=True)
class DnsTable:
    """The names the proxy answers for, by hostname (a ``dns.name.Name``, absolute)."""

    hosts: Mapping[dns.name.Name, tuple[HostEntry, ...]] = field(default_factory=dict)
    domain: dns.name.Name = field(default_factory=lambda: dns.name.from_text(CLUSTER_DOMAIN))

    @classmethod
    def from_state(cls, state: ProxyState, domain: str = CLUSTER_DOMAIN) -> DnsTable:
        zone = dns.name.from_text(domain)
        svc_zone = dns.name.Name((b"svc", *zone.labels))
        hosts: dict[dns.name.Name, list[HostEntry]] = {}
        for service in state.services.values():
            try:
                name = dns.name.from_text(service.hostname)
            except dns.exception.DNSException:
                continue  # not a DNS name: nothing a resolver could ask for
            addresses = _vips(service)
            if not addresses:
                if not name.is_subdomain(svc_zone):
                    continue  # no VIP and not a Kubernetes headless Service: forwarded, as ztunnel does
                addresses = _healthy_addresses(state.backing(service_key_of(service)))
            hosts.setdefault(name, []).append(HostEntry(service.namespace, addresses))
        return cls({name: tuple(entries) for name, entries in hosts.items()}, zone)


def _vips(service: wpb.Service) -> tuple[Address, ...]:
    found = []
    for vip in service.addresses:
        text = ip_text(vip.address)
        if text is not None and vip.network == "":
            found.append(ip_address(text))
    return tuple(found)


def _healthy_addresses(workloads: tuple[wpb.Workload, ...]) -> tuple[Address, ...]:
    found = []
    for workload in workloads:
        if workload.status != wpb.HEALTHY:
            continue
        for raw in workload.addresses:
            text = ip_text(raw)
            if text is not None:
                found.append(ip_address(text))
                break
    return tuple(found)


@dataclass(frozen=True)
class Reply:
    wire: bytes
    result: str  # for the access log and metrics: "success", "no records"


@dataclass(frozen=True)
class Forward:
    reason: str  # "unknown host", "record type"


@dataclass(frozen=True)
class Alias:
    name: dns.name.Name
    stripped: dns.name.Name | None = None  # set when found by stripping one of the client's search domains


def aliases(name: dns.name.Name, domain: dns.name.Name, client_namespace: str) -> list[Alias]:
    """Pure: the names ``name`` may stand for from a client in ``client_namespace``, in the order
    they are tried (ztunnel's ``get_aliases``)."""
    svc_zone = dns.name.Name((b"svc", *domain.labels))
    own_zone = dns.name.Name((client_namespace.encode(), *svc_zone.labels))
    out: list[Alias] = []
    seen: set[dns.name.Name] = set()

    def add(alias: Alias) -> None:
        if alias.name not in seen:
            seen.add(alias.name)
            out.append(alias)

    add(Alias(name))
    for expanded in _kube_forms(name, domain, svc_zone, own_zone):
        add(Alias(expanded))
    for search in (own_zone, svc_zone, domain):
        if name != search and name.is_subdomain(search):
            stripped = name.relativize(search).concatenate(dns.name.root)
            add(Alias(stripped, stripped))
            for expanded in _kube_forms(stripped, domain, svc_zone, own_zone):
                add(Alias(expanded, stripped))
    return out


def _kube_forms(name: dns.name.Name, domain: dns.name.Name, svc_zone: dns.name.Name,
                own_zone: dns.name.Name) -> list[dns.name.Name]:
    """The Kubernetes service FQDNs a name of one to three labels can stand for."""
    labels = name.labels[:-1] if name.is_absolute() else name.labels
    try:
        if len(labels) == 1:  # <svc>: a Service of the client's namespace
            return [dns.name.Name((*labels, *own_zone.labels))]
        if len(labels) == 2:  # <svc>.<ns>
            return [dns.name.Name((*labels, *svc_zone.labels))]
        if len(labels) == 3 and labels[-1].lower() == b"svc":  # <svc>.<ns>.svc
            return [dns.name.Name((*labels, *domain.labels))]
    except dns.name.NameTooLong:
        pass
    return []


def find(table: DnsTable, name: dns.name.Name, client_namespace: str) -> tuple[Alias, HostEntry] | None:
    """Pure: the first alias of ``name`` the table holds, and its entry (the client's namespace first)."""
    for alias in aliases(name, table.domain, client_namespace):
        entries = table.hosts.get(alias.name)
        if entries:
            own = [entry for entry in entries if entry.namespace == client_namespace]
            return alias, (own or list(entries))[0]
    return None


def resolve(query_wire: bytes, table: DnsTable, client_namespace: str, transport: str = UDP,
            shuffle: random.Random | None = None) -> Reply | Forward:
    """The answer to ``query_wire`` from a pod of ``client_namespace``, or ``Forward``. Raises
    ``MalformedQuery`` when there is nothing to answer to. ``shuffle``: the order of several
    addresses is random, as ztunnel's (tests pass a seeded one)."""
    query_id, flags = query_header(query_wire, transport)
    if too_long(query_wire, transport):
        return Reply(header_reply(query_id, flags, dns.rcode.REFUSED), "refused: too long")
    if dns.opcode.from_flags(flags) != dns.opcode.QUERY:
        return Forward("opcode")
    try:
        query = dns.message.from_wire(query_wire)
    except (dns.exception.DNSException, ValueError):
        return Reply(header_reply(query_id, flags, dns.rcode.FORMERR), "malformed")
    if len(query.question) != 1:
        return Reply(header_reply(query_id, flags, dns.rcode.FORMERR), "malformed")
    question = query.question[0]
    if question.rdclass != dns.rdataclass.IN or question.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return Forward("record type")
    found = find(table, question.name, client_namespace)
    if found is None:
        return Forward("unknown host")
    alias, entry = found
    family = 4 if question.rdtype == dns.rdatatype.A else 6
    addresses = [str(ip) for ip in entry.addresses if ip.version == family]
    (shuffle or random).shuffle(addresses)
    response = dns.message.make_response(query, recursion_available=True, our_payload=MAX_UDP_RESPONSE)
    response.flags |= dns.flags.AA  # from here on the proxy is the authority, as ztunnel
    if not addresses:
        return Reply(sized(response, query, transport), "no records")
    owner = question.name
    if alias.stripped is not None:
        response.answer.append(dns.rrset.from_text_list(question.name, TTL, dns.rdataclass.IN,
                                                        dns.rdatatype.CNAME, [alias.stripped.to_text()]))
        owner = alias.stripped
    response.answer.append(dns.rrset.from_text_list(owner, TTL, dns.rdataclass.IN, question.rdtype, addresses))
    return Reply(sized(response, query, transport), "success")


def reply_matches(query_wire: bytes, reply_wire: bytes) -> bool:
    """An upstream's datagram answers our forwarded query: a response with the query's id. (The
    upstream socket is connected, so only the upstream's address can send it at all.)"""
    return (len(reply_wire) >= HEADER_SIZE and reply_wire[:2] == query_wire[:2]
            and bool(struct.unpack("!H", reply_wire[2:4])[0] & dns.flags.QR))
