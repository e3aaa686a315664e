"""Every bound the waypoint puts on what a peer can make it spend, in one place.

The HBONE layer under the waypoint has its own (``hbone.limits``: streams per connection, windows,
header blocks, resets); these are the bounds of the HTTP inside each tunnel, and of the upstreams.
Where Envoy (Istio's waypoint) has a default for the same thing, the value follows it and the
comment says so.
"""

from __future__ import annotations

# ---------------------------------------------------------------- tunnels

# HBONE connections open at once, from every source together; past it a new one is closed at once.
# Each carries up to hbone.limits.MAX_CONCURRENT_STREAMS tunnels.
MAX_CONNECTIONS = 10_000
# From one peer address (a source pod: source ztunnels pool per pod, a new connection per 100
# streams): enough for ztunnel's own per-pod bound of 4,000 connections, so that one pod cannot
# take every connection the waypoint holds.
MAX_CONNECTIONS_PER_PEER = 64
# Tunnels (CONNECT streams) open at once, and from one peer address; past either a CONNECT gets 503.
MAX_TUNNELS = 20_000
MAX_TUNNELS_PER_PEER = 4_000

# ---------------------------------------------------------------- downstream HTTP

# A request head (request line and headers) larger than this gets 431 (HTTP/1.1); in HTTP/2 it is our
# SETTINGS_MAX_HEADER_LIST_SIZE, and a header block past it ends the connection (GOAWAY
# ENHANCE_YOUR_CALM: h2 stops decoding midway, so HPACK state is lost). Envoy's
# max_request_headers_kb defaults to 60 KiB.
MAX_REQUEST_HEAD_BYTES = 60 * 1024
# Headers in one request head; Envoy's max_headers_count default is 100.
MAX_REQUEST_HEADERS = 100
# The whole head must arrive within this many seconds of its first byte (or of the previous
# response on a keep-alive connection): a slow client (slowloris) holds a tunnel, never a worker.
HEADER_READ_TIMEOUT = 10.0
# A keep-alive HTTP/1.1 connection or an HTTP/2 connection with no open request closes after this.
# Envoy's idle_timeout for HTTP connections defaults to 1 h; ours is shorter because each idle tunnel
# holds a source ztunnel's stream: 5 min, as HBONE's own pool keeps idle connections.
IDLE_TIMEOUT = 300.0
# How long protocol detection waits for the client's first bytes before it treats the tunnel as
# opaque TCP (a server-first protocol, e.g. MySQL, sends nothing first). Istio's
# protocolDetectionTimeout was 100 ms before it was disabled by default; a port whose appProtocol (or
# name prefix) says the protocol skips detection altogether.
DETECTION_TIMEOUT = 5.0
# HTTP/2 towards the client: streams at once per connection (Envoy: 100 by default for upstreams,
# 2^31 downstream; we keep the HBONE figure), and resets the client may cause per second before the
# connection is closed (CVE-2023-44487, "rapid reset").
MAX_CONCURRENT_STREAMS = 100
MAX_RESETS_PER_SECOND = 100
# HTTP/2 flow-control windows we advertise: what one stream, and a whole connection, may have in flight
# towards us before we read it; the memory a slow upstream lets a fast client pin is bounded by these.
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 4 * 1024 * 1024
MAX_FRAME_SIZE = 16 * 1024

# ---------------------------------------------------------------- upstream HTTP

# A response head from an endpoint, and its headers: past either the answer is taken as a reset of the
# upstream (503, flag UC; nothing of it reaches the client). Envoy's max_response_headers_kb and
# max_headers_count default to the request side's 60 KiB and 100.
MAX_RESPONSE_HEAD_BYTES = 60 * 1024
MAX_RESPONSE_HEADERS = 100

# ---------------------------------------------------------------- bodies

# A request body up to this size (by Content-Length) is read whole before it is sent, so that a
# retry or a mirror can send it again; a larger or chunked body streams and is not retried.
# Envoy's per_request_buffer_limit for retries is 16 KiB by default; gRPC unary calls are usually larger.
RETRY_BUFFER_BYTES = 64 * 1024
# Bytes read from one side per receive.
READ_CHUNK = 64 * 1024

# ---------------------------------------------------------------- upstreams

# Seconds to open a tunnel to an endpoint (TCP, TLS, CONNECT answered); Envoy's connect_timeout in
# Istio is 10 s.
CONNECT_TIMEOUT = 10.0
# Idle keep-alive HTTP/1.1 connections kept per endpoint for reuse.
MAX_IDLE_PER_ENDPOINT = 32
# Requests at once on one upstream HTTP/2 connection before another is opened.
UPSTREAM_STREAMS_PER_CONNECTION = 100

# ---------------------------------------------------------------- local replies

# A body we answer ourselves (403, 404, 503...) is at most this long: it never echoes request content.
MAX_LOCAL_REPLY_BYTES = 1024

# ---------------------------------------------------------------- access log

# Access log lines are buffered and written in one write per interval, or at once when this many bytes
# wait (waypoint.access_log). Envoy's file access log flushes at 64 KiB (AccessLogFileImpl's
# MIN_FLUSH_SIZE) and every --file-flush-interval-msec, 10 s by default, which Istio's pilot-agent
# starts its proxies with at 1000 ms: we take Istio's 1 s, so a line is at most a second late.
ACCESS_LOG_BUFFER_BYTES = 64 * 1024
ACCESS_LOG_FLUSH_INTERVAL = 1.0

# ---- wasm (the Proxy-Wasm host, waypoint.wasm: what one plugin may make the waypoint spend)

# Fuel (about one unit per wasm instruction) given to the guest before every callback into it: an
# endless loop ends in an out-of-fuel trap after roughly this many instructions (some 10-50 ms), the
# request fails as the plugin's failStrategy says and the VM is rebuilt. Envoy puts no bound here;
# a waypoint in Python cannot let one request hold its only thread.
WASM_CALLBACK_FUEL = 20_000_000
# Fuel for start-up (_initialize/_start, proxy_on_vm_start, proxy_on_configure): SDK runtimes
# (TinyGo's GC set-up, a JSON configuration parse) do more work once than per request.
WASM_START_FUEL = 500_000_000
# Linear memory one VM may hold; memory.grow past it answers -1 (the guest's allocator then traps).
WASM_MEMORY_LIMIT_BYTES = 64 * 1024 * 1024
# Compiled modules kept (by the sha256 of their bytes), so a VM rebuilt or a plugin re-applied does not
# compile again; the least recently used goes first.
WASM_MODULE_CACHE_ENTRIES = 16
# A trapped VM is rebuilt at most this many times a minute; past it the plugin's streams fail at once
# (as failStrategy says) until the minute is over, so a plugin that traps on every request cannot make
# the waypoint compile and start it on every request.
WASM_REBUILDS_PER_MINUTE = 10
# A stream paused by the plugin (a callback answered Pause) waits at most this long for
# proxy_continue_* or a local reply, then fails (Envoy has no bound but the route timeout, 15 s in Istio).
WASM_PAUSE_TIMEOUT = 15.0
# Body bytes held while a plugin answers StopIterationAndBuffer; past it a request gets 413 and a
# response 500, as Envoy's buffer limit does (per_connection_buffer_limit_bytes, 1 MiB by default).
WASM_BODY_BUFFER_BYTES = 1024 * 1024
# Bytes of one proxy_log message or one fd_write call that reach the log (the rest is dropped, counted
# as written, so the guest does not retry).
WASM_LOG_BYTES = 4096
# Pairs in a header map a plugin hands the host (set_header_map_pairs, send_local_response, http_call);
# the serialized map itself is bounded by the request-head limit above.
WASM_MAX_MAP_PAIRS = MAX_REQUEST_HEADERS
WASM_MAX_MAP_BYTES = MAX_REQUEST_HEAD_BYTES
# One key, value or property path a plugin hands the host, in bytes (other than maps and bodies).
WASM_MAX_ARGUMENT_BYTES = 64 * 1024
# Bytes random_get fills per call (the WASI libc asks 256 at a time for its seed).
WASM_RANDOM_BYTES = 64 * 1024
# Process-wide shared data (proxy_set_shared_data): keys, and bytes of keys and values together.
WASM_SHARED_DATA_ENTRIES = 10_000
WASM_SHARED_DATA_BYTES = 16 * 1024 * 1024
# Shared queues: how many (all VMs together), and items waiting in one (enqueue past it: INTERNAL_FAILURE).
WASM_SHARED_QUEUES = 1_000
WASM_QUEUE_DEPTH = 10_000
# Metrics one plugin may define (proxy_define_metric past it: INTERNAL_FAILURE).
WASM_METRICS_PER_PLUGIN = 1_000
# http_call requests of one plugin in flight at once (past it: INTERNAL_FAILURE), and the longest
# timeout a plugin may ask for one (Envoy's default for an async client is none; ours is the pause bound).
WASM_HTTP_CALLS_IN_FLIGHT = 1_000
WASM_HTTP_CALL_MAX_TIMEOUT = WASM_PAUSE_TIMEOUT

# ---- wasm: modules, loading, a plugin's own calls (waypoint.wasm_fetch, wasm_manager, dispatch)

# The largest module accepted, from a file or over HTTP (TinyGo and Rust plugins are a few MiB).
WASM_MODULE_MAX_BYTES = 32 * 1024 * 1024
# A whole HTTP fetch of a module (connect, request, every byte of the answer).
WASM_FETCH_TIMEOUT = 30.0
# Fetched modules kept by sha256, so a re-applied WasmPlugin is not fetched again (the compiled form has
# its own cache, WASM_MODULE_CACHE_ENTRIES); the least recently used goes first.
WASM_FETCHED_MODULES = 16
# How long a plugin that failed to load waits before it is tried again (Istio's agent retries a failed
# fetch with backoff; a change of the WasmPlugin retries at once).
WASM_LOAD_RETRY_INTERVAL = 30.0
# The body of an http_call's answer kept for the plugin; past it the call fails (Envoy buffers the whole
# answer too, up to its cluster's buffer limit).
WASM_HTTP_CALL_MAX_BYTES = 1024 * 1024
# A call's bound when the plugin gives none (0); Envoy requires one, the SDKs always pass one.
WASM_HTTP_CALL_DEFAULT_TIMEOUT = 5.0
