"""The HTTP side ports every proxy of the mesh serves, the same way (DESIGN.md sections 7 and 8):
admin (``/config_dump``, ``/logging``, ``/quitquitquit``) on loopback, stats (``/metrics``) and
readiness (``/healthz/ready``).

``serve_http`` is a small HTTP/1.1 server: h11 parses and frames, this module only moves bytes and
routes. It binds, reports the bound port through ``task_status.started``, then serves each accepted
connection in its own task (``trio.serve_listeners``, which also rides out EMFILE). Per connection,
one exchange after another (keep-alive, pipelining): read a whole request, look its path up (query
string apart), call the handler, send the response; a request body is read and discarded. The
peer's faults end only its own connection: a malformed request, or a head over
``MAX_REQUEST_HEAD`` bytes, gets h11's status hint (400, 431), a body over ``MAX_REQUEST_BODY``
bytes a 413, each with ``Connection: close``; an exchange that takes longer than
``request_timeout`` (a slow or silent client, an idle keep-alive connection) closes the
connection. A route is a plain function of no arguments (GET and HEAD), or a ``Route``: its
methods, and a function of the ``Request`` (method, path, decoded query). Either returns a
``Response``; one that raises gets a 500 with a one-line message, and the exception is logged.
Unknown paths are 404 (naming the known ones); a method the route does not take is 405.

``ProxyAdmin`` builds the three route tables from an ``AdminView`` (what the proxy process knows:
its config dump, its readiness, its metrics) and runs the three servers; ztunnel
(``ztunnel.admin``) and the waypoint (``waypoint.admin``) are the same class under their own
names. As Istio's ztunnel (src/admin.rs), two admin routes act, and take POST only: ``/logging``
reads and changes the process's log levels (``LogLevels``), ``/quitquitquit`` sets
``quit_requested``, the event the process waits on besides SIGTERM to drain and exit, and answers
at once.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Protocol
from urllib.parse import parse_qsl

import h11
import trio

from mesh.addresses import format_address
from mesh.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = logging.getLogger("ambient.admin")

# Istio's ports, the same for ztunnel (on the node) and a waypoint (in its pod).
ADMIN_PORT = 15000
STATS_PORT = 15020
READINESS_PORT = 15021
DEFAULT_ADMIN_LISTEN = ("127.0.0.1", ADMIN_PORT)  # loopback only: the config dump names every workload
DEFAULT_STATS_LISTEN = ("0.0.0.0", STATS_PORT)
DEFAULT_READINESS_LISTEN = ("0.0.0.0", READINESS_PORT)

MAX_REQUEST_HEAD = 16 * 1024  # request line and headers (h11 checks it between reads: + one read)
MAX_REQUEST_BODY = 64 * 1024  # read and discarded; no route takes a body
REQUEST_TIMEOUT = 10.0  # seconds for one whole exchange, including the wait for its request
LINGER_TIMEOUT = 1.0  # after a last response: time for the peer to read it before we close
SERVER_NAME = "ambient"  # the Server header; each proxy names itself ("ambient-ztunnel")
_RECEIVE_SIZE = 4 * 1024
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()  # besides Content-Type and Content-Length

    @classmethod
    def text(cls, status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return cls(status, TEXT, text.encode(), headers)

    @classmethod
    def json(cls, value: object, status: int = 200) -> Response:
        return cls(status, "application/json", json.dumps(value, indent=2).encode() + b"\n")


Handler = Callable[[], Response]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]  # form-decoded; a name given twice keeps its last value, ``?x`` is ``""``


@dataclass(frozen=True)
class Route:
    """A route that takes other methods than GET and HEAD, or reads the request."""

    handler: Callable[[Request], Response]
    methods: tuple[str, ...] = ("GET", "HEAD")
    usage: str = ""  # appended to its 405


Routes = Mapping[str, Handler | Route]


class _BodyTooLarge(Exception):
    """The peer sent a request body over ``MAX_REQUEST_BODY``."""


# -- the server


async def bind_tcp(listen: tuple[str, int]) -> trio.SocketListener:
    """A listening TCP socket on ``listen`` (port 0 picks one), with SO_REUSEADDR.

    Raises OSError naming the address if it cannot be bound."""
    host, port = listen
    sock = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {format_address(host, port)}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def bound_port(listener: trio.SocketListener) -> int:
    return listener.socket.getsockname()[1]


async def serve_listener(listener: trio.SocketListener, routes: Routes, *,
                         request_timeout: float = REQUEST_TIMEOUT, server_name: str = SERVER_NAME) -> None:
    """Serve ``routes`` (exact path → handler) on ``listener`` until cancelled; closes it then."""
    handler = partial(_serve_connection, routes=dict(routes), request_timeout=request_timeout,
                      server_name=server_name)
    await trio.serve_listeners(handler, [listener])


async def serve_http(listen: tuple[str, int], routes: Routes, *,
                     request_timeout: float = REQUEST_TIMEOUT, server_name: str = SERVER_NAME,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``routes`` (exact path → handler) over HTTP/1.1 on ``listen`` until cancelled.

    Calls ``task_status.started(port)`` once bound (``listen`` may ask for port 0). A failure to
    bind raises OSError before that."""
    listener = await bind_tcp(listen)
    task_status.started(bound_port(listener))
    await serve_listener(listener, routes, request_timeout=request_timeout, server_name=server_name)


async def _serve_connection(stream: trio.abc.HalfCloseableStream, *, routes: Routes,
                            request_timeout: float, server_name: str) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    try:
        while True:
            with trio.move_on_after(request_timeout):
                answered = await _exchange(stream, connection, routes, server_name)
                if answered and connection.our_state is h11.DONE and connection.their_state is h11.DONE:
                    connection.start_next_cycle()
                    continue
                if answered:  # the last response (HTTP/1.0, Connection: close, or an error)
                    await _linger(stream)
            return  # the peer closed, misbehaved, or took too long
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the peer went away mid-exchange
    except Exception:  # a bug here: it must not end the server
        log.exception("admin connection failed")
    finally:
        await trio.aclose_forcefully(stream)


async def _exchange(stream: trio.abc.Stream, connection: h11.Connection, routes: Routes, server_name: str) -> bool:
    """Read one request and answer it; False if there was nothing to answer (the peer closed)."""
    try:
        request = await _read_request(stream, connection)
    except h11.RemoteProtocolError as exc:
        await _send_error(stream, connection, server_name, exc.error_status_hint, f"bad request: {exc}")
        return True
    except _BodyTooLarge:
        await _send_error(stream, connection, server_name, 413, f"request body over {MAX_REQUEST_BODY} bytes")
        return True
    if request is None:
        return False
    await _send(stream, connection, server_name, _dispatch(request, routes), head_only=request.method == b"HEAD")
    return True


async def _read_request(stream: trio.abc.Stream, connection: h11.Connection) -> h11.Request | None:
    """The next request, once its end has been read (its body discarded); None if the peer closed
    between requests. Raises h11.RemoteProtocolError for bytes that are not HTTP/1.1."""
    request = None
    body = 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(bytes(await stream.receive_some(_RECEIVE_SIZE)))  # h11 types it bytes
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += len(event.data)
            if body > MAX_REQUEST_BODY:
                raise _BodyTooLarge
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None
        # nothing else reaches a server before EndOfMessage: h11 would have raised


def _dispatch(request: h11.Request, routes: Routes) -> Response:
    target = request.target.split(b"#", 1)[0].decode("ascii", "replace")
    path, _, query = target.partition("?")
    route = routes.get(path)
    if route is None:
        return Response.text(404, f"no such path {path}; this port serves {', '.join(sorted(routes))}\n")
    if not isinstance(route, Route):
        route = Route(_ignoring_request(route))
    method = request.method.decode("ascii", "replace")
    if method not in route.methods:
        return Response.text(405, f"method {method} not allowed on {path}\n{route.usage}",
                             headers=(("Allow", ", ".join(route.methods)),))
    try:
        response = route.handler(Request(method, path, dict(parse_qsl(query, keep_blank_values=True))))
        if not isinstance(response, Response):
            raise TypeError(f"handler returned {type(response).__name__}, not a Response")
        return response
    except Exception as exc:
        log.exception("handler for %s failed", path)
        message = str(exc).splitlines()[0] if str(exc) else ""
        return Response.text(500, f"internal error serving {path}: {type(exc).__name__}"
                                  f"{': ' + message if message else ''}\n")


def _ignoring_request(handler: Handler) -> Callable[[Request], Response]:
    return lambda _request: handler()


async def _send(stream: trio.abc.Stream, connection: h11.Connection, server_name: str, response: Response, *,
                head_only: bool = False) -> None:
    headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
               ("Server", server_name), *response.headers]
    data = connection.send(h11.Response(status_code=response.status, headers=headers))
    if not head_only and response.body:  # h11 frames the answer to HEAD as bodiless
        data += connection.send(h11.Data(data=response.body))
    data += connection.send(h11.EndOfMessage())
    await stream.send_all(data)


async def _send_error(stream: trio.abc.Stream, connection: h11.Connection, server_name: str, status: int,
                      message: str) -> None:
    """Answer the peer's fault, then the connection is over; nothing if a response was under way."""
    if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    response = Response.text(status, message + "\n", headers=(("Connection", "close"),))
    await _send(stream, connection, server_name, response)


async def _linger(stream: trio.abc.HalfCloseableStream) -> None:
    """Half-close and drain briefly, so that closing with unread input (which makes the kernel
    send a reset) does not destroy the response before the peer has read it."""
    with trio.move_on_after(LINGER_TIMEOUT):
        try:
            await stream.send_eof()
            while await stream.receive_some(_RECEIVE_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


# -- log levels, as /logging reads and changes them

# Istio ztunnel's level names; Python has no trace and no off: below DEBUG, above CRITICAL.
LEVELS = {"off": logging.CRITICAL + 10, "error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
          "debug": logging.DEBUG, "trace": logging.DEBUG - 5}

LOGGING_USAGE = """\
usage: POST /logging                                  (the current levels)
       POST /logging?level=LEVEL                      (the default level)
       POST /logging?level=NAME:LEVEL,NAME:LEVEL      (a logger's level, and its children's)
       POST /logging?reset                            (the levels at start; with level=, then those)
levels: error|warn|info|debug|trace|off
names: logger names, e.g. ambient.ztunnel.proxy or ambient.waypoint.access (NAME=LEVEL works too)
"""


def parse_levels(spec: str) -> tuple[str | None, dict[str, str]]:
    """``level=``'s value: a default level (the last bare one, or None) and per-logger levels.

    Raises ValueError, naming the clause, unless every comma-separated clause is a level or
    ``NAME:LEVEL`` / ``NAME=LEVEL`` (a bare name, which tracing reads as trace, is refused as Istio does)."""
    default: str | None = None
    loggers: dict[str, str] = {}
    for clause in spec.split(","):
        name, sep, level = clause.strip().rpartition("=" if "=" in clause else ":")
        level = level.strip().lower()
        if level not in LEVELS or (sep and not name.strip()):
            raise ValueError(f"level {clause!r} is invalid")
        if sep:
            loggers[name.strip()] = level
        else:
            default = level
    return default, loggers


class LogLevels:
    """The levels of the process's loggers: a default (the root logger's) and per-logger levels.

    Changes add to what is there, as Istio's ztunnel does: a bare level replaces the default and
    keeps the per-logger ones; ``reset`` first goes back to the levels at start."""

    def __init__(self, root: logging.Logger | None = None) -> None:
        self.root = root if root is not None else logging.getLogger()
        self.initial = self._name(self.root.level)
        self.default = self.initial
        self.loggers: dict[str, str] = {}

    def describe(self) -> str:
        """As tracing writes a filter: ``NAME=LEVEL`` for each logger set, then the default."""
        return ",".join([*(f"{name}={level}" for name, level in sorted(self.loggers.items())), self.default])

    def change(self, spec: str, reset: bool = False) -> None:
        """Apply ``level=``'s value (raises ValueError, changing nothing, if it is invalid)."""
        default, loggers = parse_levels(spec) if spec else (None, {})
        if reset:
            for name in self.loggers:
                self.root.manager.getLogger(name).setLevel(logging.NOTSET)
            self.loggers.clear()
            self.default = self.initial
        if default is not None:
            self.default = default
        self.loggers.update(loggers)
        self.root.setLevel(LEVELS[self.default])
        for name, level in self.loggers.items():
            self.root.manager.getLogger(name).setLevel(LEVELS[level])
        log.info("log levels now %s", self.describe())

    @staticmethod
    def _name(level: int) -> str:
        for name, value in sorted(LEVELS.items(), key=lambda item: item[1]):
            if level <= value:
                return name
        return "off"


# -- a proxy's three servers


class AdminView(Protocol):
    """What the admin servers need from the proxy process."""

    def metrics(self) -> bytes:
        """The metrics in Prometheus's text format (``mesh.prometheus.CONTENT_TYPE``)."""

    def config_dump(self) -> dict:
        """A JSON-able dict: what the proxy serves, with what configuration and certificates."""

    def ready(self) -> tuple[bool, str]:
        """Whether the proxy is ready, and why not (or what it is ready with)."""


class ProxyAdmin:
    """The admin, stats and readiness servers of one proxy process called ``name``, over ``view``."""

    def __init__(self, view: AdminView, log_levels: LogLevels | None = None, *, name: str) -> None:
        self.view = view
        self.name = name
        self.log_levels = log_levels if log_levels is not None else LogLevels()
        self.quit_requested = trio.Event()  # set by POST /quitquitquit: drain and exit, as on SIGTERM

    def admin_routes(self) -> dict[str, Handler | Route]:
        routes: dict[str, Handler | Route] = {
            "/config_dump": self.config_dump, "/healthz/ready": self.readiness,
            "/logging": Route(self.handle_logging, methods=("POST",), usage=LOGGING_USAGE),
            "/quitquitquit": Route(self.handle_quitquitquit, methods=("POST",))}
        listing = "".join(f"  {path}\n" for path in sorted([*routes, "/"]))
        routes["/"] = lambda: Response.text(200, f"{self.name} admin:\n{listing}")
        return routes

    def stats_routes(self) -> Routes:
        return {"/metrics": self.metrics, "/stats/prometheus": self.metrics}

    def readiness_routes(self) -> Routes:
        return {"/healthz/ready": self.readiness}

    def config_dump(self) -> Response:
        return Response.json(self.view.config_dump())

    def metrics(self) -> Response:
        return Response(200, METRICS_CONTENT_TYPE, self.view.metrics())

    def readiness(self) -> Response:
        ready, reason = self.view.ready()
        if ready:  # "ready", and the reason when there is more to say (serving a stale config)
            return Response.text(200, f"ready: {reason}\n" if "stale config" in reason else "ready\n")
        return Response.text(503, f"not ready: {reason}\n")

    def handle_logging(self, request: Request) -> Response:
        """Istio's answers: the levels now (200), or 400 with the usage; ``?x=debug`` alone lists."""
        level = request.query.get("level", "")
        reset = "reset" in request.query
        if level or reset:
            try:
                self.log_levels.change(level, reset=reset)
            except ValueError:
                return Response.text(400, f"Invalid level provided: {level}\n{LOGGING_USAGE}")
        return Response.text(200, f"current log level is {self.log_levels.describe()}\n")

    def handle_quitquitquit(self, _request: Request) -> Response:
        if not self.quit_requested.is_set():
            log.info("%s /quitquitquit: draining", self.name)
            self.quit_requested.set()
        return Response.text(200, "shutdown now\n")

    async def run(self, admin_listen: tuple[str, int] = DEFAULT_ADMIN_LISTEN,
                  stats_listen: tuple[str, int] = DEFAULT_STATS_LISTEN,
                  ready_listen: tuple[str, int] = DEFAULT_READINESS_LISTEN, *,
                  task_status: trio.TaskStatus[dict[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the three ports until cancelled; ``task_status.started({"admin": port, "stats":
        port, "readiness": port})`` once all three are bound. All three are bound before any is
        served: a failure to bind one raises OSError (naming its address) and closes the others."""
        tables: dict[str, tuple[tuple[str, int], Routes]] = {
            "admin": (admin_listen, self.admin_routes()), "stats": (stats_listen, self.stats_routes()),
            "readiness": (ready_listen, self.readiness_routes())}
        listeners: dict[str, trio.SocketListener] = {}
        try:
            for name, (listen, _) in tables.items():
                listeners[name] = await bind_tcp(listen)
        except BaseException:
            for listener in listeners.values():
                listener.socket.close()
            raise
        server_name = f"ambient-{self.name}"
        async with trio.open_nursery() as nursery:
            for name, listener in listeners.items():
                nursery.start_soon(partial(serve_listener, listener, tables[name][1], server_name=server_name))
            task_status.started({name: bound_port(listener) for name, listener in listeners.items()})
