"""HBONE: the mesh's mTLS tunnel (DESIGN.md section 6), shared by ztunnel and the waypoint.

Layers, bottom up, each usable on its own:
- ``tcp_stream`` and ``tls_stream``: trio streams driven straight on a socket (TLS through a memory BIO);
- ``tls``: TLS 1.3 / ALPN h2 contexts for a workload's certificate and the SPIFFE checks of a peer;
- ``limits``: every bound HBONE puts on a peer (streams, windows, header blocks, hostile-peer caps,
  timeouts), in one place for ztunnel and the waypoint;
- ``hpack_codec`` and ``http2``: a sans-IO HTTP/2 connection for HBONE's subset of the protocol;
- ``connect`` and ``connect_state``: the CONNECT layer on it, sans-IO (validation, 200/400/401/503,
  half-close), and its per-stream state machine;
- ``transport`` and ``driver``: what a driver needs of its connection, and the trio drivers, client
  and server, each CONNECT stream a trio stream;
- ``pool``: client connections shared per (source, expected identities, address);
- ``relay``: the both-way copy between two streams, with half-close.

It imports only ``mesh``; ztunnel and the waypoint import it, never the other way round.

The public names of all of them can be imported from ``hbone`` itself. They load on first use
(PEP 562), so that ``import hbone.tcp_stream`` does not also load TLS, HTTP/2 and the rest: what a
process imports is what it pays for in memory (tests/ztunnel/test_imports.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hbone.connect import (
        ConnectAccepted as ConnectAccepted,
        ConnectRefused as ConnectRefused,
        ConnectRejection as ConnectRejection,
        ConnectRequested as ConnectRequested,
        ConnectTarget as ConnectTarget,
        HboneClientConnection as HboneClientConnection,
        HboneConnection as HboneConnection,
        HboneServerConnection as HboneServerConnection,
        PingAnswered as PingAnswered,
        parse_connect as parse_connect,
        split_host_port as split_host_port,
    )
    from hbone.connect_state import (
        ConnectInput as ConnectInput,
        ConnectState as ConnectState,
        ConnectStateError as ConnectStateError,
    )
    from hbone.driver import (
        HboneClientDriver as HboneClientDriver,
        HboneRefused as HboneRefused,
        HboneServerDriver as HboneServerDriver,
        HboneStream as HboneStream,
        IncomingConnect as IncomingConnect,
    )
    from hbone.http2 import (
        ConnectionClosed as ConnectionClosed,
        ErrorCode as ErrorCode,
        LocalProtocolError as LocalProtocolError,
        SendWindowOpened as SendWindowOpened,
        StreamAborted as StreamAborted,
        StreamData as StreamData,
        StreamHalfClosed as StreamHalfClosed,
    )
    from hbone.pool import (
        HbonePool as HbonePool,
    )
    from hbone.relay import (
        Counts as Counts,
        abort as abort,
        reset as reset,
    )
    from hbone.tcp_stream import (
        TcpStream as TcpStream,
    )
    from hbone.tls import (
        ContextCache as ContextCache,
        HandshakeFailed as HandshakeFailed,
        HboneTlsError as HboneTlsError,
        PeerIdentityError as PeerIdentityError,
        PeerProtocolError as PeerProtocolError,
        WorkloadCredentials as WorkloadCredentials,
        client_context as client_context,
        client_handshake as client_handshake,
        server_context as server_context,
        server_handshake as server_handshake,
        verify_client_identity as verify_client_identity,
        verify_server_identity as verify_server_identity,
    )
    from hbone.tls_stream import (
        TlsStream as TlsStream,
    )
    from hbone.transport import (
        FrameTransport as FrameTransport,
    )

# name -> the module that defines it. Never a submodule's own name: importing ``hbone.relay`` binds
# ``hbone.relay`` to the module, so the function ``relay`` is only ``hbone.relay.relay``.
_MODULE_OF = {
    "ConnectAccepted": "hbone.connect",
    "ConnectRefused": "hbone.connect",
    "ConnectRejection": "hbone.connect",
    "ConnectRequested": "hbone.connect",
    "ConnectTarget": "hbone.connect",
    "HboneClientConnection": "hbone.connect",
    "HboneConnection": "hbone.connect",
    "HboneServerConnection": "hbone.connect",
    "PingAnswered": "hbone.connect",
    "parse_connect": "hbone.connect",
    "split_host_port": "hbone.connect",
    "ConnectInput": "hbone.connect_state",
    "ConnectState": "hbone.connect_state",
    "ConnectStateError": "hbone.connect_state",
    "HboneClientDriver": "hbone.driver",
    "HboneRefused": "hbone.driver",
    "HboneServerDriver": "hbone.driver",
    "HboneStream": "hbone.driver",
    "IncomingConnect": "hbone.driver",
    "ConnectionClosed": "hbone.http2",
    "ErrorCode": "hbone.http2",
    "LocalProtocolError": "hbone.http2",
    "SendWindowOpened": "hbone.http2",
    "StreamAborted": "hbone.http2",
    "StreamData": "hbone.http2",
    "StreamHalfClosed": "hbone.http2",
    "HbonePool": "hbone.pool",
    "Counts": "hbone.relay",
    "abort": "hbone.relay",
    "reset": "hbone.relay",
    "TcpStream": "hbone.tcp_stream",
    "ContextCache": "hbone.tls",
    "HandshakeFailed": "hbone.tls",
    "HboneTlsError": "hbone.tls",
    "PeerIdentityError": "hbone.tls",
    "PeerProtocolError": "hbone.tls",
    "WorkloadCredentials": "hbone.tls",
    "client_context": "hbone.tls",
    "client_handshake": "hbone.tls",
    "server_context": "hbone.tls",
    "server_handshake": "hbone.tls",
    "verify_client_identity": "hbone.tls",
    "verify_server_identity": "hbone.tls",
    "TlsStream": "hbone.tls_stream",
    "FrameTransport": "hbone.transport",
}

__all__ = [
    "ConnectAccepted",
    "ConnectInput",
    "ConnectRefused",
    "ConnectRejection",
    "ConnectRequested",
    "ConnectState",
    "ConnectStateError",
    "ConnectTarget",
    "ConnectionClosed",
    "ContextCache",
    "Counts",
    "ErrorCode",
    "FrameTransport",
    "HandshakeFailed",
    "HboneClientConnection",
    "HboneClientDriver",
    "HboneConnection",
    "HbonePool",
    "HboneRefused",
    "HboneServerConnection",
    "HboneServerDriver",
    "HboneStream",
    "HboneTlsError",
    "IncomingConnect",
    "LocalProtocolError",
    "PeerIdentityError",
    "PeerProtocolError",
    "PingAnswered",
    "SendWindowOpened",
    "StreamAborted",
    "StreamData",
    "StreamHalfClosed",
    "TcpStream",
    "TlsStream",
    "WorkloadCredentials",
    "abort",
    "client_context",
    "client_handshake",
    "parse_connect",
    "reset",
    "server_context",
    "server_handshake",
    "split_host_port",
    "verify_client_identity",
    "verify_server_identity",
]


def __getattr__(name: str) -> object:
    """Load a public name's module on first use, then keep the name here."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
