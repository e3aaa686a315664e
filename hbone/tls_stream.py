"""TLS for HBONE connections, driven directly on the socket rather than through ``trio.SSLStream``.

The design is the one ``trio.SSLStream`` uses: an ``ssl.SSLObject`` over memory BIOs, so one large
``recv`` feeds many TLS records and one ``SSLObject.write`` turns a large send into all its records
at once. What differs is the driving. ``trio.SSLStream`` serves any transport stream, and for that
it takes two locks, a conflict detector and a retry loop of nested awaits through ``SocketStream``
on every call. Here the socket is called directly: a read or a write that can proceed costs one
syscall and one schedule point. On ztunnel's hot path, where each proxied request is a small TLS
record each way, that difference is most of the TLS cost the profile showed.

Writes go through one ordered queue of ciphertext. ``send_nowait`` encrypts, sends what the socket
takes now and keeps the rest. ``flush`` waits until the queue is empty, and ``send_all`` is both
together. Any task may call ``send_nowait`` at any time, because the records stay in the order
OpenSSL produced them. Only one task at a time may wait in ``flush``. A cancelled ``flush`` leaves
the rest queued and the stream intact, whereas a cancelled ``trio.SSLStream.send_all`` breaks the
stream.

A ragged end of the stream (TCP EOF without close_notify) is an error (``BrokenResourceError``), as
in ``trio.SSLStream``'s default. HTTP/2 says for itself when a connection is done (GOAWAY).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, Literal, overload

import trio

from hbone.tcp_stream import TcpStream

READ_SIZE = 256 * 1024  # one recv: many TLS records for a busy HBONE connection


class TlsStream(trio.abc.Stream):
    """A TLS 1.3 connection over a connected non-blocking socket; see the module docstring."""

    def __init__(self, sock: socket.socket, ssl_object: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
        self._sock = sock
        self._ssl = ssl_object
        self._incoming = incoming
        self._outgoing = outgoing
        self._unsent = bytearray()  # ciphertext the socket has not taken yet, in order
        self._flushing = False
        self._receiving = False
        self._drained = False  # the last recv took less than it asked for: wait before the next one
        self._error: BaseException | None = None
        self._closed = False

    # -- opening

    @classmethod
    async def handshake(cls, transport: TcpStream | trio.SocketStream, context: ssl.SSLContext, *,
                        server_side: bool) -> TlsStream:
        """Take over the transport's socket and run the handshake on it. ``ssl.SSLError`` (the
        peer's certificate, no common version), ``OSError`` (the connection broke) or
        ``EOFError`` (the peer closed) say why a handshake failed; the socket is closed then."""
        sock = _plain_socket(transport)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        stream = cls(sock, context.wrap_bio(incoming, outgoing, server_side=server_side), incoming, outgoing)
        try:
            while True:
                try:
                    stream._ssl.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                stream._take_output()
                await stream._flush_raw()
                if done:
                    return stream
                if not await stream._receive_raw():
                    raise EOFError("the peer closed the connection during the handshake")
        except BaseException:
            stream._close_socket()
            raise

    # -- what the identity checks read (hbone.tls.TlsSession)

    @property
    def context(self) -> ssl.SSLContext:
        return self._ssl.context

    @overload
    def getpeercert(self, binary_form: Literal[False] = False) -> dict[str, Any] | None: ...
    @overload
    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...

    def getpeercert(self, binary_form: bool = False) -> dict[str, Any] | bytes | None:
        return self._ssl.getpeercert(binary_form)

    def selected_alpn_protocol(self) -> str | None:
        return self._ssl.selected_alpn_protocol()

    def version(self) -> str | None:
        return self._ssl.version()

    # -- receiving

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Plaintext: as many whole records as have arrived, up to ``max_bytes`` (``READ_SIZE``);
        b"" once the peer sent close_notify."""
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            limit = READ_SIZE if max_bytes is None else max_bytes
            if limit < 1:
                raise ValueError("max_bytes must be at least 1")
            blocked = False
            while True:
                self._check_open()
                data = self._read_plaintext(limit)
                if data is not None:
                    break
                if not await self._receive_raw():
                    self._incoming.write_eof()  # the next read says whether the end was clean
                blocked = True
            if not blocked:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    def _read_plaintext(self, limit: int) -> bytes | None:
        """What the records in the incoming BIO hold (None: a whole record is still missing)."""
        chunks, size = [], 0
        incoming, tls = self._incoming, self._ssl
        try:
            # Only ask OpenSSL when it has something to work on: bytes in the BIO, plaintext it holds, or
            # the end of the stream. Otherwise ``read`` would only raise SSLWantReadError, which costs an
            # exception at the start and the end of every receive.
            while size < limit and (incoming.pending or incoming.eof or tls.pending()):
                chunk = tls.read(limit - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:  # close_notify: the clean end
            if not chunks:
                return b""
        except ssl.SSLError as exc:
            self._fail(exc)
            raise trio.BrokenResourceError(f"TLS error while reading: {exc.reason or exc}") from exc
        if self._outgoing.pending:  # a post-handshake answer (a TLS 1.3 KeyUpdate)
            self._take_output()
            self._try_send()
        if not chunks:
            return None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _receive_raw(self) -> bool:
        """Ciphertext from the socket into the incoming BIO; False at the end of the stream."""
        if self._drained:
            # The last recv emptied the socket, and since then we only consumed what it gave: in a
            # request/response exchange nothing has arrived yet, and a recv now would only fail.
            await trio.lowlevel.wait_readable(self._sock)
        while True:
            try:
                data = self._sock.recv(READ_SIZE)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)
            except OSError as exc:
                self._fail(exc)
                raise trio.BrokenResourceError(f"the connection broke while reading: {exc}") from exc
        if not data:
            return False
        self._drained = len(data) < READ_SIZE  # a short read took all the kernel had
        self._incoming.write(data)
        return True

    # -- sending

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Encrypt ``data``, send what the socket takes now and queue the rest. True when nothing
        is left queued. Never blocks; any task may call it."""
        self._check_open()
        if data:
            try:
                self._ssl.write(data)
            except ssl.SSLError as exc:
                self._fail(exc)
                raise trio.BrokenResourceError(f"TLS error while writing: {exc.reason or exc}") from exc
            if not self._unsent:  # the usual case: the new records go straight to the socket, not via the queue
                return self._send_records(self._outgoing.read())
            self._take_output()
        return self._try_send()

    @property
    def unsent(self) -> int:
        """Bytes of ciphertext still queued."""
        return len(self._unsent)

    async def flush(self) -> None:
        """Wait until every queued byte is sent."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._unsent:
            await self._flush_raw()
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.send_nowait(data):
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            await self._flush_raw()

    async def wait_send_all_might_not_block(self) -> None:
        await self.flush()

    def _take_output(self) -> None:
        if self._outgoing.pending:
            self._unsent += self._outgoing.read()

    def _try_send(self) -> bool:
        unsent = self._unsent
        while unsent:
            try:
                sent = self._sock.send(unsent)
            except BlockingIOError:
                return False
            except OSError as exc:
                self._fail(exc)
                raise trio.BrokenResourceError(f"the connection broke while writing: {exc}") from exc
            del unsent[:sent]
        return True

    def _send_records(self, records: bytes) -> bool:
        """``_try_send`` for records when nothing is queued before them: one ``send`` from OpenSSL's
        output, and only what the socket did not take is copied into the queue."""
        try:
            sent = self._sock.send(records)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(exc)
            raise trio.BrokenResourceError(f"the connection broke while writing: {exc}") from exc
        if sent == len(records):
            return True
        self._unsent += memoryview(records)[sent:]
        return self._try_send() if sent else False

    async def _flush_raw(self) -> None:
        if self._flushing:
            raise trio.BusyResourceError("another task is already waiting to send on this TLS stream")
        self._flushing = True
        try:
            while not self._try_send():
                await trio.lowlevel.wait_writable(self._sock)
                self._check_open()
        finally:
            self._flushing = False

    # -- closing

    async def aclose(self) -> None:
        """Close the socket at once: HBONE's GOAWAY has already said goodbye."""
        self._close_socket()
        await trio.lowlevel.checkpoint()

    def _close_socket(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._sock)  # wakes a task waiting on it, with ClosedResourceError
            self._sock.close()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream was closed")
        if self._error is not None:
            raise trio.BrokenResourceError(f"the TLS stream broke earlier: {self._error}")

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc


def _plain_socket(transport: TcpStream | trio.SocketStream) -> socket.socket:
    """The connected stdlib socket under ``transport``, which gives it up (it must not be used
    afterwards). Both kinds of stream already set TCP_NODELAY, which HBONE's small frames need."""
    if isinstance(transport, TcpStream):
        sock = transport.detach()
    elif isinstance(transport, trio.SocketStream):
        sock = socket.socket(fileno=transport.socket.detach())
    else:
        raise TypeError(f"HBONE TLS runs on a TCP socket stream, not on {type(transport).__name__}")
    sock.setblocking(False)
    return sock
