"""The CONNECT layer's per-stream state machine: every state, input and transition is here, as data.

HTTP/2 keeps each stream's own state (open, half-closed either way, its windows: ``hbone.http2``).
What CONNECT adds is whether the tunnel has been answered: a CONNECT sent or received is AWAITING its
answer, a 200 makes it OPEN, and a refusal, a malformed request, or the end of the HTTP/2 stream (a
reset either way, both halves closed and read, the connection gone) makes it CLOSED, for good.

``TRANSITIONS`` maps (state, input) to the next state. A pair it lacks is a protocol error:
``advance`` raises ``ConnectStateError`` for it, and the connection then closes the stream (CLOSED is
terminal; nothing leaves it). The connection keeps only live streams (AWAITING or OPEN) in its table:
a stream id it does not hold is IDLE to a header block that opens a stream, CLOSED to anything else.

The inputs of the hot path, SEND_DATA and SEND_END_STREAM, change no state; the connection checks
them against ``OPEN`` directly and consults the table only when that check fails (see
``hbone.connect``). ``tests/hbone/test_connect_state.py`` holds it to the table.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from hbone.http2 import LocalProtocolError


class ConnectState(enum.Enum):
    IDLE = "idle"  # no CONNECT on this stream yet
    AWAITING = "awaiting"  # CONNECT sent or received, no final answer yet
    OPEN = "open"  # 200 sent or received: the tunnel carries bytes both ways
    CLOSED = "closed"  # refused, malformed, reset, finished, or the connection ended: terminal


class ConnectInput(enum.Enum):
    # the client's
    SEND_CONNECT = "send a CONNECT"
    RECV_INFORMATIONAL = "receive a 1xx"
    RECV_ACCEPT = "receive a 200"
    RECV_REFUSAL = "receive a final status other than 200"
    RECV_BAD_RESPONSE = "receive a response without a valid :status"
    # the server's
    RECV_CONNECT = "receive a well-formed CONNECT"
    RECV_MALFORMED_CONNECT = "receive a malformed CONNECT"
    SEND_ACCEPT = "accept"
    SEND_REFUSAL = "reject"
    # either side's
    RECV_TRAILERS = "receive a later header block"
    SEND_DATA = "send data"
    SEND_END_STREAM = "half-close"
    STREAM_ENDED = "end with its HTTP/2 stream"


_S, _I = ConnectState, ConnectInput

TRANSITIONS: Mapping[tuple[ConnectState, ConnectInput], ConnectState] = MappingProxyType({
    # Opening: the client sends a CONNECT; the server answers a malformed one with 400 at once.
    (_S.IDLE, _I.SEND_CONNECT): _S.AWAITING,
    (_S.IDLE, _I.RECV_CONNECT): _S.AWAITING,
    (_S.IDLE, _I.RECV_MALFORMED_CONNECT): _S.CLOSED,
    # Answering: 200 opens the tunnel; any other final status, or none that parses, closes it.
    (_S.AWAITING, _I.SEND_ACCEPT): _S.OPEN,
    (_S.AWAITING, _I.SEND_REFUSAL): _S.CLOSED,
    (_S.AWAITING, _I.RECV_INFORMATIONAL): _S.AWAITING,
    (_S.AWAITING, _I.RECV_ACCEPT): _S.OPEN,
    (_S.AWAITING, _I.RECV_REFUSAL): _S.CLOSED,
    (_S.AWAITING, _I.RECV_BAD_RESPONSE): _S.CLOSED,
    # Header blocks after the first (trailers) mean nothing to HBONE: read and dropped.
    (_S.AWAITING, _I.RECV_TRAILERS): _S.AWAITING,
    (_S.OPEN, _I.RECV_TRAILERS): _S.OPEN,
    # The open tunnel: bytes and half-close (which halves are closed is HTTP/2's to track).
    (_S.OPEN, _I.SEND_DATA): _S.OPEN,
    (_S.OPEN, _I.SEND_END_STREAM): _S.OPEN,
    # The HTTP/2 stream went: reset either way, both halves closed and read, or the connection ended.
    (_S.AWAITING, _I.STREAM_ENDED): _S.CLOSED,
    (_S.OPEN, _I.STREAM_ENDED): _S.CLOSED,
})

del _S, _I


class ConnectStateError(LocalProtocolError):
    """An input the state machine has no transition for: the caller's bug (``LocalProtocolError``)."""

    def __init__(self, state: ConnectState, input_: ConnectInput) -> None:
        super().__init__(f"cannot {input_.value} on a stream that is {state.value}")
        self.state = state
        self.input = input_


def advance(state: ConnectState, input_: ConnectInput) -> ConnectState:
    """The state ``input_`` leads to from ``state``; ``ConnectStateError`` if the table has no such move."""
    try:
        return TRANSITIONS[state, input_]
    except KeyError:
        raise ConnectStateError(state, input_) from None
