"""The CONNECT layer's state machine (hbone/connect_state.py), as h2's tests/test_state_machines.py
checks h2's: every (state, input) pair either moves as the table says or raises, and a real
connection follows the table, closing (and resetting) a stream on any move the table lacks."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from hbone.connect import HboneClientConnection, HboneServerConnection
from hbone.connect_state import TRANSITIONS, ConnectInput, ConnectState, ConnectStateError, advance
from hbone.http2 import ErrorCode, LocalProtocolError, StreamAborted
from tests.hbone.test_connect import POD, pump

STATES = st.sampled_from(ConnectState)
INPUTS = st.sampled_from(ConnectInput)


@given(state=STATES, input_=INPUTS)
def test_every_pair_moves_as_the_table_says_or_raises(state, input_):
    expected = TRANSITIONS.get((state, input_))
    if expected is None:
        with pytest.raises(ConnectStateError) as error:
            advance(state, input_)
        assert isinstance(error.value, LocalProtocolError)  # the caller's bug, in the package's terms
        assert (error.value.state, error.value.input) == (state, input_)
        assert state.value in str(error.value) and input_.value in str(error.value)
    else:
        assert advance(state, input_) is expected


def test_closed_is_terminal_and_idle_only_a_start():
    assert not [pair for pair in TRANSITIONS if pair[0] is ConnectState.CLOSED]
    assert ConnectState.IDLE not in TRANSITIONS.values()


def test_every_state_is_reachable_from_idle():
    reached, frontier = {ConnectState.IDLE}, [ConnectState.IDLE]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source is state and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(ConnectState)


def test_the_hot_path_inputs_are_allowed_only_while_open_and_change_nothing():
    """``send_data`` and ``half_close`` check for OPEN themselves and ask the table only otherwise."""
    for input_ in (ConnectInput.SEND_DATA, ConnectInput.SEND_END_STREAM):
        assert {pair: target for pair, target in TRANSITIONS.items() if pair[1] is input_} == {
            (ConnectState.OPEN, input_): ConnectState.OPEN}


# ---------------------------------------------------------------- a real connection follows the table

# What each side's methods feed the machine, on a stream of the test's making.
CALLS = {
    "client": {
        ConnectInput.SEND_DATA: lambda side, sid: side.send_data(sid, b"x"),
        ConnectInput.SEND_END_STREAM: lambda side, sid: side.half_close(sid),
    },
    "server": {
        ConnectInput.SEND_DATA: lambda side, sid: side.send_data(sid, b"x"),
        ConnectInput.SEND_END_STREAM: lambda side, sid: side.half_close(sid),
        ConnectInput.SEND_ACCEPT: lambda side, sid: side.accept(sid),
        ConnectInput.SEND_REFUSAL: lambda side, sid: side.reject(sid, 503),
    },
}
CASES = st.sampled_from([(side, input_) for side, calls in CALLS.items() for input_ in calls])


def stream_in(state: ConnectState) -> tuple[HboneClientConnection, HboneServerConnection, int]:
    """A client and a server whose stream ``sid`` is in ``state`` on both sides."""
    client, server = HboneClientConnection(), HboneServerConnection([POD])
    pump(client, server)
    sid = client.open_stream(f"{POD}:80", None)
    pump(client, server)
    if state is ConnectState.OPEN:
        server.accept(sid)
    elif state is ConnectState.CLOSED:
        client.reset(sid)
    pump(client, server)
    assert client.state(sid) is server.state(sid) is state
    return client, server, sid


@given(state=st.sampled_from([ConnectState.AWAITING, ConnectState.OPEN, ConnectState.CLOSED]), case=CASES)
def test_a_connection_follows_the_table_and_closes_a_stream_on_a_missing_move(state, case):
    side, input_ = case
    client, server, sid = stream_in(state)
    me, peer = (client, server) if side == "client" else (server, client)
    expected = TRANSITIONS.get((state, input_))
    if expected is not None:
        CALLS[side][input_](me, sid)
        assert me.state(sid) is expected
        return
    with pytest.raises(LocalProtocolError):
        CALLS[side][input_](me, sid)
    assert me.state(sid) is ConnectState.CLOSED
    client_events, server_events = pump(client, server)
    if state is not ConnectState.CLOSED:  # the peer hears of it, and lets the stream go too
        peer_events = server_events if peer is server else client_events
        assert StreamAborted(sid, ErrorCode.INTERNAL_ERROR, remote=True) in peer_events
    assert peer.state(sid) is ConnectState.CLOSED


def test_a_client_opens_from_idle():
    client = HboneClientConnection()
    sid = client.open_stream(f"{POD}:80", None)
    assert TRANSITIONS[ConnectState.IDLE, ConnectInput.SEND_CONNECT] is client.state(sid) is ConnectState.AWAITING
