;; A plugin of Proxy-Wasm ABI 0.1.0 (proxy-wasm/spec abi-versions/v0.1.0), hand-written: the marker
;; proxy_abi_version_0_1_0, the start-up entry `_initialize`, memory for the host's answers from
;; proxy_on_memory_allocate (no malloc), and the 0.1.0 callback arities, which differ from 0.2.x in the
;; header and trailer callbacks: proxy_on_request_headers(context_id, num_headers) and
;; proxy_on_response_headers(context_id, num_headers), without end_of_stream. The configuration is read
;; with the 0.1.0 host function proxy_get_configuration(return_data, return_size) (0.2.x reads it as the
;; PluginConfiguration buffer).
;;
;; Behaviour:
;; - proxy_on_configure reads the configuration; it fails (returns 0) unless the call answers OK with
;;   exactly plugin_configuration_size bytes.
;; - proxy_on_request_headers adds the request header `x-abi-version: 0.1.0` (map 0);
;;   proxy_on_response_headers adds the response header `x-plugin-config: <the configuration's bytes>`
;;   (map 2); a non-OK status traps.
;; - proxy_on_request_body (3 parameters in both versions) and proxy_on_request_trailers answer Continue.
(module
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_configuration" (func $get_configuration (param i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (global $config_ptr (mut i32) (i32.const 0))
  (global $config_len (mut i32) (i32.const 0))

  (data (i32.const 1024) "x-abi-version")    ;; 13 bytes
  (data (i32.const 1040) "0.1.0")            ;; 5 bytes
  (data (i32.const 1056) "x-plugin-config")  ;; 15 bytes
  ;; 2048: the configuration's pointer; 2052: its size (proxy_get_configuration's out-parameters).

  (func (export "_initialize"))

  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32) (local $have i32)
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.and (i32.add (i32.add (local.get $ptr) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (if (i32.lt_u (local.get $end) (local.get $ptr)) (then (return (i32.const 0))))
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                                      (i32.const 16)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  (func (export "proxy_abi_version_0_1_0"))

  (func (export "proxy_on_context_create") (param $context_id i32) (param $parent_context_id i32))

  (func (export "proxy_on_vm_start") (param $root_context_id i32) (param $vm_configuration_size i32) (result i32)
    (i32.const 1))

  (func (export "proxy_on_configure") (param $root_context_id i32) (param $plugin_configuration_size i32) (result i32)
    (if (i32.eqz (local.get $plugin_configuration_size))
      (then (global.set $config_len (i32.const 0)) (return (i32.const 1))))
    (i32.store (i32.const 2048) (i32.const 0))
    (i32.store (i32.const 2052) (i32.const 0))
    (if (call $get_configuration (i32.const 2048) (i32.const 2052)) (then (return (i32.const 0))))
    (if (i32.ne (i32.load (i32.const 2052)) (local.get $plugin_configuration_size)) (then (return (i32.const 0))))
    (global.set $config_ptr (i32.load (i32.const 2048)))
    (global.set $config_len (i32.load (i32.const 2052)))
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param $context_id i32) (param $num_headers i32) (result i32)
    (if (call $add_header (i32.const 0) (i32.const 1024) (i32.const 13) (i32.const 1040) (i32.const 5))
      (then unreachable))
    (i32.const 0))

  (func (export "proxy_on_request_body") (param $context_id i32) (param $body_size i32) (param $end_of_stream i32) (result i32)
    (i32.const 0))

  (func (export "proxy_on_request_trailers") (param $context_id i32) (param $num_trailers i32) (result i32)
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param $context_id i32) (param $num_headers i32) (result i32)
    (if (call $add_header (i32.const 2) (i32.const 1056) (i32.const 15) (global.get $config_ptr) (global.get $config_len))
      (then unreachable))
    (i32.const 0))

  (func (export "proxy_on_done") (param $context_id i32) (result i32)
    (i32.const 1))

  (func (export "proxy_on_log") (param $context_id i32))

  (func (export "proxy_on_delete") (param $context_id i32)))
