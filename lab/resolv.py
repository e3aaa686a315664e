"""A pod's /etc/resolv.conf: Kubernetes' ClusterFirst policy, bind-mounted in the pod's own mount namespace.

How it works: ``resolv_conf`` writes what the kubelet writes for a pod with dnsPolicy ClusterFirst (the
cluster DNS server, the search path of the pod's namespace, ndots:5, so that ``httpbin`` and
``httpbin.default`` are tried as ``httpbin.default.svc.cluster.local`` first). ``prepare_mount``
returns the function a pod's process runs between fork and exec: ``unshare(CLONE_NEWNS)``, ``/`` made a
recursive slave (the pod's mounts stay its own; the host's unmounts still reach it), the file bound over
/etc/resolv.conf and the bind made read-only. The host's /etc/resolv.conf is never written: the mount
exists only in the pod's namespace, and it goes with the pod's last process. If /etc/resolv.conf is a
symlink, the mount lands on its target, still only in that namespace.

It runs before the pod's sandbox (``lab.isolation``), which hides the lab's state directory, where the
file lives, and drops CAP_SYS_ADMIN: the bind made first keeps the file, and no pod can remount it
writable. System calls only in the child, through ctypes prepared here (as ``lab.isolation``).
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_LIBC.unshare.argtypes = [ctypes.c_int]

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_SLAVE = 0x1, 0x20, 0x1000, 0x4000, 0x80000
ETC_RESOLV_CONF = b"/etc/resolv.conf"
CLUSTER_DOMAIN = "cluster.local"  # the kubelet's --cluster-domain default
NDOTS = 5  # the kubelet's: a name with fewer dots goes through the search path first


class ResolvMountError(OSError):
    """A step of the bind mount failed in the child (the process does not run with the host's file)."""


def resolv_conf(namespace: str, nameserver: str) -> str:
    """The file of a pod in ``namespace`` (dnsPolicy ClusterFirst)."""
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"nameserver {nameserver}\nsearch {search}\noptions ndots:{NDOTS}\n"


def write_resolv_conf(path: Path, namespace: str, nameserver: str) -> Path:
    """Write the file of ``namespace`` at ``path`` unless it holds that already (0644: a pod's process
    of any user reads it), by rename from a temporary file of its own (pods of one namespace start side
    by side), so a process starting meanwhile binds the old or the new file, whole."""
    content = resolv_conf(namespace, nameserver)
    try:
        if path.read_text() == content:
            return path
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def prepare_mount(path: Path) -> Callable[[], None]:
    """The child's step (see the module docstring); checked here first, so a failure there is rare."""
    if not path.is_file():
        raise FileNotFoundError(f"resolv.conf for the pod: {path} is not a file")
    source = os.fsencode(path)

    def mount() -> None:
        _check(_LIBC.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _check(_LIBC.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "making / a slave mount")
        _check(_LIBC.mount(source, ETC_RESOLV_CONF, None, MS_BIND, None), "binding /etc/resolv.conf")
        _check(_LIBC.mount(None, ETC_RESOLV_CONF, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None),
               "making /etc/resolv.conf read-only")

    return mount


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise ResolvMountError(err, f"pod resolv.conf: {what} failed: {os.strerror(err)}")
