"""A pod's app that accepts connections and holds them, reading and discarding what comes, until the
peer closes: the far end of the plaintext-inbound flood (each connection ztunnel forwards stays open,
as with a real app that keeps idle connections). Standard library only (it runs as a lab container).

    sink.py --port 9100
"""

from __future__ import annotations

import argparse
import resource
import selectors
import socket
import sys

# Connections held at once; one more is closed at once. Above the flood's 8,000, so that every
# connection ztunnel forwards stays open and ztunnel's own bound is the one measured.
MAX_HELD = 10_000
# File descriptors besides the held connections: the listener, the selector, the interpreter's own.
FD_MARGIN = 64
READ_SIZE = 4096


def serve(port: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_HELD + FD_MARGIN
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
    listener = socket.create_server(("0.0.0.0", port), backlog=4096)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    held = 0
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                if held >= MAX_HELD:
                    conn.close()
                    continue
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
                held += 1
                continue
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            try:
                data = conn.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(conn)
                conn.close()
                held -= 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9100)
    serve(parser.parse_args(argv).port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
