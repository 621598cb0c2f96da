"""Which requests a shard sends (issue 19): ``--shard K/N`` takes the requests whose key's first
64 bits are ``K`` mod ``N``.

Keys are blake2b digests already (``models.short_key``), so their prefix is uniform and stable:
appending or reordering rows moves no request to another shard, and done keys stay global, so
changing ``N`` between runs sends nothing twice. Filtering happens after keys are taken: every
shard plans every row (the occurrence numbers stay those of an unsharded run) and sends only its
own keys. A first pass shares the costly half of that, the content digests, with the other
shards through the output folder (``plan.digests``): each renders ~1/N of the rows.

``--shard auto`` reads the index a batch scheduler gives each task: Kubernetes Indexed Jobs
(``JOB_COMPLETION_INDEX``; the count from ``--shards N`` or the job file's ``[limits] shards``) and
Slurm job arrays (``SLURM_ARRAY_TASK_ID`` from ``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_COUNT`` tasks).

Where N is said twice, ``--shards`` overrides the job file; any other disagreement (``--shard 0/2``
beside ``shards = 4``, a Slurm array of 8 beside ``shards = 4``) is exit 2 before anything is sent.
Which N was meant is a guess, and a wrong one either runs shards that cover only part of the keys
(each exits 0, ``finished``) or meets the other N's shards at the folder's lock; a warning would
scroll away in a scheduler's log, one edit fixes the refusal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import JobError
from .models import short_key

_SPEC = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True, slots=True)
class Shard:
    index: int = 0
    count: int = 1

    @property
    def name(self) -> str:
        """As in part, journal and lock names: ``s0of1`` for an unsharded run."""
        return f"s{self.index}of{self.count}"

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def owns(self, key: str) -> bool:
        return self.count == 1 or short_key(key) % self.count == self.index

    def describe(self) -> str:
        """The line a sharded run says before it starts."""
        return (
            f"shard {self.index}/{self.count}: sends the requests whose key is {self.index} mod {self.count}; "
            f"requests_per_minute and tokens_per_minute divided by {self.count} (no shared limiter)"
        )

    def share(self, limit: float | None) -> float | None:
        """This shard's part of a per-endpoint limit: there is no shared limiter, so each of the
        ``count`` shards gets an equal share."""
        return None if limit is None else limit / self.count


def parse_shard(
    text: str, *, shards: int | None = None, env: Mapping[str, str] | None = None, in_file: int | None = None
) -> Shard:
    """``K/N`` or ``auto``; ``shards``: ``--shards N``; ``in_file``: the job file's ``shards``. A bad
    value, or an N that disagrees with the job file's (``--shards`` overrides it), is a ``JobError``
    (exit 2, one line)."""
    if shards is None and in_file is not None:
        shards, said = in_file, f"the job file's shards = {in_file}"
    else:
        said = f"--shards {shards}"
    if text == "auto":
        return _from_scheduler({} if env is None else env, shards, said)
    match = _SPEC.match(text.strip())
    if match is None:
        raise JobError(f"--shard {text}: K/N (shard K of N, K from 0 to N-1) or auto")
    index, count = int(match[1]), int(match[2])
    if shards is not None and shards != count:
        fix = f"--shards {count} overrides the job file" if said.startswith("the job") else "give one N"
        raise JobError(f"--shard {text} disagrees with {said} ({fix})")
    return _checked(index, count, f"--shard {text}")


def shard_count(shards: int | None, in_file: int | None) -> int | None:
    """The N of ``plan``'s per-shard counts: ``--shards``, else the job file's."""
    return shards if shards is not None else in_file


def _checked(index: int, count: int, where: str) -> Shard:
    if count < 1:
        raise JobError(f"{where}: the number of shards must be at least 1")
    if not 0 <= index < count:
        raise JobError(f"{where}: shard {index} of {count} does not exist (K goes from 0 to {count - 1})")
    return Shard(index, count)


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise JobError(f"--shard auto: {name}={env[name]!r} is not a whole number") from None


def _from_scheduler(env: Mapping[str, str], shards: int | None, said: str) -> Shard:
    if "JOB_COMPLETION_INDEX" in env:  # Kubernetes Indexed Job: 0..completions-1
        if shards is None:
            raise JobError(
                "--shard auto: JOB_COMPLETION_INDEX is set; give the job's completions as --shards N "
                "(or shards = N in the job file's [limits])"
            )
        return _checked(_int(env, "JOB_COMPLETION_INDEX"), shards, "--shard auto (JOB_COMPLETION_INDEX)")
    if "SLURM_ARRAY_TASK_ID" in env:  # --array=1-8 numbers tasks from 1: the index counts from the minimum
        task = _int(env, "SLURM_ARRAY_TASK_ID")
        first = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        if "SLURM_ARRAY_TASK_COUNT" in env:
            count = _int(env, "SLURM_ARRAY_TASK_COUNT")
        elif shards is not None:
            count = shards
        else:
            raise JobError("--shard auto: SLURM_ARRAY_TASK_COUNT is not set; give the count as --shards N")
        if shards is not None and shards != count:
            raise JobError(f"--shard auto: {said} but the Slurm array has {count} tasks")
        return _checked(task - first, count, "--shard auto (SLURM_ARRAY_TASK_ID)")
    raise JobError("--shard auto: neither JOB_COMPLETION_INDEX (Kubernetes) nor SLURM_ARRAY_TASK_ID (Slurm) is set")
