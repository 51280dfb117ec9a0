"""`TokenSource`: the one way any command gets, keeps and renews a token.

A stateful holder in keystoneauth's style. Opening it gathers who we are, registers every
secret it learns with the log's redactor, and takes a token from the cache when another run
left one with enough life. `renew` is locked and reuses a renewal another thread (or, through
the cache, another process) made meanwhile, so a burst of 401s costs Keystone one login.
Application credentials are created and revoked here and nowhere else, and the one minted
for a run is revoked when the source is closed.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Callable, Optional

from allasrun import paths
from allasrun.auth.cache import Entry, TokenCache, open_cache
from allasrun.auth.identity import AppCredential, Identity, Password, Target, ask_password, gather
from allasrun.auth.s3keys import S3Keys
from allasrun.auth.schedule import Schedule
from allasrun.auth.token import Token, duration, utc_text
from allasrun.errors import AllasrunError, UsageError
from allasrun.log import hide, log

Listener = Callable[[Token], None]


class TokenSource:
    """Holds the identity and its current token; renews it on demand."""

    def __init__(
        self,
        identity: Identity,
        token: Token,
        cache: Optional[TokenCache],
        schedule: Schedule,
    ) -> None:
        self._identity = identity
        self._token = token
        self._cache = cache
        self.schedule = schedule
        self.renewals = 0
        self._owner: Optional[Identity] = None  # the password behind a minted run credential
        self._owner_cache: Optional[TokenCache] = None  # and the password's cache entry
        self._minted: Optional[AppCredential] = None
        self._s3_keys: list[str] = []  # access ids of the S3 keys made for this run, deleted at close
        self._listeners: list[Listener] = []
        self._lock = threading.RLock()
        hide(*identity.secret.hidden(), token.value)

    @classmethod
    def open(
        cls,
        env: Mapping[str, str],
        *,
        project: Optional[str] = None,
        storage_url: Optional[str] = None,
        use_cache: bool = True,
        use_stored: bool = True,
        password_only: bool = False,
        schedule: Optional[Schedule] = None,
        ask: Callable[[str], str] = getpass.getpass,
    ) -> TokenSource:
        """Gather the identity from `env` and get a token with enough life left.

        `project` is `#ALLAS option project=`: it names the project when OS_PROJECT_NAME
        does not, for every command alike. `password_only` (for `login`) refuses any other
        secret, asking at the terminal if there is one.
        """
        if project and not env.get("OS_PROJECT_NAME"):
            env = {**env, "OS_PROJECT_NAME": project}
        identity = gather(env, storage_url, ask, use_stored)
        if password_only and not isinstance(identity.secret, Password):
            identity = Identity(identity.target, _password(identity.target, ask))
        hide(*identity.secret.hidden())
        cache = None
        if use_cache and identity.secret.renewable:
            cache = open_cache(paths.cache_dir(env), identity.target, identity.secret)
        schedule = schedule or Schedule()
        return cls(identity, _obtain(identity, cache, schedule), cache, schedule)

    @property
    def identity(self) -> Identity:
        """Whom the tokens are for, and the secret that gets them."""
        return self._identity

    @property
    def token(self) -> Token:
        """The token to use now."""
        return self._token

    @property
    def clock_offset(self) -> Optional[float]:
        """How far this node's clock runs ahead of Keystone's, as far as the current token shows it."""
        return self._token.clock_offset

    @property
    def cache(self) -> Optional[TokenCache]:
        """The token cache in use, if any (a minted run credential uses none)."""
        return self._cache

    @property
    def app_credential(self) -> Optional[AppCredential]:
        """The application credential tokens come from, if that is the secret (rclone wants it)."""
        secret = self._identity.secret
        return secret if isinstance(secret, AppCredential) else None

    def on_renew(self, listener: Listener) -> None:
        """Call `listener` with every new token before anyone else can see it.

        The keeper writes the client files here, so a client never holds a token the files
        do not hold yet. A listener that fails (a full disk, a quota) costs a warning, never
        the token: the old one would only expire while Keystone is asked again and again.
        """
        self._listeners.append(listener)

    def renew(self, stale: Optional[Token] = None) -> Token:
        """A newer token than `stale` (the one Swift refused, or the one due for renewal).

        If the current token is already another than `stale`, someone renewed meanwhile and
        that token is returned without asking Keystone.
        """
        with self._lock:
            if stale is not None and stale.value != self._token.value:
                return self._token
            fresh = _obtain(self._identity, self._cache, self.schedule, replacing=self._token)
            hide(fresh.value)
            for listener in self._listeners:
                _tell(listener, fresh, self._token)
            self._token = fresh
            self.renewals += 1
            count = self.renewals
        log.info(
            "renewed token (%d); expires %s (in %s)",
            count,
            fresh.expiry_text(),
            duration(fresh.remaining(fresh.keystone_now(time.time()))),
        )
        return fresh

    def use_run_credential(self, hours: float) -> None:
        """Trade a password for an application credential that lives only as long as the run.

        rclone and the keeper can then re-authenticate on their own for days. The password
        stays in this object only, to revoke the credential at the end: Keystone does not let
        a restricted credential delete itself. Any other secret is used as it is.
        """
        if not isinstance(self._identity.secret, Password):
            return
        expires = self._token.keystone_now(time.time()) + hours * 3600  # Keystone's clock decides
        name, credential = self.create_credential(
            "run", expires, "created by allasrun for one run; revoked when it ends"
        )
        with self._lock:
            self._owner, self._minted = self._identity, credential
            self._owner_cache, self._cache = self._cache, None  # no other run can use the new tokens
            self._identity = Identity(self._identity.target, credential)
            self._token = _obtain(self._identity, None, self.schedule)
            hide(self._token.value)
        log.info("created application credential %s for this run (expires %s)", name, utc_text(expires))

    def create_credential(self, kind: str, expires_at: float, description: str) -> tuple[str, AppCredential]:
        """Create a restricted application credential for this user and project: its name too.

        Names are unique per user in Keystone, so host, pid and time all go into one.
        """
        from allasrun.auth import keystone

        name = f"allasrun-{kind}-{socket.gethostname()}-{os.getpid()}-{int(time.time())}"
        target, token = self._manager()
        credential = keystone.create_app_credential(target, token, name, expires_at, description)
        hide(credential.secret)
        return name, credential

    def revoke(self, credential_id: str, label: str) -> bool:
        """Delete an application credential; on failure warn, as its expiry still bounds it."""
        from allasrun.auth import keystone

        try:
            target, token = self._manager()
            keystone.delete_app_credential(target, token, credential_id)
        except AllasrunError as error:
            log.warning("could not revoke %s: %s", label, error)
            return False
        log.info("revoked %s", label)
        return True

    def run_s3_keys(self) -> Optional[S3Keys]:
        """S3 keys made for this run, deleted when it ends (`close`); None without a password.

        For a user who stages over S3 but has no keys of their own.
        """
        keys = self.make_s3_keys("this run (deleted when it ends)")
        if keys is not None:
            with self._lock:
                self._s3_keys.append(keys.access)
        return keys

    def make_s3_keys(self, purpose: str) -> Optional[S3Keys]:
        """New S3 keys (EC2 credentials) for this user and project; None without a password.

        Keystone lets only a password's token make and delete them (an application
        credential's gets 403), so with any other secret there are none. Whoever asks for
        them deletes them (`delete_s3_keys`): unlike a credential, they never expire.
        """
        from allasrun.auth import keystone

        owner = self._owner or self._identity
        if not isinstance(owner.secret, Password):
            return None
        target, token = self._manager()
        keys = keystone.create_s3_keys(target, token)
        hide(keys.secret)
        log.info("created S3 keys %s for %s", keys.access, purpose)
        return keys

    def delete_s3_keys(self, access: str) -> bool:
        """Delete S3 keys; on failure warn with the command that does it, as they never expire."""
        from allasrun.auth import keystone

        try:
            target, token = self._manager()
            keystone.delete_s3_keys(target, token, access)
        except AllasrunError as error:
            log.warning(
                "could not delete the S3 keys %s: %s; delete them with 'openstack ec2 credentials delete %s'",
                access,
                error,
                access,
            )
            return False
        log.info("deleted S3 keys %s", access)
        return True

    def lasting(self) -> tuple[Token, Optional[AppCredential]]:
        """A token and credential for a file that outlives the run (the user's own rclone.conf).

        The run's own credential is revoked when it ends, and every token it gave with it, so
        after minting this is a token of the password (cached like any other), which stays
        valid until it expires; otherwise the current token and credential.
        """
        if self._owner is None:
            return self._token, self.app_credential
        return self._owner_token(self._owner), None

    def _owner_token(self, owner: Identity) -> Token:
        """A token of the password behind the minted credential."""
        token = _obtain(owner, self._owner_cache, self.schedule)
        hide(token.value)
        return token

    def close(self) -> None:
        """Delete the S3 keys made for the run and revoke its credential, if any."""
        keys, self._s3_keys = self._s3_keys, []
        for access in keys:
            self.delete_s3_keys(access)
        minted, self._minted = self._minted, None
        if minted is not None:
            self.revoke(minted.id, f"application credential {minted.id}")

    def __enter__(self) -> TokenSource:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def _manager(self) -> tuple[Target, Token]:
        """A token allowed to manage application credentials, with time left on it.

        After minting that is the password's (a restricted credential may not manage
        credentials, not even itself); otherwise the current one, renewed if it is stale,
        as it is after `sbatch --wait` has waited for a long job.
        """
        if self._owner is not None:
            return self._owner.target, self._owner_token(self._owner)
        if self.schedule.fresh_enough(self._token, self._token.keystone_now(time.time())):
            return self._identity.target, self._token
        return self._identity.target, self.renew(self._token)


def _tell(listener: Listener, fresh: Token, previous: Token) -> None:
    """Hand a listener the new token; whatever it fails at, the token is kept."""
    try:
        listener(fresh)
    except Exception as error:  # a defect in a listener must not throw a good token away either
        if not isinstance(error, (AllasrunError, OSError)):
            log.debug("traceback of the listener failure below", exc_info=True)
            error = AllasrunError(f"internal error {type(error).__name__}: {error}")
        log.warning(
            "renewed the token, but %s; the new token is used anyway, and anything that missed it "
            "keeps the previous one (valid until %s)",
            error,
            previous.expiry_text(),
        )


def _password(target: Target, ask: Callable[[str], str]) -> Password:
    if not os.isatty(0):
        raise UsageError("this needs the password: set OS_PASSWORD or run it from a terminal")
    return ask_password(target, ask)


def _obtain(
    identity: Identity,
    cache: Optional[TokenCache],
    schedule: Schedule,
    replacing: Optional[Token] = None,
) -> Token:
    """A token with enough life left: from the cache if another run left one, else Keystone.

    When renewing, `replacing` is the token in hand: a cached token only counts if it
    outlives that one, i.e. another process renewed first. The token carries this node's
    clock offset from Keystone when it is known.
    """
    if cache is None:
        return _authenticate(identity, schedule)
    with cache.exclusive():
        entry = cache.load()
        newer = replacing is None or (entry is not None and entry.token.expires_at > replacing.expires_at)
        cached = _usable(identity, entry, schedule) if entry is not None and newer else None
        if cached is not None:
            log.debug("using the cached token (expires %s)", cached.expiry_text())
            return cached
        token = _authenticate(identity, schedule)
        cache.store(token)
        return token


def _usable(identity: Identity, entry: Entry, schedule: Schedule) -> Optional[Token]:
    """The cached token, with this node's clock offset, if it has enough life left by Keystone's clock.

    Written on this host, it is judged by the offset stored with it (our own clock's, so it costs
    nothing), or by our clock where that is later: a clock set right since then only costs a
    login, never a token taken for fresh that Keystone holds expired. Written on another host,
    whose clock may differ from ours by more than the token's margin, it is first judged by our
    clock, then checked with Keystone (`_checked`).
    """
    now = time.time()
    if entry.written_here:
        offset = min(entry.clock_offset or 0.0, 0.0)
        token = replace(entry.token, clock_offset=offset)
        return token if schedule.fresh_enough(token, token.keystone_now(now)) else None
    if not schedule.fresh_enough(entry.token, now):
        return None
    return _checked(identity, entry, schedule)


def _checked(identity: Identity, entry: Entry, schedule: Schedule) -> Optional[Token]:
    """Another host's token, if Keystone still accepts it and its clock leaves it enough life.

    One validation instead of a login; Keystone's answer also tells this node's clock offset.
    If Keystone cannot answer, it could not log us in either, and if it accepts the token without
    a `Date`, a login would not tell its clock either: then the token is used by our clock.
    """
    from allasrun.auth import keystone  # as in `_authenticate`: only this path pays for it

    where = entry.host or "an unknown host"
    try:
        check = keystone.check_token(identity.target, entry.token)
    except AllasrunError as error:
        log.debug(
            "cannot check the token cached by %s with Keystone (%s); judged by this node's clock",
            where,
            error,
        )
        return entry.token
    if not check.accepted:
        log.debug("not using the token cached by %s: Keystone refused it", where)
        return None
    if check.keystone_time is None:  # HTTP wants a Date; a bare uwsgi Keystone (the lab's) sends none
        log.debug(
            "Keystone accepts the token cached by %s but tells no time; judged by this node's clock", where
        )
        return entry.token
    token = replace(entry.token, clock_offset=time.time() - check.keystone_time)
    if not schedule.fresh_enough(token, check.keystone_time):
        log.debug("not using the token cached by %s: too little life left by Keystone's clock", where)
        return None
    log.debug(
        "Keystone accepts the token cached by %s; this node's clock is %+.0f s off", where, token.clock_offset
    )
    return token


def _authenticate(identity: Identity, schedule: Schedule) -> Token:
    """A new token from Keystone, with this node's clock offset as the token shows it."""
    # Imported here: keystoneauth costs ~65 ms of imports, which a run served by the cache
    # never pays.
    from allasrun.auth import keystone

    token = keystone.authenticate(identity.target, identity.secret)
    return replace(token, clock_offset=schedule.clock_offset(token, time.time()))
