;; The import/export shape of a Go plugin built with TinyGo (proxy-wasm-go-sdk), hand-written: WASI imported
;; under both module names (TinyGo before 0.23 wrote `wasi_unstable`, later `wasi_snapshot_preview1`), the
;; start-up entry `_start`, memory for the host's answers from `malloc` (no proxy_on_memory_allocate), and the
;; ABI 0.2.1 marker.
;;
;; Behaviour, so that host tests can see each piece work:
;; - `_start` writes "tinygo-shape: started\n" to stdout through wasi_unstable.fd_write, fills 8 bytes with
;;   wasi_snapshot_preview1.random_get and reads the realtime clock; any non-zero errno traps (`unreachable`).
;; - proxy_on_configure writes "tinygo-shape: configured\n" through wasi_snapshot_preview1.fd_write and logs
;;   "tinygo-shape: configure" with proxy_log (level 2, info); a failing call fails the configure (returns 0).
;; - proxy_on_request_headers traps unless `_start` ran, then adds the request header `x-wat-shape: tinygo`
;;   with proxy_add_header_map_value (map 0); a non-OK status traps.
;; - `malloc` is a bump allocator from 64 KiB up, growing the memory as needed; 0 when it cannot.
(module
  (import "wasi_unstable" "fd_write" (func $fd_write_unstable (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 2)
  ;; The first free byte for malloc: everything below 64 KiB is this module's own data.
  (global $heap (mut i32) (i32.const 65536))
  (global $started (mut i32) (i32.const 0))

  (data (i32.const 1024) "x-wat-shape")                 ;; 11 bytes
  (data (i32.const 1040) "tinygo")                      ;; 6 bytes
  (data (i32.const 1056) "tinygo-shape: started\n")     ;; 22 bytes
  (data (i32.const 1088) "tinygo-shape: configured\n")  ;; 25 bytes
  (data (i32.const 1120) "tinygo-shape: configure")     ;; 23 bytes
  ;; 2048: one iovec (pointer, length); 2056: bytes written; 2064: 8 random bytes; 2072: the time.

  (func $write (param $fd_write_unstable i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 2048) (local.get $ptr))
    (i32.store (i32.const 2052) (local.get $len))
    (if (result i32) (local.get $fd_write_unstable)
      (then (call $fd_write_unstable (i32.const 1) (i32.const 2048) (i32.const 1) (i32.const 2056)))
      (else (call $fd_write (i32.const 1) (i32.const 2048) (i32.const 1) (i32.const 2056)))))

  (func (export "_start")
    (if (call $write (i32.const 1) (i32.const 1056) (i32.const 22)) (then unreachable))
    (if (call $random_get (i32.const 2064) (i32.const 8)) (then unreachable))
    (if (call $clock_time_get (i32.const 0) (i64.const 1000) (i32.const 2072)) (then unreachable))
    (global.set $started (i32.const 1)))

  (func (export "malloc") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32) (local $have i32)
    (local.set $ptr (global.get $heap))
    ;; The end, rounded up to 8 bytes; a size that wraps around the address space is refused.
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

  (func (export "proxy_abi_version_0_2_1"))

  (func (export "proxy_on_context_create") (param $context_id i32) (param $parent_context_id i32))

  (func (export "proxy_on_vm_start") (param $root_context_id i32) (param $vm_configuration_size i32) (result i32)
    (i32.const 1))

  (func (export "proxy_on_configure") (param $root_context_id i32) (param $plugin_configuration_size i32) (result i32)
    (if (call $write (i32.const 0) (i32.const 1088) (i32.const 25)) (then (return (i32.const 0))))
    (if (call $proxy_log (i32.const 2) (i32.const 1120) (i32.const 23)) (then (return (i32.const 0))))
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param $context_id i32) (param $num_headers i32) (param $end_of_stream i32) (result i32)
    (if (i32.eqz (global.get $started)) (then unreachable))
    (if (call $add_header (i32.const 0) (i32.const 1024) (i32.const 11) (i32.const 1040) (i32.const 6))
      (then unreachable))
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param $context_id i32) (param $num_headers i32) (param $end_of_stream i32) (result i32)
    (i32.const 0))

  (func (export "proxy_on_done") (param $context_id i32) (result i32)
    (i32.const 1))

  (func (export "proxy_on_log") (param $context_id i32))

  (func (export "proxy_on_delete") (param $context_id i32)))
