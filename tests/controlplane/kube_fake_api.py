"""A small stand-in for the Kubernetes API server, for the tests of the control plane's API source.

No API server can run on this machine; this one speaks the parts of its HTTP protocol the control
plane uses, on 127.0.0.1 and an ephemeral port, in a thread (stdlib ``ThreadingHTTPServer``):

- ``GET <collection>?limit=&continue=``: a list, ``metadata.resourceVersion`` the store's current one;
  404 with a ``Status`` for a kind not ``serve``d (an absent CRD).
- ``GET <collection>?watch=true&resourceVersion=N&allowWatchBookmarks=true``: newline-delimited JSON
  events after N, chunked (HTTP/1.1) as the API server sends them, until the test ends the stream
  (``end_watches``: cleanly, the last chunk; ``drop_watches``: the socket closed mid-stream) or
  ``timeoutSeconds`` passes. A resourceVersion older than the last ``compact()`` gets an ERROR event
  with a 410 ``Status`` (as the watch cache answers), or HTTP 410 with ``gone_as_http``.
- ``PATCH <object>[/status]`` with ``application/apply-patch+yaml``: server-side apply, recorded in
  ``applied`` (path, query, body) and stored, so a watch sees it (a Service gets a clusterIP).
- ``POST /apis/authentication.k8s.io/v1/tokenreviews``: a TokenReview, authenticated for a token the
  test ``issue``d (a service account's, with audience ``istio-ca``), else ``authenticated: false``.
- Every request must carry ``Authorization: Bearer <token>``, else 401.

The tests change the store through ``put`` / ``delete`` / ``bookmark`` / ``send_error``, each of which
bumps the resourceVersion and wakes the open watches. ``watch_requests`` records each watch's path
and resourceVersion, so a test can assert where a re-watch resumed.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from controlplane.kube_client import BY_KIND, ApiKind

TOKEN = "test-token-not-a-secret"


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class FakeApi:
    def __init__(self, served: tuple[ApiKind, ...]) -> None:
        self._lock = threading.Condition()
        self.served = {k.collection_path(): k for k in served}
        self.objects: dict[str, dict[tuple[str, str], dict]] = {path: {} for path in self.served}
        self.events: list[tuple[int, str, dict]] = []  # (resourceVersion, collection, event)
        self.version = 100
        self.compacted = 0  # watches from a resourceVersion below this get 410
        self.gone_as_http = False
        self.applied: list[tuple[str, dict, dict]] = []  # (path, query, body)
        self.watch_requests: list[tuple[str, str]] = []  # (collection, resourceVersion)
        self.list_requests: list[str] = []
        self._generation = 0  # bumped by end_watches/drop_watches
        self._ending: dict[int, str] = {}  # generation → "end" | "drop"
        self._ips = itertools.count(10)
        self._server: ThreadingHTTPServer | None = None
        self.issued: dict[str, tuple[str, str]] = {}  # service-account token → (namespace, service account)
        self.reviews = 0

    # -- the test's side

    def issue(self, namespace: str, service_account: str) -> str:
        """A JWT-shaped token for the service account (as TokenRequest gives; the signature is not one)."""
        def segment(data: dict) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

        token = ".".join((segment({"alg": "RS256", "kid": "test"}),
                          segment({"aud": ["istio-ca"], "exp": int(time.time()) + 3600,
                                   "sub": f"system:serviceaccount:{namespace}:{service_account}",
                                   "jti": str(len(self.issued))}),
                          segment({"signature": "none"})))
        self.issued[token] = (namespace, service_account)
        return token

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def serve(self, kind: ApiKind) -> None:
        """Start serving ``kind`` (its CRD was installed)."""
        with self._lock:
            self.served[kind.collection_path()] = kind
            self.objects.setdefault(kind.collection_path(), {})

    def _bump(self) -> int:
        self.version += 1
        return self.version

    def put(self, obj: dict) -> dict:
        """Create or replace ``obj`` (ADDED or MODIFIED); returns it as stored."""
        kind = BY_KIND[obj["kind"]]
        path = kind.collection_path()
        with self._lock:
            stored = copy.deepcopy(obj)
            meta = stored.setdefault("metadata", {})
            if not kind.namespaced:
                meta.pop("namespace", None)
            key = (meta.get("namespace", ""), meta["name"])
            old = self.objects[path].get(key)
            meta.setdefault("uid", old["metadata"]["uid"] if old else f"uid-{kind.plural}-{key[0]}-{key[1]}")
            if kind.kind == "Service" and not stored.get("spec", {}).get("clusterIP"):
                stored.setdefault("spec", {})["clusterIP"] = (old or {}).get("spec", {}).get("clusterIP") \
                    or f"10.96.200.{next(self._ips)}"
            meta["resourceVersion"] = str(self._bump())
            self.objects[path][key] = stored
            self.events.append((self.version, path, {"type": "MODIFIED" if old else "ADDED", "object": stored}))
            self._lock.notify_all()
            return copy.deepcopy(stored)

    def delete(self, kind: ApiKind, namespace: str, name: str, *, quietly: bool = False) -> None:
        """Delete an object; ``quietly``: as if while no watch could see it (only a re-list will)."""
        path = kind.collection_path()
        with self._lock:
            obj = self.objects[path].pop((namespace if kind.namespaced else "", name))
            obj["metadata"]["resourceVersion"] = str(self._bump())
            if not quietly:
                self.events.append((self.version, path, {"type": "DELETED", "object": obj}))
            self._lock.notify_all()

    def bookmark(self, kind: ApiKind) -> str:
        with self._lock:
            version = str(self._bump())
            self.events.append((self.version, kind.collection_path(),
                                {"type": "BOOKMARK", "object": {"kind": kind.kind, "apiVersion": kind.api_version,
                                                                "metadata": {"resourceVersion": version}}}))
            self._lock.notify_all()
            return version

    def send_error(self, kind: ApiKind, code: int) -> None:
        gone = code == 410
        error = status(code, "Expired" if gone else "InternalError", "too old resource version" if gone else "boom")
        with self._lock:
            self.events.append((self._bump(), kind.collection_path(), {"type": "ERROR", "object": error}))
            self._lock.notify_all()

    def compact(self) -> None:
        """Forget the history: a watch from any resourceVersion before now gets 410 Gone (from now,
        what a list returns, it is served, as etcd never compacts its current revision)."""
        with self._lock:
            self.compacted = self.version
            self.events.clear()

    def end_watches(self) -> None:
        self._end("end")

    def drop_watches(self) -> None:
        self._end("drop")

    def _end(self, how: str) -> None:
        with self._lock:
            self._ending[self._generation] = how
            self._generation += 1
            self._lock.notify_all()

    def wait_for(self, predicate, timeout: float = 10.0) -> None:
        """Block (in the test's thread) until ``predicate()`` holds, checked on every request."""
        with self._lock:
            if not self._lock.wait_for(predicate, timeout):
                raise AssertionError("the fake API server never saw what the test waited for")

    def get(self, kind: ApiKind, namespace: str, name: str) -> dict | None:
        with self._lock:
            obj = self.objects.get(kind.collection_path(), {}).get((namespace if kind.namespaced else "", name))
            return copy.deepcopy(obj)

    @contextmanager
    def running(self) -> Iterator[FakeApi]:
        api = self

        class Handler(_Handler):
            fake = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.drop_watches()
            self._server.shutdown()
            self._server.server_close()

    # -- the server's side (called by the handler with the lock not held)

    def _collection(self, path: str) -> tuple[str, ApiKind | None, str]:
        """(collection path, its kind if served, the rest of the path)."""
        for collection, kind in self.served.items():
            if path == collection or path.startswith(collection + "/"):
                return collection, kind, path[len(collection):]
        for kind in BY_KIND.values():  # a namespaced object's path: /namespaces/<ns>/<plural>/<name>
            prefix = kind.collection_path("NS").split("/NS/")[0] + "/"
            if path.startswith(prefix) and f"/{kind.plural}/" in path:
                collection = kind.collection_path()
                return collection, self.served.get(collection), path
        return path, None, ""


class _Handler(BaseHTTPRequestHandler):
    fake: FakeApi
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # quiet: pytest shows failures, not every request
        pass

    def _send_json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self._send_json(401, status(401, "Unauthorized", "Unauthorized"))
        return False

    def do_GET(self) -> None:
        if not self._authorized():
            return
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        fake = self.fake
        collection, kind, _ = fake._collection(url.path)
        if kind is None:
            self._send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        if query.get("watch") in ("true", "1"):
            self._watch(collection, kind, query)
            return
        with fake._lock:
            fake.list_requests.append(collection)
            items = [copy.deepcopy(o) for _, o in sorted(fake.objects[collection].items())]
            version = str(fake.version)
            fake._lock.notify_all()
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or len(items) or 1)
        page = items[start:start + limit]
        for item in page:  # as the API server: a list's items carry no kind or apiVersion
            item.pop("kind", None)
            item.pop("apiVersion", None)
        meta = {"resourceVersion": version}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        self._send_json(200, {"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": meta,
                              "items": page})

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, collection: str, kind: ApiKind, query: dict) -> None:
        fake = self.fake
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 300)
        with fake._lock:
            fake.watch_requests.append((collection, query.get("resourceVersion", "")))
            generation = fake._generation
            gone = since < fake.compacted
            fake._lock.notify_all()
        if gone and fake.gone_as_http:
            self._send_json(410, status(410, "Expired", "too old resource version"))
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if gone:
            self._chunk(json.dumps({"type": "ERROR", "object": status(410, "Expired", "too old resource version")}
                                   ).encode() + b"\n")
            self._chunk(b"")
            return
        sent = since
        deadline = None
        while True:
            with fake._lock:
                if deadline is None:
                    deadline = time.monotonic() + timeout
                pending = [(v, e) for v, c, e in fake.events if c == collection and v > sent]
                how = next((fake._ending[g] for g in sorted(fake._ending) if g >= generation), None)
                if not pending and how is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        how = "end"
                    else:
                        fake._lock.wait(min(left, 0.5))
                        continue
            for version, event in pending:
                self._chunk(json.dumps(event).encode() + b"\n")
                sent = version
            if how == "end":
                self._chunk(b"")
                return
            if how == "drop":
                self.close_connection = True
                return

    def do_POST(self) -> None:
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if urlsplit(self.path).path != "/apis/authentication.k8s.io/v1/tokenreviews":
            self._send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        self.fake.reviews += 1
        account = self.fake.issued.get(body["spec"]["token"])
        review = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": body["spec"],
                  "status": {"authenticated": False, "error": "invalid bearer token"}}
        if account is not None and "istio-ca" in body["spec"].get("audiences", ["istio-ca"]):
            namespace, name = account
            review["status"] = {"authenticated": True, "audiences": ["istio-ca"], "user": {
                "username": f"system:serviceaccount:{namespace}:{name}", "uid": "0",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]}}
        self._send_json(201, review)

    def do_PATCH(self) -> None:
        if not self._authorized():
            return
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.headers.get("Content-Type") != "application/apply-patch+yaml":
            self._send_json(415, status(415, "UnsupportedMediaType", "only server-side apply is served here"))
            return
        fake = self.fake
        with fake._lock:
            fake.applied.append((url.path, query, body))
            fake._lock.notify_all()
        kind = BY_KIND[body["kind"]]
        key = (body["metadata"].get("namespace", ""), body["metadata"]["name"])
        current = fake.get(kind, *key)
        if url.path.endswith("/status"):
            if current is None:
                self._send_json(404, status(404, "NotFound", f"{kind.plural} {key[1]} not found"))
                return
            current["status"] = body.get("status", {})
            stored = fake.put(current) if kind.collection_path() in fake.served else current
        else:
            merged = {**(current or {}), **body}
            merged["metadata"] = {**(current or {}).get("metadata", {}), **body["metadata"]}
            if kind.collection_path() in fake.served:
                stored = fake.put(merged)
            else:
                with fake._lock:
                    fake.objects.setdefault(kind.collection_path(), {})[key] = merged
                stored = merged
        self._send_json(200, stored)
