"""tcp-echo (``istio/tcp-echo-server``): ``tcp-echo PORTS PREFIX``, PORTS a comma-separated list
(the image's CMD is ``9000 hello``). Every line a client sends (up to "\\n") comes back as
``PREFIX LINE``, as Istio's Go server answers; a connection lasts until the client closes it.
"""

from __future__ import annotations

import socket
import sys
import threading

# A line longer than this without a newline ends the connection: the original buffers without
# bound, but a pod's memory is the node's.
MAX_LINE_BYTES = 64 * 1024


def echo_line(prefix: str, line: bytes) -> bytes:
    return prefix.encode() + b" " + line


def handle(connection: socket.socket, prefix: str) -> None:
    with connection:
        reader = connection.makefile("rb")
        while True:
            line = reader.readline(MAX_LINE_BYTES + 1)
            if not line.endswith(b"\n"):  # EOF (a partial last line is dropped, as the original does) or too long
                return
            print(f"request: {line.decode(errors='replace')}", end="", flush=True)
            connection.sendall(echo_line(prefix, line))


def listen(port: int, prefix: str, host: str = "0.0.0.0") -> socket.socket:
    listener = socket.create_server((host, port))
    print(f"listening on {host}:{listener.getsockname()[1]}, prefix: {prefix}", flush=True)
    return listener


def accept_forever(listener: socket.socket, prefix: str) -> None:
    while True:
        try:
            connection, _ = listener.accept()
        except OSError as exc:  # EMFILE and the like: the original logs and goes on
            print(f"failed to accept connection, err: {exc}", flush=True)
            continue
        threading.Thread(target=handle, args=(connection, prefix), daemon=True).start()


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: tcp-echo PORTS PREFIX (PORTS: a comma-separated list, e.g. 9000,9001)")
    ports, prefix = argv
    listeners = [listen(int(port), prefix) for port in ports.split(",")]  # all bound before any is served
    threads = [threading.Thread(target=accept_forever, args=(listener, prefix), daemon=True) for listener in listeners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
