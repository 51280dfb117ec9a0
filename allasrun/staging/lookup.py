"""Looking a plan up in the store before anything runs: for `allasrun check` and `allasrun sbatch`.

Each stage-in is listed (what it matches, or why nothing), each stage-out bucket looked up.
A store that fails raises StoreError (exit 69): that is not an answer about the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from allasrun.staging.fetch import Fetch
from allasrun.staging.plan import StageIn, StageOut, StagePlan
from allasrun.staging.run import KeysFor, StagingRun
from allasrun.staging.store import Credentials, Store
from allasrun.staging.transfer import Transfer


@dataclass(frozen=True)
class Input:
    """One stage-in: the objects it would fetch, or the records saying why it cannot."""

    spec: StageIn
    fetches: list[Fetch]
    problems: list[Transfer]


@dataclass(frozen=True)
class LookUp:
    """What a plan resolves to now."""

    inputs: list[Input]
    buckets: list[tuple[StageOut, bool]]

    @property
    def problems(self) -> list[Transfer]:
        """Every stage-in that cannot be fetched."""
        return [problem for found in self.inputs for problem in found.problems]


def look_up(
    plan: StagePlan,
    credentials: Optional[Credentials],
    *,
    resolved_only: bool = False,
    store: Optional[Store] = None,
    s3_keys: Optional[KeysFor] = None,
) -> LookUp:
    """List the plan's inputs and look up its buckets, each on its own remote.

    `resolved_only` skips directives that still hold a Slurm placeholder or a variable only
    the job will have (`%j`, `$TMPDIR` before the job exists), which cannot be looked up yet.
    """
    run = StagingRun(plan, credentials, Path.cwd(), store, s3_keys)
    inputs = []
    for spec in plan.stage_in:
        if not (resolved_only and _unresolved(spec.bucket + spec.key)):
            inputs.append(Input(spec, *run.stager(spec.remote).resolve_in(spec)))
    buckets = [
        (out, run.stager(out.remote).store.bucket_exists(out.bucket))
        for out in plan.stage_out
        if not (resolved_only and _unresolved(out.bucket))
    ]
    return LookUp(inputs, buckets)


def _unresolved(text: str) -> bool:
    return "%" in text or "$" in text
