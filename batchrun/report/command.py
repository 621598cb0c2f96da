"""``batchrun report``: checks that the chart libraries are there, then writes the page."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import JobError


def report_command(target: str, output: str | None) -> int:
    folder = Path(target)
    if not folder.is_dir():
        raise JobError(f"{folder} is not a folder: pass the output folder of a run")
    missing = [name for name in ("altair", "vl_convert") if importlib.util.find_spec(name) is None]
    if missing:
        raise JobError(f"the report needs {', '.join(missing)}: pip install 'batchrun[report]'")
    from .page import write_report

    destination = Path(output) if output else folder / "report.html"
    path = write_report(folder, destination)
    print(f"wrote {path}")
    return 0
