"""A TCP relay on 127.0.0.1 in front of a local service, for tests that need the wire to misbehave.

The service is real (Swift, radosgw, Keystone); only what travels between it and allasrun is
changed: a subclass sees each direction's bytes (`relay`) to damage, hold or stall them, and
`close` cuts every connection at once, as a dead server or network would.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Optional, TypeVar

R = TypeVar("R", bound="Relay")
Line = collections.deque[tuple[float, bytes]]  # bytes in flight, each with the moment it is due


class Relay:
    """Listens on an ephemeral port (`port`); each connection is forwarded to `upstream_port`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self: R) -> R:
        self.start()
        return self

    def __exit__(
        self, kind: Optional[type[BaseException]], value: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def close(self) -> None:
        """Refuse new connections and cut every open one (held or stalled ones too)."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close alone would not
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        """Start both directions of one connection; plain forwarding unless a subclass says otherwise."""
        for source, target in ((client, server), (server, client)):
            threading.Thread(target=forward, args=(source, target), daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [client, server]
            self.relay(client, server)


def forward(source: socket.socket, target: socket.socket) -> None:
    """Copy one direction until it ends, then pass the end on."""
    while data := recv(source):
        if not send(target, data):
            break
    close_write(target)


def recv(sock: socket.socket) -> bytes:
    """The next bytes, or b"" once the connection has ended or been cut."""
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def send(sock: socket.socket, data: bytes) -> bool:
    """Whether `data` went out: the client may have hung up on a response it found damaged."""
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def close_write(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


class ThrottledRelay(Relay):
    """Uploads (client to server) held to `rate` bytes per second in all, as a slow link would.

    Downloads pass at full speed. The budget is shared by every connection, so parallel
    segment uploads slow each other down as they would on one link.
    """

    def __init__(self, upstream_port: int, rate: float) -> None:
        super().__init__(upstream_port)
        self.rate = rate
        self._next = time.monotonic()
        self._budget = threading.Lock()

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        threading.Thread(target=self._throttle, args=(client, server), daemon=True).start()
        threading.Thread(target=forward, args=(server, client), daemon=True).start()

    def _throttle(self, source: socket.socket, target: socket.socket) -> None:
        while data := recv(source):
            for start in range(0, len(data), 8192):
                chunk = data[start : start + 8192]
                self._wait_for(len(chunk))
                if not send(target, chunk):
                    return
        close_write(target)

    def _wait_for(self, size: int) -> None:
        """Reserve the link for `size` bytes after every earlier reservation, then wait for it."""
        with self._budget:
            begin = max(self._next, time.monotonic())
            self._next = begin + size / self.rate
        time.sleep(max(begin - time.monotonic(), 0.0))


class LatencyRelay(Relay):
    """Every byte arrives `rtt / 2` seconds after it was sent, each way, as over a wide-area link.

    The lab's servers answer in microseconds over loopback; Allas is reached over a network with
    milliseconds of round trip, which is what bundling and concurrency exist for. Bytes are
    delayed, not slowed: a delay line per direction (a reader stamps, a writer waits for the
    stamp), so throughput is the relay's own and only the round trip changes.
    """

    def __init__(self, upstream_port: int, rtt: float) -> None:
        super().__init__(upstream_port)
        self.delay = rtt / 2

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        for sock in (client, server):  # the relay's own sockets add no wait of their own
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for source, target in ((client, server), (server, client)):
            line: Line = collections.deque()
            ready = threading.Condition()
            threading.Thread(target=self._stamp, args=(source, line, ready), daemon=True).start()
            threading.Thread(target=self._deliver, args=(target, line, ready), daemon=True).start()

    def _stamp(self, source: socket.socket, line: Line, ready: threading.Condition) -> None:
        while True:
            data = recv(source)
            # Acknowledged at once, as allasrun's own sockets do (staging/wire.py): a delayed ACK
            # here would stall a sender that waits for it (radosgw: 40 ms a response), a stall of
            # the relay's and not of the link it stands for. Linux re-arms delayed ACKs: set per read.
            with contextlib.suppress(OSError):
                source.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            with ready:
                line.append((time.monotonic() + self.delay, data))
                ready.notify()
            if not data:
                return

    def _deliver(self, target: socket.socket, line: Line, ready: threading.Condition) -> None:
        while True:
            with ready:
                ready.wait_for(lambda: bool(line))
                due, data = line.popleft()
            time.sleep(max(due - time.monotonic(), 0.0))
            if not data:
                close_write(target)
                return
            if not send(target, data):
                return
