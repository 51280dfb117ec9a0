"""`FakeServer`: a `wire.Transport` that answers from a queue and records what was sent.

The stores are tested through it without a server: what they ask (methods, paths, queries,
headers, bodies) and how they read the answers. The real servers are tests/stack's.
"""

from __future__ import annotations

import http.client
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from allasrun.staging.store import CHUNK
from allasrun.staging.wire import Body, Reply


@dataclass
class Sent:
    """One request as the server got it: the path still quoted, the body read whole."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeServer:
    """Answers requests from a queue of (status, headers, body), recording what was sent."""

    answers: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    released: int = 0  # replies done with: their connection goes back to the thread

    def answer(self, status: int = 200, body: bytes | str = b"", **headers: str) -> None:
        self.answers.append((status, {k.replace("_", "-"): v for k, v in headers.items()}, _bytes(body)))

    def send(self, method: str, target: str, headers: Mapping[str, str], body: Body) -> Reply:
        if body is None or isinstance(body, bytes):
            data = body or b""
        else:
            data = b"".join(iter(lambda: body.read(CHUNK), b""))
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.sent.append(Sent(method, parts.path, query, {k.lower(): v for k, v in headers.items()}, data))
        status, answer_headers, content = self.answers.pop(0)
        reason = http.client.responses.get(status, "")
        return Reply(status, answer_headers, io.BytesIO(content), self._release, reason)

    def _release(self) -> None:
        self.released += 1


def _bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body
