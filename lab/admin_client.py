"""Reading a lab ztunnel's ``/config_dump`` from its admin port, for the commands that ask a ztunnel.

ztunnel's admin port listens on loopback only (the dump names every workload), and in the lab that
loopback is the one inside each node's network namespace. ``admin_request`` makes one request
(``fetch_config_dump``: ``GET /config_dump``; ``ztunnel-config log``: ``POST /logging``): when the
target names a netns, the request runs in a worker thread that enters
the netns first (``setns`` moves only the calling thread; the thread ends with the request, and the
caller stays in its own netns). ``node_admin_target`` builds the target for a node entry of the lab's
status. Failures (no such netns, nothing listening, an error status, bytes that are not a JSON
object) raise ``ConfigFetchError`` with one line that says what to do; ``NetnsAccessError``, one of
them, is the failure that waiting cannot cure (entering a netns needs root). Used by
``ambient ztunnel-config`` and by ``ambient waypoint apply --wait``.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from lab.cli import LabError
from mesh.addresses import format_address
from mesh.netns import enter_netns, netns_path as named_netns_path
from ztunnel.admin import ADMIN_PORT

LOOPBACK = "127.0.0.1"  # where ztunnel's admin port listens, inside its node's netns
DEFAULT_TIMEOUT = 5.0  # seconds for one request to ztunnel's admin port


class ConfigFetchError(LabError):
    """The config dump could not be read; the message says from where and why."""


class NetnsAccessError(ConfigFetchError):
    """The node's network namespace could not be entered (not root): asking again will not help."""


@dataclass(frozen=True)
class AdminTarget:
    host: str
    port: int
    netns_path: str | None = None  # enter this network namespace first
    where: str = ""  # "in node node-0 of lab 'ambient'", for messages

    @property
    def description(self) -> str:
        return f"ztunnel admin at {format_address(self.host, self.port)}{' ' + self.where if self.where else ''}"


def node_admin_target(node: Mapping, lab: str) -> AdminTarget:
    """The admin port of the ztunnel of ``node``, a node entry of the lab's status (name, netns)."""
    return AdminTarget(LOOPBACK, ADMIN_PORT, named_netns_path(node["netns"]), f"in node {node['name']} of lab {lab!r}")


def fetch_config_dump(target: AdminTarget, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """GET /config_dump from ``target``, in its netns if it names one; the JSON object."""
    where = target.description
    body = admin_request(target, "GET", "/config_dump", timeout, {"Accept": "application/json"})
    try:
        dump = json.loads(body)
    except ValueError as exc:
        raise ConfigFetchError(f"{where} sent a config dump that is not JSON ({exc})") from None
    if not isinstance(dump, dict):
        raise ConfigFetchError(f"{where} sent a config dump that is not a JSON object")
    return dump


def admin_request(target: AdminTarget, method: str, path: str, timeout: float = DEFAULT_TIMEOUT,
                  headers: Mapping[str, str] | None = None) -> bytes:
    """One request to ``target``'s admin port, in its netns if it names one: the body of a 200 answer
    (anything else is a ``ConfigFetchError``)."""
    netns_path = target.netns_path
    if netns_path is None:
        return _request(target, method, path, timeout, headers)
    outcome: list = []

    def in_netns() -> None:
        try:
            try:
                fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise ConfigFetchError(f"{target.netns_path} does not exist: is the lab up?") from None
            try:
                enter_netns(fd)
            except PermissionError:
                raise NetnsAccessError(f"entering the network namespace {target.netns_path} needs root") from None
            finally:
                os.close(fd)
            outcome.append(_request(target, method, path, timeout, headers))
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            outcome.append(exc)

    worker = threading.Thread(target=in_netns, name="ztunnel-admin-netns", daemon=True)
    worker.start()
    worker.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _request(target: AdminTarget, method: str, path: str, timeout: float,
             headers: Mapping[str, str] | None) -> bytes:
    where = target.description
    connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        connection.request(method, path, headers=dict(headers or {}))
        response = connection.getresponse()
        body = response.read()
    except ConnectionRefusedError:
        raise ConfigFetchError(f"{where}: connection refused; is ztunnel running there?") from None
    except TimeoutError:
        raise ConfigFetchError(f"{where}: no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ConfigFetchError(f"{where}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}") \
            from None
    finally:
        connection.close()
    if response.status != 200:
        first = body.decode("utf-8", "replace").strip().splitlines()[:1]
        raise ConfigFetchError(f"{where} answered {response.status}{': ' + first[0] if first else ''}")
    return body
