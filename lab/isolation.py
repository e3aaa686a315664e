"""What a pod's process may see of the node: its own mount namespace, reduced capabilities, a user.

The lab's pods run on the machine that also holds the lab's secrets: the CA key and the node tokens
(``<state>/controlplane/ca``, ``<state>/nodes/<node>/token``), the node agents' bpffs pins and ZDS
sockets. A Kubernetes node keeps those out of a container's reach with its own root filesystem and
the container runtime's default capability set; the lab, which runs commands rather than images, does
the same with the few system calls that matter, in the child between fork and exec (``PodSandbox``):

1. ``unshare(CLONE_NEWNS)`` and ``/`` made a recursive *slave*: the pod gets a copy of the mount table
   in which its own mounts stay its own, while unmounts on the host (a lab netns removed, a bpffs
   unpinned) still reach it, so it never keeps one of them alive.
2. An empty, read-only tmpfs over each hidden directory (every lab's state): a path into it is ENOENT.
3. The capability bounding set cut to ``POD_CAPABILITIES`` (a container runtime's default set, less
   what would undo 1-2 or reach raw devices): a root pod can no longer mount, unmount, setns, ptrace
   or read ``/proc/<pid>/root`` of the node's components (that needs all of their capabilities).
4. ``run_as_group`` and ``run_as_user``, as a securityContext's runAsGroup/runAsUser: set last, so a
   non-root pod has no capability at all.

Each step is a plain system call through ctypes (no import, no lock, as a preexec function must),
prepared in the parent; anything that can be checked in the parent is checked there, so a failure in
the child is a rare, real one.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_LIBC.unshare.argtypes = [ctypes.c_int]
_LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REC, MS_SLAVE = 0x4000, 0x80000
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
CAP_LAST_CAP_FILE = Path("/proc/sys/kernel/cap_last_cap")

# The capabilities a pod keeps (linux/capability.h numbers): Docker's and containerd's default set,
# without CAP_MKNOD (a device node would reach the disk under the hidden directories) and without
# CAP_NET_RAW (raw sockets forge any source address; the node's anti-spoofing filter drops those,
# but a pod has no business sending them). Everything else, CAP_SYS_ADMIN, CAP_NET_ADMIN,
# CAP_SYS_PTRACE and CAP_BPF first of all, is dropped from the bounding set, which no later exec of
# a setuid or file-capability program can get back.
POD_CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
    "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_SYS_CHROOT": 18,
    "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}
# An empty directory is all the cover needs: one inode, one page, and read-only so that no pod can
# put anything in it (and no pod can fill the node's memory through it).
HIDDEN_TMPFS_OPTIONS = b"size=4k,nr_inodes=1,mode=0555"
MAX_ID = 2**32 - 2  # a uid or gid: (uid_t)-1 means "unchanged" to the kernel, so it is not one


class SandboxError(OSError):
    """A step of the pod's isolation failed in the child (it does not run unisolated)."""


@dataclass(frozen=True)
class PodSandbox:
    """How one pod's processes are isolated from the node: see the module docstring."""

    hidden: tuple[Path, ...]  # directories the pod must not see (absolute)
    run_as_user: int | None = None
    run_as_group: int | None = None

    def __post_init__(self) -> None:
        hidden = tuple(Path(path) for path in self.hidden)
        for path in hidden:
            if not path.is_absolute() or path == Path("/"):
                raise ValueError(f"a hidden directory must be an absolute path below /, not {str(path)!r}")
        for field, value in (("run_as_user", self.run_as_user), ("run_as_group", self.run_as_group)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 <= value <= MAX_ID):
                raise ValueError(f"{field} must be a number from 0 to {MAX_ID}, not {value!r}")
        object.__setattr__(self, "hidden", hidden)

    def prepare(self) -> Callable[[], None]:
        """The function that isolates the calling process: run it in the child after fork (after it
        entered its netns and cgroup, which need the capabilities it drops), or just before exec."""
        # Only directories that exist can be covered; one created later is empty anyway.
        hidden = [os.fsencode(path) for path in self.hidden if path.is_dir()]
        drop = [cap for cap in range(last_capability() + 1) if cap not in POD_CAPABILITIES.values()]
        user, group = self.run_as_user, self.run_as_group

        def isolate() -> None:
            _check(_LIBC.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            _check(_LIBC.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "making / a slave mount")
            for path in hidden:
                flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
                _check(_LIBC.mount(b"tmpfs", path, b"tmpfs", flags, HIDDEN_TMPFS_OPTIONS), "hiding a directory")
            _check(_LIBC.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient capabilities")
            for cap in drop:
                _check(_LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "dropping a capability")
            if group is not None or user is not None:
                os.setgroups([])  # root's supplementary groups are the node's, not the pod's
            if group is not None:
                os.setresgid(group, group, group)
            if user is not None:
                os.setresuid(user, user, user)  # from root to another uid: every capability goes

        return isolate


def last_capability() -> int:
    """The highest capability number this kernel knows (40 on Linux 5.9 and later)."""
    return int(CAP_LAST_CAP_FILE.read_text())


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SandboxError(err, f"pod isolation: {what} failed: {os.strerror(err)}")
