"""Delta xDS over gRPC: ``AggregatedDiscoveryService/DeltaAggregatedResources`` on grpcio's sync server.

``discovery_handler`` returns a ``grpc.GenericRpcHandler`` to serve beside the CA on its TLS port
(``CaServer(..., extra_handlers=(handler,))``). Each stream is a thin driver around a sans-IO
``controlplane.xds.protocol.DeltaStream``:

- The gRPC handler thread authenticates the bearer token, then loops on one queue (its ``_Inbox``)
  and yields the responses the protocol core returns.
- A reader thread per stream pulls the request iterator (grpcio offers only a blocking ``next``)
  and puts raw request bytes into the inbox, a bounded number at a time; requests are registered
  as raw bytes and decoded in the handler, so that garbage ends the stream with INVALID_ARGUMENT
  and a clear message.
- The ``Publisher`` wakes the stream through a callback that puts one "snapshot changed" token in
  the inbox, coalesced: however many snapshots were published while the stream was busy, it reads
  ``publisher.current()`` once and sends the newest state, never a backlog.
- When the RPC ends (client gone, server stopping) the reader's ``next`` fails and it says so; the
  RPC's termination callback puts a token as well, and so does ``publisher.close()``: a stream
  ends promptly, never blocked in a wait nobody will satisfy. A client that half-closes its side
  ends the stream too (xDS clients never do, except to leave).
  ``DiscoveryHandler.wait_closed`` lets shutdown wait until every stream thread has returned.

Each stream holds a thread of the server's pool for its lifetime, plus its reader thread: size the
pool for the number of dataplane clients plus the unary traffic (the CA's ``workers``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter, Gauge

from ca.tokens import NodeCaller, parse_bearer, parse_peer
from controlplane.xds.protocol import (
    DEFAULT_TYPE_URLS,
    Acked,
    DeltaStream,
    Nacked,
    ProtocolError,
    Subscribed,
    UnknownNonce,
    UnknownType,
)
from controlplane.xds.snapshot import Publisher
from mesh.api.types import METHOD_NAME, SERVICE_NAME

log = logging.getLogger("ambient.xds")

Authenticate = Callable[[str], object | None]  # token → caller (printable), or None if unknown
MAX_QUEUED_REQUESTS = 16  # per stream, received but not yet handled


class DiscoveryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.streams = Gauge("ambient_xds_streams", "Open discovery streams", registry=registry)
        self.responses = Counter(
            "ambient_xds_responses", "DeltaDiscoveryResponses sent, by type URL", ["type_url"], registry=registry,
        )
        self.resources_sent = Counter(
            "ambient_xds_resources_sent", "Resources sent (added or updated), by type URL", ["type_url"],
            registry=registry,
        )
        self.resources_removed = Counter(
            "ambient_xds_resources_removed", "Names sent in removed_resources, by type URL", ["type_url"],
            registry=registry,
        )
        self.nacks = Counter("ambient_xds_nacks", "Responses rejected by clients, by type URL", ["type_url"],
                             registry=registry)
        self.rejected = Counter(
            "ambient_xds_streams_rejected", "Streams ended by the server, by reason", ["reason"], registry=registry,
        )


# Inbox tokens besides raw request bytes.
_SNAPSHOT = "snapshot changed"
_TERMINATED = "rpc terminated"
_CLIENT_DONE = "client closed its side"
_SHUTDOWN = "server shutting down"
WILDCARD_LABEL = "* (all)"


class _ReadFailed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class DiscoveryHandler(grpc.GenericRpcHandler):
    """Serves DeltaAggregatedResources; also tells when every stream thread has finished."""

    def __init__(self, service: _DiscoveryService) -> None:
        self._service = service
        method: grpc.RpcMethodHandler[bytes, discovery_pb2.DeltaDiscoveryResponse] = (
            grpc.stream_stream_rpc_method_handler(
                service.stream,
                request_deserializer=None,  # raw bytes: decoded in the handler with a clear error
                response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
            )
        )
        self._methods = grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD_NAME: method})

    def service(self, handler_call_details):
        return self._methods.service(handler_call_details)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until no stream's handler or reader thread runs any more (after the gRPC server
        stopped or ``publisher.close()``), or ``timeout`` passes; True if they all finished."""
        return self._service.threads.wait_idle(timeout)


def discovery_handler(
    publisher: Publisher,
    authenticate: Authenticate,
    *,
    registry: CollectorRegistry | None = None,
    type_urls: Iterable[str] = DEFAULT_TYPE_URLS,
) -> DiscoveryHandler:
    """The DeltaAggregatedResources handler serving ``publisher``'s snapshots to callers that
    ``authenticate`` accepts (``TokenStore.authenticate``). ``registry`` gets ``ambient_xds_*``
    metrics (a private registry if None)."""
    metrics = DiscoveryMetrics(registry or CollectorRegistry())
    return DiscoveryHandler(_DiscoveryService(publisher, authenticate, metrics, frozenset(type_urls)))


class _ThreadCount:
    """Stream threads (handlers and readers) still running, so that shutdown can wait for them."""

    def __init__(self) -> None:
        self._running = 0
        self._changed = threading.Condition()

    def enter(self) -> None:
        with self._changed:
            self._running += 1

    def leave(self) -> None:
        with self._changed:
            self._running -= 1
            self._changed.notify_all()

    def wait_idle(self, timeout: float | None) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._running == 0, timeout)


def _bearer_token(context: grpc.ServicerContext) -> str | None:
    values = [v for k, v in context.invocation_metadata() if k == "authorization"]
    # Only keys ending in -bin carry bytes.
    return parse_bearer(values[0]) if len(values) == 1 and isinstance(values[0], str) else None


def _decode(raw: bytes) -> discovery_pb2.DeltaDiscoveryRequest:
    try:
        return discovery_pb2.DeltaDiscoveryRequest.FromString(raw)
    except DecodeError as exc:
        raise ProtocolError(f"request is not a DeltaDiscoveryRequest: {exc}") from None


class _Inbox:
    """Everything a stream's handler thread waits for, in one queue: raw requests from the reader
    thread, "snapshot changed" from the publisher, and the end of the RPC.

    At most one snapshot token waits at a time (the handler reads the newest snapshot anyway), and
    at most ``MAX_QUEUED_REQUESTS`` requests: a client that sends faster than we answer is slowed
    down by gRPC flow control instead of growing this queue."""

    def __init__(self) -> None:
        self._items: queue.Queue = queue.Queue()
        self._snapshot_pending = threading.Event()
        self._request_slots = threading.Semaphore(MAX_QUEUED_REQUESTS)

    def put_request(self, raw: bytes) -> None:
        self._request_slots.acquire()
        self._items.put(raw)

    def put(self, token: object) -> None:
        self._items.put(token)

    def wake(self) -> None:
        """The publisher's callback: quick and never blocking."""
        if not self._snapshot_pending.is_set():
            self._snapshot_pending.set()
            self._items.put(_SNAPSHOT)

    def get(self) -> object:
        item = self._items.get()
        if isinstance(item, bytes):
            self._request_slots.release()
        elif item is _SNAPSHOT:
            # Cleared before the snapshot is read: a publish after this point queues a new token.
            self._snapshot_pending.clear()
        return item

    def close(self) -> None:
        # A reader blocked for a slot gets one, finds the RPC over and ends.
        self._request_slots.release()


def _read_requests(requests: Iterator[bytes], inbox: _Inbox, threads: _ThreadCount) -> None:
    """The reader thread: forward every request until the client half-closes or the RPC ends."""
    try:
        for raw in requests:
            inbox.put_request(raw)
    except Exception as exc:  # grpc.RpcError when the RPC is cancelled: the stream is over
        inbox.put(_ReadFailed(exc))
    else:
        inbox.put(_CLIENT_DONE)
    finally:
        threads.leave()


class _DiscoveryService:
    def __init__(self, publisher: Publisher, authenticate: Authenticate, metrics: DiscoveryMetrics,
                 type_urls: frozenset[str]) -> None:
        self._publisher = publisher
        self._authenticate = authenticate
        self._metrics = metrics
        self._type_urls = type_urls
        self.threads = _ThreadCount()

    def stream(self, requests: Iterator[bytes], context: grpc.ServicerContext):
        peer = context.peer()
        token = _bearer_token(context)
        caller = self._authenticate(token) if token else None
        reason = ""
        if caller is None:
            reason = "token not known to this server" if token else "no `authorization: Bearer <token>` metadata"
        elif isinstance(caller, NodeCaller) and not caller.allows_peer(parse_peer(peer)):
            # A node token bound to its node's addresses (as the CA checks it): a copied token is no use elsewhere.
            reason = f"the token of {caller} is not valid from this address"
        if reason:
            self._metrics.rejected.labels("unauthenticated").inc()
            log.warning("discovery stream refused: UNAUTHENTICATED: %s; peer %s", reason, peer)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

        inbox = _Inbox()

        def terminated() -> None:
            self._publisher.unsubscribe(inbox.wake)
            inbox.put(_TERMINATED)

        self._publisher.subscribe(inbox.wake)
        if not context.add_callback(terminated):  # already over
            self._publisher.unsubscribe(inbox.wake)
            return
        self.threads.enter()  # for this handler; left in the finally below
        self.threads.enter()  # for the reader
        threading.Thread(target=_read_requests, args=(requests, inbox, self.threads), name=f"xds-reader {peer}",
                         daemon=True).start()
        self._metrics.streams.inc()
        log.info("discovery stream opened: caller %s, peer %s", caller, peer)
        ending, level = "cancelled", logging.INFO  # unless _serve returns: grpc dropped us mid-send
        try:
            ending = yield from self._serve(DeltaStream(self._type_urls), inbox, peer, caller)
        except ProtocolError as exc:  # the client's fault
            ending, level = f"{exc.status}: {exc}", logging.WARNING
            self._metrics.rejected.labels("protocol_error").inc()
            context.abort(grpc.StatusCode[exc.status], str(exc))
        except Exception:  # our bug: end this stream, keep serving the others
            ending, level = "internal error", logging.ERROR
            log.exception("discovery stream failed; caller %s, peer %s", caller, peer)
            self._metrics.rejected.labels("internal").inc()
            context.abort(grpc.StatusCode.INTERNAL, "internal error in the discovery server; see its log")
        finally:
            self._publisher.unsubscribe(inbox.wake)
            inbox.close()
            self._metrics.streams.dec()
            log.log(level, "discovery stream closed (%s): caller %s, peer %s", ending, caller, peer)
            self.threads.leave()
        if ending == _SHUTDOWN:
            context.abort(grpc.StatusCode.UNAVAILABLE, "discovery server is shutting down")

    def _serve(self, stream: DeltaStream, inbox: _Inbox, peer: str, caller):
        """Yield responses until the stream ends; return why it ended."""
        if self._publisher.closed:  # closed before we subscribed: no wake-up will come
            inbox.wake()
        while True:
            item = inbox.get()
            if item is _TERMINATED:
                return "terminated"
            if item is _CLIENT_DONE:
                return "client closed its side"
            if isinstance(item, _ReadFailed):
                return f"reading requests failed: {item.error!r}"
            if item is _SNAPSHOT:
                if self._publisher.closed:
                    self._metrics.rejected.labels("shutdown").inc()
                    return _SHUTDOWN
                responses: Sequence[discovery_pb2.DeltaDiscoveryResponse] = stream.on_snapshot(
                    self._publisher.current())
            else:
                assert isinstance(item, bytes)  # what is not a marker is a request's bytes
                outcome = stream.on_request(_decode(item), self._publisher.current())
                for event in outcome.events:
                    self._log_event(event, caller, peer)
                responses = outcome.responses
            for response in responses:
                self._count(response)
                log.debug("sending %s: %d resources, %d removed, nonce %s, snapshot %s; peer %s",
                          response.type_url, len(response.resources), len(response.removed_resources),
                          response.nonce, response.system_version_info, peer)
                yield response

    def _count(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        type_url = response.type_url
        self._metrics.responses.labels(type_url).inc()
        self._metrics.resources_sent.labels(type_url).inc(len(response.resources))
        self._metrics.resources_removed.labels(type_url).inc(len(response.removed_resources))

    def _log_event(self, event, caller, peer: str) -> None:
        match event:
            case Acked(type_url, nonce):
                log.debug("ACK of %s nonce %s; caller %s, peer %s", type_url, nonce, caller, peer)
            case Nacked(type_url, nonce, code, message):
                self._metrics.nacks.labels(type_url).inc()
                log.warning("NACK of %s nonce %s (code %d): %s; caller %s, peer %s",
                            type_url, nonce, code, message, caller, peer)
            case UnknownNonce(type_url, nonce, None):
                log.debug("ACK of %s nonce %s, which is not in flight; caller %s, peer %s",
                          type_url, nonce, caller, peer)
            case UnknownNonce(type_url, nonce, error):
                self._metrics.nacks.labels(type_url).inc()
                log.warning("NACK of %s nonce %s, which is not in flight: %s; caller %s, peer %s",
                            type_url, nonce, error, caller, peer)
            case UnknownType(type_url):
                log.warning("request for unknown type URL %r ignored; caller %s, peer %s", type_url, caller, peer)
            case Subscribed(type_url, wildcard, names, first, client_holds):
                # The stream's first request per type at INFO; later (on-demand) changes at DEBUG.
                what = ", ".join(([WILDCARD_LABEL] if wildcard else []) + sorted(names)) or "nothing"
                log.log(logging.INFO if first else logging.DEBUG, "%s %s: %s%s; caller %s, peer %s",
                        "subscribed to" if first else "subscription to", type_url, what,
                        f" (client holds {client_holds})" if client_holds else "", caller, peer)

