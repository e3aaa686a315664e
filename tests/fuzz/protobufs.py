"""Protobuf inputs for the ZDS and xDS fuzz targets: messages that decode, and bytes that may not.

``messages(cls)`` builds any message of ``cls`` from its descriptor: each field set or not, scalars
at their edges, strings from a few that mean something to the mesh and any text, bytes mostly of an
IP address's 4 or 16, enums including values the schema does not define (proto3 keeps them), maps,
repeated fields and nested messages a few levels down. ``wire_bytes`` writes protobuf's wire format
by hand: known and unknown field numbers, every wire type, lengths that lie, invalid UTF-8 and
nesting, for the decoders themselves.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

F = FieldDescriptor

# Nested messages below this depth are left unset: Address > Workload > services > ports is four.
MAX_DEPTH = 5
# Strings that mean something somewhere in the mesh (names, keys, SPIFFE IDs, type URLs).
MEANINGFUL_STRINGS = st.sampled_from(["", "default", "ns", "ns/svc", "svc.ns.svc.cluster.local", "cluster.local",
                                      "spiffe://cluster.local/ns/ns/sa/sa", "spiffe://", "*", "/", "10.0.0.1",
                                      "istio-system", "a" * 300, "\u00e9", "\x00", "uid-1", "uid-2"])
_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1), F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1), F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}


def _edges(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers at the edges of ``low..high`` (ports, windows, capacities), and any in between."""
    edges = sorted({v for v in (low, -1, 0, 1, 2, 80, 443, 15008, 65535, 65536, high) if low <= v <= high})
    return st.sampled_from(edges) | st.integers(low, high)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == F.TYPE_STRING:
        return MEANINGFUL_STRINGS | st.text(max_size=12)
    if kind == F.TYPE_BYTES:
        return st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16) | st.binary(max_size=20)
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return st.floats(width=32 if kind == F.TYPE_FLOAT else 64)
    if kind == F.TYPE_ENUM:
        numbers = sorted(field.enum_type.values_by_number)
        if field.enum_type.is_closed:
            return st.sampled_from(numbers)
        return st.sampled_from(numbers) | _edges(-(2**31), 2**31 - 1)
    return _edges(*_INT_RANGES[kind])


def _fill(draw: st.DrawFn, message: Message, depth: int) -> None:
    descriptor: Descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        if draw(st.booleans()):  # each field is left unset half of the time
            continue
        name = field.name
        if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            if depth >= MAX_DEPTH:
                continue
            entry = field.message_type.fields_by_name
            key_field, value_field = entry["key"], entry["value"]
            target = getattr(message, name)
            for key in draw(st.lists(_scalar(key_field), max_size=3)):
                if value_field.type == F.TYPE_MESSAGE:
                    _fill(draw, target[key], depth + 1)
                else:
                    target[key] = draw(_scalar(value_field))
        elif field.type == F.TYPE_MESSAGE:
            if depth >= MAX_DEPTH:
                continue
            if field.is_repeated:
                for _ in range(draw(st.integers(0, 2 if depth < 2 else 1))):  # a tree, not a forest
                    _fill(draw, getattr(message, name).add(), depth + 1)
            else:
                getattr(message, name).SetInParent()
                _fill(draw, getattr(message, name), depth + 1)
        elif field.is_repeated:
            getattr(message, name).extend(draw(st.lists(_scalar(field), max_size=3)))
        else:
            setattr(message, name, draw(_scalar(field)))


def messages(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Any message of ``cls`` (see the module docstring); it serializes, so it decodes."""

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        _fill(draw, message, 0)
        return message

    return build()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@st.composite
def wire_fields(draw: st.DrawFn, depth: int = 0) -> bytes:
    """One field in protobuf's wire format, often malformed."""
    number = draw(st.integers(1, 8) | st.sampled_from([0, 15, 16, 2**29 - 1]) | st.integers(0, 2**29))
    wire_type = draw(st.sampled_from([0, 1, 2, 2, 2, 5, 3, 4, 6, 7]))
    tag = _varint(number << 3 | wire_type)
    if wire_type == 0:
        return tag + _varint(draw(_edges(0, 2**64 - 1)))
    if wire_type == 1:
        return tag + draw(st.binary(min_size=8, max_size=8))
    if wire_type == 5:
        return tag + draw(st.binary(min_size=4, max_size=4))
    if wire_type == 2:
        if depth < 4 and draw(st.booleans()):
            body = b"".join(draw(st.lists(wire_fields(depth + 1), max_size=4)))
        else:
            body = draw(st.binary(max_size=20) | st.text(max_size=10).map(str.encode) | st.just(b"\xff\xfe"))
        length = len(body) if draw(st.integers(0, 9)) else draw(st.integers(0, 2**32))
        return tag + _varint(length) + body
    return tag + draw(st.binary(max_size=4))  # groups, and the wire types that do not exist


def wire_bytes(max_fields: int = 6) -> st.SearchStrategy[bytes]:
    """A message's bytes as protobuf's wire format writes them, fields right or wrong."""
    return st.lists(wire_fields(), max_size=max_fields).map(b"".join)
