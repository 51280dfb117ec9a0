"""A TCP proxy between allasrun and Swift that flips one byte in chosen downloads.

It stands in for a bad disk, network or cache: the data path is the real Swift, the damage
is real bytes on the wire, and only GETs of objects whose path contains a marker are hit.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Optional


class CorruptingProxy:
    """Listens on 127.0.0.1; forwards to `upstream`; damages GET responses for `marker`."""

    def __init__(self, upstream_port: int, marker: bytes) -> None:
        self.upstream_port = upstream_port
        self.marker = marker
        self.hits = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()

    def __enter__(self) -> CorruptingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(
        self, kind: Optional[type[BaseException]], value: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self._stop.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            state = {"corrupt": False}
            threading.Thread(target=self._requests, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._responses, args=(server, client, state), daemon=True).start()

    def _requests(self, source: socket.socket, target: socket.socket, state: dict[str, bool]) -> None:
        while data := _recv(source):
            path = (
                data.split(b"\r\n", 1)[0].split(b" ")[1].split(b"?")[0] if data.startswith(b"GET ") else b""
            )
            if self.marker in path:
                state["corrupt"] = True
            target.sendall(data)
        _close(target)

    def _responses(self, source: socket.socket, target: socket.socket, state: dict[str, bool]) -> None:
        in_body = False
        while data := _recv(source):
            if state["corrupt"]:
                spot = 0
                if not in_body:
                    end = data.find(b"\r\n\r\n")
                    in_body = end != -1
                    spot = end + 4
                if in_body and spot < len(data):
                    data = data[:spot] + bytes([data[spot] ^ 0xFF]) + data[spot + 1 :]
                    state["corrupt"] = in_body = False
                    self.hits += 1
            target.sendall(data)
        _close(target)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
