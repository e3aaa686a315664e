"""The lab's cluster DNS: what a pod's resolver hears for names under ``cluster.local``.

How it works: ``DnsView`` is a frozen picture of the lab (Services with their VIP or, headless, their
ready endpoints; pods with their IP; the namespaces), built by ``cluster_view`` from the cluster state
and the pods' status, and indexed once into the names that exist and the A records they hold.
``answer(query_wire, view, transport)`` is sans-IO: a query's bytes in, the response's bytes out.
dnspython parses and writes the wire format and validates names; which names exist and what they
answer is decided here, as the Kubernetes DNS specification and CoreDNS's ``kubernetes`` plugin do:

- ``<svc>.<ns>.svc.cluster.local``: A = the Service's VIP; for a headless Service (clusterIP None)
  the IPs of its ready endpoints (every selected pod if ``publishNotReadyAddresses``), and
  ``<a-b-c-d>.<svc>.<ns>.svc.cluster.local`` for each of them (CoreDNS names an endpoint without a
  hostname by its dashed IP).
- ``<a-b-c-d>.<ns>.pod.cluster.local``: A = a.b.c.d if a pod of ``<ns>`` has that IP ("pods
  verified"; kubeadm's "pods insecure" would answer any IP, which tells a pod nothing true).
- AAAA and other types of a name that exists: NOERROR with no answer (the lab is IPv4 only), the zone's
  SOA in authority, as CoreDNS; a name under cluster.local that does not exist: NXDOMAIN with the SOA,
  which lets a resolver walk its search path on.
- Anything outside cluster.local: REFUSED. CoreDNS would forward it upstream, but no lab netns has a
  route to the host's network (DESIGN.md section 9), so there is no upstream to ask.

Bounds: one question per query (else FORMERR), and those of ``mesh.dns_wire`` (shared with ztunnel's
DNS proxy): query sizes refused from the header, answers truncated to the client's payload, and
``MalformedQuery`` (no header, or a response) dropped by the driver. ``lab.dns_server`` is the trio
driver (UDP and TCP).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from lab.endpoints import selected_pods
from lab.resolv import CLUSTER_DOMAIN
from mesh.dns_wire import MAX_UDP_RESPONSE, UDP, header_reply, query_header, sized, too_long

ZONE = dns.name.from_text(CLUSTER_DOMAIN)
SVC = dns.name.from_text("svc", ZONE)
POD = dns.name.from_text("pod", ZONE)
TTL = 5  # CoreDNS's kubernetes plugin default: a lab's pods come and go within seconds
# The zone's SOA, as CoreDNS writes it for a cluster zone (ns.dns.<zone>, hostmaster.<zone>, its
# refresh, retry and expire); the minimum, which bounds how long a resolver caches an NXDOMAIN, is TTL.
SOA_MNAME = dns.name.from_text("ns.dns", ZONE)
SOA_RNAME = dns.name.from_text("hostmaster", ZONE)
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 7200, 1800, 86400

MAX_LABEL = 63  # RFC 1035 2.3.4


@dataclass(frozen=True)
class ServiceEntry:
    namespace: str
    name: str
    vip: IPv4Address | None  # None: headless (or no VIP yet)
    endpoints: tuple[IPv4Address, ...] = ()  # a headless Service's ready endpoints

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "vip": str(self.vip) if self.vip else None,
                "endpoints": [str(ip) for ip in self.endpoints]}


@dataclass(frozen=True)
class PodEntry:
    namespace: str
    name: str
    ip: IPv4Address

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "ip": str(self.ip)}


@dataclass(frozen=True)
class DnsView:
    """What the DNS server answers from; ``records`` and ``names`` are derived once, at construction."""

    services: tuple[ServiceEntry, ...] = ()
    pods: tuple[PodEntry, ...] = ()
    namespaces: tuple[str, ...] = ()
    records: Mapping[dns.name.Name, tuple[IPv4Address, ...]] = field(init=False, compare=False, repr=False)
    names: frozenset[dns.name.Name] = field(init=False, compare=False, repr=False)  # every name that exists
    serial: int = field(init=False, compare=False)  # the SOA serial: changes with the content

    def __post_init__(self) -> None:
        records: dict[dns.name.Name, list[IPv4Address]] = {}
        namespaces = set(self.namespaces)
        for svc in self.services:
            namespaces.add(svc.namespace)
            name = _label(svc.name, _label(svc.namespace, SVC))
            addresses = records.setdefault(name, [])
            if svc.vip is not None:
                addresses.append(svc.vip)
                continue
            for ip in svc.endpoints:
                addresses.append(ip)
                records.setdefault(_label(dashed(ip), name), []).append(ip)
        for pod in self.pods:
            namespaces.add(pod.namespace)
            records.setdefault(_label(dashed(pod.ip), _label(pod.namespace, POD)), []).append(pod.ip)
        names = {ZONE, SVC, POD}
        for namespace in namespaces:  # a namespace's own names exist, records or not (empty non-terminals)
            names.update((_label(namespace, SVC), _label(namespace, POD)))
        for name in records:
            while name != ZONE:
                names.add(name)
                name = name.parent()
        content = repr(sorted((n.to_text(), sorted(map(str, a))) for n, a in records.items())).encode()
        object.__setattr__(self, "records", {n: tuple(sorted(set(a))) for n, a in records.items()})
        object.__setattr__(self, "names", frozenset(names))
        object.__setattr__(self, "serial", zlib.crc32(content))

    def to_json(self) -> dict[str, Any]:
        return {"services": [s.to_json() for s in self.services], "pods": [p.to_json() for p in self.pods],
                "namespaces": list(self.namespaces)}

    @classmethod
    def from_json(cls, data: object) -> DnsView:
        """The view a file holds; ValueError for anything else (a bad name or address included)."""
        try:
            services = tuple(
                ServiceEntry(_dns_label(s["namespace"]), _dns_label(s["name"]),
                             IPv4Address(s["vip"]) if s["vip"] is not None else None,
                             tuple(IPv4Address(ip) for ip in s["endpoints"]))
                for s in data["services"])  # type: ignore[index]
            pods = tuple(PodEntry(_dns_label(p["namespace"]), p["name"], IPv4Address(p["ip"]))
                         for p in data["pods"])  # type: ignore[index]
            namespaces = tuple(_dns_label(ns) for ns in data["namespaces"])  # type: ignore[index]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a DNS view: {exc!r}") from None
        return cls(services, pods, namespaces)


def dashed(ip: IPv4Address) -> str:
    return str(ip).replace(".", "-")


def _label(text: str, origin: dns.name.Name) -> dns.name.Name:
    return dns.name.Name((text.encode("ascii"), *origin.labels))


def _dns_label(text: object) -> str:
    """A Kubernetes namespace or Service name is one DNS label (RFC 1123)."""
    if not isinstance(text, str) or not text or not all(c.isascii() and (c.isalnum() or c == "-") for c in text):
        raise ValueError(f"{text!r} is not a DNS label")
    if len(text) > MAX_LABEL:
        raise ValueError(f"{text!r} is longer than a DNS label ({MAX_LABEL})")
    return text


def cluster_view(state: Any, pod_status: Mapping[tuple[str, str], Any]) -> DnsView:
    """The view of a ``controlplane.view.ClusterState`` and the pods' status (``PodStatus``: ip, ready):
    a Service's VIP from ``state.vips``; a headless one's endpoints are the ready pods of its namespace
    that its selector picks (all of them with ``publish_not_ready_addresses``); a pod without an IP
    yet has no name."""
    pods = []
    for (namespace, name), status in sorted(pod_status.items()):
        if status.ip:
            pods.append(PodEntry(namespace, name, IPv4Address(status.ip)))
    services = []
    for key, svc in sorted(state.services.items()):
        vip = state.vips.get(key)
        if svc.cluster_ip != "None":
            services.append(ServiceEntry(key[0], key[1], IPv4Address(vip) if vip else None))
            continue
        endpoints = tuple(IPv4Address(status.ip) for _, status in selected_pods(state, pod_status, key[0], svc))
        services.append(ServiceEntry(key[0], key[1], None, endpoints))
    return DnsView(tuple(services), tuple(pods), tuple(sorted(state.namespaces)))


@dataclass(frozen=True)
class Lookup:
    """What a name and type resolve to: the rcode, the A records, and whether the SOA goes along."""

    rcode: dns.rcode.Rcode
    addresses: tuple[IPv4Address, ...] = ()
    soa_answer: bool = False  # the question was the zone's SOA
    soa_authority: bool = False  # NXDOMAIN or no data: the SOA tells the resolver how long to cache that


def lookup(view: DnsView, qname: dns.name.Name, qtype: int) -> Lookup:
    """Pure: the answer to one question (class IN) from ``view``."""
    if not qname.is_subdomain(ZONE):
        return Lookup(dns.rcode.REFUSED)  # no upstream: the lab has no route to the host's network
    if qname not in view.names:
        return Lookup(dns.rcode.NXDOMAIN, soa_authority=True)
    addresses = view.records.get(qname, ())
    if qtype in (dns.rdatatype.A, dns.rdatatype.ANY) and addresses:
        return Lookup(dns.rcode.NOERROR, addresses)
    if qtype == dns.rdatatype.SOA and qname == ZONE:
        return Lookup(dns.rcode.NOERROR, soa_answer=True)
    return Lookup(dns.rcode.NOERROR, soa_authority=True)  # AAAA (IPv4 lab), or a type the lab has none of


def answer(query_wire: bytes, view: DnsView, transport: str = UDP) -> bytes:
    """The response to ``query_wire``, received over ``transport`` (UDP or TCP), from ``view``.
    Raises ``MalformedQuery`` when there is nothing to answer to (see the module docstring)."""
    query_id, flags = query_header(query_wire, transport)
    if too_long(query_wire, transport):
        return header_reply(query_id, flags, dns.rcode.REFUSED)
    if dns.opcode.from_flags(flags) != dns.opcode.QUERY:  # UPDATE, NOTIFY...: not parsed
        return header_reply(query_id, flags, dns.rcode.NOTIMP)
    try:
        query = dns.message.from_wire(query_wire)
    except (dns.exception.DNSException, ValueError):  # bad labels, pointers, counts, EDNS, trailing bytes
        return header_reply(query_id, flags, dns.rcode.FORMERR)
    if len(query.question) != 1:
        return header_reply(query_id, flags, dns.rcode.FORMERR)
    question = query.question[0]
    response = dns.message.make_response(query, recursion_available=False, our_payload=MAX_UDP_RESPONSE)
    if question.rdclass != dns.rdataclass.IN:
        response.set_rcode(dns.rcode.REFUSED)
        return response.to_wire()
    found = lookup(view, question.name, question.rdtype)
    response.set_rcode(found.rcode)
    if found.rcode != dns.rcode.REFUSED:
        response.flags |= dns.flags.AA  # the lab's server is the zone's one authority
    if found.addresses:
        response.answer.append(dns.rrset.from_text_list(
            question.name, TTL, dns.rdataclass.IN, dns.rdatatype.A, [str(ip) for ip in found.addresses]))
    if found.soa_answer or found.soa_authority:
        soa = dns.rrset.from_text(ZONE, TTL, dns.rdataclass.IN, dns.rdatatype.SOA,
                                  f"{SOA_MNAME} {SOA_RNAME} {view.serial} {SOA_REFRESH} {SOA_RETRY} "
                                  f"{SOA_EXPIRE} {TTL}")
        (response.answer if found.soa_answer else response.authority).append(soa)
    return sized(response, query, transport)
