"""`SwiftStore`: the `Store` protocol over Swift's API, authenticated by a TokenSource.

Requests go out through `wire.Connections` (one keep-alive connection per worker thread, and
TCP_QUICKACK, which took radosgw's small GETs from 44 ms to 1 ms), not through swiftclient:
swiftclient over requests over urllib3 cost more CPU per request than the server took to
answer it, and on 2,000 small files that CPU is what the transfers waited for.

It speaks both dialects of the Swift API that Allas users meet: OpenStack Swift, and Ceph's
RADOS Gateway, which Allas runs. RGW lists a static large object by its manifest (the
manifest's size, the MD5 of nothing, no `slo_etag`) and answers `?multipart-manifest=get`
with an empty body; the object is then asked about with a HEAD, and its segments are found
by listing `<bucket>_segments` (the layout allasrun and the swift CLI upload) and kept only
if they add up to the object's size and ETag. Two sets can: a killed upload's whole set and the
re-run's are byte for byte alike, and a sweep that took the wrong one for the object's would
delete the object's own. So the manifest names its set in `X-Object-Meta-Allasrun-Segments`,
which radosgw returns with the empty manifest; a set no manifest names is the object's only
when it is the one set that adds up. Both list a dynamic large object (rclone's chunked
files: a zero-byte manifest with `X-Object-Manifest`) as an empty object, so every empty
object that is not a folder marker is asked about with a HEAD too; a DLO's segments are the
objects under its manifest's prefix.

Every upload is checked by the server before it stores anything where the MD5 can be known
first (`payload`): the `ETag` request header, which Swift and RGW both compare (422 on a
mismatch, sent again: the bytes went wrong on the way).

A 401 asks the source for a newer token and sends the request once more (keystoneauth's
`invalidate`), so a transfer that outlives a token carries on. Retries are `retry.call`'s;
failures become `StoreError`s naming the URL in `_refusal` and `wire.store_error`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO, Optional
from urllib.parse import quote, unquote, urlsplit

from allasrun.errors import BucketMissing, StoreError
from allasrun.staging import retry
from allasrun.staging.payload import IN_MEMORY, Hashed, whole
from allasrun.staging.store import EMPTY_MD5, Credentials, Extracted, RemoteObject, Segment, slo_etag
from allasrun.staging.wire import Body, Connections, Reply, Transport, ca_bundle, store_error, stream

PAGE = 10_000  # rows asked for per listing page: Swift's most (radosgw gives 1,000 at most)
BUNDLE_PAGE = 1_000  # rows per page of a bundle's listing: a bundle holds at most as many files
UNPROCESSABLE = 422  # the ETag sent does not match the body received
SEGMENT_SET = "x-object-meta-allasrun-segments"  # a manifest's set: `<stamp>/<size>/<segment size>`
META_VALUE = 256  # the longest metadata value Swift takes by default


class SwiftStore(retry.Requests):
    """Object storage operations for the stager; safe to use from many threads."""

    def __init__(
        self,
        credentials: Credentials,
        retries: int = 3,
        timeout: tuple[float, float] = retry.TIMEOUT,
        *,
        page: int = PAGE,
        transport: Optional[Transport] = None,
    ) -> None:
        self._credentials = credentials
        self._retries = retries
        self._page = page
        self._timeout = timeout
        self._transport = transport
        self._lock = threading.Lock()

    def _connections(self) -> Transport:
        """The transport to the storage URL, made at the first request (not before: no token yet)."""
        with self._lock:
            if self._transport is None:
                url = self._credentials.token.storage_url
                self._transport = Connections(url, self._timeout, ca_bundle(url, "OS_CACERT"), "OS_CACERT")
            return self._transport

    def listing(self, bucket: str, prefix: str) -> list[RemoteObject]:
        """Every object whose name starts with `prefix`, page after page."""
        return list(self._pages(bucket, prefix, "", self._page))

    def listing_between(self, bucket: str, first: str, last: str) -> list[RemoteObject]:
        """The objects named from `first` to `last`, in name order: a bundle's, to verify.

        The listing starts just before `first` (at its longest proper prefix, which sorts
        before it) and stops past `last`: pages of the bundle's names, not of the whole prefix.
        """
        common = os.path.commonprefix([first, last])  # noqa: RUF071 (a string prefix is meant)
        found = []
        for obj in self._pages(bucket, common, first[:-1], min(self._page, BUNDLE_PAGE)):
            if obj.name > last:
                break
            if obj.name >= first:
                found.append(obj)
        return found

    def _pages(self, bucket: str, prefix: str, marker: str, limit: int) -> Iterator[RemoteObject]:
        """The objects under `prefix` after `marker`, one page of `limit` asked for at a time.

        Until a page comes back empty: a page shorter than asked for is not the last one, since
        a server may cap the rows it gives (radosgw's `rgw_max_listing_results`, 1,000 by default).
        """
        query = {"format": "json", "limit": str(limit), "prefix": prefix}
        if marker:
            query["marker"] = marker
        action = f"list {self._url(bucket)}{f' (prefix {prefix!r})' if prefix else ''}"
        while True:
            try:
                rows, _ = self._json(action, bucket, query=query)
            except StoreError as error:
                if error.http_status == 404:
                    raise BucketMissing(f"bucket {bucket!r} does not exist ({self._url(bucket)})") from None
                raise
            yield from (self._listed(bucket, row) for row in rows if "subdir" not in row)
            if not rows:  # not a short page: radosgw gives at most 1,000 rows whatever `limit` asks
                return
            query = {**query, "marker": rows[-1].get("name") or rows[-1].get("subdir", "")}

    def extract(self, bucket: str, base: str, archive: bytes) -> Extracted:
        """PUT the tar to `bucket/base?extract-archive=tar`; the server's account of it.

        Container level always (radosgw 16.2 crashes on the account-level form). The answer is
        bulk's JSON, asked for with Accept (Swift streams spaces before it while it works); a
        body that is not, from a server without the middleware, means nothing was unpacked.
        """
        assert bucket, "a bundle goes into a container, never to the account"
        action = f"upload a bundle of files to {self._url(bucket, base)}"
        headers = {"accept": "application/json", "content-type": "application/x-tar"}
        reply = self._call(
            action,
            "PUT",
            bucket,
            base.rstrip("/"),
            query={"extract-archive": "tar"},
            headers={**headers, "content-length": str(len(archive))},
            body=archive,
        )
        try:
            answer = json.loads(reply.content() or b"null")
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or "Number Files Created" not in answer:
            return Extracted(False, f"{reply.status} {reply.reason}".rstrip(), {})
        failed = {}
        for path, status in answer.get("Errors") or []:
            failed[_member(unquote(str(path)), bucket)] = str(status)
        return Extracted(True, str(answer.get("Response Status", "")), failed)

    def _listed(self, bucket: str, row: dict[str, Any]) -> RemoteObject:
        """One listing row as an object; what may be a manifest is looked up."""
        name, size = row["name"], int(row["bytes"])
        if "slo_etag" in row:  # Swift: the object's ETag beside the manifest's hash
            return RemoteObject(name, size, row["slo_etag"].strip('"'), slo=True)
        listed = RemoteObject(name, size, row["hash"])
        if row["hash"] != EMPTY_MD5 or listed.folder:
            return listed
        # RGW lists an SLO by its manifest (a size, the MD5 of nothing); both list a DLO as empty
        headers = self._headers(f"look up {self._url(bucket, name)}", "HEAD", bucket, name)
        try:
            real, etag = int(headers["content-length"]), headers["etag"].strip('"')
        except (KeyError, ValueError):
            raise StoreError(f"cannot look up {self._url(bucket, name)}: the answer has no size") from None
        if headers.get("x-static-large-object", "").lower() == "true":
            return RemoteObject(name, real, etag, slo=True)
        manifest = unquote(headers.get("x-object-manifest", ""))
        return (
            RemoteObject(name, real, etag, dlo=manifest)
            if manifest and real
            else RemoteObject(name, real, etag)
        )

    def bucket_exists(self, bucket: str) -> bool:
        """Whether the bucket (container) exists."""
        try:
            self._headers(f"look up {self._url(bucket)}", "HEAD", bucket)
        except StoreError as error:
            if error.http_status == 404:
                return False
            raise
        return True

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it is missing."""
        if not self.bucket_exists(bucket):
            self._headers(f"create {self._url(bucket)}", "PUT", bucket, body=b"")

    def segments(self, bucket: str, obj: RemoteObject, *, exact: bool = False) -> list[Segment]:
        """The segments of a large object in order; [] if they cannot be known (see `Store`)."""
        if obj.dlo:
            return self._dlo_segments(obj.dlo)
        action = f"read the manifest of {self._url(bucket, obj.name)}"
        rows, headers = self._json(action, bucket, obj.name, query={"multipart-manifest": "get"})
        if rows:  # Swift: the manifest itself
            return [Segment(row["name"].lstrip("/"), int(row["bytes"]), row["hash"]) for row in rows]
        named = unquote(headers.get(SEGMENT_SET, ""))  # RGW: an empty body, the set allasrun named
        return self._segments_by_name(f"{bucket}_segments", obj, named, exact)

    def _dlo_segments(self, manifest: str) -> list[Segment]:
        """A DLO's segments: every object under its manifest's `container/prefix`.

        In name order, the order in which Swift and RGW join them.
        """
        container, _, prefix = manifest.partition("/")
        try:
            listed = self.listing(container, prefix)
        except BucketMissing:
            return []
        return [Segment(f"{container}/{part.name}", part.size, part.md5) for part in listed]

    def _segments_by_name(self, container: str, obj: RemoteObject, named: str, exact: bool) -> list[Segment]:
        """The segments under `<name>/slo/<stamp>/<size>/<segment size>/<index>` that make `obj`.

        Several uploads of one name leave several such sets until they are cleaned up. The one
        `named` by the manifest is the object's if it adds up to the object's size and ETag; with
        no name, a set that adds up. Two that do hold the object's bytes alike, either will do
        to verify it by, but which one it lists cannot be told: `exact` gets [], so that a sweep
        deletes neither.
        """
        prefix = f"{obj.name}/slo/"
        try:
            listed = self.listing(container, prefix)
        except BucketMissing:
            return []
        groups: dict[str, dict[int, RemoteObject]] = {}
        for part in listed:
            group, _, index = part.name.rpartition("/")
            if index.isdigit() and (not named or group == prefix + named):
                groups.setdefault(group, {})[int(index)] = part
        whole = []
        for members in groups.values():
            if sorted(members) != list(range(len(members))):
                continue  # a gap: not a whole upload
            found = [
                Segment(f"{container}/{members[i].name}", members[i].size, members[i].md5)
                for i in sorted(members)
            ]
            if sum(s.size for s in found) == obj.size and slo_etag(found) == obj.md5:
                whole.append(found)
        return whole[0] if len(whole) == 1 or (whole and not exact) else []

    def download(self, bucket: str, name: str) -> tuple[dict[str, str], Iterator[bytes]]:
        """Response headers (lower-case names) and the body in chunks of up to CHUNK bytes."""
        action = f"download {self._url(bucket, name)}"
        reply = self._call(action, "GET", bucket, name)
        return reply.headers, stream(reply, action)

    def upload(self, bucket: str, name: str, source: BinaryIO, size: int) -> tuple[str, str]:
        """PUT `size` bytes from `source` (from its position): the MD5 read and Swift's ETag.

        Up to IN_MEMORY bytes go with their MD5 as the ETag header, which the server checks.
        """
        action = f"upload {self._url(bucket, name)}"
        headers = {"content-length": str(size)}
        if size <= IN_MEMORY:
            data, md5 = whole(source, size)
            headers["etag"] = md5
            return md5, self._headers(action, "PUT", bucket, name, headers=headers, body=data).get("etag", "")
        with contextlib.closing(Hashed(source, size)) as body:
            reply = self._call(action, "PUT", bucket, name, headers=headers, body=body, again=body.rewind)
            reply.content()
            return body.md5(), reply.headers.get("etag", "").strip('"')

    def put_manifest(self, bucket: str, name: str, segments: list[Segment]) -> None:
        """Create a static large object from uploaded segments (Swift checks each ETag).

        The manifest names its set of segments in its metadata, for radosgw (see the module).
        """
        manifest = json.dumps([{"path": f"/{s.path}", "etag": s.md5, "size_bytes": s.size} for s in segments])
        group = segments[0].path.rpartition("/")[0] if segments else ""
        named = group.removeprefix(f"{bucket}_segments/{name}/slo/")
        value = quote(named, safe="/-_.~")
        headers = {SEGMENT_SET: value} if named != group and len(value) <= META_VALUE else {}
        self._headers(
            f"write the manifest of {self._url(bucket, name)}",
            "PUT",
            bucket,
            name,
            query={"multipart-manifest": "put"},
            headers=headers,
            body=manifest.encode(),
        )

    def delete(self, bucket: str, name: str) -> None:
        """Delete one object; a missing one is fine."""
        try:
            self._headers(f"delete {self._url(bucket, name)}", "DELETE", bucket, name)
        except StoreError as error:
            if error.http_status != 404:
                raise

    def _url(self, bucket: str, name: str = "") -> str:
        """Where a request goes, for messages: the storage URL, bucket and object."""
        return f"{self._credentials.token.storage_url.rstrip('/')}/{bucket}" + (f"/{name}" if name else "")

    def _json(
        self, action: str, bucket: str, name: str = "", *, query: Mapping[str, str]
    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """A GET's JSON rows (a listing page, a manifest; [] for an empty body) and headers.

        An answer that does not parse is the server's failure, worth a retry.
        """

        def attempt() -> tuple[list[dict[str, Any]], dict[str, str]]:
            reply = self._request(action, "GET", bucket, name, query, None, None)
            content = reply.content()
            try:
                rows = json.loads(content) if content.strip() else []
            except ValueError as error:  # not JSON, or not UTF-8
                raise StoreError(f"cannot {action}: malformed response ({error})", transient=True) from None
            if not isinstance(rows, list):
                raise StoreError(f"cannot {action}: malformed response (not a list)", transient=True)
            return rows, reply.headers

        return retry.call(action, attempt, store_error, self._retries)

    def _request(
        self,
        action: str,
        method: str,
        bucket: str,
        name: str,
        query: Optional[Mapping[str, str]],
        headers: Optional[Mapping[str, str]],
        body: Body,
    ) -> Reply:
        """One request with the current token; after a 401, once more with a renewed one."""
        token = self._credentials.token
        path = urlsplit(token.storage_url).path.rstrip("/")
        target = f"{path}/{quote(bucket, safe='')}" + (f"/{quote(name, safe='/~')}" if name else "")
        if query:
            target += "?" + "&".join(
                f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query.items()
            )
        transport = self._connections()
        reply = transport.send(method, target, {**(headers or {}), "x-auth-token": token.value}, body)
        if reply.status == 401:
            reply.content()
            token = self._credentials.renew(token)
            if body is not None and not isinstance(body, bytes):
                body.rewind()
            reply = transport.send(method, target, {**(headers or {}), "x-auth-token": token.value}, body)
        if reply.status >= 300:
            reply.content()
            raise _refusal(reply, action)
        return reply


def _member(path: str, bucket: str) -> str:
    """The object name in a bulk error's path: `/bucket/name` or `/v1/AUTH_x/bucket/name`."""
    path = path.lstrip("/")
    if path.startswith(f"{bucket}/"):
        return path[len(bucket) + 1 :]
    return path.partition(f"/{bucket}/")[2] or path


def _refusal(reply: Reply, action: str) -> StoreError:
    """An error answer: `cannot <action URL>: HTTP 503 Service Unavailable`, transient or not."""
    code = reply.status
    transient = code >= 500 or code in retry.RATE_LIMITED or code == UNPROCESSABLE
    return StoreError(
        f"cannot {action}: HTTP {code} {reply.reason}".rstrip(),
        code,
        transient=transient,
        retry_after=retry.retry_after(reply.headers),
    )
