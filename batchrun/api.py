"""The Python API: run a job from a script or a notebook and get its results as a DataFrame.

It does what ``batchrun run`` does, with one difference: where the command line prints an error and
exits with its code, the API raises the ``BatchrunError`` subclass (its ``exit_code`` is the code the
command would have exited with). A run that finishes, even with failed requests or stopped early by
the endpoint, returns its ``Summary``; ``summary.exit_code`` says how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import sniffio

from .errors import ExitCode
from .export import results
from .log import logger
from .report.last_run import note_last_run
from .runner import run_job
from .spec import Job
from .summary import RunSummary

if TYPE_CHECKING:
    import httpx
    import polars as pl

JobLike = str | os.PathLike[str] | Job
Shown = bool | Literal["bar", "lines"] | None


@dataclass(frozen=True, slots=True)
class Summary:
    """What a run did: its counts, how it ended, and the way to its results."""

    job: Job
    run: RunSummary  # the command line's summary: ``run.line()`` is the line it prints

    @property
    def ok(self) -> int:
        """Requests answered ok in this run."""
        return self.run.ok

    @property
    def failed(self) -> int:
        """Requests that failed in this run (the manifest's error column says why)."""
        return self.run.failed

    @property
    def already_done(self) -> int:
        """Requests an earlier run had done: not sent again."""
        return self.run.counts.done

    @property
    def rows(self) -> int:
        return self.run.counts.rows

    @property
    def requests(self) -> int:
        return self.run.counts.requests

    @property
    def http_requests(self) -> int:
        """HTTP requests sent, retries included."""
        return self.run.sent

    @property
    def exit_code(self) -> ExitCode:
        return self.run.exit_code

    @property
    def stopped(self) -> str | None:
        """Why the run stopped before the end (a fatal answer, the deadline), or None."""
        return self.run.fatal or self.run.stopped

    @property
    def output_dir(self) -> Path:
        return self.job.output_dir

    def results(self) -> pl.DataFrame:
        """The input rows (one per request) joined with their latest results, as ``batchrun export``
        writes them; rows not done yet have nulls."""
        return results(self.job)

    def __str__(self) -> str:
        return self.run.text()

    def __repr__(self) -> str:
        return f"<Summary {self.job.name}: {self.ok} ok, {self.failed} failed, exit {int(self.exit_code)}>"


def run(
    job: JobLike,
    *,
    output: str | None = None,
    retry_failed: bool = False,
    progress: Shown = None,
    max_runtime_s: float | None = None,
    grace_s: float = 30.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Summary:
    """Run ``job`` (a job file's path, or a ``Job``) to the end and return its summary.

    It starts an event loop of its own, so it refuses to run inside one (a notebook runs one):
    there, ``await arun(...)``."""
    if _in_event_loop():
        raise RuntimeError(
            "batchrun.run() cannot be called from a running event loop (Jupyter runs one): "
            "use `await batchrun.arun(...)` instead"
        )
    import anyio

    async def main() -> Summary:
        return await arun(
            job,
            output=output,
            retry_failed=retry_failed,
            progress=progress,
            max_runtime_s=max_runtime_s,
            grace_s=grace_s,
            transport=transport,
        )

    return anyio.run(main, backend="asyncio")


async def arun(
    job: JobLike,
    *,
    output: str | None = None,
    retry_failed: bool = False,
    progress: Shown = None,
    max_runtime_s: float | None = None,
    grace_s: float = 30.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Summary:
    """``run`` inside a running asyncio event loop (a notebook, an async program).

    ``progress``: ``"bar"`` (rich's live bar), ``"lines"`` (the start line, then a progress line every
    10 s, as on cron), False (nothing), True (the bar where it can be drawn, else lines); by default
    True on a terminal or in a notebook, False otherwise. ``output`` replaces the job's output folder;
    ``transport`` replaces the network, as in the tests."""
    if (library := sniffio.current_async_library()) != "asyncio":  # aiolimiter's limits are asyncio's
        raise RuntimeError(f"batchrun.arun() runs on asyncio, not {library}")
    if isinstance(job, Job):
        spec = job if output is None else replace(job, output_dir=Path(os.path.abspath(output)))
    else:
        spec = Job.from_file(job, output=output)
    shown = _progress(progress)
    with _telling(shown is not None):
        summary = await run_job(
            spec,
            transport=transport,
            retry_failed=retry_failed,
            interactive=shown == "bar",
            quiet=shown is None,
            grace_s=grace_s,
            max_runtime_s=max_runtime_s,
        )
    note_last_run(spec.output_dir, summary.fields())
    return Summary(spec, summary)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return True
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True


def _progress(progress: Shown) -> Literal["bar", "lines"] | None:
    """How progress shows: rich draws its bar on a terminal, and in a notebook with ipywidgets
    (without it, rich only warns); else plain lines."""
    terminal = sys.stderr is not None and sys.stderr.isatty()
    notebook = _in_notebook()
    if progress is None:
        progress = terminal or notebook
    if progress is True:
        widgets = notebook and importlib.util.find_spec("ipywidgets") is not None
        return "bar" if terminal or widgets else "lines"
    return progress or None


def _in_notebook() -> bool:
    """A Jupyter kernel: its stderr is no terminal, yet it shows what is written there."""
    ipython: Any = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


@contextlib.contextmanager
def _telling(shown: bool) -> Iterator[None]:
    """The start and progress lines go to the ``batchrun`` logger: while a run shows its progress,
    unless the program gave that logger handlers of its own, to stderr (only), as the command's do."""
    if not shown or logger.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("batchrun: %(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(min(logging.INFO, logger.getEffectiveLevel()))
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
