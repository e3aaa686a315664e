"""The WAT plugins of the lifecycle tests, each as small as the behaviour it shows."""

from __future__ import annotations

from waypoint.wasm import abi

from . import wat

_P = "(param i32 i32)"
ROOT = f"""
(func (export "proxy_on_context_create") {_P})
(func (export "proxy_on_vm_start") {_P} (result i32) (i32.const 1))
"""
CONFIGURE_OK = f'(func (export "proxy_on_configure") {_P} (result i32) (i32.const 1))'


def imports(*names: str) -> str:
    from .wat import HOST_FUNCTIONS
    return "\n".join(f'(import "env" "{n}" (func ${n} (param {HOST_FUNCTIONS[n]}) (result i32)))' for n in names)


# Adds x-wasm: <pluginConfig bytes>, replaces x-a, removes x-gone; counts on_done/on_log/on_delete.
HEADER = wat.plugin(imports("proxy_get_buffer_bytes", "proxy_add_header_map_value",
                            "proxy_replace_header_map_value", "proxy_remove_header_map_value") + ROOT
                    + wat.strings(b"x-wasm", b"x-a", b"replaced", b"x-gone") + f"""
(global $cfg_ptr (mut i32) (i32.const 0)) (global $cfg_len (mut i32) (i32.const 0))
(global $done (mut i32) (i32.const 0))
(func (export "proxy_on_configure") {_P} (result i32)
  (drop (call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (local.get 1) (i32.const 2000) (i32.const 2004)))
  (global.set $cfg_ptr (i32.load (i32.const 2000)))
  (global.set $cfg_len (i32.load (i32.const 2004)))
  (i32.const 1))
(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
  (drop (call $proxy_add_header_map_value (i32.const 0) (i32.const 1024) (i32.const 6)
                                           (global.get $cfg_ptr) (global.get $cfg_len)))
  (drop (call $proxy_replace_header_map_value (i32.const 0) (i32.const 1030) (i32.const 3) (i32.const 1033)
                                               (i32.const 8)))
  (drop (call $proxy_remove_header_map_value (i32.const 0) (i32.const 1041) (i32.const 6)))
  (i32.const 0))
(func (export "proxy_on_done") (param i32) (result i32) (global.set $done (i32.add (global.get $done) (i32.const 1)))
  (i32.const 1))
(func (export "proxy_on_log") (param i32) (global.set $done (i32.add (global.get $done) (i32.const 10))))
(func (export "proxy_on_delete") (param i32) (global.set $done (i32.add (global.get $done) (i32.const 100))))
(func (export "get_done") (result i32) (global.get $done))
""")

# Denies (local 403) a request without x-token.
DENY = wat.plugin(imports("proxy_get_header_map_value", "proxy_send_local_response") + ROOT + CONFIGURE_OK
                  + wat.strings(b"x-token", b"denied", b"forbidden") + """
(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
  (if (result i32) (i32.eq (call $proxy_get_header_map_value (i32.const 0) (i32.const 1024) (i32.const 7)
                                                               (i32.const 2000) (i32.const 2004))
                           (i32.const 1))
    (then (drop (call $proxy_send_local_response (i32.const 403) (i32.const 1031) (i32.const 6) (i32.const 1037)
                                                 (i32.const 9) (i32.const 0) (i32.const 0) (i32.const -1)))
          (i32.const 1))
    (else (i32.const 0))))
""")

CALL_HEADERS = abi.encode_map([(b":method", b"GET"), (b":path", b"/allow"), (b":authority", b"authz.ns")])
# Asks authz (http_call) and lets the request go only if the answer's body starts with "y"; 403 otherwise.
HTTP_CALL = wat.plugin(imports("proxy_http_call", "proxy_set_effective_context", "proxy_get_buffer_bytes",
                               "proxy_continue_stream", "proxy_send_local_response") + ROOT + CONFIGURE_OK
                       + wat.strings(b"authz", CALL_HEADERS) + f"""
(global $ctx (mut i32) (i32.const 0))
(global $token (mut i32) (i32.const 0))
(func $deny (drop (call $proxy_send_local_response (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 0)
                                                   (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1))))
(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
  (global.set $ctx (local.get 0))
  (drop (call $proxy_http_call (i32.const 1024) (i32.const 5) (i32.const 1029) (i32.const {len(CALL_HEADERS)})
                               (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000)
                               (i32.const 2000)))
  (global.set $token (i32.load (i32.const 2000)))
  (i32.const 1))
(func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
  (drop (call $proxy_set_effective_context (global.get $ctx)))
  (if (i32.eqz (local.get 3)) (then (call $deny) (return)))
  (drop (call $proxy_get_buffer_bytes (i32.const 4) (i32.const 0) (local.get 3) (i32.const 2008) (i32.const 2012)))
  (if (i32.eq (i32.load8_u (i32.load (i32.const 2008))) (i32.const 121))
    (then (drop (call $proxy_continue_stream (i32.const 0))))
    (else (call $deny))))
""")

LOOP = wat.plugin(ROOT + CONFIGURE_OK + """
(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (loop (br 0)) (i32.const 0))
""")

TRAP = wat.plugin(ROOT + CONFIGURE_OK + """
(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (unreachable))
""")

# Grows its memory 1 MiB at a time until refused, then traps (as an allocator does).
GROW = wat.plugin(ROOT + CONFIGURE_OK + """
(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
  (block (loop (br_if 1 (i32.eq (memory.grow (i32.const 16)) (i32.const -1))) (br 0)))
  (unreachable))
""")

PAUSE = wat.plugin(ROOT + CONFIGURE_OK + """
(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 1))
""")

# Buffers the request body (StopIterationAndBuffer) until its end, then replaces it whole.
BODY = wat.plugin(imports("proxy_set_buffer_bytes") + ROOT + CONFIGURE_OK + wat.strings(b"REPLACED") + """
(global $seen (mut i32) (i32.const 0))
(func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
  (global.set $seen (local.get 1))
  (if (i32.eqz (local.get 2)) (then (return (i32.const 1))))
  (drop (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (local.get 1) (i32.const 1024) (i32.const 8)))
  (i32.const 0))
(func (export "get_seen") (result i32) (global.get $seen))
""")

# A tick every second counts "wasm_ticks"; a queue "jobs" counts its notifications in "wasm_jobs".
TICKS = wat.plugin(imports("proxy_define_metric", "proxy_increment_metric", "proxy_set_tick_period_milliseconds",
                           "proxy_register_shared_queue") + ROOT + wat.strings(b"wasm_ticks", b"wasm_jobs", b"jobs")
                   + f"""
(func (export "proxy_on_configure") {_P} (result i32)
  (drop (call $proxy_define_metric (i32.const 0) (i32.const 1024) (i32.const 10) (i32.const 2000)))
  (drop (call $proxy_define_metric (i32.const 0) (i32.const 1034) (i32.const 9) (i32.const 2004)))
  (drop (call $proxy_register_shared_queue (i32.const 1043) (i32.const 4) (i32.const 2008)))
  (drop (call $proxy_set_tick_period_milliseconds (i32.const 1000)))
  (i32.const 1))
(func (export "proxy_on_tick") (param i32)
  (drop (call $proxy_increment_metric (i32.load (i32.const 2000)) (i64.const 1))))
(func (export "proxy_on_queue_ready") {_P}
  (drop (call $proxy_increment_metric (i32.load (i32.const 2004)) (i64.const 1))))
""")

CONFIGURE_FALSE = wat.plugin(ROOT + f'(func (export "proxy_on_configure") {_P} (result i32) (i32.const 0))')


def abi_0_1_0(marker: bool) -> bytes:
    """An ABI 0.1.0 plugin (2-parameter header callback, proxy_continue_request): pauses, resumes on tick."""
    return wat.plugin(imports("proxy_add_header_map_value", "proxy_continue_request",
                              "proxy_set_tick_period_milliseconds", "proxy_set_effective_context")
                      + ROOT + wat.strings(b"x-old", b"abi") + f"""
(global $ctx (mut i32) (i32.const 0))
(func (export "proxy_on_configure") {_P} (result i32)
  (drop (call $proxy_set_tick_period_milliseconds (i32.const 10))) (i32.const 1))
(func (export "proxy_on_request_headers") {_P} (result i32)
  (global.set $ctx (local.get 0))
  (drop (call $proxy_add_header_map_value (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 1029)
                                          (i32.const 3)))
  (i32.const 1))
(func (export "proxy_on_tick") (param i32)
  (if (global.get $ctx) (then (drop (call $proxy_set_effective_context (global.get $ctx)))
                              (drop (call $proxy_continue_request)))))
""", marker="proxy_abi_version_0_1_0" if marker else None)

# The response side: adds x-resp to response headers, buffers the response body to its end, adds a request
# trailer; closes the stream when the request has x-close.
RESPONSE = wat.plugin(imports("proxy_add_header_map_value", "proxy_get_header_map_value", "proxy_close_stream")
                      + ROOT + CONFIGURE_OK + wat.strings(b"x-resp", b"1", b"x-close", b"t-wasm") + """
(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
  (if (i32.eqz (call $proxy_get_header_map_value (i32.const 0) (i32.const 1031) (i32.const 7) (i32.const 2000)
                                                 (i32.const 2004)))
    (then (drop (call $proxy_close_stream (i32.const 0)))))
  (i32.const 0))
(func (export "proxy_on_request_trailers") (param i32 i32) (result i32)
  (drop (call $proxy_add_header_map_value (i32.const 1) (i32.const 1038) (i32.const 6) (i32.const 1030)
                                          (i32.const 1)))
  (i32.const 0))
(func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
  (drop (call $proxy_add_header_map_value (i32.const 2) (i32.const 1024) (i32.const 6) (i32.const 1030)
                                          (i32.const 1)))
  (i32.const 0))
(func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
  (if (result i32) (local.get 2) (then (i32.const 0)) (else (i32.const 1))))
""")
