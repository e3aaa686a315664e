"""A stand-in for ztunnel, for the capture tests: ``python -m tests.e2e.standin_ztunnel ZDS_SOCKET``.

It speaks ZDS to the node agent like ztunnel will (issue #6): for each AddWorkload it takes the pod's
fds (``bpf.agent.POD_FDS``: netns, listener SOCKMAP, bypass map), opens the three listeners inside
the pod's netns with DESIGN.md section 5's socket options (15001 with IP_TRANSPARENT; 15006 and 15008
with SO_MARK 0x539), puts them in the pod's SOCKMAP and acknowledges. Instead of proxying, it answers
every connection it accepts with one JSON line saying where the connection landed, then closes it:
``{"pod": "ns/name", "listener": 15006, "original": [ip, port], "peer": [ip, port]}``. DelWorkload
closes that pod's listeners (which takes them out of the SOCKMAP). Like ztunnel, it keeps serving its
pods while the agent is away and reconnects; it prints "connected" at each connection, and exits on
SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

import trio

from bpf.agent import POD_FDS
from bpf.capture import Slot
from bpf.libbpf import Map
from mesh.zds import close_fds, connect_zds
from ztunnel.sockets import LISTENER_PORTS, open_pod_listeners, put_in_sockmap

LISTENERS = LISTENER_PORTS


async def serve_listener(pod: str, port: int, sock: socket.socket) -> None:
    listener = trio.socket.from_stdlib_socket(sock)
    with listener:
        while True:
            conn, peer = await listener.accept()
            with conn:
                line = {"pod": pod, "listener": port, "original": list(conn.getsockname()), "peer": list(peer)}
                await conn.send((json.dumps(line) + "\n").encode())


class Pod:
    def __init__(self, name: str, netns_inode: int, sockets: dict[Slot, socket.socket]) -> None:
        self.name, self.netns_inode, self.sockets = name, netns_inode, sockets
        self.scope = trio.CancelScope()
        self.closed = trio.Event()

    async def serve(self) -> None:
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    for slot, sock in self.sockets.items():
                        nursery.start_soon(serve_listener, self.name, LISTENERS[slot], sock)
        finally:
            for sock in self.sockets.values():
                sock.close()
            self.closed.set()

    async def close(self) -> None:
        self.scope.cancel()
        await self.closed.wait()


async def take(pods: dict[str, Pod], nursery: trio.Nursery, request, fds: list[int]) -> str:
    """Serve the pod of an AddWorkload; returns the error to ack with, or ""."""
    uid, info = request.add.uid, request.add.workload_info
    if len(fds) != len(POD_FDS):
        return f"expected {len(POD_FDS)} fds ({', '.join(POD_FDS)}), got {len(fds)}"
    inode = os.fstat(fds[0]).st_ino
    pod = pods.get(uid)
    if pod is not None and pod.netns_inode != inode:  # recreated: new netns, new listeners
        await pods.pop(uid).close()
        pod = None
    if pod is None:
        pod = pods[uid] = Pod(f"{info.namespace}/{info.name}", inode, open_pod_listeners(fds[0]))
        nursery.start_soon(pod.serve)
    put_in_sockmap(Map(fds[1], "listeners"), pod.sockets)  # again on a replay: the agent may hold new maps
    return ""


async def follow_agent(socket_path: str, nursery: trio.Nursery) -> None:
    """Like ztunnel: keep serving the pods while the agent is away, reconnect, and after a replay's
    SnapshotSent drop the pods it did not name."""
    pods: dict[str, Pod] = {}
    while True:
        try:
            async with connect_zds(socket_path) as zds:
                print("connected", flush=True)
                replayed: set[str] | None = set()
                async for request, fds in zds:
                    kind = request.WhichOneof("payload")
                    error = ""
                    try:
                        if kind == "add":
                            error = await take(pods, nursery, request, fds)
                            if replayed is not None:
                                replayed.add(request.add.uid)
                        elif kind == "del":  # "del" is a keyword: the field is reached with getattr
                            pod = pods.pop(getattr(request, "del").uid, None)
                            if pod is not None:
                                await pod.close()
                        elif kind == "snapshot_sent" and replayed is not None:
                            for uid in set(pods) - replayed:
                                await pods.pop(uid).close()
                            replayed = None
                    except OSError as exc:
                        error = str(exc)
                    finally:
                        close_fds(fds)
                    await zds.ack(error)
        except OSError:  # no agent (ZdsConnectError), or it died mid-message
            pass
        await trio.sleep(0.1)  # the agent is restarting: try again


async def main(socket_path: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_agent, socket_path, nursery)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
