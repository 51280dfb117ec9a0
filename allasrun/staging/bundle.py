"""Small files by the hundred in one request: tar bundles that the server unpacks into objects.

Swift's bulk middleware and radosgw both take `PUT <container>[/<prefix>]?extract-archive=tar`
and store each member of the tar as an object of its own, exactly as if it had been uploaded
alone (its name, size and ETag). What bounds many small files is the cost per request (a
token check, a proxy's request, a connection's turn), and a bundle pays it once for hundreds.
Never the account-level form (`PUT <account>?extract-archive`): radosgw 16.2 crashes on it.

What goes into a bundle (`bundles`): a file of at most SMALL bytes whose object would not
replace a large object and whose name has no segments to sweep, over a store that unpacks
(`BulkStore`), unless `#ALLAS option bundles=no`; grouped per bucket in name order, at least one
bundle per thread. Before the first bundle the server is asked once whether it unpacks at all
(`Bundler._offered`: an empty tar sent to the container), since a server without the middleware
would store a bundle sent below a folder as one object named after the folder. At send time
(`Bundler.send`), a file identical to its object is skipped and one that `--no-overwrite`
protects is refused, as one by one; a name the tar cannot carry goes alone (`member_problem`):
radosgw reads only the 100-byte name field of a plain ustar header (no prefix field, no pax or
GNU long names; given a pax name it stores the member under the name cut to 100 bytes), and it
stores members whose whole name is over the 1,024 bytes a request may name, objects no request
could read (both measured on the lab).

How each file is verified: the server's per-member errors, then one listing of the bundle's
names (`listing_between`): its object must be listed with the file's size and the MD5 read
while the tar was built. A file that is not (refused by the server, say over a container quota,
missing, or listed otherwise), every file of a bundle that failed as a whole, and every file
once the server is known not to unpack is sent again alone, by a PUT the server checks against
its MD5; the reason is logged. A file that changed while it was read goes alone too, where the
usual check reports it.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

from allasrun.errors import AllasrunError, StoreError
from allasrun.log import log
from allasrun.staging.payload import whole
from allasrun.staging.put import Put, Uploader, changed, listed_size
from allasrun.staging.select import common_prefix, open_inside
from allasrun.staging.store import BulkStore, Store
from allasrun.staging.transfer import DONE, Transfer
from allasrun.staging.verify import MD5

SMALL = 256 * 1024  # bytes: a file up to this size goes in a bundle; a larger one gains little
BUNDLE_BYTES = 4 * 1024 * 1024  # of tar per bundle: it is built in memory, one per thread
BUNDLE_FILES = 1000  # files per bundle at most (Swift's bulk gives up after 1,000 failures)
BUNDLE_LEAST = 4  # files per bundle at least: a bundle costs two requests (the tar, its listing)
NAME_FIELD = 100  # bytes of a ustar header's name: all radosgw reads of a member's name
MAX_NAME = 1024  # bytes of an object name: the most Swift and radosgw take in a request
HEADER = 512  # bytes of a member's header; its data is padded to a multiple of it
EMPTY_TAR = bytes(2 * HEADER)  # a tar's end: two zero blocks, and nothing before them

Single = Callable[[Put, Transfer], None]  # one file sent alone, its record filled in


def bundles(
    store: Store, puts: Sequence[Put], threads: int, enabled: bool
) -> tuple[list[list[Put]], list[Put]]:
    """The puts that go in bundles, grouped, and the rest, which go one by one.

    Bundles hold files of one bucket in name order, one per thread where each gets BUNDLE_LEAST
    files (so that all threads send), more where BUNDLE_FILES files or BUNDLE_BYTES of tar would
    be passed; fewer than BUNDLE_LEAST small files of a bucket go alone.
    """
    if not enabled or not isinstance(store, BulkStore):
        return [], list(puts)
    small: dict[str, list[tuple[Put, int]]] = {}
    alone: list[Put] = []
    for put in puts:
        size = listed_size(put.file)
        if size <= SMALL and not put.segmented and not (put.remote and put.remote.large):
            small.setdefault(put.spec.bucket, []).append((put, size))
        else:
            alone.append(put)
    groups: list[list[Put]] = []
    for found in small.values():
        found.sort(key=lambda item: item[0].name)
        tar = sum(_tar_size(size) for _, size in found)
        if len(found) < BUNDLE_LEAST:
            alone += [put for put, _ in found]
            continue
        count = max(
            min(threads, len(found) // BUNDLE_LEAST), -(-tar // BUNDLE_BYTES), -(-len(found) // BUNDLE_FILES)
        )
        made: list[list[Put]] = []
        group: list[Put] = []
        held = 0
        for index, (put, size) in enumerate(found):
            even = len(made) + 1 < count and index * count >= (len(made) + 1) * len(found)
            if group and (even or held + _tar_size(size) > BUNDLE_BYTES):
                made.append(group)
                group, held = [], 0
            group.append(put)
            held += _tar_size(size)
        groups += [*made, group]
    alone += [group[0] for group in groups if len(group) == 1]
    return [group for group in groups if len(group) > 1], alone


def _tar_size(size: int) -> int:
    """A member's bytes in the tar: its header, its data padded to whole blocks."""
    return HEADER + -(-size // HEADER) * HEADER


def member_problem(name: str, base: str) -> str:
    """Why an object name cannot go in a bundle below the folder `base`; "" if it can.

    radosgw reads a member's name from the tar header's 100-byte field alone, and stores a
    member whose whole name is over the 1,024 bytes a request may name: an object no request
    could then read. Such names go alone, where the server's own checks answer them.
    """
    member = name[len(base) :]
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
        return f"its name is over the {MAX_NAME} bytes an object name may have"
    if len(member.encode("utf-8", "surrogateescape")) > NAME_FIELD:
        return f"its name below the bundle's folder is over the {NAME_FIELD} bytes a tar bundle carries"
    if any(part in ("", ".", "..") for part in member.split("/")) or "\0" in member:
        return "its name has an empty, '.' or '..' part, which a tar bundle cannot carry as it is"
    return ""


@dataclass
class _Member:
    """A file read into the bundle: its put, its record, and what was read."""

    put: Put
    record: Transfer
    size: int
    md5: str


class Bundler:
    """Sends bundles of small files for the stager; `single` sends a file alone instead."""

    def __init__(self, store: BulkStore, uploader: Uploader, single: Single) -> None:
        self.store = store
        self.uploader = uploader
        self.single = single
        self._unpacks: Optional[bool] = None  # not asked yet
        self._lock = threading.Lock()
        self.bundles = 0  # sent and unpacked
        self.files = 0  # stored from them, each verified

    def send(self, puts: Sequence[Put], records: Sequence[Transfer]) -> None:
        """One bundle: each record filled in, as done, skipped, refused, or by the file sent alone."""
        folder = common_prefix([put.name for put in puts]).rpartition("/")[0]
        base = f"{folder}/" if folder else ""
        buffer = io.BytesIO()
        members: list[_Member] = []
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT, encoding="utf-8") as tar:
            for put, record in zip(puts, records):
                member = self._read(put, record, base, tar)
                if member is not None:
                    members.append(member)
        bucket = puts[0].spec.bucket
        if len(members) < 2 or not self._offered(bucket, puts[0].spec.address("")):
            self._alone(members, "")
            return
        try:
            answer = self.store.extract(bucket, base, buffer.getvalue())
        except StoreError as error:
            self._alone(members, f"its bundle failed: {error}")
            return
        if not answer.unpacked:
            with self._lock:
                self._off(puts[0].spec.address(""), f"it stored nothing of a bundle (HTTP {answer.status})")
            self._alone(members, "")
            return
        stored = self._verify(bucket, members, answer.failed, answer.status)
        with self._lock:
            self.bundles += 1
            self.files += stored

    def _offered(self, bucket: str, address: str) -> bool:
        """Whether the server unpacks tar bundles, asked once with an empty tar sent to the container.

        Asked before any bundle: a server without the bulk middleware takes a bundle sent below
        a folder (`bucket/folder?extract-archive=tar`) for an object named after the folder,
        and would store the tar over whatever has that name; sent to the container, the empty
        tar is a harmless update of the container (HTTP 202, not bulk's JSON answer).
        """
        with self._lock:
            if self._unpacks is None:
                try:
                    answer = self.store.extract(bucket, "", EMPTY_TAR)
                except StoreError as error:
                    self._off(address, f"it could not be asked whether it unpacks them ({error})")
                else:
                    if answer.unpacked:
                        self._unpacks = True
                    else:
                        self._off(
                            address, f"it does not unpack them (HTTP {answer.status}; no bulk middleware?)"
                        )
            return bool(self._unpacks)

    def _off(self, address: str, why: str) -> None:
        """No more bundles in this run: said once, with the reason."""
        if self._unpacks is not False:
            log.warning("%s: small files go one by one, not in tar bundles: %s", address, why)
        self._unpacks = False

    def _read(self, put: Put, record: Transfer, base: str, tar: tarfile.TarFile) -> _Member | None:
        """Add one file to the tar; None if it is settled (skipped, refused) or goes alone."""
        member = put.name[len(base) :]
        problem = ""
        try:
            with open_inside(put.file) as source:
                if self.uploader.settled(put, source, record):
                    return None
                problem = member_problem(put.name, base)
                if not problem:
                    source.seek(0)
                    stat = os.fstat(source.fileno())
                    data, md5 = whole(source, stat.st_size)
                    if changed(put.file, stat, source):
                        problem = "it changed while it was read into its bundle"
        except (OSError, AllasrunError):  # gone, unreadable, shorter than it was
            problem = "it could not be read into its bundle"
        if problem:  # sent alone, where the usual checks find what is wrong with it and report it
            log.info("%s goes alone: %s", record.destination, problem)
            self.single(put, record)
            return None
        info = tarfile.TarInfo(member)
        info.size, info.mtime, info.mode = len(data), int(stat.st_mtime), 0o644
        tar.addfile(info, io.BytesIO(data))
        return _Member(put, record, len(data), md5)

    def _verify(self, bucket: str, members: list[_Member], failed: dict[str, str], status: str) -> int:
        """Each member's object listed with its size and MD5: done; any other, sent alone. How many done."""
        try:
            listed = {
                o.name: o
                for o in self.store.listing_between(bucket, members[0].put.name, members[-1].put.name)
            }
        except StoreError as error:
            self._alone(members, f"its bundle could not be listed to verify it: {error}")
            return 0
        done = 0
        for member in members:
            name, obj = member.put.name, listed.get(member.put.name)
            if name in failed:
                why = f"the server refused it in its bundle ({failed[name]})"
            elif obj is None:
                why = f"not stored from its bundle (the bundle: {status})"
            elif (obj.size, obj.md5) != (member.size, member.md5):
                why = f"stored from its bundle as {obj.size} bytes, ETag {obj.md5}; read as MD5 {member.md5}"
            else:
                record = member.record
                record.status, record.bytes, record.md5, record.verified = DONE, member.size, member.md5, MD5
                done += 1
                continue
            self._alone([member], why)
        return done

    def _alone(self, members: Sequence[_Member], why: str) -> None:
        """Send each of these files alone, saying why."""
        for member in members:
            if why:
                log.info("%s goes alone: %s", member.record.destination, why)
            self.single(member.put, member.record)
