"""A TCP proxy between allasrun and Swift that damages or stalls chosen responses.

It stands in for a bad disk, network or cache, or for a server that stops answering: the data
path is the real Swift (or radosgw), the damage is real bytes on the wire, and only requests
whose path (before `?`) contains a marker are hit. A flipped byte hits the first GET of such a
path per connection; a stall forwards the first `stall_after` bytes of the response (headers
included) and then nothing more, holding the connection open, as a dead middlebox would.
"""

from __future__ import annotations

import socket
import threading
from typing import Optional

from tests.stack.tcpproxy import Relay, close_write, recv, send


class CorruptingProxy(Relay):
    """Listens on 127.0.0.1; forwards to `upstream`; damages (or stalls) responses for `marker`."""

    def __init__(self, upstream_port: int, marker: bytes, stall_after: Optional[int] = None) -> None:
        super().__init__(upstream_port)
        self.marker = marker
        self.stall_after = stall_after
        self.hits = 0
        self.stalled = threading.Event()  # set once a response has been cut off

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        state = {"hit": False}
        threading.Thread(target=self._requests, args=(client, server, state), daemon=True).start()
        threading.Thread(target=self._responses, args=(server, client, state), daemon=True).start()

    def _requests(self, source: socket.socket, target: socket.socket, state: dict[str, bool]) -> None:
        while data := recv(source):
            method, _, rest = data.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?")[0]
            if self.marker in path and (method == b"GET" or self.stall_after is not None):
                state["hit"] = True
            if not send(target, data):
                break
        close_write(target)

    def _responses(self, source: socket.socket, target: socket.socket, state: dict[str, bool]) -> None:
        if self.stall_after is not None:
            self._stall(source, target, state)
            return
        in_body = False
        while data := recv(source):
            if state["hit"]:
                spot = 0
                if not in_body:
                    end = data.find(b"\r\n\r\n")
                    in_body = end != -1
                    spot = end + 4
                if in_body and spot < len(data):
                    data = data[:spot] + bytes([data[spot] ^ 0xFF]) + data[spot + 1 :]
                    state["hit"] = in_body = False
                    self.hits += 1
            if not send(target, data):
                break
        close_write(target)

    def _stall(self, source: socket.socket, target: socket.socket, state: dict[str, bool]) -> None:
        """Forward until a marked response has sent `stall_after` bytes, then go silent."""
        sent = 0
        while data := recv(source):
            if state["hit"]:
                assert self.stall_after is not None
                data = data[: max(self.stall_after - sent, 0)]
                sent += len(data)
                if sent >= self.stall_after:
                    send(target, data)
                    self.hits += 1
                    self.stalled.set()
                    return  # the upstream connection stays open and unread: a stall, not a reset
            if not send(target, data):
                break
        close_write(target)
