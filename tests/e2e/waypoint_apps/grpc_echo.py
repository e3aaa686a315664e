"""A gRPC echo server and client for the waypoint's lab test, with grpcio's generic handlers (no
.proto to compile: the messages are raw bytes).

``grpc_echo.py serve --port P`` serves ``/echo.Echo/Say`` (unary: answers ``echo:`` + the request,
with a trailing metadata entry naming the pod) and ``/echo.Echo/Fail`` (answers PERMISSION_DENIED).
``grpc_echo.py call HOST:PORT METHOD MESSAGE`` makes one call in plaintext (h2c) and prints a JSON
line: the status code name, the reply, the trailing metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent import futures

import grpc


def _say(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata((("x-pod", os.environ.get("POD_NAME", "")),))
    return b"echo:" + request


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")


def serve(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {"Say": grpc.unary_unary_rpc_method_handler(_say), "Fail": grpc.unary_unary_rpc_method_handler(_fail)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", handlers),))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print(f"listening on 0.0.0.0:{port}", flush=True)
    server.wait_for_termination()


def call(target: str, method: str, message: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = channel.unary_unary(f"/echo.Echo/{method}")
        start = time.monotonic()
        try:
            reply, call_ = stub.with_call(message.encode(), timeout=10)
            out = {"code": call_.code().name, "reply": reply.decode(), "trailers": dict(call_.trailing_metadata())}
        except grpc.RpcError as exc:
            out = {"code": exc.code().name, "details": exc.details()}
        out["seconds"] = round(time.monotonic() - start, 3)
        print(json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=9090)
    c = sub.add_parser("call")
    c.add_argument("target")
    c.add_argument("method")
    c.add_argument("message")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port)
    else:
        call(args.target, args.method, args.message)


if __name__ == "__main__":
    main()
