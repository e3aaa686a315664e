"""The node's filter on what a pod sends: its own source address only, and no mesh metrics.

A CNI plugin makes sure that a pod sends from its own address (anti-spoofing) and a node firewall
keeps pods off the node's metrics; the lab does both with one small eBPF program per pod, attached by
``lab.network`` at tc ingress of the pod's node-side veth (direct action: the program's return value
is the verdict, so no tc action module is needed, and kernels that lack them still filter). For each
frame the pod sends, in order:

- shorter than ``MIN_FRAME``: dropped (no valid IPv4 or ARP frame is, and it keeps every load below
  inside the frame);
- ARP: passed if its sender IP is the pod's, else dropped (no claiming another pod's address);
- IPv4: dropped unless the header has no options (IHL 5, what every stack sends; it keeps the
  offsets below fixed) and the source is the pod's address; then a TCP first fragment to one of
  ``MESH_METRICS_PORTS`` on a mesh address (the fabric, or a node's pod gateway 10.244.<i>.1) is
  dropped; everything else passes;
- anything else (IPv6 is off in the lab): dropped.

So the address a peer sees, which ``ipBlocks`` rules match, is the pod's; readiness (15021) stays
open to pods, and the fabric side (another node, the control plane, the node itself) still reaches
the metrics, since its packets never cross a pod's veth.

The program is a few dozen instructions assembled here and loaded with the bpf(2) system call; it
needs no compiler and no map, and the kernel keeps it for as long as the filter is attached.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}  # __NR_bpf
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SCHED_CLS = 3
TC_ACT_OK, TC_ACT_SHOT = 0, 2
VERIFIER_LOG_SIZE = 64 * 1024  # the verifier's explanation of a refusal; the program is tiny

# The ports a scraper reads and no pod may: ztunnel's stats (15020) and the control plane's metrics
# (15014). Readiness, 15021, is not one of them.
MESH_METRICS_PORTS = (15020, 15014)
ETH_P_IP, ETH_P_ARP = 0x0800, 0x0806
ETH_HEADER = 14
IPV4_NO_OPTIONS = 0x45  # version 4, header length 5 words
# An Ethernet header and an ARP body (28 bytes), or an IPv4 header and 8 bytes of payload: the
# smallest frame the filter passes, so that every offset it reads lies inside the frame.
MIN_FRAME = ETH_HEADER + 28


@dataclass(frozen=True)
class _Jump:
    code: int
    imm: int
    target: str
    register: int = 0  # the register compared with imm


@dataclass(frozen=True)
class _Label:
    name: str


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


# eBPF opcodes (linux/bpf.h): class | size/op | mode/source.
LD_ABS_W, LD_ABS_H, LD_ABS_B = 0x20, 0x28, 0x30  # r0 = packet[imm], big-endian, r6 = context
LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
MOV64_X, MOV64_K, AND64_K = 0xBF, 0xB7, 0x57
JEQ_K, JNE_K, JLT_K, JA = 0x15, 0x55, 0xA5, 0x05
JEQ32_K, JNE32_K = 0x16, 0x56  # 32-bit compares: an address above 127.255.255.255 stays positive
EXIT = 0x95
SKB_LEN = 0  # offsetof(struct __sk_buff, len)


def _u32(value: int) -> int:
    """``value`` as the signed 32-bit immediate that has the same bits."""
    return struct.unpack("<i", struct.pack("<I", value))[0]


def program(pod_ip: IPv4Address, fabric: IPv4Network, pod_network: IPv4Network) -> bytes:
    """The filter's instructions for the pod at ``pod_ip`` (see the module docstring)."""
    own = _u32(int(pod_ip))
    gateway_mask = int(pod_network.netmask) | 0xFF  # 10.244.<any>.1: a node's pod gateway
    gateway = int(pod_network.network_address) | 1
    ip = ETH_HEADER
    code: list[bytes | _Jump | _Label] = [
        _insn(MOV64_X, dst=6, src=1),  # LD_ABS takes the context from r6
        _insn(LDX_MEM_W, dst=0, src=1, off=SKB_LEN),
        _Jump(JLT_K, MIN_FRAME, "drop"),
        _insn(LD_ABS_H, imm=12),  # EtherType
        _Jump(JEQ_K, ETH_P_ARP, "arp"),
        _Jump(JNE_K, ETH_P_IP, "drop"),
        _insn(LD_ABS_B, imm=ip),
        _Jump(JNE_K, IPV4_NO_OPTIONS, "drop"),
        _insn(LD_ABS_W, imm=ip + 12),  # source address
        _Jump(JNE32_K, own, "drop"),
        _insn(LD_ABS_B, imm=ip + 9),  # protocol
        _Jump(JNE_K, 6, "pass"),  # TCP only
        _insn(LD_ABS_H, imm=ip + 6),
        _insn(AND64_K, dst=0, imm=0x1FFF),  # fragment offset: only a first fragment has the ports
        _Jump(JNE_K, 0, "pass"),
        _insn(LD_ABS_H, imm=ip + 20 + 2),  # TCP destination port
        *(_Jump(JEQ_K, port, "metrics") for port in MESH_METRICS_PORTS),
        _Jump(JA, 0, "pass"),
        _Label("metrics"),
        _insn(LD_ABS_W, imm=ip + 16),  # destination address
        _insn(MOV64_X, dst=1, src=0),
        _insn(AND64_K, dst=1, imm=_u32(int(fabric.netmask))),
        _Jump(JEQ32_K, _u32(int(fabric.network_address)), "drop", register=1),
        _insn(AND64_K, dst=0, imm=_u32(gateway_mask)),
        _Jump(JEQ32_K, _u32(gateway), "drop"),
        _Jump(JA, 0, "pass"),
        _Label("arp"),
        _insn(LD_ABS_W, imm=ETH_HEADER + 14),  # sender IP: after types, sizes, opcode, sender MAC
        _Jump(JNE32_K, own, "drop"),
        _Label("pass"),
        _insn(MOV64_K, dst=0, imm=TC_ACT_OK),
        _insn(EXIT),
        _Label("drop"),
        _insn(MOV64_K, dst=0, imm=TC_ACT_SHOT),
        _insn(EXIT),
    ]
    return _assemble(code)


def _assemble(code: list[bytes | _Jump | _Label]) -> bytes:
    labels: dict[str, int] = {}
    index = 0
    for item in code:
        if isinstance(item, _Label):
            labels[item.name] = index
        else:
            index += 1
    out, index = [], 0
    for item in code:
        if isinstance(item, _Label):
            continue
        if isinstance(item, _Jump):
            item = _insn(item.code, dst=item.register, off=labels[item.target] - index - 1, imm=item.imm)
        out.append(item)
        index += 1
    return b"".join(out)


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
    ]


def load(instructions: bytes, name: str = "amb_pod_filter") -> int:
    """Load ``instructions`` as a tc classifier; its fd (the caller closes it once attached)."""
    try:
        number = BPF_SYSCALL[os.uname().machine]
    except KeyError:
        raise OSError(f"the lab's pod filter does not know bpf(2) on {os.uname().machine}") from None
    insns = ctypes.create_string_buffer(instructions, len(instructions))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(VERIFIER_LOG_SIZE)
    attr = _ProgLoadAttr(
        prog_type=BPF_PROG_TYPE_SCHED_CLS, insn_cnt=len(instructions) // 8,
        insns=ctypes.addressof(insns), license=ctypes.addressof(license),
        log_level=1, log_size=VERIFIER_LOG_SIZE, log_buf=ctypes.addressof(log), prog_name=name.encode()[:15],
    )
    fd = _LIBC.syscall(number, BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        verifier = log.value.decode(errors="replace").strip()
        raise OSError(err, f"loading the pod filter failed: {os.strerror(err)}"
                           + (f"; verifier: {verifier[-500:]}" if verifier else ""))
    return int(fd)
