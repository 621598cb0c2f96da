"""The last run's summary, kept beside the manifest so the report can show its exit status."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ..sink.files import write_atomic

LAST_RUN = "last_run.json"


def note_last_run(output_dir: Path, fields: dict[str, Any]) -> None:
    """Best effort: a run that cannot write it still exits as it would (the report says 'not recorded')."""
    text = json.dumps(fields, ensure_ascii=False, default=str)
    with contextlib.suppress(OSError):
        write_atomic(output_dir / LAST_RUN, lambda tmp: tmp.write_text(text, encoding="utf-8"))
