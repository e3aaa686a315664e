"""What a pod, or anyone who reaches one, can make a node's ztunnel spend on connections (issue 18).

A pod's three listeners (15001, 15006, 15008) accept whatever connects: the pod's own app, any client
of the network, any mesh peer. Every accepted connection holds file descriptors (its own and the one
ztunnel opens for it upstream), two tasks and some memory for as long as it is open, so each
resource is bounded here, each bound with its reason (the HTTP/2 and HBONE bounds are ``hbone.limits``'s):

- ``ConnectionBudget``: at most ``max_connections_per_pod`` open connections per served pod, over
  its three listeners and the CONNECT streams of its HBONE connections, and at most
  ``max_connections_per_node`` for all pods together. The pod's bound is below the node's, so one
  pod that is flooded (or floods) cannot take every connection of the node. A connection over a
  bound is closed at once (a TCP reset; a CONNECT over it is answered 503), counted in
  ``ambient_ztunnel_connections_refused_total`` and logged, at most once per ``REFUSAL_LOG_INTERVAL``
  per pod and reason (``RefusalLog``), never once per connection.
- Timeouts: a plaintext inbound connection with no byte either way for ``PLAINTEXT_IDLE_TIMEOUT`` is
  closed; an HBONE connection must complete its TLS handshake and send its first CONNECT within
  ``HBONE_HANDSHAKE_TIMEOUT``. Plaintext has no first-byte timeout: with a server-speaks-first
  protocol (MySQL, SMTP) the client rightly sends nothing until the app has spoken.
- ``raise_fd_limit``: ztunnel raises its soft ``RLIMIT_NOFILE`` to the hard limit at start, as
  Envoy and Istio's ztunnel do, and ``node_connection_cap`` keeps the node's bound within what that
  limit can hold.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("ambient.ztunnel.limits")

# ---------------------------------------------------------------- connections

# Open connections of all pods of one node together. Each holds at most FDS_PER_CONNECTION fds and a
# few tens of KiB of Python objects and buffers, so 20,000 is about 40,000 fds and well under 1 GiB;
# an adversarial run held 8,000 idle connections of one pod and ran into a 20,000-fd limit, the
# node's every other pod with it. A node runs at most 110 pods by default (kubelet's maxPods).
MAX_CONNECTIONS_PER_NODE = 20_000
# Open connections of one served pod (its listeners 15001, 15006 and 15008, and the CONNECT streams
# of its HBONE connections). A fifth of the node's: one pod at its bound (a client flooding it, or
# the pod flooding out) leaves four fifths of the node to the others. 4,000 concurrent connections
# is far beyond what one pod's app serves or opens in normal use (a database's pool, an ingress).
MAX_CONNECTIONS_PER_POD = 4_000
# File descriptors one connection may hold: the accepted one and the one ztunnel opens upstream
# (the app, the destination, a pooled HBONE connection shared by up to 100 of them).
FDS_PER_CONNECTION = 2
# File descriptors kept out of the connection budget: three listeners per pod (at most 110 pods), the
# pooled HBONE connections, discovery, the CA, ZDS, the admin ports, logs and libraries.
RESERVED_FDS = 1_024

# ---------------------------------------------------------------- timeouts

# A plaintext inbound connection that moved no byte either way for this long is closed: Envoy's TCP
# proxy's default idle timeout (1 h), so pooled connections of a quiet app (a database pool without
# keepalives) live on, while connections a client opened and forgot are given back.
PLAINTEXT_IDLE_TIMEOUT = 3600.0
# Seconds an HBONE client has, from the moment its certificate can be checked, to complete the TLS
# handshake and send its first CONNECT. A ztunnel or waypoint opens a connection to send a CONNECT at
# once, and 10 s is ztunnel's connect timeout; without it a peer holds a connection (and its TLS
# state) for ever by answering our PINGs and sending nothing else.
HBONE_HANDSHAKE_TIMEOUT = 10.0
# How often the idle timeout looks at a connection's byte counts: a connection is closed once it
# has been idle for between the timeout and 1 + 1/IDLE_CHECKS times it, at IDLE_CHECKS wake-ups
# per timeout and connection.
IDLE_CHECKS = 4

# ---------------------------------------------------------------- the log of refusals

# One log line per pod and reason at most this often (seconds), with the count refused since the
# last one: a flood of refused connections must not become a flood of log lines (the metric counts
# each one).
REFUSAL_LOG_INTERVAL = 10.0

# Why a connection was refused: the label ``reason`` of ambient_ztunnel_connections_refused_total.
POD_LIMIT = "pod_limit"
NODE_LIMIT = "node_limit"
HANDSHAKE_TIMEOUT = "handshake_timeout"
# A TLS handshake on 15008 that failed (no or a wrong certificate, another trust domain, not TLS at all):
# counted and logged as the other refusals are, so a peer cannot flood the log with failed handshakes.
TLS_HANDSHAKE = "tls_handshake"
# A CONNECT that is not one (no or a bad :authority, a wrong method...), answered 400: a peer holding a
# valid certificate could otherwise send a log line's worth of them in every frame.
MALFORMED_CONNECT = "malformed_connect"
REFUSAL_REASONS = (POD_LIMIT, NODE_LIMIT, HANDSHAKE_TIMEOUT, TLS_HANDSHAKE, MALFORMED_CONNECT)


def check_limits(*, max_connections_per_pod: int, max_connections_per_node: int) -> None:
    """ValueError naming what is wrong, unless both bounds are positive and the pod's is below the node's."""
    for name, value in (("max_connections_per_pod", max_connections_per_pod),
                        ("max_connections_per_node", max_connections_per_node)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if max_connections_per_pod >= max_connections_per_node:
        raise ValueError(f"max_connections_per_pod ({max_connections_per_pod}) must be below "
                         f"max_connections_per_node ({max_connections_per_node}): one pod must not "
                         "take every connection of the node")


@dataclass
class ConnectionBudget:
    """Open connections by pod, against the per-pod and per-node bounds. Not thread-safe: the
    executor's tasks use it from one trio loop."""

    per_pod: int
    per_node: int
    _open: dict[str, int] = field(default_factory=dict)
    _total: int = 0

    def __post_init__(self) -> None:
        check_limits(max_connections_per_pod=self.per_pod, max_connections_per_node=self.per_node)

    def acquire(self, pod: str) -> str | None:
        """Count one more connection of ``pod``; or, over a bound, count nothing and return why
        (``POD_LIMIT`` or ``NODE_LIMIT``)."""
        held = self._open.get(pod, 0)
        if held >= self.per_pod:
            return POD_LIMIT
        if self._total >= self.per_node:
            return NODE_LIMIT
        self._open[pod] = held + 1
        self._total += 1
        return None

    def release(self, pod: str) -> None:
        """One connection ``acquire`` counted for ``pod`` has ended."""
        held = self._open[pod] - 1
        if held:
            self._open[pod] = held
        else:
            del self._open[pod]
        self._total -= 1

    def held(self, pod: str | None = None) -> int:
        """Open connections of ``pod``, or of every pod."""
        return self._total if pod is None else self._open.get(pod, 0)


class RefusalLog:
    """Logs refused connections, at most once per ``interval`` per (pod, reason), each line with the
    number refused since the previous one."""

    def __init__(self, clock: Callable[[], float], interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._last: dict[tuple[str, str], float] = {}
        self._since: dict[tuple[str, str], int] = {}

    def refused(self, pod: str, reason: str, detail: str) -> bool:
        """One connection of ``pod`` refused for ``reason`` (``detail`` says more); whether a line was logged."""
        key = (pod, reason)
        count = self._since.get(key, 0) + 1
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._since[key] = count
            return False
        self._last[key] = now
        self._since.pop(key, None)
        log.warning("pod %s: %d connection(s) refused (%s) since the last such line: %s", pod, count, reason, detail)
        return True

    def forget(self, pod: str) -> None:
        """``pod`` is no longer served: drop what was kept for it."""
        for key in [key for key in self._last if key[0] == pod]:
            self._last.pop(key, None)
            self._since.pop(key, None)


# ---------------------------------------------------------------- file descriptors


def raise_fd_limit(getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
                   setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (as Envoy and Istio's ztunnel do: the
    default soft limit, often 1,024, is a few hundred connections) and return the soft limit in force."""
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the file descriptor limit from %d to %d: %s", soft, hard, exc)
            return soft
        log.info("file descriptor limit raised from %d to %d", soft, hard)
        return hard
    log.info("file descriptor limit: %s", "unlimited" if soft == resource.RLIM_INFINITY else soft)
    return soft


def node_connection_cap(fd_limit: int, wanted: int = MAX_CONNECTIONS_PER_NODE) -> int:
    """The node's connection bound: ``wanted``, or fewer if ``fd_limit`` file descriptors cannot hold
    that many connections beside ``RESERVED_FDS`` (never below 2: the pod's bound must fit under it)."""
    if fd_limit == resource.RLIM_INFINITY or fd_limit < 0:
        return wanted
    return max(2, min(wanted, (fd_limit - RESERVED_FDS) // FDS_PER_CONNECTION))


def pod_connection_cap(node_cap: int, wanted: int = MAX_CONNECTIONS_PER_POD) -> int:
    """The pod's bound under ``node_cap``: ``wanted``, or less, so that it stays below the node's
    (at most half of it)."""
    return max(1, min(wanted, node_cap // 2))
