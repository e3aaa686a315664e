"""Fuzz hbone.hpack_codec.Decoder: a peer's header blocks are headers or an HpackError, nothing else.

The promises (the module docstring): every fault of the peer's is an ``HpackError``; a block's
decoded fields stay within ``max_header_list_size`` (name + value + 32 each); a size update may not
go over ``max_table_size``, and the dynamic table never holds more than its size. Blocks are fed in
sequence to one decoder, since the dynamic table carries state from one block to the next.
"""

from __future__ import annotations

from hypothesis import example, given, strategies as st

from hbone.hpack_codec import (
    DEFAULT_TABLE_SIZE,
    ENTRY_OVERHEAD,
    Decoder,
    Encoder,
    HpackError,
    _encode_int as hpack_int,  # RFC 7541 5.1, unbounded: over-long integers too
)
from tests.fuzz import fuzz_settings

# Integers at the edges of HPACK's prefixes and of the decoder's limits.
INTERESTING_INTS = st.sampled_from([0, 1, 14, 15, 16, 30, 31, 32, 61, 62, 63, 64, 126, 127, 128, 255, 4096,
                                    65536, 2**32 - 1, 2**32, 2**32 + 1, 2**35, 2**64])




@st.composite
def strings(draw: st.DrawFn) -> bytes:
    """A string literal: raw, or flagged Huffman (random bits, or real codes ending in padding)."""
    raw = draw(st.binary(max_size=40))
    huffman = draw(st.booleans())
    length = len(raw) if draw(st.integers(0, 9)) else draw(INTERESTING_INTS)
    return hpack_int(length, 7, 0x80 if huffman else 0) + raw


@st.composite
def representations(draw: st.DrawFn) -> bytes:
    """One field representation of RFC 7541 section 6, its integers and strings often at the edges."""
    index = draw(st.integers(0, 80) | INTERESTING_INTS)
    kind = draw(st.sampled_from(["indexed", "incremental", "without", "never", "size update", "garbage"]))
    if kind == "indexed":
        return hpack_int(index, 7, 0x80)
    if kind == "size update":
        return hpack_int(draw(st.integers(0, 5000) | INTERESTING_INTS), 5, 0x20)
    if kind == "garbage":
        return draw(st.binary(max_size=12))
    prefix, flags = {"incremental": (6, 0x40), "without": (4, 0x00), "never": (4, 0x10)}[kind]
    if draw(st.booleans()):
        return hpack_int(0, prefix, flags) + draw(strings()) + draw(strings())
    return hpack_int(index, prefix, flags) + draw(strings())


blocks = st.lists(st.binary(max_size=200) | st.lists(representations(), max_size=12).map(b"".join),
                  min_size=1, max_size=6)


def check_decoder_state(decoder: Decoder) -> None:
    """The dynamic table fits its size, and its byte count is the sum of its entries'. The size starts
    at the protocol's 4096 (what a peer assumes before our SETTINGS); only updates are held to ours."""
    entries = list(decoder._entries)
    assert decoder._used == sum(len(n) + len(v) + ENTRY_OVERHEAD for n, v in entries)
    assert decoder._used <= decoder._table_size <= max(decoder.max_table_size, DEFAULT_TABLE_SIZE)


def decode_all(decoder: Decoder, sequence: list[bytes]) -> None:
    for block in sequence:
        try:
            headers = decoder.decode(block)
        except HpackError as exc:
            assert str(exc), "an HpackError names what is wrong"
        else:
            assert all(type(name) is bytes and type(value) is bytes for name, value in headers)
            assert sum(len(n) + len(v) + ENTRY_OVERHEAD for n, v in headers) <= decoder.max_header_list_size
            assert len(headers) <= len(block)  # each field takes at least one byte of the block
        check_decoder_state(decoder)


@fuzz_settings(300)
@given(sequence=blocks, max_list=st.sampled_from([0, 100, 4096, 65536]),
       max_table=st.sampled_from([0, 64, 4096, 65536]))
@example(sequence=[b"\x3f\xe1\x1f" + b"\x40\x01a\x01b" * 3], max_list=65536, max_table=4096)  # grow, then add
@example(sequence=[b"\x82\x87", b"\xbe"], max_list=4096, max_table=4096)  # index 62 with an empty table
def test_header_blocks_decode_or_raise_hpack_error(sequence: list[bytes], max_list: int, max_table: int) -> None:
    decode_all(Decoder(max_header_list_size=max_list, max_table_size=max_table), sequence)


header_lists = st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=40)), max_size=8)


@fuzz_settings(300)
@given(header_list=header_lists, table_sizes=st.lists(st.integers(0, 8192), max_size=3))
def test_what_our_encoder_sends_decodes_to_the_same_headers(header_list: list[tuple[bytes, bytes]],
                                                            table_sizes: list[int]) -> None:
    """A fuzzed peer's mirror image: our own blocks, after any table size changes, decode exactly."""
    encoder = Encoder()
    for size in table_sizes:
        encoder.set_max_table_size(size)
    decoder = Decoder(max_header_list_size=2**32)
    assert decoder.decode(encoder.encode(header_list)) == header_list
