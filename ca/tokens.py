"""Bearer tokens: who is calling the CA.

Two kinds of caller. A workload token is bound to one SPIFFE ID and obtains certificates for that
ID only. A node token is bound to a node name and obtains certificates for the identities of the
pods scheduled on that node (``ca.placement``), which is how a ztunnel serves its node's pods.

A node token can also be bound to the addresses its node connects from (``NodeCaller.addresses``):
the CA then refuses it from any other peer address, so a token that leaked to a pod or to another
node is of no use there. Unbound tokens (no addresses) work from anywhere, as before.

Tokens are 256 random bits; the store keeps only their SHA-256 digests (``tokens.json``, mode
0600), so reading the file gives no usable token. A plain hash suffices for secrets of that entropy:
there is nothing to brute-force. The running CA sees tokens created after it started.

A third kind of caller, ``KubeCaller``, is not in this store: it presents a Kubernetes
service-account token that ``ca.kube_auth`` has the API server review. The project's tokens all
start with ``TOKEN_PREFIX`` (``is_project_token``), which is how the CA tells the two apart without
ever sending one of its own secrets to the API server.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import secrets
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from mesh.identity import InvalidSpiffeId, SpiffeId, validate_k8s_name
from mesh.watched_file import WatchedJsonFile, write_json_atomic

TOKEN_FILE = "tokens.json"
TOKEN_PREFIX = "amt_"  # recognisable by secret scanners


PeerAddress = IPv4Address | IPv6Address


@dataclass(frozen=True)
class NodeCaller:
    node: str
    addresses: frozenset[PeerAddress] = frozenset()  # where the token is valid from; empty: anywhere

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", frozenset(_unmapped(ip_address(a)) for a in self.addresses))

    def allows_peer(self, peer: PeerAddress | None) -> bool:
        """Whether a request from ``peer`` (None: an unknown address) may use this token."""
        return not self.addresses or (peer is not None and _unmapped(peer) in self.addresses)

    def __str__(self) -> str:
        return f"node {self.node}"


@dataclass(frozen=True)
class WorkloadCaller:
    identity: SpiffeId

    def __str__(self) -> str:
        return f"workload {self.identity}"


@dataclass(frozen=True)
class BoundPod:
    """The pod a Kubernetes token is bound to, as the TokenReview's ``user.extra`` names it. ``node``
    is there when the API server says so (Kubernetes 1.30+ adds it to bound tokens)."""

    namespace: str
    name: str
    uid: str
    node: str | None = None

    def __str__(self) -> str:
        return f"pod {self.namespace}/{self.name}" + (f" on node {self.node}" if self.node else "")


@dataclass(frozen=True)
class KubeCaller:
    """A caller authenticated by the Kubernetes API (TokenReview): it obtains its own identity, and
    a node proxy (``node_proxy``: its service account is one the CA trusts as ztunnel's) may also
    obtain the identities of the pods on its bound pod's node."""

    identity: SpiffeId
    pod: BoundPod | None = None
    node_proxy: bool = False

    def __str__(self) -> str:
        return f"kubernetes {self.identity}" + (f" ({self.pod})" if self.pod else "")


StoredCaller = NodeCaller | WorkloadCaller  # the callers a project token stands for
Caller = StoredCaller | KubeCaller


def is_project_token(token: str) -> bool:
    """Whether ``token`` has the shape of this CA's own tokens (``TokenStore.create``)."""
    return token.startswith(TOKEN_PREFIX)


def parse_bearer(authorization: str | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header value; None if it is not one."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def parse_peer(peer: str) -> PeerAddress | None:
    """The IP address of a gRPC peer string (``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``); None for
    any other kind of peer (``unix:...``) or a string that is not one."""
    kind, _, rest = peer.partition(":")
    host = rest.rpartition(":")[0]
    if kind not in ("ipv4", "ipv6") or not host:
        return None
    try:
        return _unmapped(ip_address(host.removeprefix("[").removesuffix("]").split("%", 1)[0]))
    except ValueError:
        return None


def _unmapped(address: PeerAddress) -> PeerAddress:
    # A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d: the same peer.
    return (address.ipv4_mapped or address) if isinstance(address, IPv6Address) else address


def _caller_record(caller: StoredCaller) -> dict[str, object]:
    if isinstance(caller, NodeCaller):
        record: dict[str, object] = {"node": caller.node}
        if caller.addresses:
            record["addresses"] = sorted(str(a) for a in caller.addresses)
        return record
    return {"identity": str(caller.identity)}


def _parse_record(index: int, record: object) -> tuple[str, StoredCaller]:
    where = f"tokens[{index}]"
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise ValueError(f"{where}: expected an object with a sha256 digest")
    try:
        if "node" in record:
            addresses = record.get("addresses", [])
            if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
                raise ValueError(f"{where}: addresses must be a list of IP addresses")
            try:
                bound = frozenset(ip_address(a) for a in addresses)
            except ValueError as exc:
                raise ValueError(f"{where}: addresses: {exc}") from None
            caller: StoredCaller = NodeCaller(validate_k8s_name("node", record["node"]), bound)
        elif "identity" in record:
            caller = WorkloadCaller(SpiffeId.parse(record["identity"]))
        else:
            raise ValueError(f"{where}: names neither a node nor an identity")
    except InvalidSpiffeId as exc:
        raise ValueError(f"{where}: {exc}") from None
    return record["sha256"], caller


def parse_tokens(data: object) -> dict[str, StoredCaller]:
    if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
        raise ValueError('expected {"tokens": [...]}')
    return dict(_parse_record(i, r) for i, r in enumerate(data["tokens"]))


class TokenStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: WatchedJsonFile[dict[str, StoredCaller]] = WatchedJsonFile(path, parse_tokens, {})

    def authenticate(self, token: str) -> StoredCaller | None:
        """The caller a presented token stands for, or None for an unknown token."""
        return self._file.get().get(token_digest(token))

    def create(self, caller: Caller) -> str:
        """Make a new token for ``caller``, record its digest, and return the token itself: the
        only time it is ever seen."""
        if isinstance(caller, KubeCaller):
            raise TypeError("a Kubernetes caller authenticates with its service-account token, not a CA token")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = {**_caller_record(caller), "sha256": token_digest(token),
                  "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        lock_path = self._path.with_name(f".{self._path.name}.lock")
        with open(lock_path, "a") as lock:  # serialise concurrent `token create` runs
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = json.loads(self._path.read_text()) if self._path.exists() else {"tokens": []}
            parse_tokens(data)  # refuse to append to a file we could not read back
            data["tokens"].append(record)
            write_json_atomic(self._path, data)
        return token
