"""``batchrun report``: checks that the chart libraries are there, then writes the page."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import JobError


def report_command(target: str, output: str | None) -> int:
    from ..spec import remote_target

    if remote_target(target) is not None:
        return _remote_report(target, output)
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


def _remote_report(target: str, output: str | None) -> int:
    """An output on object storage: its parts come down to the staging folder, and the images of
    the contact sheet (not every image); the page goes to the staging folder unless ``-o`` says."""
    from ..export import job_for
    from ..sink.remote import Mirror
    from .page import write_report

    job = job_for(target)
    assert job.remote is not None
    mirror = Mirror(job.remote)
    destination = Path(output) if output else job.output_dir / "report.html"
    path = write_report(
        job.output_dir, destination, before_render=lambda r: mirror.pull_images(r.images["image_path"].to_list())
    )
    print(f"wrote {path}")
    return 0
