"""HPACK (RFC 7541) for HBONE's few headers, sans-IO: a stateless encoder and a full decoder.

The encoder never adds to the dynamic table. A field wholly in the static table is one index byte
(``:status: 200`` is ``0x88``), a field whose name is there is a literal with that indexed name, and
anything else a literal with a literal name; all without indexing and without Huffman coding. Its one
piece of state is the peer's SETTINGS_HEADER_TABLE_SIZE: a reduction must be signalled even though our
table stays empty (section 4.2), so the next block then opens with a dynamic table size update.

The decoder takes all of RFC 7541 from a peer: indexed fields, the three literal forms, size updates,
and the dynamic table with eviction by size. The table starts at the protocol's 4096 bytes (what a peer
assumes before it sees our SETTINGS); a size update may set it up to ``max_table_size``. The Huffman
code is canonical, so its 257 code lengths define it: the decoding tables are built on the first
Huffman-coded string (our own ztunnels send none) and each symbol costs one ``bisect`` over the codes'
left-justified limits. Every fault of the peer's is an ``HpackError`` that names it.

This replaces the ``hpack`` library, whose import (its Huffman decoding table is thousands of tuples)
added 0.3 to 0.7 MiB to ztunnel's idle RSS, and up to 2 MiB when compiled from source.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Iterable

Header = tuple[bytes, bytes]

DEFAULT_TABLE_SIZE = 4096  # RFC 9113 section 6.5.2
ENTRY_OVERHEAD = 32  # RFC 7541 section 4.1: an entry's size is len(name) + len(value) + 32
MAX_INTEGER = 2**32
MAX_CONTINUATION_BYTES = 5  # 35 bits, room for any value up to MAX_INTEGER


class HpackError(Exception):
    """The peer's header block is malformed or over a limit (in HTTP/2, a COMPRESSION_ERROR)."""


# RFC 7541 Appendix A, indices 1..61: "name value" entries separated by "|".
_STATIC = (
    ":authority|:method GET|:method POST|:path /|:path /index.html|:scheme http|:scheme https|:status 200|"
    ":status 204|:status 206|:status 304|:status 400|:status 404|:status 500|accept-charset|"
    "accept-encoding gzip, deflate|accept-language|accept-ranges|accept|access-control-allow-origin|age|allow|"
    "authorization|cache-control|content-disposition|content-encoding|content-language|content-length|"
    "content-location|content-range|content-type|cookie|date|etag|expect|expires|from|host|if-match|"
    "if-modified-since|if-none-match|if-range|if-unmodified-since|last-modified|link|location|max-forwards|"
    "proxy-authenticate|proxy-authorization|range|referer|refresh|retry-after|server|set-cookie|"
    "strict-transport-security|transfer-encoding|user-agent|vary|via|www-authenticate"
)
STATIC_TABLE: tuple[Header, ...] = tuple(
    (name.encode(), value.encode()) for name, _, value in (entry.partition(" ") for entry in _STATIC.split("|")))
_STATIC_FIELDS = {field: index for index, field in reversed(list(enumerate(STATIC_TABLE, 1)))}
_STATIC_NAMES = {field[0]: index for index, field in reversed(list(enumerate(STATIC_TABLE, 1)))}

# RFC 7541 Appendix B as code lengths, symbol 0 first, 256 (EOS) last.
_HUFFMAN_LENGTHS = bytes.fromhex(
    "0d171c1c1c1c1c1c1c181e1c1c1e1c1c1c1c1c1c1c1c1e1c1c1c1c1c1c1c1c1c060a0a0c0d06080b0a0a080b080606060505"
    "050606060606060607080f060c0a0d06070707070707070707070707070707070707070707070807080d130d0e060f050605"
    "06050606060507070606060506070605050607070707070f0b0e0d1c141614141616161716171717171718171818161718"
    "171717171516171617171816151416161717151716161815161717151516151716171714161616171616171a1a14131617"
    "16191a1a1a1b1b1a181913151a1b1b1a1b1815151a1a1c1b1b1b14181415161515171616191918181a171a1b1a1a1b1b1b"
    "1b1b1c1b1b1b1b1b1a1e"
)
EOS = 256
_WINDOW = 30  # the longest code, in bits
_WINDOW_MASK = (1 << _WINDOW) - 1
_huffman: tuple[list[int], list[tuple[int, int, int]], list[int]] | None = None


def _build_huffman() -> tuple[list[int], list[tuple[int, int, int]], list[int]]:
    """Canonical decoding: symbols sorted by (length, symbol); per length, its first code and where its
    symbols start in that order; and for a bisect, each length's end as a left-justified 30-bit limit."""
    order = sorted(range(EOS + 1), key=lambda symbol: (_HUFFMAN_LENGTHS[symbol], symbol))
    limits: list[int] = []
    rows: list[tuple[int, int, int]] = []  # (length, first code, position of its first symbol in order)
    code = previous = 0
    for position, symbol in enumerate(order):
        length = _HUFFMAN_LENGTHS[symbol]
        if length != previous:
            if previous:
                limits.append(code << (_WINDOW - previous))
            code <<= length - previous
            rows.append((length, code, position))
            previous = length
        code += 1
    limits.append(code << (_WINDOW - previous))
    assert limits[-1] == 1 << _WINDOW, "the Huffman code lengths do not make a complete code"
    return limits, rows, order


def _huffman_decode(data: bytes) -> bytes:
    """Bits are taken 64 at a time into an accumulator (never one big int for the whole string, whose
    shifts would cost its length per symbol); each symbol is then one bisect over the 30-bit window."""
    global _huffman
    if _huffman is None:
        _huffman = _build_huffman()
    limits, rows, order = _huffman
    padded = data + b"\xff" * 12  # reads past the end see ones, as EOS would
    bits = len(data) * 8
    out = bytearray()
    acc = have = taken = pos = 0  # `have` bits of `acc` not yet consumed; `taken` bytes read into it
    while pos < bits:
        left = bits - pos
        if left < 8 and data[-1] & (ones := (1 << left) - 1) == ones:
            break  # the padding: the start of EOS
        if have < _WINDOW:
            acc = (acc & ((1 << have) - 1)) << 64 | int.from_bytes(padded[taken:taken + 8], "big")
            have += 64
            taken += 8
        window = acc >> (have - _WINDOW) & _WINDOW_MASK
        length, first, position = rows[bisect_right(limits, window)]
        if length > left:
            if window == _WINDOW_MASK:
                raise HpackError(f"Huffman padding longer than 7 bits ({left})")
            raise HpackError("Huffman padding that is not all ones (the string ends inside a code)")
        symbol = order[position + (window >> (_WINDOW - length)) - first]
        if symbol == EOS:
            raise HpackError("EOS decoded inside a Huffman string")
        out.append(symbol)
        pos += length
        have -= length
    return bytes(out)


def _entry_size(header: Header) -> int:
    """Section 4.1: what a field counts against the table and the header list."""
    return len(header[0]) + len(header[1]) + ENTRY_OVERHEAD


def _encode_int(value: int, prefix: int, flags: int) -> bytes:
    """Section 5.1: ``value`` in a ``prefix``-bit prefix, the first byte's other bits being ``flags``."""
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((flags | value,))
    out = bytearray((flags | mask,))
    value -= mask
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _decode_int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """Section 5.1: the integer at ``data[pos]`` with a ``prefix``-bit prefix, and where it ends."""
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    for shift in range(0, 7 * MAX_CONTINUATION_BYTES, 7):
        if pos >= len(data):
            raise HpackError("truncated integer: the block ends inside it")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            if value > MAX_INTEGER:
                raise HpackError(f"integer {value} over the limit of 2**32")
            return value, pos
    raise HpackError(f"integer longer than {MAX_CONTINUATION_BYTES} bytes after its prefix")


def _decode_string(data: bytes, pos: int) -> tuple[bytes, int]:
    """Section 5.2: the string literal at ``data[pos]``, and where it ends."""
    if pos >= len(data):
        raise HpackError("the block ends where a string literal should start")
    huffman = data[pos] & 0x80
    length, pos = _decode_int(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HpackError(f"string of {length} bytes runs past the block's end ({len(data) - pos} left)")
    raw = bytes(data[pos:end])
    return (_huffman_decode(raw) if huffman else raw), end


class Encoder:
    """Stateless on our side: fields are indexed from the static table or sent as literals without
    indexing, so the peer's dynamic table for our blocks stays empty."""

    def __init__(self) -> None:
        self._signalled = DEFAULT_TABLE_SIZE  # the table size the peer's decoder has from us
        self._reduced_to: int | None = None  # the smallest size set since, when lower

    def set_max_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE. A reduction is signalled at the next block's start."""
        if size < (self._signalled if self._reduced_to is None else self._reduced_to):
            self._reduced_to = size

    def encode(self, headers: Iterable[Header]) -> bytes:
        out = []
        if self._reduced_to is not None:
            out.append(_encode_int(self._reduced_to, 5, 0x20))
            self._signalled, self._reduced_to = self._reduced_to, None
        for name, value in headers:
            index = _STATIC_FIELDS.get((name, value))
            if index:
                out.append(_encode_int(index, 7, 0x80))
                continue
            index = _STATIC_NAMES.get(name)
            out.append(_encode_int(index, 4, 0) if index else b"\x00" + _encode_int(len(name), 7, 0) + name)
            out.append(_encode_int(len(value), 7, 0) + value)
        return b"".join(out)


class Decoder:
    """All of RFC 7541 from the peer. ``max_header_list_size`` bounds a block's decoded fields (each
    counted as name + value + 32 bytes); ``max_table_size`` is our SETTINGS_HEADER_TABLE_SIZE."""

    def __init__(self, max_header_list_size: int, max_table_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.max_header_list_size = max_header_list_size
        self.max_table_size = max_table_size
        self._table_size = DEFAULT_TABLE_SIZE
        self._entries: deque[Header] = deque()  # newest first: index 62 is _entries[0]
        self._used = 0

    def decode(self, block: bytes) -> list[Header]:
        headers: list[Header] = []
        list_size = 0
        pos, end = 0, len(block)
        while pos < end:
            byte = block[pos]
            if byte >= 0x80:  # 6.1 indexed
                index, pos = _decode_int(block, pos, 7)
                header = self._lookup(index)
            elif 0x20 <= byte < 0x40:  # 6.3 dynamic table size update
                if headers:
                    raise HpackError("dynamic table size update after a header field")
                size, pos = _decode_int(block, pos, 5)
                if size > self.max_table_size:
                    raise HpackError(f"dynamic table size update to {size} over the {self.max_table_size} allowed")
                self._table_size = size
                self._evict()
                continue
            else:  # 6.2.1 with incremental indexing (01), 6.2.2 without (0000), 6.2.3 never indexed (0001)
                indexing = byte >= 0x40
                index, pos = _decode_int(block, pos, 6 if indexing else 4)
                if index:
                    name = self._lookup(index)[0]
                else:
                    name, pos = _decode_string(block, pos)
                value, pos = _decode_string(block, pos)
                header = (name, value)
                if indexing:
                    self._add(header)
            list_size += _entry_size(header)
            if list_size > self.max_header_list_size:
                raise HpackError(f"header list over {self.max_header_list_size} bytes")
            headers.append(header)
        return headers

    def _lookup(self, index: int) -> Header:
        if index == 0:
            raise HpackError("index 0, which RFC 7541 section 6.1 forbids")
        if index <= 61:
            return STATIC_TABLE[index - 1]
        if index - 62 < len(self._entries):
            return self._entries[index - 62]
        raise HpackError(f"index {index} is past the 61 static and {len(self._entries)} dynamic entries")

    def _add(self, header: Header) -> None:
        """Section 4.4: an entry larger than the table empties it; otherwise the oldest make room."""
        size = _entry_size(header)
        if size > self._table_size:
            self._entries.clear()
            self._used = 0
            return
        self._entries.appendleft(header)
        self._used += size
        self._evict()

    def _evict(self) -> None:
        while self._used > self._table_size:
            self._used -= _entry_size(self._entries.pop())
