"""The last run's summary, kept beside the manifest so the report can show its exit status."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BatchrunError
from ..sink.files import write_atomic

if TYPE_CHECKING:
    from ..sink.remote import RemoteOutput

LAST_RUN = "last_run.json"


def shard_note_name(shard: str) -> str:
    """Each shard's own last run (``status`` reads them to say which shards finished)."""
    return f"last_run-{shard}.json"


def note_last_run(output_dir: Path, fields: dict[str, Any], *, shard: str | None = None) -> None:
    """Best effort: a run that cannot write it still exits as it would (the report says 'not recorded').
    A shard's run writes its own note too."""
    text = json.dumps(fields, ensure_ascii=False, default=str)
    with contextlib.suppress(OSError):
        write_atomic(output_dir / LAST_RUN, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        if shard is not None:
            write_atomic(output_dir / shard_note_name(shard), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def send_last_run(remote: RemoteOutput, *, shard: str | None = None) -> None:
    """An output on object storage: the notes go to the bucket beside the manifest, for ``status``
    and ``report`` on another machine. Best effort, as the notes themselves."""
    from ..sink.remote import Mirror

    with contextlib.suppress(BatchrunError):
        mirror = Mirror(remote)
        for name in (LAST_RUN, *((shard_note_name(shard),) if shard is not None else ())):
            mirror.push_file(name)


def last_exit(output_dir: Path) -> str:
    """The exit status of the last run, when the run left its summary; else not known."""
    path = output_dir / LAST_RUN
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return "not recorded"
    if isinstance(data, dict) and "exit_code" in data:
        return f"{data['exit_code']}: {data.get('exit_meaning', '')}".rstrip(": ")
    return "not recorded"
