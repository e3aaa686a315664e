"""The HTTP/1.1 codec (``waypoint.h1codec``) without I/O: bytes in, events out, and the heads it writes."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from waypoint.h1codec import (
    CLOSED,
    End,
    Head,
    LocalProtocolError,
    ProtocolError,
    Reader,
    chunk,
    content_length,
    last_chunk,
    request_head,
    response_head,
)

MAX_HEAD = 1024
MAX_HEADERS = 10


def requests() -> Reader:
    return Reader(responses=False, max_head_bytes=MAX_HEAD, max_headers=MAX_HEADERS)


def responses() -> Reader:
    return Reader(responses=True, max_head_bytes=MAX_HEAD, max_headers=MAX_HEADERS)


def drain(reader: Reader) -> list[object]:
    """Every event queued, body pieces joined; a protocol error as ("error", status)."""
    events: list[object] = []
    while True:
        try:
            event = reader.next_event()
        except ProtocolError as exc:
            events.append(("error", exc.status))
            return events
        if event is None:
            return events
        if type(event) is bytes and events and type(events[-1]) is bytes:
            events[-1] += event
        else:
            events.append(event)


def feed(reader: Reader, *pieces: bytes) -> list[object]:
    for piece in pieces:
        reader.feed(piece)
    return drain(reader)


# ---------------------------------------------------------------- requests

def test_a_request_head_is_decoded_names_lowercase_values_trimmed() -> None:
    [head, end] = feed(requests(), b"GET /a?b=1 HTTP/1.1\r\nHost: web\r\nX-Thing:  v \r\n\r\n")
    assert head == Head("GET", "/a?b=1", 0, [("host", "web"), ("x-thing", "v")], "1.1", True, False)
    assert end == End([])


def test_pipelined_requests_come_out_in_order_with_their_bodies() -> None:
    events = feed(requests(), b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                              b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [type(e).__name__ for e in events] == ["Head", "bytes", "End", "Head", "End"]
    assert events[1] == b"abc"
    assert [e.target for e in events if isinstance(e, Head)] == ["/1", "/2"]


def test_chunked_body_and_trailers() -> None:
    events = feed(requests(), b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                  b"3\r\nabc\r\n4\r\nde", b"fg\r\n0\r\nGrpc-Status: 0\r\n\r\n")
    assert events[1:] == [b"abcdefg", End([("grpc-status", "0")])]


def test_keep_alive_follows_version_and_connection_close() -> None:
    [close, _] = feed(requests(), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    [old, _] = feed(requests(), b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert isinstance(close, Head) and not close.keep_alive
    assert isinstance(old, Head) and old.version == "1.0" and not old.keep_alive


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\nHost: a\n\n",  # bare LF
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
])
def test_request_smuggling_shapes_are_refused_with_400(data: bytes) -> None:
    assert feed(requests(), data)[-1] == ("error", 400)


def test_a_version_other_than_1x_is_505() -> None:
    assert feed(requests(), b"GET / HTTP/2.0\r\nHost: a\r\n\r\n") == [("error", 505)]


def test_an_error_after_a_valid_request_comes_after_it() -> None:
    events = feed(requests(), b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nnonsense\r\n\r\n")
    assert isinstance(events[0], Head) and events[1:] == [End([]), ("error", 400)]


def test_a_head_over_the_limit_is_431_before_it_ends() -> None:
    reader = requests()
    assert feed(reader, b"GET /" + b"a" * (MAX_HEAD // 2)) == []
    assert feed(reader, b"a" * (MAX_HEAD // 2)) == [("error", 431)]


def test_a_header_value_over_the_limit_across_reads_is_431() -> None:
    reader = requests()
    pieces = [b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: "] + [b"v" * 100] * (MAX_HEAD // 100 + 1)
    assert feed(reader, *pieces)[-1] == ("error", 431)


def test_a_whole_head_over_the_limit_in_one_read_is_431() -> None:
    assert feed(requests(), b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * MAX_HEAD + b"\r\n\r\n") == [("error", 431)]


def test_a_pipelined_head_is_counted_from_the_next_read() -> None:
    """A head that begins inside the read that ended the request before it may use that read's
    length on top of the limit, never more."""
    reader = requests()
    body = b"x" * (MAX_HEAD - 100)
    first = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body + b"GET / HTTP/1.1\r\nX: "
    events = feed(reader, first, b"v" * (MAX_HEAD - 200))
    assert [type(e).__name__ for e in events] == ["Head", "bytes", "End"]  # not yet over the limit
    assert feed(reader, b"v" * 300) == [("error", 431)]


def test_too_many_headers_is_431() -> None:
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    assert feed(requests(), b"GET / HTTP/1.1\r\n" + headers + b"\r\n") == [("error", 431)]


def test_an_upgrade_stops_the_parser_and_keeps_the_bytes_after_it() -> None:
    reader = requests()
    events = feed(reader, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw1",
                  b"raw2")
    assert isinstance(events[0], Head) and events[0].upgrade and events[1:] == [End([])]
    assert reader.stopped and reader.upgraded() == b"raw1raw2"


def test_an_upgrade_not_granted_resumes_http() -> None:
    reader = requests()
    feed(reader, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\nGET /next HTTP/1.1\r\n")
    reader.resume()
    events = feed(reader, b"Host: a\r\n\r\n")
    assert isinstance(events[0], Head) and events[0].target == "/next"


def test_the_end_of_the_stream_between_requests_is_closed_and_inside_one_an_error() -> None:
    between = requests()
    feed(between, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    between.feed_eof()
    assert drain(between) == [CLOSED]
    inside = requests()
    inside.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    inside.feed_eof()
    assert drain(inside)[-1] == ("error", 400)


# ---------------------------------------------------------------- responses

def test_interim_responses_then_the_final_one() -> None:
    events = feed(responses(), b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert [e.status for e in events if isinstance(e, Head)] == [100, 200]
    assert events[-2:] == [b"ok", End([])]


def test_a_response_without_length_runs_to_the_end_of_the_stream() -> None:
    reader = responses()
    events = feed(reader, b"HTTP/1.1 200 OK\r\n\r\nabc", b"def")
    assert isinstance(events[0], Head) and not events[0].keep_alive
    reader.feed_eof()
    assert drain(reader) == [End([])]


@pytest.mark.parametrize("length", [b"0", b"12"])
def test_a_response_to_head_ends_with_its_head_and_the_next_one_parses(length: bytes) -> None:
    reader = responses()
    reader.expect_no_body()
    events = feed(reader, b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\n")
    assert [type(e).__name__ for e in events] == ["Head", "End"]
    reader.next_cycle()
    events = feed(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert events[1:] == [b"ok", End([])]
    assert not reader.extra


def test_bytes_after_a_final_response_mark_the_connection_unfit() -> None:
    reader = responses()
    feed(reader, b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert reader.extra


def test_a_101_stops_the_parser_with_the_raw_bytes() -> None:
    reader = responses()
    events = feed(reader, b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nhi")
    assert isinstance(events[0], Head) and events[0].status == 101
    assert reader.upgraded() == b"hi"


# ---------------------------------------------------------------- any split of the bytes

MESSAGES = (b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            b"POST /2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n"
            b"GET /3 HTTP/1.1\r\nHost: a\r\nX-Long: " + b"l" * 200 + b"\r\n\r\n")


@given(st.lists(st.integers(min_value=0, max_value=len(MESSAGES)), max_size=20))
def test_events_do_not_depend_on_how_the_bytes_are_split(cuts: list[int]) -> None:
    edges = sorted({0, len(MESSAGES), *cuts})
    pieces = [MESSAGES[a:b] for a, b in zip(edges, edges[1:], strict=False)]
    assert feed(requests(), *pieces) == feed(requests(), MESSAGES)


@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_give_events_or_a_protocol_error_never_another_exception(data: bytes, as_responses: bool) -> None:
    reader = responses() if as_responses else requests()
    reader.feed(b"GET / HTTP/1.1\r\n" if not as_responses else b"HTTP/1.1 200 OK\r\n")
    reader.feed(data)
    reader.feed_eof()
    drain(reader)


# ---------------------------------------------------------------- writing

def test_a_response_head_is_written_with_the_standard_reason() -> None:
    assert response_head(404, [("content-length", "0")]) == b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


@pytest.mark.parametrize("headers", [
    [("x-a", "v\r\nx-injected: 1")],
    [("x-a", "v\nx")],
    [("x-a", "nul\x00")],
    [("x-a\nx-b", "v")],
    [("x-a: b", "v")],
    [("", "v")],
])
def test_a_header_that_could_split_the_message_is_never_written(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(LocalProtocolError):
        response_head(200, headers)
    with pytest.raises(LocalProtocolError):
        request_head("GET", "/", headers)


@pytest.mark.parametrize(("method", "target"), [("GET /x", "/"), ("GET", "/a b"), ("GET", "/a\r\n"), ("GET", "")])
def test_a_request_line_that_could_split_the_message_is_never_written(method: str, target: str) -> None:
    with pytest.raises(LocalProtocolError):
        request_head(method, target, [])


def test_chunks_and_trailers() -> None:
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert last_chunk(None) == b"0\r\n\r\n"
    assert last_chunk([("grpc-status", "0")]) == b"0\r\ngrpc-status: 0\r\n\r\n"


@pytest.mark.parametrize(("headers", "expected"), [([], None), ([("content-length", "7")], 7)])
def test_content_length(headers: list[tuple[str, str]], expected: int | None) -> None:
    assert content_length(headers) == expected


@pytest.mark.parametrize("value", ["-1", "1,1", "x", "١"])
def test_an_unusable_content_length_is_refused(value: str) -> None:
    with pytest.raises(LocalProtocolError):
        content_length([("content-length", value)])
