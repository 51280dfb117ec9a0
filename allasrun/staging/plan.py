"""The stage plan: what to fetch before the command and what to upload after it.

Built from parsed directives and the job's environment (substitutions, Slurm facts) with no
I/O, so every error carries `file:line:` and appears before anything is transferred.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Optional

from allasrun.errors import DirectiveError, UsageError
from allasrun.staging.directives import Directive

GIB = 1024**3
DEFAULT_SEGMENT = 5 * GIB  # Swift's object size limit on Allas
SWIFT, S3 = "swift", "s3"
PROTOCOL_VARIABLE = "ALLASRUN_PROTOCOL"  # the default protocol of bare `bucket/name` addresses
_MAGIC = re.compile(r"[*?\[]")
_PLACEHOLDER = re.compile(r"%(.)|\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SIZE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.IGNORECASE | re.ASCII)  # not the Kelvin sign's K


def is_pattern(text: str) -> bool:
    """Whether a name holds glob characters (`*`, `?`, `[`)."""
    return bool(_MAGIC.search(text))


def pattern_start(text: str) -> int:
    """Where the first glob character is (the length of the text if there is none)."""
    match = _MAGIC.search(text)
    return match.start() if match else len(text)


@dataclass(frozen=True)
class Remote:
    """Where buckets live, named as CSC's rclone remotes are: `allas:` is Swift, `s3allas:` S3.

    `endpoint` is an S3 remote's address unless `AWS_ENDPOINT_URL` names another; Swift's comes
    from Keystone's catalog.
    """

    name: str
    protocol: str
    endpoint: Optional[str] = None


REMOTES = {
    remote.name: remote
    for remote in (
        Remote("allas", SWIFT),
        Remote("s3allas", S3, "https://a3s.fi"),
        Remote("lumi-o", S3, "https://lumidata.eu"),
    )
}
BY_PROTOCOL = {SWIFT: "allas", S3: "s3allas"}  # the remote a bare address means


def address(remote: str, bucket: str, name: str) -> str:
    """An object as rclone names it, `remote:bucket/name`; a bare address's remote shows as `allas`."""
    return f"{remote or BY_PROTOCOL[SWIFT]}:{bucket}/{name}"


@dataclass(frozen=True)
class Settings:
    """Knobs from `#ALLAS option` lines (and the command line, which wins)."""

    project: Optional[str] = None
    threads: Optional[int] = None  # transfers at a time; None: as many as pay (staging/pace.py)
    segment_size: int = DEFAULT_SEGMENT
    retries: int = 5  # 1+2+4+8+16 s: an outage of half a minute per request is ridden out
    report: Optional[str] = None
    progress: float = 60.0
    # In a Slurm job with stage-out: signal the command this long before the time limit
    # (at most half the job's time), kill it `grace` seconds later, then stage out.
    stage_out_lead: float = 600.0
    grace: float = 60.0
    deadline_signal: int = signal.SIGTERM
    protocol: Optional[str] = None  # of bare addresses: `#ALLAS option protocol=`, else ALLASRUN_PROTOCOL
    keys_expire: Optional[float] = None  # when the S3 keys at hand stop working (LUMI-O's do), POSIX seconds
    bundles: bool = True  # small files out in tar bundles, where the store unpacks them (staging/bundle.py)


@dataclass(frozen=True)
class StageIn:
    """Objects to fetch: one object, a prefix (recursive) or a glob, into a local path."""

    where: str
    bucket: str
    key: str
    destination: str
    node_local: bool = False  # into node-local scratch: staged on every node of the job
    remote: str = "allas"  # a name in REMOTES; "" until a bare address's protocol is chosen
    ameta: bool = False  # `--ameta`: a-put's `<object>_ameta` companions are staged too
    unpack: bool = False  # `--unpack`: a-put's archives extracted into the destination (staging/unpack.py)

    def address(self, name: Optional[str] = None) -> str:
        """`remote:bucket/name` (the directive's key by default), as reports and messages show it."""
        return address(self.remote, self.bucket, self.key if name is None else name)

    @property
    def is_glob(self) -> bool:
        """Whether `key` is a pattern rather than a name or prefix."""
        return is_pattern(self.key)

    @property
    def listing_prefix(self) -> str:
        """What to ask Swift to list: everything up to the first pattern character."""
        return self.key[: pattern_start(self.key)]

    @property
    def base(self) -> str:
        """The part of an object's name that is not repeated under the destination."""
        if self.is_glob:
            return self.listing_prefix.rpartition("/")[0] + "/" if "/" in self.listing_prefix else ""
        return self.key


@dataclass(frozen=True)
class StageOut:
    """Local files (a file, a directory or a glob) to upload under a bucket prefix or name."""

    where: str
    source: str
    bucket: str
    key: str
    when: str = "always"
    overwrite: bool = True
    node_local: bool = False  # from node-local scratch: staged out from every node of the job
    remote: str = "allas"  # a name in REMOTES; "" until a bare address's protocol is chosen
    large: str = ""  # `--large=`: "segments" or "multipart" over S3; "" the form the bucket uses
    pack: bool = False  # `--pack`: one a-put-style object and its `_ameta` (staging/pack.py)
    compress: bool = False  # `--compress`: the pack as `.tar.zst` (a file as `.zst`)

    def address(self, name: Optional[str] = None) -> str:
        """`remote:bucket/name` (the directive's key by default), as reports and messages show it."""
        return address(self.remote, self.bucket, self.key if name is None else name)

    def checked(self) -> StageOut:
        """The stage-out as it is; a DirectiveError if it asks a remote for a form it cannot write.

        Swift writes no S3 multipart object, and LUMI-O is reached over S3 alone.
        """
        if self.large == "segments" and self.remote == "lumi-o":
            raise DirectiveError(
                self.where,
                "--large=segments needs Allas (s3allas:); LUMI-O is reached over S3 alone",
                f"stage-out {self.source} {self.address()} --large=segments",
            )
        if self.pack and is_pattern(self.source):
            raise DirectiveError(
                self.where, "--pack packs one folder (or file), not a pattern", f"stage-out {self.source}"
            )
        if self.large == "multipart" and self.remote and REMOTES[self.remote].protocol == SWIFT:
            raise DirectiveError(
                self.where,
                f"--large=multipart needs an S3 remote (s3allas:); {self.remote}: is Swift",
                self.source,
            )
        return self

    def due(self, status: int) -> bool:
        """Whether this stage-out runs after the command exited with `status`."""
        return self.when == "always" or (self.when == "success") == (status == 0)


@dataclass(frozen=True)
class StagePlan:
    """Everything the directives of one script ask for."""

    stage_in: Sequence[StageIn] = ()
    stage_out: Sequence[StageOut] = ()
    settings: Settings = field(default_factory=Settings)

    def __bool__(self) -> bool:
        return bool(self.stage_in or self.stage_out)

    @property
    def remotes(self) -> list[str]:
        """The remotes the directives name, in order of first use ("" for undecided bare addresses)."""
        names = [spec.remote for spec in self.stage_in] + [spec.remote for spec in self.stage_out]
        return list(dict.fromkeys(names))

    def with_protocol(self, protocol: str) -> StagePlan:
        """Bare addresses on `protocol`'s remote, for a run whose settings and environment named none."""
        remote = BY_PROTOCOL[protocol]
        return replace(
            self,
            stage_in=tuple(replace(s, remote=s.remote or remote) for s in self.stage_in),
            stage_out=tuple(replace(s, remote=s.remote or remote).checked() for s in self.stage_out),
        )

    def only(self, remote: str) -> StagePlan:
        """The directives of one remote (with the same settings): each remote has its own store."""
        return replace(
            self,
            stage_in=tuple(s for s in self.stage_in if s.remote == remote),
            stage_out=tuple(s for s in self.stage_out if s.remote == remote),
        )

    def part(self, node_local: bool) -> StagePlan:
        """Only the node-local directives, or only the shared ones (with the same settings)."""
        return replace(
            self,
            stage_in=tuple(s for s in self.stage_in if s.node_local == node_local),
            stage_out=tuple(s for s in self.stage_out if s.node_local == node_local),
        )

    def overridden(
        self, threads: Optional[int], segment_size: Optional[int], report: Optional[str]
    ) -> StagePlan:
        """The plan with the command line's settings, where given, in place of the script's."""
        settings = self.settings
        if threads is not None:
            settings = replace(settings, threads=threads)
        if segment_size is not None:
            settings = replace(settings, segment_size=segment_size)
        if report is not None:
            settings = replace(settings, report=report)
        return replace(self, settings=settings)


def build(
    directives: Sequence[Directive], env: Mapping[str, str], login_name: str, strict: bool = True
) -> StagePlan:
    """Resolve substitutions and names; `strict=False` keeps what cannot be known yet.

    `allasrun check` and `allasrun sbatch` run before the job exists: %j is not known there,
    nor variables only a job has ($TMPDIR on a compute node, $LOCAL_SCRATCH); they stay as
    written and the look-ups skip them. Everything else is checked as in the job.
    """
    facts = _SlurmFacts(env, login_name, strict)
    stage_in: list[StageIn] = []
    stage_out: list[StageOut] = []
    settings = Settings()
    for directive in directives:
        words = [facts.expand(directive, word) for word in directive.args]
        if directive.verb == "stage-in":
            remote, bucket, key = _address(directive, words[0], strict_name=False)
            destination = words[1] if len(words) > 1 else "./"
            local = _node_local(directive, destination, env)
            flags = {name: name in directive.options for name in ("ameta", "unpack")}
            stage_in.append(StageIn(directive.where, bucket, key, destination, local, remote, **flags))
        elif directive.verb == "stage-out":
            remote, bucket, key = _address(directive, words[1], strict_name=True, known=strict)
            stage_out.append(
                StageOut(
                    directive.where,
                    words[0],
                    bucket,
                    key,
                    directive.options.get("when", "always"),
                    "no-overwrite" not in directive.options,
                    _node_local(directive, words[0], env),
                    remote,
                    directive.options.get("large", ""),
                    "pack" in directive.options,
                    "compress" in directive.options,
                ).checked()
            )
        else:
            settings = _settings(directive, words, settings)
    plan = StagePlan(tuple(stage_in), tuple(stage_out), settings)
    protocol = settings.protocol or _protocol_variable(env)
    return plan.with_protocol(protocol) if protocol else plan


def parse_size(text: str) -> int:
    """`5G`, `64MiB`, `1048576` as bytes (powers of 1024, as Swift tools count)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 5G, 64MiB, 1048576)")
    power: int = "_KMGT".index(match.group(2).upper() or "_")
    return int(match.group(1)) * int(1024**power)


def parse_moment(text: str) -> float:
    """`2026-12-07T18:00` (local time), `2026-12-07 18:00Z` or with an offset, as POSIX seconds."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a time: {text!r} (examples: 2026-12-07T18:00, 2026-12-07T16:00Z)") from None
    return moment.timestamp()  # a naive time is the local one, as a user reads it off a page


def parse_segment_size(text: str) -> int:
    """A segment size, checked now: Swift refuses a segment over 5 GiB only after every retry of it."""
    size = _positive(parse_size(text))
    if size > DEFAULT_SEGMENT:
        raise ValueError(f"{text} is more than 5G, the largest object Allas stores (each segment is one)")
    return size


def _node_local(directive: Directive, path: str, env: Mapping[str, str]) -> bool:
    """Whether a local path is on this node only: `--node-local`, or under $TMPDIR or $LOCAL_SCRATCH.

    Those are node-local disks on CSC's clusters (Roihu's NVMe is `$TMPDIR`); anything else
    (the job's directory, `/scratch`, `/projappl`, home) is taken to be shared by all nodes.
    """
    if "node-local" in directive.options:
        return True
    normal = os.path.normpath(path)
    roots = (os.path.normpath(env[name]) for name in ("TMPDIR", "LOCAL_SCRATCH") if env.get(name))
    return any(normal == root or normal.startswith(root.rstrip("/") + "/") for root in roots)


def _protocol_variable(env: Mapping[str, str]) -> Optional[str]:
    value = env.get(PROTOCOL_VARIABLE, "").strip().lower()
    if value and value not in BY_PROTOCOL:
        raise UsageError(f"{PROTOCOL_VARIABLE}={value!r}: expected {' or '.join(BY_PROTOCOL)}")
    return value or None


def _address(directive: Directive, text: str, strict_name: bool, known: bool = True) -> tuple[str, str, str]:
    """`[remote:]bucket[/key]` split and checked against Swift (and, to create, S3) rules.

    The remote is "" for a bare address, whose protocol the run chooses. Before the job
    (`known=False`) a bucket named after it (%j, %a, $VAR) cannot be checked yet; the job
    checks it with its name filled in.
    """
    remote, colon, rest = text.partition(":")
    if colon and remote in REMOTES:
        name = rest
    elif colon and "/" not in remote and re.fullmatch(r"[A-Za-z0-9_-]+", remote):
        known_remotes = ", ".join(f"{r}:" for r in REMOTES)
        raise directive.fail(f"unknown remote {remote + ':'!r} in {text!r} (expected {known_remotes})")
    else:
        remote, name = "", text
    bucket, key = _bucket_key(directive, text, name, strict_name, known)
    return remote, bucket, key


def _bucket_key(
    directive: Directive, text: str, name: str, strict_name: bool, known: bool
) -> tuple[str, str]:
    if not is_utf8(name):
        raise directive.fail(f"{text!r} is not UTF-8 (a variable holds other bytes); Swift's names must be")
    bucket, _, key = name.partition("/")
    if not bucket:
        raise directive.fail(f"no bucket in {text!r}")
    if is_pattern(bucket):
        raise directive.fail(f"bucket name {bucket!r} cannot be a pattern")
    if len(bucket.encode()) > 256:
        raise directive.fail(f"bucket name {bucket!r} is longer than Swift's 256 bytes")
    if not known and _PLACEHOLDER.search(bucket):
        return bucket, key
    if strict_name and (not _S3_BUCKET.match(bucket) or ".." in bucket):
        raise directive.fail(
            f"bucket name {bucket!r} breaks Allas's rules: 3-63 characters, lowercase letters, digits, "
            "'.' and '-', starting and ending with a letter or digit"
        )
    return bucket, key


def is_utf8(text: str) -> bool:
    """Whether `text` is UTF-8: bytes that are not (in a variable, a listing) arrive as lone surrogates."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _utf8(value: str) -> str:
    """`value`, if it is UTF-8: a project name goes to Keystone, which takes nothing else."""
    if not is_utf8(value):
        raise ValueError(f"{value!r} is not UTF-8 (a variable holds other bytes)")
    return value


def _settings(directive: Directive, words: Sequence[str], settings: Settings) -> Settings:
    for word in words:
        name, _, value = word.partition("=")
        field_name, parse = _SETTINGS[name]
        try:
            settings = replace(settings, **{field_name: parse(value)})
        except ValueError as error:
            raise directive.fail(f"bad value for {name}: {error}") from None
    return settings


def _protocol(value: str) -> str:
    if value not in BY_PROTOCOL:
        raise ValueError(f"{value!r} is not a protocol (expected {' or '.join(BY_PROTOCOL)})")
    return value


def _signal(name: str) -> int:
    try:
        return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except KeyError:
        raise ValueError(f"{name!r} is not a signal name (e.g. TERM, USR1, INT)") from None


def _positive(number: int) -> int:
    if number <= 0:
        raise ValueError(f"{number} is not a positive number")
    return number


def _yes_no(value: str) -> bool:
    if value.lower() in ("yes", "on", "true"):
        return True
    if value.lower() in ("no", "off", "false"):
        return False
    raise ValueError(f"{value!r} is not yes or no")


def _seconds(value: str) -> float:
    return float(_positive(int(value)))


# `#ALLAS option NAME=VALUE`: the Settings field each NAME sets, and how its value is read
_SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "project": ("project", _utf8),
    "report": ("report", str),
    "segment-size": ("segment_size", parse_segment_size),
    "threads": ("threads", lambda value: _positive(int(value))),
    "retries": ("retries", lambda value: _positive(int(value))),
    "progress": ("progress", _seconds),
    "stage-out-lead": ("stage_out_lead", _seconds),
    "grace": ("grace", _seconds),
    "deadline-signal": ("deadline_signal", _signal),
    "protocol": ("protocol", _protocol),
    "keys-expire": ("keys_expire", parse_moment),
    "bundles": ("bundles", _yes_no),
}


class _SlurmFacts:
    """Expands %j %A %a %u %x %N %% and $VAR / ${VAR} / $$ in one word."""

    def __init__(self, env: Mapping[str, str], login_name: str, strict: bool) -> None:
        self.env = env
        self.strict = strict
        job = env.get("SLURM_JOB_ID")
        self.values = {
            "j": job,
            "A": env.get("SLURM_ARRAY_JOB_ID") or job,
            "a": env.get("SLURM_ARRAY_TASK_ID"),
            "u": env.get("SLURM_JOB_USER") or env.get("USER") or login_name,
            "x": env.get("SLURM_JOB_NAME"),
            "N": env.get("SLURMD_NODENAME"),
            "%": "%",
        }

    def expand(self, directive: Directive, word: str) -> str:
        def one(match: re.Match[str]) -> str:
            letter, dollar, braced, plain = match.groups()
            if letter is not None:
                return self._placeholder(directive, letter)
            if dollar == "$":
                return "$"
            variable = braced or plain
            if variable in self.env:
                return self.env[variable]
            if not self.strict:  # before the job: $TMPDIR, $LOCAL_SCRATCH are set only in it
                return match.group(0)
            raise directive.fail(f"${variable} is not set in the job's environment")

        return _PLACEHOLDER.sub(one, word)

    def _placeholder(self, directive: Directive, letter: str) -> str:
        if letter not in self.values:
            raise directive.fail(f"unknown substitution %{letter} (known: %j %A %a %u %x %N %%)")
        value = self.values[letter]
        if value is not None:
            return value
        if not self.strict:
            return f"%{letter}"
        reason = {"a": "not an array job", "x": "no job name"}.get(letter, "not inside a Slurm job")
        raise directive.fail(f"%{letter} cannot be substituted: {reason}")
