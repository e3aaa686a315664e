"""What the lab knows of its node agents: each one's ``status.json`` as last read, and a pod's capture.

A node agent (``bpf.agent``) rewrites ``<node dir>/status.json`` atomically whenever what it holds
changes: its pid and, per pod, whether it is captured (handed to ztunnel), acknowledged by ztunnel,
enrolled (both), the netns inode it is attached to, and any error. The lab polls each file and
parses it again whenever its *content* differs from the last read. A stat signature is not enough:
two rewrites of equal size within one timestamp tick keep (mtime, size), and a file system may give
the next new file the inode number of the one it replaced, so (inode, mtime, size) can come back
too; a missed rewrite would hold a pod's status at "captured, awaiting ztunnel" until the next one.
The file is a few hundred bytes: reading it every poll costs less than any doubt.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

log = logging.getLogger("ambient.lab")

# A pod's capture, as `lab status` shows it (see `capture_state`).
ENROLLED = "enrolled"
AWAITING_ZTUNNEL = "captured, awaiting ztunnel"
PENDING = "pending"
NOT_LISTED = "-"


@dataclass(frozen=True)
class AgentStatus:
    """A node agent's status.json as last read: its bytes (None: no file), the agent's pid, and its
    entry per pod (namespace, name)."""

    content: bytes | None = None
    pid: int | None = None
    pods: Mapping[tuple[str, str], dict] = field(default_factory=lambda: MappingProxyType({}))


def read_agent_status(path: Path, previous: AgentStatus | None) -> AgentStatus | None:
    """The agent's status in ``path`` if it differs from ``previous`` (None for the first read);
    None if it is unchanged. A file that is not JSON vouches for nothing until it is rewritten."""
    try:
        content: bytes | None = path.read_bytes()
    except FileNotFoundError:
        content = None
    if previous is not None and content == previous.content:
        return None
    if content is None:
        return AgentStatus()
    try:
        status = json.loads(content)
    except ValueError as exc:
        log.error("%s is not valid JSON (%s); its node agent vouches for nothing until it rewrites it", path, exc)
        return AgentStatus(content)
    pods = {(p["namespace"], p["name"]): p for p in status.get("pods", ())}
    return AgentStatus(content, status.get("pid"), MappingProxyType(pods))


def capture_state(enrollment: Mapping | None) -> str:
    """How the node agent holds a pod (its entry in the agent's status, None if not listed)."""
    if enrollment is None:
        return NOT_LISTED
    if enrollment.get("error"):
        return f"error: {enrollment['error']}"
    if enrollment["enrolled"]:
        return ENROLLED
    return AWAITING_ZTUNNEL if enrollment["captured"] else PENDING
