"""The node's filter on a pod's frames, run on crafted frames with BPF_PROG_TEST_RUN (root: bpf(2)).

The frames the network tests cannot easily send: IP options, later fragments, ARP, runts.
"""

from __future__ import annotations

import ctypes
import os
import struct
from ipaddress import IPv4Address

import pytest

from lab import pod_filter
from lab.topology import FABRIC_SUBNET, POD_NETWORK

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loading an eBPF program"),
]

POD = IPv4Address("10.244.0.2")
BPF_PROG_TEST_RUN = 10
PASS, DROP = pod_filter.TC_ACT_OK, pod_filter.TC_ACT_SHOT


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32), ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32), ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
    ]


@pytest.fixture(scope="module")
def verdict():
    fd = pod_filter.load(pod_filter.program(POD, FABRIC_SUBNET, POD_NETWORK))

    def run(frame: bytes) -> int:
        data = ctypes.create_string_buffer(frame, len(frame))
        attr = _TestRunAttr(prog_fd=fd, data_size_in=len(frame), data_in=ctypes.addressof(data), repeat=1)
        number = pod_filter.BPF_SYSCALL[os.uname().machine]
        assert ctypes.CDLL(None, use_errno=True).syscall(number, BPF_PROG_TEST_RUN, ctypes.byref(attr),
                                                         ctypes.sizeof(attr)) == 0, os.strerror(ctypes.get_errno())
        return attr.retval

    yield run
    os.close(fd)


def ipv4(source: str, destination: str, protocol: int = 6, payload: bytes = b"", *, options: bytes = b"",
         fragment: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(payload), 0, fragment, 64,
                         protocol, 0, IPv4Address(source).packed, IPv4Address(destination).packed)
    return b"\x02" * 12 + b"\x08\x00" + header + options + payload


def tcp(port: int) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, port, 0, 0, 0x50, 2, 1000, 0, 0)


def arp(sender: str) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, b"\x02" * 6, IPv4Address(sender).packed,
                       b"\x00" * 6, IPv4Address("10.244.0.1").packed)
    return b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + body


@pytest.mark.parametrize("frame, expected", [
    (ipv4(str(POD), "10.244.1.7", payload=tcp(8080)), PASS),
    (ipv4(str(POD), "10.244.1.7", payload=tcp(15020)), PASS),  # another pod's 15020 is its own business
    (ipv4(str(POD), "10.244.0.1", payload=tcp(15021)), PASS),  # readiness
    (ipv4(str(POD), "10.244.0.1", payload=tcp(15020)), DROP),
    (ipv4(str(POD), "10.244.3.1", payload=tcp(15020)), DROP),  # another node's gateway
    (ipv4(str(POD), "10.255.0.11", payload=tcp(15020)), DROP),
    (ipv4(str(POD), "10.255.0.2", payload=tcp(15014)), DROP),
    (ipv4(str(POD), "10.255.0.2", 17, payload=tcp(15014)), PASS),  # UDP: nothing listens there
    (ipv4(str(POD), "10.255.0.2", payload=b"\x00" * 8, fragment=100), PASS),  # a later fragment has no ports
    (ipv4(str(POD), "10.255.0.2", payload=tcp(15014), options=b"\x01" * 4), DROP),  # options would move them
    (ipv4("10.244.0.9", "10.244.1.7", payload=tcp(8080)), DROP),
    (ipv4("10.244.0.9", "10.244.1.7", 1, payload=b"\x08" + b"\x00" * 7), DROP),
    (arp(str(POD)), PASS),
    (arp("10.244.0.3"), DROP),  # claiming a neighbour's address
    (ipv4(str(POD), "10.244.1.7", payload=b"\x00" * 6), DROP),  # a runt: 40 bytes
    (b"\x02" * 12 + b"\x86\xdd" + b"\x00" * 60, DROP),  # IPv6 is off in the lab
], ids=lambda value: "" if isinstance(value, bytes) else ("pass" if value == PASS else "drop"))
def test_the_filter_passes_the_pod_s_own_traffic_only(verdict, frame, expected):
    assert verdict(frame) == expected
