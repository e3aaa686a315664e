;; The import/export shape of a C++ plugin built with emscripten (proxy-wasm-cpp-sdk), hand-written: the
;; start-up entry `_initialize` (a WASI reactor), memory for the host's answers from `malloc`, the ABI 0.2.0
;; marker, WASI imported from `wasi_snapshot_preview1` only, and one import no Proxy-Wasm host provides,
;; `env.emscripten_notify_memory_growth` (emscripten's runtime calls it when memory grows; this module imports
;; it and never calls it, so a host that links unknown imports to stubs loads it and one that does not, fails).
;;
;; Behaviour:
;; - `_initialize` asks environ_sizes_get and args_sizes_get (their counts are not checked: a host may pass
;;   vmConfig.env), seeks fd 0 with fd_seek and reads fd_fdstat_get of fd 1, and closes nothing; a non-zero
;;   errno from the sizes calls traps. fd_seek and fd_fdstat_get may fail (their answers are not checked).
;; - proxy_on_request_headers traps unless `_initialize` ran, then adds the request header
;;   `x-wat-shape: emscripten` (map 0); a non-OK status traps.
;; - `malloc`: a bump allocator from 64 KiB up, growing the memory as needed; 0 when it cannot.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $fd_seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fd_fdstat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "env" "emscripten_notify_memory_growth" (func $notify_memory_growth (param i32)))
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (global $initialized (mut i32) (i32.const 0))

  (data (i32.const 1024) "x-wat-shape")   ;; 11 bytes
  (data (i32.const 1040) "emscripten")    ;; 10 bytes
  ;; 2048, 2052: environ count and size; 2056, 2060: args count and size; 2064: fd_seek's new offset (8
  ;; bytes); 2072: fd_fdstat_get's 24-byte fdstat.

  (func (export "_initialize")
    (if (call $environ_sizes_get (i32.const 2048) (i32.const 2052)) (then unreachable))
    (if (call $args_sizes_get (i32.const 2056) (i32.const 2060)) (then unreachable))
    (drop (call $fd_seek (i32.const 0) (i64.const 0) (i32.const 1) (i32.const 2064)))
    (drop (call $fd_fdstat_get (i32.const 1) (i32.const 2072)))
    (global.set $initialized (i32.const 1)))

  (func (export "malloc") (param $size i32) (result i32)
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

  (func (export "free") (param $ptr i32))

  (func (export "proxy_abi_version_0_2_0"))

  (func (export "proxy_on_context_create") (param $context_id i32) (param $parent_context_id i32))

  (func (export "proxy_on_vm_start") (param $root_context_id i32) (param $vm_configuration_size i32) (result i32)
    (i32.const 1))

  (func (export "proxy_on_configure") (param $root_context_id i32) (param $plugin_configuration_size i32) (result i32)
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param $context_id i32) (param $num_headers i32) (param $end_of_stream i32) (result i32)
    (if (i32.eqz (global.get $initialized)) (then unreachable))
    (if (call $add_header (i32.const 0) (i32.const 1024) (i32.const 11) (i32.const 1040) (i32.const 10))
      (then unreachable))
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param $context_id i32) (param $num_headers i32) (param $end_of_stream i32) (result i32)
    (i32.const 0))

  (func (export "proxy_on_done") (param $context_id i32) (result i32)
    (i32.const 1))

  (func (export "proxy_on_log") (param $context_id i32))

  (func (export "proxy_on_delete") (param $context_id i32)))
