"""wire.Connections against a real HTTP server on loopback: reuse, stale connections, unread bodies.

The server counts the connections it accepted, and can close a kept-alive connection without a
word (what a server's idle timeout does), so each promise of the module is seen on the socket.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from allasrun.staging.wire import Connections


@dataclass
class Counts:
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    close_idle: bool = False  # close each connection after its reply, saying nothing


def _handler(counts: Counts) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            counts.connections += 1
            super().setup()

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            counts.requests.append(f"{self.command} {self.path} {len(body)}")
            content = b"y" * 100_000 if self.path == "/big" else body
            self.send_response(200)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)
            if counts.close_idle:
                self.close_connection = True

        do_GET = do_PUT = do_POST = do_HEAD = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client closing a connection with a reply unread is what some tests do: no traceback."""


@pytest.fixture
def served() -> Iterator[tuple[Connections, Counts]]:
    counts = Counts()
    server = _Server(("127.0.0.1", 0), _handler(counts))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Connections(f"http://127.0.0.1:{server.server_address[1]}", (5.0, 5.0)), counts
    finally:
        server.shutdown()
        server.server_close()


def test_one_thread_reuses_one_connection(served: tuple[Connections, Counts]) -> None:
    wire, counts = served
    for n in range(5):
        reply = wire.send("PUT", f"/k{n}", {"content-length": "3"}, b"abc")
        assert (reply.status, reply.content()) == (200, b"abc")
    wire.send("HEAD", "/k", {}, None).close()
    assert counts.connections == 1 and len(counts.requests) == 6


def test_threads_have_connections_of_their_own(served: tuple[Connections, Counts]) -> None:
    wire, counts = served

    def work() -> None:
        for _ in range(3):
            wire.send("GET", "/x", {}, None).content()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts.connections == 3 and len(counts.requests) == 9


def test_a_body_left_unread_costs_its_connection_not_the_next_reply(
    served: tuple[Connections, Counts],
) -> None:
    wire, counts = served
    reply = wire.send("GET", "/big", {}, None)
    assert reply.read(10) == b"y" * 10
    reply.close()  # 99,990 bytes still in the socket
    assert wire.send("PUT", "/after", {"content-length": "2"}, b"ok").content() == b"ok"
    assert counts.connections == 2


def test_a_request_sent_while_a_body_streams_gets_its_own_connection(
    served: tuple[Connections, Counts],
) -> None:
    wire, counts = served
    streaming = wire.send("GET", "/big", {}, None)
    assert wire.send("PUT", "/meanwhile", {"content-length": "1"}, b"m").content() == b"m"
    assert len(streaming.content()) == 100_000
    assert counts.connections == 2
    wire.send("GET", "/x", {}, None).content()
    assert counts.connections == 2  # one of the two was kept


def test_a_connection_the_server_closed_while_idle_is_replaced_at_once(
    served: tuple[Connections, Counts],
) -> None:
    wire, counts = served
    counts.close_idle = True  # without Connection: close, as an idle timeout would
    wire.send("GET", "/first", {}, None).content()
    reply = wire.send("PUT", "/second", {"content-length": "3"}, b"abc")
    assert (reply.status, reply.content()) == (200, b"abc")
    assert counts.requests == ["GET /first 0", "PUT /second 3"] and counts.connections == 2


def test_a_post_on_a_stale_connection_is_not_sent_again(served: tuple[Connections, Counts]) -> None:
    """A POST that may have acted (a multipart completion) is left to the store's retry layer."""
    wire, counts = served
    counts.close_idle = True
    wire.send("GET", "/first", {}, None).content()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        wire.send("POST", "/complete", {"content-length": "1"}, b"p")
    assert wire.send("POST", "/complete", {"content-length": "1"}, b"p").content() == b"p"
