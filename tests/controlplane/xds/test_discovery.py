"""Discovery over real gRPC and TLS on loopback: a control plane (the CA's server with the discovery
handler beside it, a server certificate from an in-memory CA) and trio clients trusting only its root.

Nothing here sleeps to synchronise: tests wait for the client's notifications (``wait_until``,
``changes``), for log records or for the server's streams to close, each under a bound. Every test
ends with a leak check: no thread may still run discovery code.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trio
import trio.testing
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry

import mesh.xds
from ca.authority import SigningAuthority
from ca.placement import StaticPodPlacement
from ca.server import CaMetrics, CaServer, ServeConfig
from ca.service import CertificateService
from ca.tokens import NodeCaller, TokenStore
from controlplane.xds.server import MAX_QUEUED_REQUESTS, DiscoveryHandler, _Inbox, discovery_handler
from controlplane.xds.snapshot import Publisher
from mesh.api.types import METHOD_PATH
from mesh.backoff import Backoff
from mesh.xds.client import Change, ChangesLost, ClientConfig, DiscoveryClient
from tests.controlplane.xds.helpers import ADDRESS, AUTHZ, policy, resources, workload

W1, W2, W3 = "cluster/default/w1", "cluster/default/w2", "cluster/default/w3"
XDS_SOURCES = str(Path(mesh.xds.__file__).resolve().parent) + "/"
FAST_BACKOFF = Backoff(initial=0.02, cap=0.2)
BOUND = 10  # seconds: a bound on each wait, never a synchronisation


@pytest.fixture(scope="module")
def authority() -> SigningAuthority:
    return SigningAuthority.self_signed("cluster.local")


@dataclass
class ControlPlane:
    authority: SigningAuthority
    tokens: TokenStore
    publisher: Publisher
    port: int = 0
    server: CaServer | None = None
    handler: DiscoveryHandler | None = None
    registry: CollectorRegistry | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def root_pem(self) -> bytes:
        return self.authority.root_pem.encode()

    def start(self) -> None:
        """Serve (again, on the same port once it has one) with fresh metrics."""
        self.registry = CollectorRegistry()
        self.handler = discovery_handler(self.publisher, self.tokens.authenticate, registry=self.registry)
        service = CertificateService(self.authority, self.tokens, StaticPodPlacement({}))
        self.server = CaServer(service, ServeConfig(listen=self.address, workers=128), CaMetrics(CollectorRegistry()),
                               extra_handlers=(self.handler,))
        self.port = self.server.start()

    def stop(self) -> None:
        """Stop serving; every stream ends promptly."""
        if self.server is not None:
            self.server.stop(grace=None)
            self.server = None
            assert self.handler.wait_closed(timeout=BOUND), "discovery streams outlived the server"

    def metric(self, name: str, type_url: str = ADDRESS) -> float:
        return self.registry.get_sample_value(name, {"type_url": type_url}) or 0.0

    def config(self, token: str, **overrides) -> ClientConfig:
        settings = dict(target=self.address, root_pem=self.root_pem, token=token,
                        subscriptions={ADDRESS: None, AUTHZ: None}, backoff=FAST_BACKOFF)
        return ClientConfig(**(settings | overrides))

    def raw_stream(self, requests, token: str | None):
        """The responses (or the error) of a stream whose request bytes we write ourselves."""
        with grpc.secure_channel(self.address, grpc.ssl_channel_credentials(self.root_pem)) as channel:
            call = channel.stream_stream(METHOD_PATH, request_serializer=None,
                                         response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString)
            metadata = (("authorization", f"Bearer {token}"),) if token else ()
            try:
                return list(call(iter(requests), timeout=BOUND, metadata=metadata))
            except grpc.RpcError as exc:
                return exc


def _threads_in_xds() -> dict[threading.Thread, str]:
    """Threads running discovery code right now, with their stacks."""
    frames = sys._current_frames()
    running = {}
    for thread in threading.enumerate():
        frame = frames.get(thread.ident)
        stack = traceback.extract_stack(frame) if frame is not None else []
        if any(entry.filename.startswith(XDS_SOURCES) for entry in stack):
            running[thread] = "".join(traceback.format_list(stack))
    return running


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """After each test and its control plane's teardown, no thread runs discovery code: the stream
    handlers and readers, grpcio's request threads and trio's workers have all returned."""
    yield
    # A bounded leak check, not synchronisation: the client waits for its threads and the control
    # plane for its streams, but a pooled thread (gRPC's handler pool, trio's worker cache) may
    # still be executing its last `return`, and pooled threads are never joined.
    deadline = time.monotonic() + BOUND
    while (leaked := _threads_in_xds()) and time.monotonic() < deadline:
        next(iter(leaked)).join(0.01)
    assert not leaked, "\n".join(f"{thread.name}:\n{stack}" for thread, stack in leaked.items())


@pytest.fixture
def plane(authority, tmp_path):
    publisher = Publisher()
    publisher.publish(resources(address={W1: workload(W1, "10.0.0.1"), W2: workload(W2, "10.0.0.2")},
                                authz={"default/allow": policy("allow")}))
    plane = ControlPlane(authority, TokenStore(tmp_path / "tokens.json"), publisher)
    plane.start()
    yield plane
    plane.stop()
    publisher.close()


@pytest.fixture
def token(plane) -> str:
    return plane.tokens.create(NodeCaller("node-a"))


@asynccontextmanager
async def running(*clients: DiscoveryClient):
    """Run the clients until the block ends; each has applied its first responses on entry."""
    async with trio.open_nursery() as nursery:
        with trio.fail_after(BOUND):
            for client in clients:
                await nursery.start(client.run)
        yield
        nursery.cancel_scope.cancel()


def addresses(client: DiscoveryClient) -> dict[str, str]:
    """name → the workload's first IP, in dotted form."""
    return {name: ".".join(map(str, a.workload.addresses[0])) for name, a in client.view(ADDRESS).items()}


class LogWaiter(logging.Handler):
    """Keeps the records of ``logger`` itself (not of its children) that contain ``needle``, and
    sets ``seen`` (a threading.Event: logs come from gRPC threads) on the first one."""

    def __init__(self, logger: str, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.records: list[logging.LogRecord] = []
        self.seen = threading.Event()
        self.logger = logging.getLogger(logger)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == self.logger.name and self.needle in record.getMessage():
            self.records.append(record)
            self.seen.set()

    async def wait(self) -> None:
        assert await trio.to_thread.run_sync(self.seen.wait, BOUND), f"no log record with {self.needle!r}"

    def __enter__(self) -> LogWaiter:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc_info) -> None:
        self.logger.removeHandler(self)


async def test_initial_snapshot_then_one_resource_per_change(plane, token):
    client = DiscoveryClient(plane.config(token, server_name="istiod.istio-system.svc"))
    async with running(client):
        assert client.connected
        assert addresses(client) == {W1: "10.0.0.1", W2: "10.0.0.2"}
        assert client.view(AUTHZ)["default/allow"] == policy("allow")
        changes = client.changes()

        async def step(expected: Change, **published) -> None:
            sent = plane.metric("ambient_xds_resources_sent_total", expected.type_url)
            plane.publisher.publish(resources(**published))
            with trio.fail_after(BOUND):
                assert await anext(changes) == expected
            # The server sent the one changed resource, not the world.
            assert plane.metric("ambient_xds_resources_sent_total", expected.type_url) == sent + len(expected.updated)

        base = {W1: workload(W1, "10.0.0.1"), W2: workload(W2, "10.0.0.2")}
        allow = {"default/allow": policy("allow")}
        seq = client.change_seq
        await step(Change(seq + 1, ADDRESS, frozenset({W3}), frozenset()),
                   address=base | {W3: workload(W3, "10.0.0.3")}, authz=allow)
        await step(Change(seq + 2, ADDRESS, frozenset({W1}), frozenset()),
                   address=base | {W1: workload(W1, "10.0.0.9"), W3: workload(W3, "10.0.0.3")}, authz=allow)
        await step(Change(seq + 3, ADDRESS, frozenset(), frozenset({W2})),
                   address={W1: workload(W1, "10.0.0.9"), W3: workload(W3, "10.0.0.3")}, authz=allow)
        assert addresses(client) == {W1: "10.0.0.9", W3: "10.0.0.3"}
        await step(Change(seq + 4, AUTHZ, frozenset({"default/deny"}), frozenset({"default/allow"})),
                   address={W1: workload(W1, "10.0.0.9"), W3: workload(W3, "10.0.0.3")},
                   authz={"default/deny": policy("deny")})
        assert set(client.view(AUTHZ)) == {"default/deny"}
        assert plane.metric("ambient_xds_resources_removed_total") == 1
        await changes.aclose()


async def test_burst_of_snapshots_sends_the_newest(plane, token):
    client = DiscoveryClient(plane.config(token))
    async with running(client):
        for i in range(1, 51):
            plane.publisher.publish(resources(address={W1: workload(W1, f"10.0.1.{i}")}))
        with trio.fail_after(BOUND):
            await client.wait_until(lambda: addresses(client) == {W1: "10.0.1.50"})
        # However the stream interleaved with the burst, it never queued a response per snapshot.
        assert client.responses_applied < 2 + 50


def _reject_network_66(type_url, name, message) -> None:
    if type_url == ADDRESS and message.workload.addresses[0].startswith(bytes([10, 66])):
        raise ValueError("10.66.0.0/16 is not a pod network here")


async def test_nack_keeps_the_previous_view_and_the_server_logs_the_error(plane, token, caplog):
    client = DiscoveryClient(plane.config(token), validate=_reject_network_66)
    async with running(client):
        good = dict(client.view(ADDRESS))
        with LogWaiter("ambient.xds", "NACK of") as nack_logged:
            plane.publisher.publish(resources(address={W1: workload(W1, "10.66.0.1"), W2: workload(W2, "10.0.0.2")}))
            await nack_logged.wait()
        assert client.responses_rejected == 1
        assert dict(client.view(ADDRESS)) == good
        [record] = nack_logged.records
        assert record.levelno == logging.WARNING
        message = record.getMessage()
        assert f"{W1}: 10.66.0.0/16 is not a pod network here" in message
        assert "nonce " in message and "caller node node-a" in message
        assert not any(token in r.getMessage() for r in caplog.records)  # never log secrets
        assert plane.metric("ambient_xds_nacks_total") == 1

        # The rejected version is not pushed again; the next change is, and only it.
        sent = plane.metric("ambient_xds_resources_sent_total")
        plane.publisher.publish(resources(address={W1: workload(W1, "10.66.0.1"), W2: workload(W2, "10.0.0.2"),
                                                   W3: workload(W3, "10.0.0.3")}))
        with trio.fail_after(BOUND):
            await client.wait_until(lambda: W3 in client.view(ADDRESS))
        assert plane.metric("ambient_xds_resources_sent_total") == sent + 1
        assert addresses(client)[W1] == "10.0.0.1"
        plane.publisher.publish(resources(address={W1: workload(W1, "10.0.0.7"), W3: workload(W3, "10.0.0.3")}))
        with trio.fail_after(BOUND):
            await client.wait_until(lambda: addresses(client) == {W1: "10.0.0.7", W3: "10.0.0.3"})


async def test_client_reconnects_after_a_restart_and_keeps_its_view_meanwhile(plane, token):
    client = DiscoveryClient(plane.config(token))
    async with running(client):
        with trio.fail_after(BOUND):
            plane.stop()
            await client.wait_until(lambda: not client.connected)
        assert addresses(client) == {W1: "10.0.0.1", W2: "10.0.0.2"}  # the last good view, still served

        # A new control plane process on the same port, computing the same content (same versions)
        # except one update and one deletion.
        plane.publisher = Publisher()
        plane.publisher.publish(resources(address={W1: workload(W1, "10.0.0.8")},
                                          authz={"default/allow": policy("allow")}))
        plane.start()
        with trio.fail_after(BOUND):
            await client.wait_until(lambda: client.connected and addresses(client) == {W1: "10.0.0.8"})
        # initial_resource_versions spared the unchanged policy a second download.
        assert plane.metric("ambient_xds_resources_sent_total") == 1
        assert plane.metric("ambient_xds_resources_removed_total") == 1
        assert plane.metric("ambient_xds_resources_sent_total", AUTHZ) == 0
        assert set(client.view(AUTHZ)) == {"default/allow"}
        plane.publisher.close()


async def test_clients_see_only_what_they_subscribed_to(plane, token):
    everything = DiscoveryClient(plane.config(token))
    some = DiscoveryClient(plane.config(token, subscriptions={ADDRESS: {W1, W3}}))
    async with running(everything, some):
        assert set(some.view(ADDRESS)) == {W1}  # W3 does not exist (yet)
        with pytest.raises(KeyError):
            some.view(AUTHZ)
        sent = plane.metric("ambient_xds_resources_sent_total")
        plane.publisher.publish(resources(address={W1: workload(W1, "10.0.0.5"), W2: workload(W2, "10.0.0.6")},
                                          authz={"default/allow": policy("allow")}))
        with trio.fail_after(BOUND):
            await everything.wait_until(lambda: addresses(everything) == {W1: "10.0.0.5", W2: "10.0.0.6"})
            await some.wait_until(lambda: addresses(some) == {W1: "10.0.0.5"})
        assert plane.metric("ambient_xds_resources_sent_total") == sent + 3  # W1 twice, W2 once

        plane.publisher.publish(resources(address={W1: workload(W1, "10.0.0.5"), W2: workload(W2, "10.0.0.6"),
                                                   W3: workload(W3, "10.0.0.7")}))
        with trio.fail_after(BOUND):
            await some.wait_until(lambda: W3 in some.view(ADDRESS))

        # Changing the subscription while connected.
        some.subscribe(ADDRESS, {W2})
        some.unsubscribe(ADDRESS, {W1})
        with trio.fail_after(BOUND):
            await some.wait_until(lambda: addresses(some) == {W2: "10.0.0.6", W3: "10.0.0.7"})


def test_unauthenticated_streams_are_refused(plane, token, caplog):
    request = discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS).SerializeToString()
    for bad_token, reason in ((None, "no `authorization: Bearer <token>`"), ("amt_unknown", "not known")):
        reply = plane.raw_stream([request], bad_token)
        assert isinstance(reply, grpc.RpcError) and reply.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason in reply.details()
    assert not any(token in r.getMessage() or "amt_unknown" in r.getMessage() for r in caplog.records)
    [response] = plane.raw_stream([request], token)
    assert {r.name for r in response.resources} == {W1, W2}


@pytest.mark.parametrize(
    "payload, expected",
    [
        pytest.param(b"\xff\xff\xff\xff garbage", "not a DeltaDiscoveryRequest", id="undecodable"),
        pytest.param(b"", "has no type_url", id="empty-message"),
    ],
)
def test_garbage_requests_get_invalid_argument_and_the_server_goes_on(plane, token, payload, expected):
    good = discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS).SerializeToString()
    reply = plane.raw_stream([good, payload], token)
    assert isinstance(reply, grpc.RpcError), reply
    assert reply.code() == grpc.StatusCode.INVALID_ARGUMENT and expected in reply.details()
    assert plane.registry.get_sample_value("ambient_xds_streams_rejected_total", {"reason": "protocol_error"}) == 1
    [response] = plane.raw_stream([good], token)
    assert {r.name for r in response.resources} == {W1, W2}


def test_many_concurrent_streams(plane, token):
    """Fifty raw streams at once, each answered, then each told about one publish."""
    request = discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS).SerializeToString()
    # The fifty first authentications race the token file's first load on purpose: a reader that
    # saw the new signature before the value would get "token not known".
    first_seen = threading.Barrier(51, timeout=BOUND)
    done = threading.Event()
    outcomes: list[object] = []

    def requests():
        yield request
        done.wait(BOUND)  # keep our side open: a client that half-closes ends its stream

    def one_stream() -> None:
        try:
            with grpc.secure_channel(plane.address, grpc.ssl_channel_credentials(plane.root_pem)) as channel:
                call = channel.stream_stream(METHOD_PATH, request_serializer=None,
                                             response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString)
                responses = call(requests(), timeout=BOUND, metadata=(("authorization", f"Bearer {token}"),))
                first = next(responses)
                first_seen.wait()
                second = next(responses)
                responses.cancel()
                outcomes.append((len(first.resources), [r.name for r in second.resources]))
        except Exception as exc:  # reported below
            outcomes.append(exc)
            first_seen.abort()

    threads = [threading.Thread(target=one_stream) for _ in range(50)]
    for thread in threads:
        thread.start()
    try:
        first_seen.wait()
        plane.publisher.publish(resources(address={W1: workload(W1, "10.0.0.1"), W2: workload(W2, "10.0.0.22")}))
    except threading.BrokenBarrierError:
        pass
    for thread in threads:
        thread.join(BOUND)
    done.set()
    assert outcomes == [(2, [W2])] * 50


async def test_publisher_close_ends_streams_promptly(plane, token):
    client = DiscoveryClient(plane.config(token))
    async with running(client):
        with trio.fail_after(BOUND):
            plane.publisher.close()
            await client.wait_until(lambda: not client.connected)
        assert addresses(client) == {W1: "10.0.0.1", W2: "10.0.0.2"}
    assert plane.registry.get_sample_value("ambient_xds_streams") == 0


async def test_a_consumer_that_falls_behind_is_told(plane, token, monkeypatch):
    monkeypatch.setattr("mesh.xds.client.CHANGE_HISTORY", 2)
    client = DiscoveryClient(plane.config(token))
    async with running(client):
        behind = client.changes(after=client.change_seq)
        for i in range(3):
            plane.publisher.publish(resources(address={W1: workload(W1, f"10.0.2.{i}")}))
            with trio.fail_after(BOUND):
                await client.wait_until(lambda i=i: addresses(client) == {W1: f"10.0.2.{i}"})
        with pytest.raises(ChangesLost, match="no longer kept"):
            await anext(behind)
        # The remedy: re-read the view, then follow from the current change on.
        resumed = client.changes(after=client.change_seq - 1)
        with trio.fail_after(BOUND):
            assert (await anext(resumed)).updated == {W1}
        await resumed.aclose()


def test_a_flood_of_requests_is_held_back_not_queued():
    inbox = _Inbox()
    for _ in range(MAX_QUEUED_REQUESTS):
        inbox.put_request(b"request")
    reader = threading.Thread(target=inbox.put_request, args=(b"one too many",))
    reader.start()
    reader.join(0.05)
    assert reader.is_alive()  # blocked: the reader stops pulling, gRPC flow control does the rest
    assert inbox.get() == b"request"
    reader.join(BOUND)
    assert not reader.is_alive()
    inbox.wake()
    inbox.wake()  # coalesced with the first
    items = [inbox.get() for _ in range(MAX_QUEUED_REQUESTS + 1)]
    assert items.count(b"one too many") == 1 and items[-1] == "snapshot changed"


async def test_client_trusts_only_the_mesh_root_it_was_given(plane, token):
    stranger = SigningAuthority.self_signed("cluster.local").root_pem.encode()
    client = DiscoveryClient(plane.config(token, root_pem=stranger))
    with LogWaiter("ambient.xds.client", "ended (UNAVAILABLE") as refused:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            await refused.wait()
            nursery.cancel_scope.cancel()
    assert not client.connected and client.responses_applied == 0
    assert plane.registry.get_sample_value("ambient_xds_streams_rejected_total", {"reason": "unauthenticated"}) is None


# ---------------------------------------------------------------- the saved view (issue 18, defect 6)


async def test_a_restarted_client_serves_the_saved_view_while_the_server_is_away(plane, token, tmp_path):
    saved = tmp_path / "state"
    first = DiscoveryClient(plane.config(token, cache_dir=saved))
    async with running(first):
        with trio.fail_after(BOUND):
            await first.wait_until(lambda: first.saves >= 1)
    assert oct((saved / "discovery.view").stat().st_mode & 0o777) == "0o600"
    assert oct(saved.stat().st_mode & 0o777) == "0o700"
    plane.stop()  # the control plane is away; the client restarts

    second = DiscoveryClient(plane.config(token, cache_dir=saved))
    async with running(second):  # started at once, from the saved view
        assert second.stale and not second.connected
        assert addresses(second) == {W1: "10.0.0.1", W2: "10.0.0.2"}
        assert set(second.view(AUTHZ)) == {"default/allow"}
        # The control plane returns with one workload changed and one gone: the saved versions spare
        # the rest, and the view is current again.
        plane.publisher = Publisher()
        plane.publisher.publish(resources(address={W1: workload(W1, "10.0.0.8")},
                                          authz={"default/allow": policy("allow")}))
        plane.start()
        with trio.fail_after(BOUND):
            await second.wait_until(lambda: not second.stale and addresses(second) == {W1: "10.0.0.8"})
        assert plane.metric("ambient_xds_resources_sent_total", AUTHZ) == 0
        with trio.fail_after(BOUND):  # and what is saved follows
            await second.wait_until(lambda: second.saves >= 1)
        assert _saved_addresses(saved) == {W1}
    plane.publisher.close()


def _saved_addresses(saved: Path) -> set[str]:
    from mesh.xds.cache import decode

    (address,) = [r for r in decode((saved / "discovery.view").read_bytes()) if r.type_url == ADDRESS]
    return {r.name for r in address.resources}


@pytest.mark.parametrize("content", [b"garbage", b"", None])
async def test_a_damaged_saved_view_is_not_served(plane, token, tmp_path, content, caplog):
    saved = tmp_path / "state"
    first = DiscoveryClient(plane.config(token, cache_dir=saved))
    async with running(first):
        with trio.fail_after(BOUND):
            await first.wait_until(lambda: first.saves >= 1)
    view = saved / "discovery.view"
    if content is None:  # a valid file with a resource the validator refuses
        pass
    else:
        view.write_bytes(content)
    plane.stop()

    def refuse_all(type_url, name, message) -> None:
        raise ValueError("refused")

    second = DiscoveryClient(plane.config(token, cache_dir=saved), validate=refuse_all if content is None else None)
    with caplog.at_level(logging.ERROR, "ambient.xds.client"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(second.run)
            await trio.testing.wait_all_tasks_blocked()  # run() has read the file and is connecting
            assert not second.stale
            assert addresses(second) == {}
            nursery.cancel_scope.cancel()
    assert any("not using the saved view" in r.getMessage() for r in caplog.records)
    plane.publisher.close()


def test_a_saved_view_others_can_read_is_refused(tmp_path):
    from mesh.private_files import UnsafeDirectory, private_directory

    wide = tmp_path / "wide"
    wide.mkdir(mode=0o755)
    wide.chmod(0o755)
    with pytest.raises(UnsafeDirectory, match="mode 0700"):
        private_directory(wide)


async def test_a_node_token_bound_to_another_address_is_refused(plane, caplog):
    import ipaddress

    elsewhere = plane.tokens.create(NodeCaller("node-b", (ipaddress.ip_address("127.0.0.2"),)))
    here = plane.tokens.create(NodeCaller("node-a", (ipaddress.ip_address("127.0.0.1"),)))
    refused = DiscoveryClient(plane.config(elsewhere))
    with LogWaiter("ambient.xds", "not valid from this address") as refusal:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refused.run)
            await refusal.wait()
            assert refused.view(ADDRESS) == {}
            nursery.cancel_scope.cancel()
    accepted = DiscoveryClient(plane.config(here))
    async with running(accepted):
        assert addresses(accepted) == {W1: "10.0.0.1", W2: "10.0.0.2"}


async def test_the_token_is_read_again_for_every_stream(plane, token, tmp_path):
    """A token given as a function (``mesh.token_file``: Kubernetes rotates projected tokens by
    replacing the file) is read for each stream: a token that cannot be read fails that stream only,
    and once the file is back the next stream presents what it holds now."""
    from mesh.token_file import token_file

    path = tmp_path / "token"
    path.write_text(token)
    client = DiscoveryClient(plane.config(token_file(path)))
    async with running(client):
        with trio.fail_after(BOUND):
            plane.stop()
            await client.wait_until(lambda: not client.connected)
        rotated = plane.tokens.create(NodeCaller("node-a"))
        with LogWaiter("ambient.xds.client", "no bearer token") as waiter:
            path.unlink()  # unreadable for a while: streams fail, the client keeps its view and retries
            plane.publisher = Publisher()
            plane.publisher.publish(resources(address={W1: workload(W1, "10.0.0.9")}))
            plane.start()
            await waiter.wait()
        assert addresses(client) == {W1: "10.0.0.1", W2: "10.0.0.2"}
        path.write_text(rotated)
        with trio.fail_after(BOUND):
            await client.wait_until(lambda: client.connected and addresses(client) == {W1: "10.0.0.9"})
        plane.publisher.close()
