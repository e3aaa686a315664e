"""What both DNS answerers share (the lab's cluster DNS, ``lab.dns``; ztunnel's proxy, ``ztunnel.dns``):
the bounds of a query and an answer, the checks made on a query's header before it is parsed, and the
replies made from the header alone. dnspython writes the wire format; imported only by those two.

Bounds: a UDP query over ``MAX_UDP_QUERY`` bytes, or a TCP one over ``MAX_TCP_QUERY``, is REFUSED from
its header alone (a stub resolver's query for one name is far below either); a UDP answer fits the
client's EDNS payload (512 bytes without EDNS, at most ``MAX_UDP_RESPONSE``) and is truncated (TC)
beyond it. A query whose header cannot be read, or that is a response, raises ``MalformedQuery``: a
server drops it (answering a response could start a loop between two servers).
"""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.opcode
import dns.rcode

UDP, TCP = "udp", "tcp"
HEADER_SIZE = 12
MAX_UDP_QUERY = 512  # RFC 1035's UDP limit
MAX_TCP_QUERY = 4096  # one question and an OPT record fit many times over
CLASSIC_UDP_PAYLOAD = 512  # what a client without EDNS can take
MAX_UDP_RESPONSE = 1232  # the DNS flag day's EDNS payload: no fragmentation on any path
MAX_TCP_RESPONSE = 65535  # the two-byte length prefix


class MalformedQuery(ValueError):
    """Bytes that cannot be answered at all (shorter than a header, or a response): drop them."""


def query_header(query_wire: bytes, transport: str) -> tuple[int, int]:
    """The query's id and flags; ``MalformedQuery`` for what cannot be answered, ValueError for an
    unknown transport."""
    if transport not in (UDP, TCP):
        raise ValueError(f"transport is {UDP!r} or {TCP!r}, not {transport!r}")
    if len(query_wire) < HEADER_SIZE:
        raise MalformedQuery(f"{len(query_wire)} bytes: shorter than a DNS header")
    query_id, flags = struct.unpack("!HH", query_wire[:4])
    if flags & dns.flags.QR:
        raise MalformedQuery("a response, not a query")
    return query_id, flags


def too_long(query_wire: bytes, transport: str) -> bool:
    return len(query_wire) > (MAX_UDP_QUERY if transport == UDP else MAX_TCP_QUERY)


def header_reply(query_id: int, flags: int, rcode: dns.rcode.Rcode) -> bytes:
    """A reply with no sections from a query's id and flags alone: QR, its opcode and RD, ``rcode``."""
    reply = dns.message.Message(id=query_id)
    reply.flags = dns.flags.QR | (flags & dns.flags.RD)
    reply.set_opcode(dns.opcode.from_flags(flags))
    reply.set_rcode(rcode)
    return reply.to_wire()


def sized(response: dns.message.Message, query: dns.message.Message, transport: str) -> bytes:
    """``response`` in wire format, truncated (TC) to what the client takes over ``transport``."""
    if transport == TCP:
        limit = MAX_TCP_RESPONSE
    elif query.edns >= 0:
        limit = max(CLASSIC_UDP_PAYLOAD, min(query.payload, MAX_UDP_RESPONSE))
    else:
        limit = CLASSIC_UDP_PAYLOAD
    return response.to_wire(max_size=limit, prefer_truncation=True)


def servfail(query_wire: bytes) -> bytes | None:
    """SERVFAIL from a query's header (what a client is owed when the answer failed), or None when
    there is not even an id to answer."""
    if len(query_wire) < 4:
        return None
    query_id, flags = struct.unpack("!HH", query_wire[:4])
    return header_reply(query_id, flags, dns.rcode.SERVFAIL)
