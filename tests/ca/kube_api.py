"""A small stand-in for the Kubernetes API server's TokenReview endpoint, for tests.

No API server can run here, so this one speaks the part of the protocol the CA uses:
``POST /apis/authentication.k8s.io/v1/tokenreviews`` with a ``TokenReview`` body, answered ``201``
with the object and its ``status`` in the shape kube-apiserver gives (recorded from Kubernetes
1.30+, where bound tokens carry the node in ``user.extra``). It judges audiences as the API server
does: a token made for other audiences is refused with an ``error`` (``audience_aware=False``
instead plays a reviewer that ignores ``spec.audiences`` and answers with the API server's own).
It listens on 127.0.0.1, an ephemeral port, in a thread, and requires the reviewer's own bearer
token (``REVIEWER_TOKEN``), as the API server requires credentials with RBAC to create reviews.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubernetes import client

REVIEWER_TOKEN = "reviewer-credential"  # noqa: S105 - the CA's own credential towards the fake API
API_SERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@dataclass(frozen=True)
class ServiceAccountToken:
    """What the API server knows about a token it issued (TokenRequest)."""

    namespace: str
    service_account: str
    audiences: tuple[str, ...] = ("istio-ca",)
    pod: str | None = None
    pod_uid: str | None = None
    node: str | None = None
    expires: float = field(default_factory=lambda: time.time() + 3600)

    def jwt(self) -> str:
        """A JWT of the shape kubelet projects (the signature is not checked by anyone here)."""
        claims: dict[str, object] = {
            "aud": list(self.audiences), "exp": int(self.expires), "iat": int(time.time()),
            "iss": API_SERVER_AUDIENCE, "sub": f"system:serviceaccount:{self.namespace}:{self.service_account}",
            "jti": str(uuid.uuid4()),
        }
        return ".".join((_b64({"alg": "RS256", "kid": "test"}), _b64(claims), "c2lnbmF0dXJl"))

    def status(self, audiences: list[str] | None, audience_aware: bool) -> dict:
        wanted = audiences or [API_SERVER_AUDIENCE]
        granted = [a for a in wanted if a in self.audiences] if audience_aware else [API_SERVER_AUDIENCE]
        if not granted:
            return {"user": {}, "error": f'[invalid bearer token, token audiences {json.dumps(list(self.audiences))} '
                                         f'is invalid for the target audiences {json.dumps(wanted)}]'}
        extra: dict[str, list[str]] = {"authentication.kubernetes.io/credential-id": [f"JTI={uuid.uuid4()}"]}
        if self.pod:
            extra["authentication.kubernetes.io/pod-name"] = [self.pod]
            extra["authentication.kubernetes.io/pod-uid"] = [self.pod_uid or str(uuid.uuid4())]
        if self.node:
            extra["authentication.kubernetes.io/node-name"] = [self.node]
            extra["authentication.kubernetes.io/node-uid"] = [str(uuid.uuid4())]
        return {
            "authenticated": True,
            "user": {
                "username": f"system:serviceaccount:{self.namespace}:{self.service_account}",
                "uid": str(uuid.uuid4()),
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{self.namespace}",
                           "system:authenticated"],
                "extra": extra,
            },
            "audiences": granted,
        }


class FakeKubeApi:
    """``tokens`` maps a JWT to what the API server knows of it; ``users`` maps a token to a whole
    ``status`` (for users that are not service accounts). ``requests`` records every review body."""

    def __init__(self, *, audience_aware: bool = True) -> None:
        self.tokens: dict[str, ServiceAccountToken] = {}
        self.users: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.audience_aware = audience_aware
        self.hold = threading.Event()  # cleared: reviews wait until it is set again
        self.hold.set()
        self.status_code = 201
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Authorization") != f"Bearer {REVIEWER_TOKEN}":
                    return self._answer(401, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                              "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
                if self.path.split("?")[0] != PATH:
                    return self._answer(404, {"kind": "Status", "status": "Failure", "code": 404})
                review = json.loads(body)
                api.requests.append(review)
                api.hold.wait(30)
                if api.status_code != 201:
                    return self._answer(api.status_code, {"kind": "Status", "status": "Failure",
                                                          "code": api.status_code})
                spec = review.get("spec", {})
                token = spec.get("token", "")
                known = api.tokens.get(token)
                if known is not None:
                    status = known.status(spec.get("audiences"), api.audience_aware)
                else:
                    status = api.users.get(token, {"user": {}, "error": "[invalid bearer token, square/go-jose: error "
                                                                        "in cryptographic primitive]"})
                self._answer(201, {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                                   "metadata": {"creationTimestamp": None}, "spec": spec, "status": status})

            def _answer(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-kube-api", daemon=True)

    def __enter__(self) -> FakeKubeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.hold.set()
        self._server.shutdown()
        self._server.server_close()

    def issue(self, token: ServiceAccountToken) -> str:
        jwt = token.jwt()
        self.tokens[jwt] = token
        return jwt

    def api_client(self, credential: str = REVIEWER_TOKEN) -> client.ApiClient:
        return api_client_for(f"http://127.0.0.1:{self.port}", credential)


def api_client_for(host: str, credential: str = REVIEWER_TOKEN) -> client.ApiClient:
    """An official-client ``ApiClient`` as kubeconfig would configure it: the host and a bearer token."""
    configuration = client.Configuration(host=host, api_key={"authorization": credential},
                                         api_key_prefix={"authorization": "Bearer"})
    return client.ApiClient(configuration)
