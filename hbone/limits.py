"""Every bound HBONE puts on a peer, in one place: ztunnel and the waypoint share them through this package.

Each bound is a resource a peer could otherwise make us spend without limit (memory, CPU, file
descriptors, dials to an application). Each constant says why it has its value and which attack it
stops; over a bound the connection ends with GOAWAY(ENHANCE_YOUR_CALM) (RFC 9113 section 5.4.1) unless
it says otherwise. The protocol's own numbers (the 65,535-byte default window, the 2^31-1 maximum)
are ``hbone.http2``'s, not limits.
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB

# ---------------------------------------------------------------- what we advertise (SETTINGS)

# DESIGN.md section 6: at most 100 streams per connection (as Istio's ztunnel). A stream over what we
# advertised is refused (RST_STREAM REFUSED_STREAM, RFC 9113 section 5.1.2) and spends a premature reset
# (MAX_PREMATURE_RESETS); our own pool opens another connection beyond it.
MAX_CONCURRENT_STREAMS = 100
# Per-stream receive window (DESIGN.md section 6): a slow reader holds at most this much per stream
# before its sender stops; large enough that one stream fills a fast link.
STREAM_WINDOW = 4 * MiB
# Per-connection receive window: what all streams of a connection together may have unread with us.
CONNECTION_WINDOW = 16 * MiB
# Larger frames than the 16 KiB default: fewer frames, so fewer Python calls per byte.
MAX_FRAME_SIZE = 1 * MiB
# HBONE's request carries four short headers; 64 KiB bounds what one header block may make us decode
# and hold (HPACK bombs, huge headers).
MAX_HEADER_LIST_SIZE = 64 * KiB
# The header block bound when a connection advertises no MAX_HEADER_LIST_SIZE (hbone.http2 used on
# its own): still bounded, so that no header block grows without end.
DEFAULT_MAX_HEADER_BLOCK = 1 * MiB

# ---------------------------------------------------------------- hostile peers (issue 18)

# CONTINUATION frames after one HEADERS before END_HEADERS. A header list of MAX_HEADER_LIST_SIZE in
# frames of the 16 KiB default takes 4 frames; 16 leaves room for a peer that splits finer (nghttp2
# allows 8). Stops the 2024 CONTINUATION flood (VU#421644): empty CONTINUATION frames never reach the
# size bound, and each used to cost work proportional to the block so far.
MAX_CONTINUATION_FRAMES = 16
# Control frames a peer made us queue (PING and SETTINGS ACKs, RST_STREAM) that have not been taken
# by ``data_to_send`` yet: a driver takes them only while the socket takes them, so this bounds what a
# peer that does not read can make us hold. A legitimate peer provokes a few per stream, and at most
# MAX_CONCURRENT_STREAMS streams are open; nghttp2 allows 1000 too. Stops the PING flood
# (CVE-2019-9512), the SETTINGS flood (CVE-2019-9515) and the reset flood (CVE-2019-9514).
MAX_PENDING_CONTROL_FRAMES = 1000
# Output the driver has handed to its transport and the socket has not taken, above which the reader
# stops reading until the writer has sent it (backpressure on a peer that sends and does not read).
# Above what a legitimate connection queues: DATA never exceeds the window the peer granted (16 MiB from
# our own peers) and senders wait at HIGH_WATER, so two proxies sending hard to each other never both
# stop reading and wait on each other.
MAX_QUEUED_OUTPUT_BYTES = 2 * CONNECTION_WINDOW
# Streams the peer opened and reset before we answered them, net of those we answered: each premature
# reset spends one, each answer earns one back, up to this many. A client may give up on every CONNECT
# it has pending (MAX_CONCURRENT_STREAMS) at once, twice over. Stops "rapid reset" (CVE-2023-44487):
# a stream opened and reset at once cost us a dial per stream while counting for no concurrency limit.
MAX_PREMATURE_RESETS = 2 * MAX_CONCURRENT_STREAMS
# Entries in one SETTINGS frame. Seven settings are defined and a peer has no reason to repeat one;
# nghttp2 allows 32. Without it a 1 MiB SETTINGS frame is 174,762 entries, each applied to every stream.
MAX_SETTINGS_ENTRIES = 32
# Frames that carry nothing (DATA without payload or END_STREAM, HEADERS and CONTINUATION with an
# empty fragment and no flag that ends something) in one ``receive_bytes``. Legitimate peers send none;
# a 256 KiB read of them is 29,000 frames of work for nothing (CVE-2019-9518).
MAX_EMPTY_FRAMES_PER_READ = 100

# ---------------------------------------------------------------- timeouts

# A PING every 10 s (DESIGN.md section 6): a dead peer is noticed without any traffic of ours.
PING_INTERVAL = 10.0
# A PING unanswered for 20 s ends the connection (DESIGN.md section 6). It also ends a peer that
# stopped reading (our PING never reaches it), while the reader waits for the writer.
PING_TIMEOUT = 20.0
# A pooled client connection without streams for this long is closed (DESIGN.md section 6).
IDLE_TIMEOUT = 300.0
# An accepted connection without streams for this long is closed (GOAWAY): a peer that opened a
# connection and its streams, then left it, holds nothing of ours for ever. Twice the clients' own
# idle timeout, so a client of ours closes its idle connection first and never races our GOAWAY.
SERVER_IDLE_TIMEOUT = 2 * IDLE_TIMEOUT
# Seconds to send a final GOAWAY on a closing connection: a peer that does not read cannot hold it open.
CLOSE_GRACE = 1.0

# ---------------------------------------------------------------- the driver's buffers

# Bytes read from the transport at once: one TLS record's worth many times over, few wake-ups.
READ_SIZE = 256 * KiB
# DATA bytes queued for the writer before a sender waits: bounds what our own apps queue per
# connection when the peer reads slowly.
HIGH_WATER = 512 * KiB
