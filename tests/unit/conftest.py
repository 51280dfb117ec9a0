"""What every unit test starts from."""

from __future__ import annotations

import pytest

from allasrun import log


@pytest.fixture(autouse=True)
def no_secrets_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The log's registry of secrets is process-wide: a short one another test registered ("s")
    would mask letters of every later test's log lines."""
    monkeypatch.setattr(log._secrets, "known", frozenset())
