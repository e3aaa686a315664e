"""``ambient ca ...``: create a CA, serve it, make tokens, request a certificate.

Configuration is validated here, at the edge, into frozen objects; errors name the flag or file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import threading
from ipaddress import ip_address
from pathlib import Path

from prometheus_client import CollectorRegistry

from ca import store
from ca.authority import DEFAULT_WORKLOAD_TTL, IssuancePolicy
from ca.client import CaClient, CaRequestFailed, CertificateError
from ca.placement import PLACEMENT_FILE, FilePodPlacement
from ca.server import DEFAULT_PORT, DEFAULT_SERVER_NAMES, CaMetrics, CaServer, ServeConfig, start_metrics_server
from ca.service import CertificateService
from ca.tokens import TOKEN_FILE, Caller, NodeCaller, TokenStore, WorkloadCaller
from mesh.errors import UsageError
from mesh.identity import DEFAULT_TRUST_DOMAIN, InvalidSpiffeId, SpiffeId, validate_k8s_name


def _duration(text: str) -> dt.timedelta:
    """``90s``, ``30m``, ``24h``, ``7d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 24h or 7d")
    return dt.timedelta(seconds=int(text[:-1]) * units[text[-1]])


def _spiffe_id(text: str) -> SpiffeId:
    try:
        return SpiffeId.parse(text)
    except InvalidSpiffeId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    ca = subparsers.add_parser("ca", help="the mesh certificate authority")
    sub = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="create a CA: a new self-signed root, or a plug-in CA")
    init.add_argument("--dir", type=Path, required=True, help="CA state directory to create")
    init.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    init.add_argument("--plugin-certs", type=Path, metavar="DIR",
                      help="use the intermediate CA in DIR (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)")
    init.add_argument("--if-absent", action="store_true",
                      help="do nothing (exit 0) if DIR already holds a CA, e.g. when a pod's init container runs "
                           "again; the CA there is left as it is, and still checked")
    init.set_defaults(func=cmd_init)

    serve = sub.add_parser("serve", help="serve IstioCertificateService over gRPC/TLS")
    serve.add_argument("--dir", type=Path, required=True)
    serve.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_PORT}", metavar="HOST:PORT")
    serve.add_argument("--server-name", action="append", metavar="NAME",
                       help="DNS name or IP for the server certificate "
                            f"(repeatable; default {', '.join(DEFAULT_SERVER_NAMES)})")
    serve.add_argument("--default-ttl", type=_duration, default=DEFAULT_WORKLOAD_TTL, help="default 24h")
    serve.add_argument("--max-ttl", type=_duration, default=DEFAULT_WORKLOAD_TTL,
                       help="cap on requested validity; default 24h")
    serve.add_argument("--metrics-listen", default="127.0.0.1:15014", metavar="HOST:PORT",
                       help="Prometheus /metrics (default 127.0.0.1:15014; 'off' to disable)")
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="bearer tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    create = token_sub.add_parser("create", help="make a token and print it (shown once; only its hash is kept)")
    create.add_argument("--dir", type=Path, required=True)
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--node", help="a node token: certificates for the pods scheduled on NODE")
    who.add_argument("--identity", type=_spiffe_id, help="a workload token bound to one SPIFFE ID")
    create.add_argument("--address", action="append", default=[], metavar="IP",
                        help="with --node: the token is valid only from this address (repeat for several), as "
                             "the lab binds each node's token to its node")
    create.set_defaults(func=cmd_token_create)

    request = sub.add_parser("request", help="obtain a workload certificate over gRPC")
    request.add_argument("--server", required=True, metavar="HOST:PORT")
    request.add_argument("--root", type=Path, required=True, help="the mesh root certificate (PEM) to trust")
    request.add_argument("--token", help="bearer token (or the AMBIENT_CA_TOKEN environment variable)")
    request.add_argument("--identity", type=_spiffe_id, required=True)
    request.add_argument("--out", type=Path, required=True, help="writes key.pem, cert-chain.pem, root-cert.pem")
    request.add_argument("--ttl", type=_duration, help="requested validity (the CA caps it)")
    request.add_argument("--server-name", help="name to check in the CA's certificate instead of the host")
    request.set_defaults(func=cmd_request)


def cmd_init(args: argparse.Namespace) -> int:
    if args.if_absent and (args.dir / store.CA_KEY).exists():
        authority = store.load(args.dir)  # a CA that cannot be loaded is an error here, not at serve time
        print(f"{args.dir} already holds a CA for trust domain {authority.trust_domain}: left as it is")
        return 0
    if args.plugin_certs:
        authority = store.import_plugin(args.dir, args.plugin_certs, args.trust_domain)
        what = f"plug-in CA {authority.signing_cert.subject.rfc4514_string()}"
    else:
        authority = store.init_self_signed(args.dir, args.trust_domain)
        what = "self-signed root CA"
    print(f"created {what} for trust domain {authority.trust_domain} in {args.dir}")
    print(f"root certificate: {args.dir / store.ROOT_CERT} (expires {authority.root.not_valid_after_utc:%Y-%m-%d})")
    return 0


def build_service(ca_dir: Path, policy: IssuancePolicy) -> CertificateService:
    return CertificateService(
        store.load(ca_dir), TokenStore(ca_dir / TOKEN_FILE), FilePodPlacement(ca_dir / PLACEMENT_FILE), policy
    )


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        policy = IssuancePolicy(default_ttl=args.default_ttl, max_ttl=args.max_ttl)
        config = ServeConfig(listen=args.listen, server_names=tuple(args.server_name or DEFAULT_SERVER_NAMES))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    service = build_service(args.dir, policy)
    metrics = CaMetrics(CollectorRegistry())
    server = CaServer(service, config, metrics)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    port = server.start()
    host = config.listen.rpartition(":")[0]
    if args.metrics_listen != "off":
        metrics_server = start_metrics_server(args.metrics_listen, metrics.registry)
        metrics_host = args.metrics_listen.rpartition(":")[0]
        print(f"metrics on http://{metrics_host}:{metrics_server.server_port}/metrics", flush=True)
    # This line is the readiness signal scripts wait for: the port is bound when it is printed.
    print(f"serving IstioCertificateService on {host}:{port} (trust domain {service.authority.trust_domain})",
          flush=True)
    stop.wait()
    server.stop(grace=5.0)
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    config = store.load(args.dir)  # refuse to mint tokens for a directory that holds no CA
    if args.node:
        try:
            caller: Caller = NodeCaller(validate_k8s_name("node", args.node), frozenset(map(ip_address, args.address)))
        except InvalidSpiffeId as exc:
            raise UsageError(f"--node: {exc}") from None
        except ValueError as exc:
            raise UsageError(f"--address: {exc}") from None
    elif args.address:
        raise UsageError("--address binds a node token; a workload token is bound to its identity")
    else:
        if args.identity.trust_domain != config.trust_domain:
            raise UsageError(f"--identity {args.identity} is outside the CA's trust domain {config.trust_domain}")
        caller = WorkloadCaller(args.identity)
    print(TokenStore(args.dir / TOKEN_FILE).create(caller))
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("AMBIENT_CA_TOKEN")
    if not token:
        raise UsageError("no token: pass --token or set AMBIENT_CA_TOKEN")
    try:
        root_pem = args.root.read_bytes()
    except OSError as exc:
        raise UsageError(f"--root {args.root}: {exc.strerror or exc}") from None
    ttl = int(args.ttl.total_seconds()) if args.ttl else 0
    try:
        client = CaClient(args.server, root_pem, token, server_name=args.server_name)
    except ValueError:  # cryptography's word for bytes that are not a PEM certificate
        raise UsageError(f"--root {args.root}: not a PEM certificate") from None
    try:
        with client:
            certified = client.create_certificate(args.identity, ttl)
    except CaRequestFailed as exc:
        raise CaRequestError(request_failure(exc, args.server, args.root, args.server_name)) from None
    args.out.mkdir(parents=True, exist_ok=True)
    fd = os.open(args.out / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(certified.key_pem)
    os.chmod(args.out / "key.pem", 0o600)
    (args.out / "cert-chain.pem").write_text("".join(certified.chain_pem))
    (args.out / "root-cert.pem").write_text(certified.root_pem)
    print(f"identity:  {certified.identity}")
    print(f"expires:   {certified.not_after.isoformat()}")
    print(f"written:   {args.out}/key.pem (0600), cert-chain.pem ({len(certified.chain_pem)} certificates), "
          "root-cert.pem")
    return 0


class CaRequestError(Exception):
    """``ca request`` failed; the message says whose fault it is (ours, the connection's, the CA's)."""


# gRPC's words in an UNAVAILABLE status's details, for the failures a user can tell apart and fix.
# The handshake ones are BoringSSL's and gRPC's TLS layer's (grpcio 1.6x-1.8x); anything else keeps
# gRPC's own details.
NOT_TRUSTED = "CERTIFICATE_VERIFY_FAILED"
WRONG_NAME = "Hostname Verification Check failed"
REFUSED = "Connection refused"


def request_failure(exc: CaRequestFailed, server: str, root: Path, server_name: str | None) -> str:
    """One line telling apart: the CA's certificate is not trusted by ``--root``, or does not name the
    server; the CA cannot be reached or did not answer; the CA refused (its status and words)."""
    import grpc

    if exc.code is grpc.StatusCode.UNAVAILABLE:
        if NOT_TRUSTED in exc.details:
            return (f"the CA's certificate at {server} is not trusted by --root {root} "
                    "(its chain does not lead to that root)")
        if WRONG_NAME in exc.details:
            name = server_name or server.rpartition(":")[0]
            return f"the CA's certificate at {server} is not for {name!r} (--server-name names the one to check)"
        if REFUSED in exc.details:
            return f"cannot reach the CA at {server}: connection refused"
        return f"cannot reach the CA at {server}: {exc.details}"
    if exc.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the CA at {server} did not answer in time"
    return f"the CA at {server} refused the request: {exc.code.name}: {exc.details}"


# Errors a user can cause: reported in one line, exit status 1, no traceback.
USER_ERRORS: tuple[type[Exception], ...] = (UsageError, store.CaStoreError, CertificateError, CaRequestError,
                                            OSError)
