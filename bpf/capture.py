"""One pod's traffic capture: the sk_lookup program of capture.bpf.c with its own maps.

How it works: `PodCapture.load(pod_ip)` loads a fresh instance of the object (each pod has its own
`listeners`, `config`, `bypass` and `counters` maps) and writes the pod's config. `attach(netns_fd)`
attaches the program to the pod's netns through a BPF link. `pin(directory)` pins the link and the
maps under a per-pod directory of the node's bpffs, so that capture outlives the agent (fail
closed); `PodCapture.adopt(directory)` takes them back after a restart, without attaching a second
program; `unpin` removes the pins. ztunnel puts its listeners in `listeners` (slots below) and its
own connections to the app in `bypass`, through the map fds the agent hands it (ZDS).

The struct layouts here are those of capture.bpf.c; `sk_lookup_context` builds the `bpf_sk_lookup`
context for BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from bpf.libbpf import BpfObject, Link, Map, possible_cpus
from mesh.ports import HBONE_PORT

OBJECT_PATH = Path(__file__).with_name("capture.bpf.o")
PROGRAM = "capture"
MAPS = ("listeners", "config", "bypass", "counters")
LINK_PIN = "link"
PROXY_MARK = 0x539  # SO_MARK of ztunnel's own sockets: routed by the main table, never captured

_CONFIG = struct.Struct("=4sHBB")  # pod_ip (network order), hbone_port, enabled, fail_open
_BYPASS_KEY = struct.Struct("=4s4sHH")  # remote ip, local ip (network order), remote port, local port
# struct bpf_sk_lookup: cookie, family, protocol, remote_ip4, remote_ip6[4], remote_port (BE), pad,
# local_ip4, local_ip6[4], local_port (host order), ingress_ifindex.
_SK_LOOKUP = struct.Struct("=QII4s16s2sH4s16sII4x")  # 72 bytes, as the kernel aligns it
_U32 = struct.Struct("=I")
SK_DROP, SK_PASS = 0, 1


class Slot(enum.IntEnum):
    OUTBOUND = 0  # 15001
    INBOUND = 1  # 15006
    HBONE = 2  # 15008


class Decision(enum.IntEnum):
    """Indexes of the `counters` map, as in capture.bpf.c."""

    OUTBOUND = 0
    INBOUND = 1
    HBONE = 2
    PASS_NOT_TCP4 = 3
    PASS_LOOPBACK = 4
    PASS_SELF = 5
    PASS_BYPASS = 6
    PASS_DISABLED = 7
    PASS_OTHER = 8
    DROP_NO_LISTENER = 9
    PASS_NO_LISTENER = 10


def config_value(pod_ip: str, hbone_port: int = HBONE_PORT, enabled: bool = True, fail_open: bool = False) -> bytes:
    return _CONFIG.pack(socket.inet_aton(pod_ip), hbone_port, int(enabled), int(fail_open))


def bypass_key(remote_ip: str, remote_port: int, local_ip: str, local_port: int) -> bytes:
    """The key ztunnel adds for its own connection from the client's address to the app."""
    return _BYPASS_KEY.pack(socket.inet_aton(remote_ip), socket.inet_aton(local_ip), remote_port, local_port)


def sk_lookup_context(remote: tuple[str, int], local: tuple[str, int], protocol: int = socket.IPPROTO_TCP,
                      family: int = socket.AF_INET) -> bytes:
    """A `bpf_sk_lookup` for a connection from `remote` to `local` (as seen by the receiving side)."""
    return _SK_LOOKUP.pack(0, family, protocol, socket.inet_aton(remote[0]), bytes(16),
                           struct.pack("!H", remote[1]), 0, socket.inet_aton(local[0]), bytes(16), local[1], 0)


def selected_cookie(context_out: bytes) -> int:
    """The cookie of the socket the program selected in a test run (0: none)."""
    return _SK_LOOKUP.unpack(context_out[: _SK_LOOKUP.size])[0] if context_out else 0


def socket_cookie(sock: socket.socket) -> int:
    return struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, 57, 8))[0]  # SO_COOKIE


@dataclass
class PodCapture:
    maps: dict[str, Map]
    link: Link | None = None
    obj: BpfObject | None = None  # None when adopted from pins: the maps and link are by fd

    @classmethod
    def load(cls, pod_ip: str, hbone_port: int = HBONE_PORT, fail_open: bool = False,
             object_path: Path = OBJECT_PATH) -> PodCapture:
        obj = BpfObject.open(object_path)
        try:
            capture = cls({name: obj.map(name) for name in MAPS}, None, obj)
            capture.maps["config"].update(_U32.pack(0), config_value(pod_ip, hbone_port, True, fail_open))
        except BaseException:
            obj.close()
            raise
        return capture

    @property
    def program(self):
        if self.obj is None:
            raise RuntimeError("an adopted capture has no program object; it is already attached")
        return self.obj.program(PROGRAM)

    def attach(self, netns_fd: int) -> None:
        self.link = self.program.attach_netns(netns_fd)

    def set_listener(self, slot: Slot, sock: socket.socket) -> None:
        self.maps["listeners"].update(_U32.pack(slot), struct.pack("=Q", sock.fileno()))

    def clear_listener(self, slot: Slot) -> None:
        self.maps["listeners"].delete(_U32.pack(slot))

    def set_enabled(self, pod_ip: str, enabled: bool, hbone_port: int = HBONE_PORT, fail_open: bool = False) -> None:
        self.maps["config"].update(_U32.pack(0), config_value(pod_ip, hbone_port, enabled, fail_open))

    def pod_ip(self) -> str | None:
        """The pod IP in the config map (how an adopted capture says whose it is)."""
        raw = self.maps["config"].lookup(_U32.pack(0), _CONFIG.size)
        return socket.inet_ntoa(_CONFIG.unpack(raw)[0]) if raw else None

    def netns_inode(self) -> int:
        """The inode of the netns the program is attached to; 0 if unattached or that netns is gone."""
        return self.link.info().netns_inode if self.link is not None else 0

    def counters(self) -> dict[Decision, int]:
        cpus = possible_cpus()
        result = {}
        for decision in Decision:
            raw = self.maps["counters"].lookup(_U32.pack(decision), 8 * cpus) or bytes(8 * cpus)
            result[decision] = sum(struct.unpack(f"={cpus}Q", raw))
        return result

    def test_run(self, remote: tuple[str, int], local: tuple[str, int],
                 protocol: int = socket.IPPROTO_TCP) -> tuple[int, int]:
        """(SK_PASS or SK_DROP, cookie of the selected socket or 0) for one connection."""
        verdict, context = self.program.test_run(sk_lookup_context(remote, local, protocol))
        return verdict, selected_cookie(context)

    def pin(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, exist_ok=False)
        for name, bpf_map in self.maps.items():
            bpf_map.pin(directory / name)
        if self.link is not None:
            self.link.pin(directory / LINK_PIN)

    @classmethod
    def adopt(cls, directory: Path) -> PodCapture:
        maps: dict[str, Map] = {}
        try:
            for name in MAPS:
                maps[name] = Map.from_pin(directory / name, name)
            link = Link.from_pin(directory / LINK_PIN) if (directory / LINK_PIN).exists() else None
        except BaseException:
            for bpf_map in maps.values():  # our references would keep the maps alive
                bpf_map.close()
            raise
        return cls(maps, link, None)

    @staticmethod
    def unpin(directory: Path) -> None:
        """Remove the pins: the link (and so the capture) goes once no process holds it."""
        for name in (LINK_PIN, *MAPS):
            (directory / name).unlink(missing_ok=True)
        if directory.exists():
            directory.rmdir()

    def close(self) -> None:
        for bpf_map in self.maps.values():
            bpf_map.close()
        if self.link is not None:
            self.link.close()
            self.link = None
        if self.obj is not None:
            self.obj.close()
            self.obj = None
