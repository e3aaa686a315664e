"""ztunnel's HPACK codec against the ``hpack`` library as the independent peer, both ways, plus blocks
built by hand for each fault a peer can commit."""

from __future__ import annotations

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable
from hypothesis import given, settings, strategies as st

from hbone.hpack_codec import STATIC_TABLE, Decoder, Encoder, HpackError

LIMIT = 1 << 20
huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)

static_names = st.sampled_from(sorted({name for name, _ in STATIC_TABLE}))
static_values = st.sampled_from(sorted({value for _, value in STATIC_TABLE}))
names = st.one_of(static_names, st.binary(max_size=40))
values = st.one_of(static_values, st.binary(max_size=200))
fields = st.one_of(st.sampled_from(STATIC_TABLE), st.tuples(names, values))
header_lists = st.lists(fields, max_size=12)


def plain(data: bytes) -> bytes:
    """A string literal without Huffman coding (RFC 7541 5.2), for lengths under 127."""
    assert len(data) < 127
    return bytes([len(data)]) + data


def huffman_string(code: int, bits: int) -> bytes:
    """A Huffman string literal holding exactly ``bits`` bits of ``code`` (a whole number of bytes)."""
    assert bits % 8 == 0
    return bytes([0x80 | bits // 8]) + code.to_bytes(bits // 8, "big")


def indexing(name: bytes, value: bytes) -> bytes:
    """Literal with incremental indexing, new name (RFC 7541 6.2.1)."""
    return b"\x40" + plain(name) + plain(value)


def fault(block: bytes, *words: str, **limits: int) -> None:
    with pytest.raises(HpackError) as caught:
        Decoder(**{"max_header_list_size": LIMIT} | limits).decode(block)
    for word in words:
        assert word in str(caught.value)


# -- facts


def test_static_table_is_rfc_7541_appendix_a():
    assert len(STATIC_TABLE) == 61
    assert STATIC_TABLE == HeaderTable.STATIC_TABLE


def test_every_byte_value_round_trips_through_huffman():
    for byte in range(256):
        code = huffman.encode(bytes([byte]))
        block = b"\x00" + plain(b"x") + bytes([0x80 | len(code)]) + code
        assert Decoder(LIMIT).decode(block) == [(b"x", bytes([byte]))]
    everything = bytes(range(256)) * 2
    block = hpack.Encoder().encode([(b"x", everything)], huffman=True)
    assert block[2] & 0x80  # the value is Huffman-coded
    assert Decoder(LIMIT).decode(block) == [(b"x", everything)]


@given(st.binary(max_size=300))
def test_huffman_strings_round_trip(data):
    encoded = hpack.Encoder().encode([(b"x-data", data)], huffman=True)
    assert Decoder(LIMIT).decode(encoded) == [(b"x-data", data)]


# -- our encoder, hpack's decoder


def test_encoder_uses_the_static_table():
    assert Encoder().encode([(b":status", b"200")]) == b"\x88"
    assert Encoder().encode([(b":status", b"400")]) == b"\x8c"
    assert Encoder().encode([(b":status", b"503")]) == b"\x08" + plain(b"503")
    assert Encoder().encode([(b"x-a", b"b")]) == b"\x00" + plain(b"x-a") + plain(b"b")
    assert Encoder().encode([(b":method", b"CONNECT")]) == b"\x02" + plain(b"CONNECT")  # the first :method


@given(st.lists(header_lists, min_size=1, max_size=4))
def test_our_blocks_decode_with_hpack(blocks):
    ours, theirs = Encoder(), hpack.Decoder(max_header_list_size=LIMIT)
    for headers in blocks:
        assert theirs.decode(ours.encode(headers), raw=True) == headers
    assert len(theirs.header_table.dynamic_entries) == 0


def test_long_names_and_values_use_multibyte_lengths():
    headers = [(b"x-" + b"n" * 300, b"v" * 70000), (b"user-agent", b"u" * 127)]
    assert hpack.Decoder(max_header_list_size=LIMIT).decode(Encoder().encode(headers), raw=True) == headers


def test_a_reduced_table_size_is_signalled_once():
    ours, theirs = Encoder(), hpack.Decoder()
    ours.set_max_table_size(8192)  # growing needs no update: our table is empty anyway
    assert ours.encode([(b":status", b"200")]) == b"\x88"
    ours.set_max_table_size(100)
    ours.set_max_table_size(0)
    ours.set_max_table_size(4096)  # the smallest since the last block is what counts (RFC 7541 4.2)
    block = ours.encode([(b":status", b"200")])
    assert block == b"\x20\x88"
    assert theirs.decode(block, raw=True) == [(b":status", b"200")]
    assert theirs.header_table_size == 0
    assert ours.encode([(b":status", b"200")]) == b"\x88"
    ours.set_max_table_size(50)  # not below the 0 already signalled
    assert ours.encode([(b":status", b"200")]) == b"\x88"


def test_a_large_reduction_uses_a_multibyte_integer():
    ours = Encoder()
    ours.set_max_table_size(1000)
    block = ours.encode([])
    assert block == b"\x3f\xc9\x07"  # 31 + 969
    theirs = hpack.Decoder()
    theirs.decode(block)
    assert theirs.header_table_size == 1000


# -- hpack's encoder, our decoder


@pytest.mark.parametrize("use_huffman", [True, False])
@given(blocks=st.lists(header_lists, min_size=1, max_size=6))
@settings(max_examples=200)
def test_hpack_blocks_decode_with_ours(use_huffman, blocks):
    theirs, ours = hpack.Encoder(), Decoder(LIMIT)
    for headers in blocks:  # hpack's dynamic table carries over from block to block
        assert ours.decode(theirs.encode(headers, huffman=use_huffman)) == headers


def test_the_dynamic_table_is_shared_across_blocks():
    theirs, ours = hpack.Encoder(), Decoder(LIMIT)
    headers = [(b":authority", b"10.0.0.1:80"), (b"x-request-id", b"abc")]
    first, second = theirs.encode(headers), theirs.encode(headers)
    assert second == b"\xbf\xbe"  # both indexed: 63 and 62
    assert ours.decode(first) == headers
    assert ours.decode(second) == headers


def test_hpack_table_size_changes_are_followed():
    theirs, ours = hpack.Encoder(), Decoder(LIMIT)
    headers = [(b"x-a", b"1"), (b"x-b", b"2")]
    assert ours.decode(theirs.encode(headers)) == headers
    theirs.header_table_size = 0  # empties both tables
    theirs.header_table_size = 200
    assert ours.decode(theirs.encode(headers)) == headers
    assert ours.decode(theirs.encode(headers)) == headers


def test_never_indexed_fields_decode():
    block = hpack.Encoder().encode([(b"authorization", b"secret", True), (b"x-k", b"v", True)])
    assert block[0] & 0xF0 == 0x10
    assert Decoder(LIMIT).decode(block) == [(b"authorization", b"secret"), (b"x-k", b"v")]


def test_eviction_by_size():
    decoder = Decoder(LIMIT)
    value = b"v" * 100  # each entry is 4 + 100 + 32 = 136 bytes: 30 fit in 4096
    block = b"".join(indexing(b"x-%02d" % i, value) for i in range(40))
    assert decoder.decode(block) == [(b"x-%02d" % i, value) for i in range(40)]
    assert decoder.decode(b"\xbe") == [(b"x-39", value)]  # 62: the newest
    assert decoder.decode(b"\xdb") == [(b"x-10", value)]  # 62 + 29: the oldest left
    with pytest.raises(HpackError, match="index 92 is past the 61 static and 30 dynamic entries"):
        decoder.decode(b"\xdc")


def test_an_entry_larger_than_the_table_empties_it():
    decoder = Decoder(LIMIT)
    decoder.decode(indexing(b"x-a", b"1"))
    assert decoder.decode(b"\x3f\x21" + indexing(b"x-b", b"v" * 29)) == [(b"x-b", b"v" * 29)]  # 64 in 64
    assert decoder.decode(b"\xbe\x82") == [(b"x-b", b"v" * 29), (b":method", b"GET")]
    with pytest.raises(HpackError, match="index 63 is past the 61 static and 1 dynamic entries"):
        decoder.decode(b"\xbf")  # x-a made room for x-b
    big = b"\x40" + plain(b"x-c") + b"\x7f\x00" + b"w" * 127  # 3 + 127 + 32 > 64
    assert decoder.decode(big) == [(b"x-c", b"w" * 127)]
    with pytest.raises(HpackError, match="index 62 is past the 61 static and 0 dynamic entries"):
        decoder.decode(b"\xbe")


def test_an_indexed_name_from_the_dynamic_table():
    decoder = Decoder(LIMIT)
    decoder.decode(indexing(b"x-a", b"1"))
    assert decoder.decode(b"\x7e" + plain(b"2") + b"\x0f\x2f" + plain(b"3")) == [(b"x-a", b"2"), (b"x-a", b"3")]
    assert decoder.decode(b"\xbe\xbf") == [(b"x-a", b"2"), (b"x-a", b"1")]


# -- faults


def test_index_zero():
    fault(b"\x80", "index 0")


def test_index_past_the_table():
    fault(b"\x82\xbe", "index 62 is past the 61 static and 0 dynamic entries")
    fault(b"\x0f\x30" + plain(b"v"), "index 63 is past")


def test_truncated_integer():
    fault(b"\xff", "truncated integer")
    fault(b"\xff\x80\x80", "truncated integer")


def test_integer_over_the_limit():
    fault(b"\xff" + b"\xff" * 5 + b"\x01", "integer longer than 5 bytes")
    fault(b"\xff\x80\x80\x80\x80\x10", "over the limit of 2**32")


def test_string_past_the_end():
    fault(b"\x00\x05abc", "string of 5 bytes runs past the block's end (3 left)")
    fault(b"\x00" + plain(b"x-a") + b"\x81", "string of 1 bytes runs past")


def test_eos_inside_a_huffman_string():
    fault(b"\x00" + plain(b"x") + huffman_string(0x3FFFFFFF << 2 | 0b11, 32), "EOS")
    a_then_eos = (0b00011 << 30 | 0x3FFFFFFF) << 5 | 0b11111  # 'a' (00011), EOS, padding
    fault(b"\x00" + plain(b"x") + huffman_string(a_then_eos, 40), "EOS")


def test_huffman_padding_of_eight_bits_or_more():
    a = 0b00011  # 'a'
    fault(b"\x00" + plain(b"x") + huffman_string(a << 11 | 0x7FF, 16), "padding longer than 7 bits")
    fault(b"\x00" + plain(b"x") + huffman_string(0xFF, 8), "padding longer than 7 bits")
    assert Decoder(LIMIT).decode(b"\x00" + plain(b"x") + huffman_string(a << 3 | 0b111, 8)) == [(b"x", b"a")]


def test_huffman_padding_that_is_not_ones():
    fault(b"\x00" + plain(b"x") + huffman_string(0b00011 << 3 | 0b101, 8), "not all ones")
    fault(b"\x00" + plain(b"x") + huffman_string(0b00011 << 3 | 0b110, 8), "not all ones")


def test_size_update_over_the_maximum():
    fault(b"\x3f\xe1\x3f", "dynamic table size update to 8192 over the 4096 allowed")
    fault(b"\x3f\x02", "update to 33 over the 32 allowed", max_table_size=32)
    assert Decoder(LIMIT, max_table_size=8192).decode(b"\x3f\xe1\x3f\x88") == [(b":status", b"200")]


def test_size_update_after_a_field():
    fault(b"\x88\x20", "size update after a header field")
    assert Decoder(LIMIT).decode(b"\x20\x3f\x01\x88") == [(b":status", b"200")]  # two at the start are fine


def test_header_list_over_the_limit():
    block = Encoder().encode([(b"x-a", b"v" * 100)])  # 3 + 100 + 32 = 135
    assert Decoder(135).decode(block) == [(b"x-a", b"v" * 100)]
    fault(block, "header list over 134 bytes", max_header_list_size=134)
    fault(b"\x88" * 5, "header list over 200 bytes", max_header_list_size=200)  # 5 * 42


@given(st.binary(max_size=200), st.lists(st.binary(max_size=60), max_size=3))
@settings(max_examples=1000)
def test_garbage_raises_only_hpack_error(block, earlier):
    decoder = Decoder(4096, max_table_size=256)
    for previous in earlier + [block]:
        try:
            decoder.decode(previous)
        except HpackError:
            pass


@given(st.binary(max_size=60))
@settings(max_examples=500)
def test_garbage_huffman_raises_only_hpack_error(data):
    try:
        Decoder(LIMIT).decode(b"\x00" + plain(b"x") + bytes([0x80 | len(data)]) + data)
    except HpackError:
        pass
