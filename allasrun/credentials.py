"""Gathering who we are and which secret we hold: environment, `login` file, terminal.

The I/O half of the plan: it reads the stored credential and asks for a password when a
person is there to answer, then lets plan.choose_secret apply the precedence rules.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from allasrun import credstore
from allasrun.paths import config_dir
from allasrun.plan import AppCredential, AskPassword, Password, Secret, Target, choose_secret, target_from_env


@dataclass(frozen=True)
class Identity:
    """Where to authenticate, as whom, and with what."""

    target: Target
    secret: Secret

    @property
    def origin(self) -> str:
        """Where the secret came from, for logs and `allasrun status` (never the secret)."""
        secret = self.secret
        if isinstance(secret, Password):
            return f"password from {secret.origin}"
        if isinstance(secret, AppCredential):
            return f"application credential {secret.id} ({secret.origin})"
        return "existing token from OS_AUTH_TOKEN (cannot be renewed)"


def gather(
    env: Mapping[str, str],
    storage_url: Optional[str] = None,
    ask: Callable[[str], str] = getpass.getpass,
    use_stored: bool = True,
) -> Identity:
    """Build the identity for this run, prompting only when stdin is a terminal."""
    target = target_from_env(env, getpass.getuser(), storage_url)
    stored = None
    if env.get("ALLASRUN_CREDENTIALS"):  # handed to this job by `allasrun sbatch`
        path = Path(env["ALLASRUN_CREDENTIALS"])
        stored = credstore.read(path).credential(path)
    elif use_stored:
        found = credstore.load(config_dir(env), target.project_name, target.auth_url)
        if found is not None:
            path, record = found
            stored = record.credential(path)
            if target.project_name is None:
                target = replace(target, project_name=record.project_name)
    choice = choose_secret(env, stored, can_prompt=os.isatty(0))
    if isinstance(choice, AskPassword):
        choice = ask_password(target, ask)
    return Identity(target, choice)


def ask_password(target: Target, ask: Callable[[str], str] = getpass.getpass) -> Password:
    """Read the password from the terminal, never echoing it."""
    project = target.project_name or "?"
    return Password(ask(f"Allas password for {target.username} (project {project}): "), "the terminal")
