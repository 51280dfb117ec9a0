"""The run's token service: Swift's v1 auth on 127.0.0.1, answered with the keeper's token.

rclone and swift log in again whenever they start or get a 401. Pointed at Keystone, that is
a login per client call (an array of a thousand tasks calling rclone per file sends Keystone
hundreds of thousands); pointed at a pinned token, a transfer that outlives the token fails.
Pointed here, both re-authenticate as often as they like and only the keeper's renewals ever
reach Keystone, as AWS's container credentials endpoint and Vault Agent's cache do.

Why it is safe on a node shared with other users: it listens on loopback only, for as long as
the run lives; it answers only `GET /auth/v1.0` carrying the run's user and key (256 random
bits made for this run, kept only in the run's 0600 files and the command's environment,
compared in constant time), and anything else gets a status line and nothing more. It never
calls anything: a flood costs CPU, not Keystone logins.

Why it cannot hurt the job: one thread, non-blocking sockets under a selector. A slow or
silent client holds one of a bounded number of slots until its deadline or until newer
clients need the slot, never the thread; a request head is bounded; each kind of refusal is
logged once and then only counted.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from allasrun.auth import Token
from allasrun.log import hide, log

PATH = "/auth/v1.0"
USER = "allasrun"
HEAD_LIMIT = 8192  # bytes of request line and headers; a v1 auth request needs a few hundred
DEADLINE = 5.0  # seconds a client may take to send its request and read the answer
SLOTS = 256  # connections held at once; a new one beyond that pushes the oldest out
BACKLOG = 128
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
_REFUSALS = {
    400: "a malformed request",
    401: "a request without the run's user and key",
    404: "a request for another path than " + PATH,
    405: "a request with another method than GET",
    431: "a request with an oversized head",
    503: "a request after the token expired",
}


@dataclass(frozen=True)
class Access:
    """What a client needs to authenticate here: Swift v1's auth URL, user and key."""

    url: str
    user: str
    key: str


@dataclass
class _Client:
    sock: socket.socket
    deadline: float
    received: bytearray = field(default_factory=bytearray)
    reply: bytes = b""
    answered: bool = False  # the reply is sent: what still comes is read and thrown away


@dataclass
class Tally:
    """What the service did: answers given, refusals by status, and its own time spent."""

    answered: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    busy_seconds: float = 0.0  # parsing and answering, not waiting on sockets


class TokenService:
    """Answers Swift v1 auth requests with `current()` until stopped; a context manager."""

    def __init__(self, current: Callable[[], Token], listener: socket.socket, key: str) -> None:
        self._current = current
        self._listener = listener
        self._key = key.encode()
        self._user = USER.encode()
        host, port = listener.getsockname()[:2]
        self.access = Access(f"http://{host}:{port}{PATH}", USER, key)
        self.tally = Tally()
        self._clients: dict[int, _Client] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="allasrun-token-service", daemon=True)

    @classmethod
    def open(cls, current: Callable[[], Token]) -> Optional[TokenService]:
        """Listen on a free loopback port, or warn and return None (the run uses plain files).

        Binding is done here, before the command is forked; `start` runs the thread later.
        """
        try:
            listener = socket.create_server(("127.0.0.1", 0), backlog=BACKLOG)
        except OSError as error:
            log.warning(
                "cannot start the token service on 127.0.0.1 (%s): clients get the token and "
                "credential in the run's files instead, as without it",
                os.strerror(error.errno) if error.errno else error,  # not create_server's long wording
            )
            return None
        key = secrets.token_urlsafe(32)
        hide(key)
        return cls(current, listener, key)

    def start(self) -> None:
        """Serve in a background thread."""
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close every socket; clients still connected get a reset."""
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                self._wake_write.send(b"x")
            self._thread.join()
        for client in list(self._clients.values()):
            self._drop(client)
        for sock in (self._listener, self._wake_read, self._wake_write):
            sock.close()
        self._selector.close()
        tally = self.tally
        if tally.answered or tally.refused:
            log.info(
                "token service: %d answer(s), %d refusal(s), %.0f µs each on average",
                tally.answered,
                sum(tally.refused.values()),
                1e6 * tally.busy_seconds / (tally.answered + sum(tally.refused.values())),
            )

    def __enter__(self) -> TokenService:
        self.start()
        return self

    def __exit__(self, *exception: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while True:
            timeout = min((client.deadline for client in self._clients.values()), default=None)
            wait = None if timeout is None else max(timeout - time.monotonic(), 0.0)
            for key, events in self._selector.select(wait):
                if key.fileobj is self._wake_read:
                    return
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    client: _Client = key.data
                    if self._clients.get(key.fd) is client:  # not dropped earlier in this round
                        self._on_client(client, events)
            self._expire(time.monotonic())

    def _accept(self) -> None:
        """Take every waiting connection; when all slots are taken, the oldest client goes.

        Idle connections (another user's, say) then cannot keep the job's clients out.
        """
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of file descriptors, say: free one, try again soon
                log.debug("token service: accept failed: %s", error)
                if not self._drop_oldest():
                    time.sleep(0.05)  # the listener stays readable: do not spin
                return
            if len(self._clients) >= SLOTS:
                self._drop_oldest()
            sock.setblocking(False)
            client = _Client(sock, time.monotonic() + DEADLINE)
            self._clients[sock.fileno()] = client
            self._selector.register(sock, selectors.EVENT_READ, client)

    def _on_client(self, client: _Client, events: int) -> None:
        try:
            if events & selectors.EVENT_READ and client.answered:
                self._drain(client)
            elif events & selectors.EVENT_READ and not client.reply:
                self._receive(client)
            if client.reply:
                self._send(client)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the client: nothing to answer
            self._drop(client)
        except Exception as error:  # a defect costs this request, never the service or the job
            log.warning("token service: internal error %s: %s; request dropped", type(error).__name__, error)
            log.debug("traceback of the token service error above", exc_info=True)
            self._drop(client)

    def _receive(self, client: _Client) -> None:
        chunk = client.sock.recv(HEAD_LIMIT + 1)
        if not chunk:
            self._drop(client)
            return
        client.received += chunk
        end = client.received.find(b"\r\n\r\n")
        if end < 0 and len(client.received) <= HEAD_LIMIT:
            return
        started = time.perf_counter()
        status, headers = self._answer(client.received, end)
        client.reply = _response(status, headers, self._explain(status))
        self.tally.busy_seconds += time.perf_counter() - started
        self._selector.modify(client.sock, selectors.EVENT_WRITE, client)

    def _send(self, client: _Client) -> None:
        """Send what is left of the reply; then close our side and wait for the client's close.

        Closing with unread bytes (an oversized head) would reset the connection, and the
        client could lose the answer with it.
        """
        sent = client.sock.send(client.reply)
        client.reply = client.reply[sent:]
        if not client.reply:
            client.sock.shutdown(socket.SHUT_WR)
            client.answered = True
            self._selector.modify(client.sock, selectors.EVENT_READ, client)

    def _drain(self, client: _Client) -> None:
        if not client.sock.recv(HEAD_LIMIT):
            self._drop(client)

    def _answer(self, received: bytearray, end: int) -> tuple[int, dict[str, str]]:
        """The status and headers for one request head (`end` < 0: it never ended)."""
        token = self._current()
        left = token.remaining(token.keystone_now(time.time()))  # by Keystone's clock: seconds are seconds
        refusal = _refusal(received, end, self._user, self._key)
        if refusal is None and not token.renewable and left <= 0:
            refusal = 503
        if refusal is not None:
            return self._refuse(refusal)
        self.tally.answered += 1
        return 200, {
            "X-Storage-Url": token.storage_url,
            "X-Auth-Token": token.value,
            "X-Storage-Token": token.value,
            "X-Auth-Token-Expires": str(max(int(left), 0)),
        }

    def _refuse(self, status: int) -> tuple[int, dict[str, str]]:
        """Count a refusal, logging only the first of its kind: a flood must not flood the log."""
        self.tally.refused[status] += 1
        if self.tally.refused[status] == 1:
            what = _REFUSALS[status]
            log.warning("token service: refused %s (%d); more are counted, not logged", what, status)
        return status, {}

    def _explain(self, status: int) -> str:
        if status != 503:
            return ""
        # swift shows the first 60 characters of an answer: the whole reason fits in them.
        return f"OS_AUTH_TOKEN expired at {self._current().expiry_text()}, not renewable\n"

    def _expire(self, now: float) -> None:
        """Drop clients past their deadline: a silent connection must not hold a slot for ever."""
        for client in [client for client in self._clients.values() if client.deadline <= now]:
            self._drop(client)

    def _drop_oldest(self) -> bool:
        """Make room by dropping the longest-waiting client; whether there was one."""
        if not self._clients:
            return False
        self._drop(min(self._clients.values(), key=lambda client: client.deadline))
        return True

    def _drop(self, client: _Client) -> None:
        self._clients.pop(client.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client.sock)
        client.sock.close()


def _refusal(received: bytearray, end: int, user: bytes, key: bytes) -> Optional[int]:
    """Why a request head gets no token (an HTTP status), or None if it gets one."""
    if end < 0 or end > HEAD_LIMIT:
        return 431
    request = _parse(bytes(received[:end]))
    if request is None:
        return 400
    method, path, headers = request
    if path.split("?", 1)[0].rstrip("/") != PATH:
        return 404
    if method != "GET":
        return 405
    # Both compared, always: the time taken says nothing about which one was wrong.
    right_user = hmac.compare_digest(headers.get("x-auth-user", b""), user)
    right_key = hmac.compare_digest(headers.get("x-auth-key", b""), key)
    return None if right_user and right_key else 401


def _parse(head: bytes) -> Optional[tuple[str, str, dict[str, bytes]]]:
    """Method, target and lower-cased headers of an HTTP/1.x request head; None if malformed."""
    try:
        text_lines = head.split(b"\r\n")
        method, target, version = text_lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return None
    if not version.startswith("HTTP/1.") or not target.startswith("/"):
        return None
    headers: dict[str, bytes] = {}
    for line in text_lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            return None
        headers[name.decode("latin-1").lower()] = value.strip()
    return method, target, headers


def _response(status: int, headers: dict[str, str], body: str) -> bytes:
    payload = body.encode()
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [
        f"Content-Length: {len(payload)}",
        "Content-Type: text/plain; charset=utf-8",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
