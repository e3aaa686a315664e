"""Each host function through the wasm boundary: a good call does what the spec says, and a pointer or
length outside the guest's memory answers INVALID_MEMORY_ACCESS (never an exception, never a crash)."""

from __future__ import annotations

import logging
import struct

import pytest

from waypoint.wasm import abi
from waypoint.wasm.abi import BufferType, MapType, Status, StreamType
from waypoint.wasm.state import SharedState
from waypoint.wasm.types import LocalReply, RequestInfo

from . import wat
from .probe import Probe

BAD = wat.BAD
INVALID = Status.INVALID_MEMORY_ACCESS


@pytest.fixture
def probe() -> Probe:
    p = Probe(wat.config(wat.probe(), configuration=b'{"header": "x"}'),
              RequestInfo(method="POST", path="/a/b?q=1", authority="svc.ns", request_id="rid-1",
                          source_address="10.0.0.1", source_port=4000, source_principal="spiffe://td/ns/a/sa/c",
                          destination_address="10.0.0.2", destination_port=8080, mtls=True, node_id="wp-1",
                          node_metadata={"CLUSTER_ID": "Kubernetes"}))
    p.state.request_headers = [(":method", "POST"), (":path", "/a/b?q=1"), ("x-a", "1"), ("x-a", "2")]
    return p


def test_log_writes_the_message_at_its_level_and_checks_the_pointer(probe: Probe,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=wat.LOG.name)
    assert probe.call("proxy_log", abi.LogLevel.WARN, *probe.put(b"careful")) == Status.OK
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.WARNING, "ns/test: careful")]
    assert probe.call("proxy_log", abi.LogLevel.INFO, BAD, 4) == INVALID
    assert probe.call("proxy_log", 9, *probe.put(b"x")) == Status.BAD_ARGUMENT


def test_log_level_and_time(probe: Probe, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=wat.LOG.name)
    out = probe.slot()
    assert probe.call("proxy_get_log_level", out) == Status.OK
    assert probe.u32(out) == abi.LogLevel.WARN
    assert probe.call("proxy_get_log_level", BAD) == INVALID
    assert probe.call("proxy_get_current_time_nanoseconds", out) == Status.OK
    assert struct.unpack("<Q", probe.memory.read(out, 8))[0] > 1_600_000_000 * 10**9
    assert probe.call("proxy_get_current_time_nanoseconds", BAD) == INVALID


def test_header_map_value_pairs_and_size(probe: Probe) -> None:
    ptr_ptr, size_ptr = probe.slot(), probe.slot()
    assert probe.call("proxy_get_header_map_value", MapType.HTTP_REQUEST_HEADERS, *probe.put(b"X-A"),
                      ptr_ptr, size_ptr) == Status.OK
    assert probe.given(ptr_ptr, size_ptr) == b"1"           # the first value, names case-insensitive
    assert probe.call("proxy_get_header_map_value", 0, *probe.put(b"nope"), ptr_ptr, size_ptr) == Status.NOT_FOUND
    assert probe.call("proxy_get_header_map_value", 0, BAD, 3, ptr_ptr, size_ptr) == INVALID
    assert probe.call("proxy_get_header_map_value", 0, *probe.put(b"x-a"), BAD, size_ptr) == INVALID
    assert probe.call("proxy_get_header_map_value", 99, *probe.put(b"x-a"), ptr_ptr, size_ptr) == Status.BAD_ARGUMENT

    assert probe.call("proxy_get_header_map_pairs", 0, ptr_ptr, size_ptr) == Status.OK
    assert abi.decode_map(probe.given(ptr_ptr, size_ptr), 100) == [
        (b":method", b"POST"), (b":path", b"/a/b?q=1"), (b"x-a", b"1"), (b"x-a", b"2")]
    assert probe.call("proxy_get_header_map_pairs", 0, ptr_ptr, BAD) == INVALID
    assert probe.call("proxy_get_header_map_pairs", MapType.HTTP_RESPONSE_HEADERS, ptr_ptr, size_ptr) == \
        Status.NOT_FOUND

    assert probe.call("proxy_get_header_map_size", 0, size_ptr) == Status.OK
    assert probe.u32(size_ptr) == len(abi.encode_map([(b":method", b"POST"), (b":path", b"/a/b?q=1"),
                                                      (b"x-a", b"1"), (b"x-a", b"2")]))
    assert probe.call("proxy_get_header_map_size", 0, BAD) == INVALID


def test_header_map_add_replace_remove_set(probe: Probe) -> None:
    assert probe.call("proxy_add_header_map_value", 0, *probe.put(b"X-New"), *probe.put(b"v")) == Status.OK
    assert probe.call("proxy_replace_header_map_value", 0, *probe.put(b"x-a"), *probe.put(b"3")) == Status.OK
    assert probe.state.request_headers == [(":method", "POST"), (":path", "/a/b?q=1"), ("x-a", "3"), ("x-new", "v")]
    assert probe.call("proxy_replace_header_map_value", 0, *probe.put(b"x-b"), *probe.put(b"4")) == Status.OK
    assert probe.call("proxy_remove_header_map_value", 0, *probe.put(b"x-a")) == Status.OK
    assert probe.state.request_headers == [(":method", "POST"), (":path", "/a/b?q=1"), ("x-new", "v"), ("x-b", "4")]
    assert probe.call("proxy_add_header_map_value", 0, BAD, 2, *probe.put(b"v")) == INVALID
    assert probe.call("proxy_add_header_map_value", 0, *probe.put(b"k"), BAD, 1) == INVALID
    assert probe.call("proxy_replace_header_map_value", 0, *probe.put(b"k"), BAD, 1) == INVALID
    assert probe.call("proxy_remove_header_map_value", 0, BAD, 1) == INVALID

    pairs = abi.encode_map([(b":status", b"200"), (b"Server", b"wasm")])
    probe.state.response_headers = []
    assert probe.call("proxy_set_header_map_pairs", MapType.HTTP_RESPONSE_HEADERS, *probe.put(pairs)) == Status.OK
    assert probe.state.response_headers == [(":status", "200"), ("server", "wasm")]
    assert probe.call("proxy_set_header_map_pairs", 2, *probe.put(pairs[:-3])) == Status.BAD_ARGUMENT
    assert probe.call("proxy_set_header_map_pairs", 2, BAD, len(pairs)) == INVALID
    # Trailers a plugin adds before any arrived exist from then on.
    assert probe.call("proxy_add_header_map_value", MapType.HTTP_REQUEST_TRAILERS, *probe.put(b"t"),
                      *probe.put(b"1")) == Status.OK
    assert probe.state.request_trailers == [("t", "1")]


def test_buffers_read_write_and_status(probe: Probe) -> None:
    ptr_ptr, size_ptr = probe.slot(), probe.slot()
    assert probe.call("proxy_get_buffer_bytes", BufferType.PLUGIN_CONFIGURATION, 0, 100, ptr_ptr, size_ptr) == \
        Status.OK
    assert probe.given(ptr_ptr, size_ptr) == b'{"header": "x"}'
    assert probe.call("proxy_get_buffer_bytes", BufferType.PLUGIN_CONFIGURATION, 2, 6, ptr_ptr, size_ptr) == \
        Status.OK
    assert probe.given(ptr_ptr, size_ptr) == b'header'
    assert probe.call("proxy_get_configuration", ptr_ptr, size_ptr) == Status.OK
    assert probe.given(ptr_ptr, size_ptr) == b'{"header": "x"}'
    assert probe.call("proxy_get_buffer_bytes", 7, 0, 100, BAD, size_ptr) == INVALID
    assert probe.call("proxy_get_configuration", ptr_ptr, BAD) == INVALID
    assert probe.call("proxy_get_buffer_bytes", BufferType.HTTP_REQUEST_BODY, 0, 9, ptr_ptr, size_ptr) == \
        Status.NOT_FOUND
    assert probe.call("proxy_get_buffer_bytes", 42, 0, 9, ptr_ptr, size_ptr) == Status.BAD_ARGUMENT

    probe.state.request_body = bytearray(b"hello")
    assert probe.call("proxy_get_buffer_status", 0, ptr_ptr, size_ptr) == Status.OK
    assert probe.u32(ptr_ptr) == 5
    assert probe.call("proxy_get_buffer_status", 0, BAD, size_ptr) == INVALID
    assert probe.call("proxy_set_buffer_bytes", 0, 0, 0, *probe.put(b">")) == Status.OK        # prepend
    assert probe.call("proxy_set_buffer_bytes", 0, 6, 0, *probe.put(b"<")) == Status.OK        # append
    assert probe.call("proxy_set_buffer_bytes", 0, 1, 5, *probe.put(b"HELLO!")) == Status.OK   # splice
    assert probe.state.request_body == b">HELLO!<"
    assert probe.call("proxy_set_buffer_bytes", 0, 0, 99, BAD, 4) == INVALID
    assert probe.call("proxy_set_buffer_bytes", 0, 99, 0, *probe.put(b"x")) == Status.BAD_ARGUMENT
    assert probe.call("proxy_set_buffer_bytes", 7, 0, 0, *probe.put(b"x")) == Status.BAD_ARGUMENT  # read-only


def test_properties(probe: Probe) -> None:
    ptr_ptr, size_ptr = probe.slot(), probe.slot()

    def get(path: bytes) -> bytes | Status:
        status = probe.call("proxy_get_property", *probe.put(path), ptr_ptr, size_ptr)
        return probe.given(ptr_ptr, size_ptr) if status == Status.OK else status

    assert get(b"request\0path") == b"/a/b?q=1"
    assert get(b"request.url_path") == b"/a/b"
    assert get(b"request\0method") == b"POST"
    assert get(b"request\0host") == b"svc.ns"
    assert get(b"request\0id") == b"rid-1"
    assert get(b"source\0address") == b"10.0.0.1:4000"
    assert get(b"source\0port") == struct.pack("<q", 4000)
    assert get(b"source\0principal") == b"spiffe://td/ns/a/sa/c"
    assert get(b"destination\0port") == struct.pack("<q", 8080)
    assert get(b"destination\0principal") == Status.NOT_FOUND      # none known: not an empty string
    assert get(b"connection\0mtls") == b"\x01"
    assert get(b"plugin_name") == b"ns/test"
    assert get(b"plugin_root_id") == b"root"
    assert get(b"plugin_vm_id") == b"vm"
    assert get(b"node\0id") == b"wp-1"
    assert get(b"node\0metadata\0CLUSTER_ID") == b"Kubernetes"
    assert get(b"request\0headers\0x-a") == b"1,2"
    assert abi.decode_map(get(b"request\0headers"), 100)[0] == (b":method", b"POST")  # type: ignore[arg-type]
    assert get(b"response\0code") == Status.NOT_FOUND
    probe.state.response_headers = [(":status", "503")]
    assert get(b"response\0code") == struct.pack("<q", 503)
    assert get(b"no\0such") == Status.NOT_FOUND
    assert probe.call("proxy_get_property", BAD, 4, ptr_ptr, size_ptr) == INVALID
    assert probe.call("proxy_get_property", *probe.put(b"request.path"), BAD, size_ptr) == INVALID

    assert probe.call("proxy_set_property", *probe.put(b"my\0thing"), *probe.put(b"v1")) == Status.OK
    assert get(b"my.thing") == b"v1"
    assert probe.call("proxy_set_property", *probe.put(b"request.path"), *probe.put(b"/x")) == Status.BAD_ARGUMENT
    assert probe.call("proxy_set_property", *probe.put(b"my.thing"), BAD, 2) == INVALID


def test_local_response_continue_close_and_effective_context(probe: Probe) -> None:
    headers = abi.encode_map([(b"content-type", b"text/plain")])
    assert probe.call("proxy_send_local_response", 403, *probe.put(b"denied"), *probe.put(b"no"),
                      *probe.put(headers), 0xFFFFFFFF) == Status.OK
    assert probe.state.local_reply == LocalReply(403, b"no", [("content-type", "text/plain")], "denied")
    assert probe.call("proxy_send_local_response", 403, BAD, 3, 0, 0, 0, 0, 0) == INVALID
    assert probe.call("proxy_send_local_response", 403, 0, 0, BAD, 3, 0, 0, 0) == INVALID
    assert probe.call("proxy_send_local_response", 403, 0, 0, 0, 0, BAD, 3, 0) == INVALID
    assert probe.call("proxy_send_local_response", 99, 0, 0, 0, 0, 0, 0, 0) == Status.BAD_ARGUMENT

    probe.state.paused = StreamType.REQUEST
    assert probe.call("proxy_continue_stream", StreamType.RESPONSE) == Status.OK
    assert probe.state.paused == StreamType.REQUEST           # the other side: still paused
    assert probe.call("proxy_continue_request") == Status.OK
    assert probe.state.paused is None
    assert probe.call("proxy_continue_stream", 9) == Status.BAD_ARGUMENT
    assert probe.call("proxy_close_stream", StreamType.REQUEST) == Status.OK
    assert probe.state.reset is not None

    assert probe.call("proxy_set_effective_context", 1) == Status.OK
    assert probe.plugin.host.effective is None
    assert probe.call("proxy_continue_stream", 0) == Status.BAD_ARGUMENT     # the root has no stream
    assert probe.call("proxy_set_effective_context", 777) == Status.BAD_ARGUMENT
    assert probe.call("proxy_set_effective_context", probe.state.context_id) == Status.OK
    assert probe.plugin.host.effective is probe.state
    assert probe.call("proxy_done") == Status.OK


def test_http_call_is_dispatched_with_a_token(probe: Probe) -> None:
    headers = abi.encode_map([(b":method", b"GET"), (b":path", b"/check"), (b":authority", b"auth.ns")])
    token = probe.slot()
    assert probe.call("proxy_http_call", *probe.put(b"outbound|80||auth.ns"), *probe.put(headers),
                      *probe.put(b"body"), 0, 0, 500, token) == Status.OK
    assert probe.u32(token) == 1
    assert probe.call("proxy_dispatch_http_call", *probe.put(b"auth"), *probe.put(headers), 0, 0, 0, 0, 500,
                      token) == Status.OK
    assert probe.u32(token) == 2
    work = [probe.plugin._work_receive.receive_nowait() for _ in range(2)]
    assert [w[2:5] for w in work] == [(1, "outbound|80||auth.ns", [(":method", "GET"), (":path", "/check"),
                                                                   (":authority", "auth.ns")])] + \
        [(2, "auth", [(":method", "GET"), (":path", "/check"), (":authority", "auth.ns")])]
    assert work[0][5:] == (b"body", [], 0.5)
    no_path = abi.encode_map([(b":method", b"GET")])
    assert probe.call("proxy_http_call", *probe.put(b"auth"), *probe.put(no_path), 0, 0, 0, 0, 500, token) == \
        Status.BAD_ARGUMENT
    assert probe.call("proxy_http_call", BAD, 4, *probe.put(headers), 0, 0, 0, 0, 500, token) == INVALID
    assert probe.call("proxy_http_call", *probe.put(b"auth"), *probe.put(headers), 0, 0, 0, 0, 500, BAD) == INVALID


def test_metrics(probe: Probe) -> None:
    out = probe.slot()
    assert probe.call("proxy_define_metric", abi.MetricType.COUNTER, *probe.put(b"wasm_hits"), out) == Status.OK
    counter = probe.u32(out)
    assert probe.call("proxy_define_metric", abi.MetricType.GAUGE, *probe.put(b"wasm_level"), out) == Status.OK
    gauge = probe.u32(out)
    assert probe.call("proxy_define_metric", abi.MetricType.HISTOGRAM, *probe.put(b"wasm_ms"), out) == Status.OK
    histogram = probe.u32(out)
    assert probe.call("proxy_increment_metric", counter, 3) == Status.OK
    assert probe.call("proxy_increment_metric", counter, -1) == Status.BAD_ARGUMENT
    assert probe.call("proxy_increment_metric", gauge, -2) == Status.OK
    assert probe.call("proxy_record_metric", histogram, 7) == Status.OK
    assert probe.call("proxy_record_metric", histogram, 5) == Status.OK
    assert probe.call("proxy_get_metric", counter, out) == Status.OK
    assert struct.unpack("<Q", probe.memory.read(out, 8))[0] == 3
    assert probe.call("proxy_get_metric", 999, out) == Status.NOT_FOUND
    assert probe.call("proxy_get_metric", counter, BAD) == INVALID
    assert probe.call("proxy_define_metric", 0, BAD, 4, out) == INVALID
    assert probe.call("proxy_define_metric", 7, *probe.put(b"x"), out) == Status.BAD_ARGUMENT
    assert sorted(probe.plugin.metrics.samples()) == [
        ("wasm_hits", "counter", 3), ("wasm_level", "gauge", -2), ("wasm_ms", "histogram", (2, 12))]


def test_shared_data_with_cas(probe: Probe) -> None:
    probe.plugin.host.shared = SharedState()
    ptr_ptr, size_ptr, cas = probe.slot(), probe.slot(), probe.slot()
    key = probe.put(b"k")
    assert probe.call("proxy_get_shared_data", *key, ptr_ptr, size_ptr, cas) == Status.NOT_FOUND
    assert probe.call("proxy_set_shared_data", *key, *probe.put(b"v1"), 0) == Status.OK
    assert probe.call("proxy_get_shared_data", *key, ptr_ptr, size_ptr, cas) == Status.OK
    assert probe.given(ptr_ptr, size_ptr) == b"v1"
    token = probe.u32(cas)
    assert probe.call("proxy_set_shared_data", *key, *probe.put(b"v2"), token + 1) == Status.CAS_MISMATCH
    assert probe.call("proxy_set_shared_data", *key, *probe.put(b"v2"), token) == Status.OK
    assert probe.call("proxy_set_shared_data", *key, *probe.put(b"v3"), token) == Status.CAS_MISMATCH
    assert probe.call("proxy_get_shared_data", BAD, 1, ptr_ptr, size_ptr, cas) == INVALID
    assert probe.call("proxy_get_shared_data", *key, ptr_ptr, size_ptr, BAD) == INVALID
    assert probe.call("proxy_set_shared_data", *key, BAD, 2, 0) == INVALID


def test_shared_queues(probe: Probe) -> None:
    probe.plugin.host.shared = SharedState()
    out, ptr_ptr, size_ptr = probe.slot(), probe.slot(), probe.slot()
    assert probe.call("proxy_register_shared_queue", *probe.put(b"q"), out) == Status.OK
    queue = probe.u32(out)
    assert probe.call("proxy_resolve_shared_queue", *probe.put(b"vm"), *probe.put(b"q"), out) == Status.OK
    assert probe.u32(out) == queue
    assert probe.call("proxy_resolve_shared_queue", *probe.put(b"vm"), *probe.put(b"zz"), out) == Status.NOT_FOUND
    assert probe.call("proxy_dequeue_shared_queue", queue, ptr_ptr, size_ptr) == Status.EMPTY
    assert probe.call("proxy_enqueue_shared_queue", queue, *probe.put(b"item")) == Status.OK
    assert probe.plugin._work_receive.receive_nowait()[2] == queue      # the registrant is woken
    assert probe.call("proxy_dequeue_shared_queue", queue, ptr_ptr, size_ptr) == Status.OK
    assert probe.given(ptr_ptr, size_ptr) == b"item"
    assert probe.call("proxy_enqueue_shared_queue", 999, *probe.put(b"x")) == Status.NOT_FOUND
    assert probe.call("proxy_enqueue_shared_queue", queue, BAD, 4) == INVALID
    assert probe.call("proxy_dequeue_shared_queue", queue, BAD, size_ptr) == INVALID
    assert probe.call("proxy_register_shared_queue", BAD, 1, out) == INVALID
    assert probe.call("proxy_register_shared_queue", *probe.put(b"q"), BAD) == INVALID
    assert probe.call("proxy_resolve_shared_queue", BAD, 1, *probe.put(b"q"), out) == INVALID


def test_tick_period_reaches_the_owner(probe: Probe) -> None:
    assert probe.call("proxy_set_tick_period_milliseconds", 250) == Status.OK
    assert probe.plugin._tick_ms == 250
