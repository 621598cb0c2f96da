"""The plan index: the request keys an earlier run computed, row by row, so that a resumed run
over the same input and the same job need not render every row again to find what is done.

It is kept in ``<output>/plan-index/``: a ``fingerprint`` of the job (templates, URL, model,
samples, dedupe, prompt policy) and of the input files (path, size, mtime, inode, and a digest of
their first and last 64 KiB), and parts covering
consecutive row ranges. Any change to the job or the input changes the fingerprint, and the
index is rebuilt; a part that is missing ends the usable prefix. It is a cache: losing it costs
time, never results.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import polars as pl

from ..sink.files import write_atomic
from ..spec import Job
from .planner import canonical_json
from .shape import job_body_template, prompt_template
from .sources import input_files

INDEX_DIR = "plan-index"
RECIPE = 4  # bump when the request-key recipe, the parts' columns or how input cells are read change
ENTRY = {"row_index": pl.Int64, "sample": pl.Int32, "key": pl.String, "content": pl.UInt64, "shared": pl.Boolean}
#: and the key's first 64 bits (``short_key``, null for a skipped row), so that a resume can count
#: and match the done keys without reading a million key strings
SCHEMA = {**ENTRY, "short": pl.UInt64}
_PART = re.compile(r"^part-(\d{12})-(\d{12})\.parquet$")

Entry = tuple[int, int, str, int, bool]


def fingerprint(job: Job) -> str:
    source = job.input
    files = input_files(source)
    stats = []
    for name in files:
        st = os.stat(name)
        stats.append([str(Path(name).resolve()), st.st_size, st.st_mtime_ns, st.st_ino, _ends(name, st.st_size)])
    fields = {
        "recipe": RECIPE,
        "body": job_body_template(job),
        "url": job.endpoint.url,
        "model": job.endpoint.model,
        "format": job.endpoint.format,
        "samples": job.request.samples,
        "dedupe": job.dedupe,
        "empty_prompts": job.empty_prompts,
        "prompt": prompt_template(job),
        "files": stats,
        "input": [job.input_options.format, job.input_options.separator, job.input_options.schema],
    }
    return hashlib.blake2b(canonical_json(fields), digest_size=16).hexdigest()


def _ends(name: str, size: int, span: int = 65_536) -> str:
    """A digest of the first and last 64 KiB: a file rewritten with the same size and time
    (a copy that keeps timestamps) still changes the fingerprint."""
    digest = hashlib.blake2b(digest_size=16)
    with open(name, "rb") as f:
        digest.update(f.read(span))
        if size > span:
            f.seek(max(span, size - span))
            digest.update(f.read(span))
    return digest.hexdigest()


class KeyIndex:
    def __init__(self, output_dir: Path, fingerprint: str) -> None:
        self.folder = output_dir / INDEX_DIR
        self.fingerprint = fingerprint

    def load(self) -> tuple[int, list[Path]] | None:
        """The rows covered from the start of the input, and the parts that cover them, in plan
        order (read by the caller, a part at a time)."""
        marker = self.folder / "fingerprint"
        if not marker.is_file() or marker.read_text().strip() != self.fingerprint:
            return None
        parts: dict[int, tuple[int, Path]] = {}
        for path in self.folder.glob("part-*.parquet"):
            if match := _PART.match(path.name):
                parts[int(match[1])] = (int(match[2]), path)
        chain, covered = [], 0
        while covered in parts:
            end, path = parts[covered]
            chain.append(path)
            covered = end
        if not chain:
            return None
        try:  # every part's footer and columns: a cut or foreign file fails here
            pl.scan_parquet(chain, schema=SCHEMA).select(pl.len()).collect()
        except (pl.exceptions.PolarsError, OSError):
            return None
        return covered, chain

    def start(self) -> None:
        """Begin a new index for this fingerprint, dropping any other."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        write_atomic(self.folder / "fingerprint", lambda tmp: tmp.write_text(self.fingerprint + "\n"))

    def write(self, first_row: int, end_row: int, entries: list[Entry]) -> None:
        frame = pl.DataFrame(entries, schema=ENTRY, orient="row").with_columns(
            short=pl.col("key").str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64, strict=False)
        )
        write_atomic(self.folder / f"part-{first_row:012d}-{end_row:012d}.parquet", frame.write_parquet)
