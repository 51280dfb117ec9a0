"""The one retry layer of every store: which failures are worth another request, and how long to wait.

A request that gets no answer, a server error or throttling (408, 429, and 498, Swift's rate
limit; S3's SlowDown) is sent again up to `retries` times, after 1, 2, 4 ... s, or after the
server's `Retry-After` when that is longer. Any one wait is at most `LONGEST_WAIT`: a server
asking for an hour must not hold a job past its time limit, so a request gives up after
`retries` such waits at most and the file is reported instead. No other layer retries
(`wire` resends only a request that a kept-alive connection lost before it could act).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from functools import partial
from typing import Callable, Optional, TypeVar

from allasrun.errors import StoreError
from allasrun.log import log
from allasrun.staging.wire import Body, Reply, store_error

T = TypeVar("T")
# Seconds to connect, and to wait for each read of the socket (not the whole transfer). Allas
# answers in well under a second; a minute of silence is a stalled connection.
TIMEOUT = (20.0, 60.0)
LONGEST_WAIT = 60.0  # seconds: the most one wait before a retry lasts, whatever Retry-After says
RATE_LIMITED = (408, 429, 498)  # a timeout, Too Many Requests, and Swift's own rate limit
Mapping_ = Callable[[Exception, str], StoreError]  # a library's exception as a StoreError (or re-raised)


def call(
    action: str,
    attempt: Callable[[], T],
    mapped: Mapping_,
    retries: int,
    again: Optional[Callable[[], None]] = None,
) -> T:
    """`attempt()`, sent again while its failure is transient; `again` rewinds an upload's body.

    The error that ends it says whether it was retried to the end (`retried`), so that no
    caller retries it once more.
    """
    for retry in range(retries + 1):
        try:
            return attempt()
        except Exception as error:  # mapped, or re-raised as it is, by `mapped`
            failure = mapped(error, action)
        if not failure.transient or retry == retries:
            failure.retried = failure.transient
            raise failure
        delay = wait_before(retry, failure.retry_after)
        log.info("%s; retrying in %.0f s", failure, delay)  # progress: the failure, if any, is an error
        time.sleep(delay)
        if again is not None:
            again()
    raise AssertionError("unreachable")


def wait_before(retry: int, retry_after: Optional[float]) -> float:
    """Seconds before retry number `retry` + 1: the backoff, or the server's longer ask, capped."""
    return min(max(float(2**retry), retry_after or 0.0), LONGEST_WAIT)


def retry_after(headers: Optional[Mapping[str, str]]) -> Optional[float]:
    """`Retry-After` in seconds, whether given as seconds or as an HTTP date; None if absent or bad."""
    value = next((v for k, v in (headers or {}).items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class Requests:
    """Every store's requests, retried here and nowhere else, around the store's own `_request`.

    `_request` sends one request its store's way (Swift with a token, S3 signed) and raises on
    failure; `_retries` bounds the tries.
    """

    _retries: int
    _request: Callable[
        [str, str, str, str, Optional[Mapping[str, str]], Optional[Mapping[str, str]], Body], Reply
    ]

    def _call(
        self,
        action: str,
        method: str,
        bucket: str,
        name: str = "",
        *,
        query: Optional[Mapping[str, str]] = None,
        headers: Optional[Mapping[str, str]] = None,
        body: Body = None,
        again: Optional[Callable[[], None]] = None,
    ) -> Reply:
        """One request, retried while the failure is transient; `again` rewinds an upload's body."""
        request = partial(self._request, action, method, bucket, name, query, headers, body)
        return call(action, request, store_error, self._retries, again)

    def _headers(
        self,
        action: str,
        method: str,
        bucket: str,
        name: str = "",
        *,
        query: Optional[Mapping[str, str]] = None,
        headers: Optional[Mapping[str, str]] = None,
        body: Body = None,
    ) -> dict[str, str]:
        """A request answered by its status and headers: the body (if any) read, the connection kept."""
        reply = self._call(action, method, bucket, name, query=query, headers=headers, body=body)
        reply.content()
        return reply.headers
