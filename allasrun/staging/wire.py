"""HTTP for the stores: one keep-alive connection per thread, and the `Transport` seam tests replace.

Why not a client library's pool: with thousands of small objects the cost that is left is the
client's CPU per request, and on a 2-core node that CPU is what the transfers wait for. A
16 KiB S3 PUT through botocore's client (urllib3 underneath) cost 1.54 ms of CPU on the lab's
radosgw; the same request signed by botocore's signer and sent here, 0.45 ms (`bench/s3.py`
has the end-to-end numbers). http.client under a thread-local connection is all a stager's
worker needs. A connection is out of the thread's slot while a reply is being read, so a
request sent meanwhile (a lookup while a body streams) opens one of its own.

Each request sets TCP_QUICKACK (Linux) before its reply is read. radosgw (Allas's server) writes
a reply's head and body in separate small writes; with Nagle's algorithm on its side and delayed
ACKs (40 ms) on ours, every GET, HEAD and listing waited 44 ms for nothing, measured on the lab's
radosgw: 1.0 ms with the ACK sent at once. Every other client measured (rclone, aws, curl) pays
the 44 ms, which is why they download small files five times slower.

What this module promises: a request gets a `Reply` or raises `OSError` /
`http.client.HTTPException` (the store maps them, in one place). A connection the server closed
while idle is reconnected once, at no retry's cost (a body of bytes is sent again, a `Stream`
rewound). A reply's body not read to its end closes its connection: the
bytes left in the socket would otherwise be taken for the next reply. A POST is never sent twice
here (a multipart completion or start would act twice).
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Optional, Protocol, Union
from urllib.parse import urlsplit

from allasrun.errors import BadCABundle, StoreError
from allasrun.staging.store import CHUNK


class Stream(Protocol):
    """A request body read as it is sent; `rewind` goes back to its first byte."""

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (at least one, until the end): b"" at the end."""

    def rewind(self) -> None:
        """Back to the first byte, for a request sent again."""


Body = Union[bytes, Stream, None]


class Readable(Protocol):
    """A reply's body: what http.client's response (and a test's BytesIO) offers."""

    def read(self, amt: Optional[int] = None) -> bytes:
        """Up to `amt` bytes, or all that is left; b"" at the end."""

    def close(self) -> None:
        """Done with it, read to the end or not."""


@dataclass
class Reply:
    """A server's answer: status, headers by lower-case name, and the body to read (or close)."""

    status: int
    headers: dict[str, str]
    body: Readable
    _done: Optional[Callable[[], None]] = field(default=None, repr=False)
    reason: str = ""  # the status line's words, for messages ("Unprocessable Entity")

    def read(self, size: int = CHUNK) -> bytes:
        """Up to `size` bytes of the body; b"" at its end."""
        return self.body.read(size)

    def content(self) -> bytes:
        """The whole body (an error's XML, a listing page), and the connection free again."""
        try:
            return self.body.read()
        finally:
            self.close()

    def close(self) -> None:
        """Done with the body: the connection is kept if it was read to the end, else closed."""
        if self._done is not None:
            self._done()
            self._done = None
        self.body.close()


class Transport(Protocol):
    """Sends one request to the endpoint; `target` is the path and query, quoted already."""

    def send(self, method: str, target: str, headers: Mapping[str, str], body: Body) -> Reply:
        """The reply, or `OSError` / `http.client.HTTPException` if none came."""


QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux's
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class Connections:
    """A `Transport` over http.client: one keep-alive connection per thread, per endpoint."""

    def __init__(
        self,
        endpoint: str,
        timeout: tuple[float, float],
        ca_bundle: Optional[str] = None,
        named: str = "AWS_CA_BUNDLE",
    ) -> None:
        """`ca_bundle`: the CA file for https (None: the system's), which variable `named`."""
        parts = urlsplit(endpoint)
        self._https = parts.scheme.lower() == "https"
        self._host, self._port = parts.hostname or "", parts.port
        self._timeout = timeout
        try:
            self._tls = ssl.create_default_context(cafile=ca_bundle) if self._https else None
        except (OSError, ssl.SSLError) as error:
            why = getattr(error, "strerror", None) or str(error)
            raise BadCABundle(f"{named}={ca_bundle}: cannot read it as CA certificates ({why})") from None
        self._local = threading.local()

    def send(self, method: str, target: str, headers: Mapping[str, str], body: Body) -> Reply:
        """One request and its reply; a stale kept-alive connection is replaced once."""
        connection: Optional[http.client.HTTPConnection] = self._local.__dict__.pop("connection", None)
        if connection is not None:
            try:
                return self._exchange(connection, method, target, headers, body)
            except STALE:  # closed by the server while idle: nothing was taken, so send it anew
                if method == "POST":  # ... unless it may have acted: the store's retry decides
                    raise
                if body is not None and not isinstance(body, bytes):
                    body.rewind()
        return self._exchange(self._connect(), method, target, headers, body)

    def _exchange(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: Body,
    ) -> Reply:
        try:
            connection.request(method, target, body=body, headers=dict(headers))
            if QUICKACK is not None and connection.sock is not None:
                connection.sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
            response = connection.getresponse()
        except BaseException:
            connection.close()
            raise

        def release() -> None:
            read = response.isclosed() or response.length == 0
            if response.will_close or not read or getattr(self._local, "connection", None):
                connection.close()  # bytes left unread, a server that closes, or a spare
            else:
                self._local.connection = connection

        found = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, found, response, release, response.reason)

    def _connect(self) -> http.client.HTTPConnection:
        connect, _read = self._timeout
        connection: http.client.HTTPConnection
        if self._tls is not None:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=connect, context=self._tls, blocksize=CHUNK
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=connect, blocksize=CHUNK)
        connection.connect()
        if connection.sock is not None:  # connected within `connect`; each read may take `read`
            connection.sock.settimeout(self._timeout[1])
        return connection


def store_error(error: Exception, action: str) -> StoreError:
    """A failure to get an answer as a `StoreError` that says `cannot <action URL>: no answer (why)`.

    Anything else (a bug) is re-raised as it is: it must not pass for a store failure that a
    retry could cure.
    """
    if isinstance(error, StoreError):
        return error
    if isinstance(error, (OSError, http.client.HTTPException)):
        why = str(error) or type(error).__name__
        return StoreError(f"cannot {action}: no answer ({why})", transient=True)
    raise error


def stream(reply: Reply, action: str) -> Iterator[bytes]:
    """The body in CHUNK pieces; an error while it streams is mapped like the request's."""
    try:
        while chunk := reply.read(CHUNK):
            yield chunk
    except Exception as error:  # mapped, or re-raised, in one place
        raise store_error(error, action) from None
    finally:
        reply.close()


def ca_bundle(endpoint: str, variable: str) -> Optional[str]:
    """The CA file for an https endpoint as `variable` names it, else None (the system's).

    How a site names its CA: S3 clients read `AWS_CA_BUNDLE`, OpenStack's `OS_CACERT`.
    """
    if urlsplit(endpoint).scheme.lower() != "https":
        return None
    return os.environ.get(variable) or None
