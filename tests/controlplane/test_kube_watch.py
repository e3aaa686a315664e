"""The list+watch state machine of one kind, driven directly (no server, no clock)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from controlplane.kube_watch import (
    ABSENT_RETRY,
    KindWatch,
    LineDecoder,
    MalformedEvent,
    Phase,
    decode_event,
)
from mesh.backoff import Backoff

NO_JITTER = Backoff(initial=1.0, cap=8.0, jitter=0)


def obj(name: str, rv: str, ns: str = "shop") -> dict:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv}}


def machine(**kwargs) -> KindWatch:
    return KindWatch("Pod", backoff=NO_JITTER, **kwargs)


def names(objects) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objects)


def test_starts_by_listing_then_watches_from_the_lists_version():
    w = machine()
    assert w.next_step().action is Phase.LIST
    changes = w.listed([obj("a", "5"), obj("b", "6")], "10")
    assert names(changes.upserted) == ["a", "b"] and changes.deleted == ()
    step = w.next_step()
    assert (step.action, step.resource_version, step.delay) == (Phase.WATCH, "10", 0.0)
    assert w.synced


def test_events_add_modify_delete_and_advance_the_version():
    w = machine()
    w.listed([obj("a", "5")], "10")
    assert names(w.event({"type": "ADDED", "object": obj("b", "11")}).upserted) == ["b"]
    assert names(w.event({"type": "MODIFIED", "object": obj("a", "12")}).upserted) == ["a"]
    assert w.event({"type": "DELETED", "object": obj("a", "13")}).deleted == (("shop", "a"),)
    assert w.held == {("shop", "b")}
    assert w.next_step().resource_version == "13"


def test_a_deleted_object_never_held_changes_nothing():
    w = machine()
    w.listed([], "1")
    assert not w.event({"type": "DELETED", "object": obj("ghost", "2")})


def test_bookmark_only_advances_the_version():
    w = machine()
    w.listed([obj("a", "5")], "10")
    changes = w.event({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "99"}}})
    assert not changes and not changes.end_stream
    assert w.held == {("shop", "a")}
    assert w.next_step().resource_version == "99"


def test_error_410_relists_and_the_relist_replaces_the_set():
    w = machine()
    w.listed([obj("a", "5"), obj("b", "6")], "10")
    changes = w.event({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}})
    assert changes.end_stream
    assert w.next_step() == w.next_step() and w.next_step().action is Phase.LIST and w.next_step().delay == 0
    # b was deleted and a unchanged while no watch ran; c is new.
    relisted = w.listed([obj("a", "5"), obj("c", "20")], "30")
    assert names(relisted.upserted) == ["c"]  # a has the resourceVersion already handed out
    assert relisted.deleted == (("shop", "b"),)
    assert w.held == {("shop", "a"), ("shop", "c")}


def test_http_410_on_the_watch_call_relists_too():
    w = machine()
    w.listed([], "10")
    w.watch_failed(410, "Gone")
    assert w.next_step().action is Phase.LIST


def test_other_error_event_rewatches_from_the_last_version_with_backoff():
    w = machine()
    w.listed([], "10")
    w.event({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}})
    changes = w.event({"type": "ERROR", "object": {"kind": "Status", "code": 500}})
    assert changes.end_stream
    step = w.next_step()
    assert (step.action, step.resource_version, step.delay) == (Phase.WATCH, "15", 1.0)


def test_dropped_streams_back_off_and_an_event_resets_the_backoff():
    w = machine()
    w.listed([], "10")
    delays = []
    for _ in range(5):
        w.watch_failed(0, "connection reset")
        delays.append(w.next_step().delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert w.next_step().resource_version == "10"
    w.event({"type": "ADDED", "object": obj("a", "11")})
    w.watch_failed(0, "connection reset")
    assert w.next_step().delay == 1.0


def test_a_clean_end_rewatches_at_once():
    w = machine()
    w.listed([], "10")
    w.watch_failed(0, "reset")
    w.watch_ended()
    assert w.next_step().delay == 0 and w.next_step().action is Phase.WATCH


def test_absent_kind_is_reported_once_and_retried_slowly():
    w = machine()
    first = w.list_failed(404, "Not Found")
    assert first is not None and "CRD" in first
    assert w.next_step().delay == ABSENT_RETRY and w.next_step().action is Phase.LIST
    assert w.list_failed(404, "Not Found") is None
    w.listed([obj("p", "1")], "2")  # installed meanwhile
    assert not w.absent
    assert w.list_failed(404, "Not Found") is not None  # gone again: reported again


def test_other_list_failures_back_off():
    w = machine()
    assert "HTTP 403" in (w.list_failed(403, "Forbidden") or "")
    assert w.next_step().delay == 1.0
    w.list_failed(0, "connection refused")
    assert w.next_step().delay == 2.0


def test_objects_past_the_bound_are_refused():
    w = machine(max_objects=2)
    changes = w.listed([obj("a", "1"), obj("b", "1"), obj("c", "1")], "5")
    assert changes.refused == 1 and len(w.held) == 2
    assert w.event({"type": "ADDED", "object": obj("d", "6")}).refused == 1
    assert w.event({"type": "MODIFIED", "object": obj("a", "7")}).upserted  # a held object still updates


def test_an_unchanged_object_is_not_handed_out_again():
    w = machine()
    w.listed([obj("a", "5")], "10")
    assert not w.event({"type": "MODIFIED", "object": obj("a", "5")})


def test_line_decoder_splits_chunks_and_bounds_an_event():
    d = LineDecoder(max_bytes=20)
    assert d.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert d.feed(b':2}\n\n') == [b'{"b":2}']
    with pytest.raises(MalformedEvent):
        d.feed(b"x" * 21)


@pytest.mark.parametrize("line", [b"not json", b"[]", b'{"type":"WHAT","object":{}}', b'{"type":"ADDED"}',
                                  b'{"type":"ADDED","object":{"metadata":{}}}'])
def test_decode_event_refuses_malformed_events(line):
    with pytest.raises(MalformedEvent):
        decode_event(line)


def test_decode_event_accepts_a_bookmark_without_a_name():
    event = decode_event(json.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "3"}}}).encode())
    assert event["type"] == "BOOKMARK"


# ---------------------------------------------------------------- property: the held set follows the server

_NAMES = st.sampled_from("abcde")
_OPS = st.lists(st.one_of(st.tuples(st.just("put"), _NAMES), st.tuples(st.just("delete"), _NAMES),
                          st.tuples(st.sampled_from(["bookmark", "drop", "compact", "deliver", "error"]))),
                max_size=40)


class _Server:
    """A model of the API server's store and its event history (compaction forgets the history)."""

    def __init__(self) -> None:
        self.store: dict[str, str] = {}
        self.events: list[tuple[int, dict]] = []
        self.version = 1
        self.compacted = 0

    def _event(self, kind: str, name: str) -> None:
        self.version += 1
        self.events.append((self.version, {"type": kind, "object": obj(name, str(self.version))}))

    def apply(self, op: tuple) -> None:
        if op[0] == "put":
            self._event("MODIFIED" if op[1] in self.store else "ADDED", op[1])
            self.store[op[1]] = str(self.version)
        elif op[0] == "delete" and op[1] in self.store:
            del self.store[op[1]]
            self._event("DELETED", op[1])
        elif op[0] == "bookmark":
            self.version += 1
            self.events.append((self.version, {"type": "BOOKMARK",
                                               "object": {"metadata": {"resourceVersion": str(self.version)}}}))
        elif op[0] == "compact":
            self.compacted, self.events = self.version, []  # the current version stays watchable


def _deliver(server: _Server, w: KindWatch, mirror: dict) -> None:
    """Drive the client until a watch has delivered everything (at most a few rounds)."""
    for _ in range(5):
        step = w.next_step()
        if step.action is Phase.LIST:
            changes = w.listed([obj(n, v) for n, v in server.store.items()], str(server.version))
        elif int(step.resource_version) < server.compacted:
            changes = w.event({"type": "ERROR", "object": {"kind": "Status", "code": 410}})
        else:
            for version, event in server.events:
                if version > int(step.resource_version):
                    _mirror(mirror, w.event(event))
            return
        _mirror(mirror, changes)
    raise AssertionError("the client never caught up")


def _mirror(mirror: dict, changes) -> None:
    for o in changes.upserted:
        mirror[o["metadata"]["name"]] = o["metadata"]["resourceVersion"]
    for _, name in changes.deleted:
        del mirror[name]


@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_after_any_history_the_held_set_is_the_servers(ops):
    server, w, mirror = _Server(), machine(), {}
    for op in ops:
        server.apply(op)
        if op[0] == "deliver":
            _deliver(server, w, mirror)
        elif op[0] == "drop" and w.phase is Phase.WATCH:
            w.watch_failed(0, "connection reset")
        elif op[0] == "error" and w.phase is Phase.WATCH:
            assert w.event({"type": "ERROR", "object": {"kind": "Status", "code": 500}}).end_stream
    _deliver(server, w, mirror)
    assert mirror == server.store
    assert w.held == {("shop", name) for name in server.store}
