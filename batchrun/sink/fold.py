"""At the start of a run, under the output lock: the journals a killed run left behind become a
normal manifest part of that run, and are removed.

A killed run's journal may hold results that its parts hold too (a segment is removed only once all
of its results are in parts), so only the keys that none of that run's parts has are folded. The
part takes the dead run's own name and its next sequence number, so readers order it among that
run's parts; a fold killed half-way is done again without a duplicate (its part now has the keys).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .files import fsync_dir, make_folder
from .journal import JOURNAL_DIR, Segment, read_records, segments
from .manifest import MANIFEST_DIR, SCHEMA, manifest_frame, part_name, write_part


@dataclass(frozen=True, slots=True)
class Folded:
    journals: int = 0  # files removed
    rows: int = 0  # rows written into new parts
    dropped: int = 0  # ok image rows whose file is not there (sent again)


def fold_journals(output_dir: Path, *, shard: str | None = "s0of1") -> Folded:
    """Fold every journal of ``shard`` (None: of every shard, when no other run can be writing one)
    into parts and remove it (blocking; hold the lock)."""
    groups: dict[tuple[str, str], list[Segment]] = defaultdict(list)
    for segment in segments(output_dir):
        if shard is None or segment.shard == shard:
            groups[segment.run_id, segment.shard].append(segment)
    journals = rows = dropped = 0
    for (run_id, of_shard), found in groups.items():
        frames = [
            manifest_frame(r.results, endpoint=r.endpoint, run_id=r.run_id) for r in read_records(output_dir, found)
        ]
        if frames:
            written, missing = _fold_run(output_dir, run_id, of_shard, pl.concat(frames))
            rows, dropped = rows + written, dropped + missing
        for segment in found:
            segment.path.unlink(missing_ok=True)
            journals += 1
    if journals:
        fsync_dir(output_dir / JOURNAL_DIR)
    return Folded(journals, rows, dropped)


def _fold_run(output_dir: Path, run_id: str, shard: str, frame: pl.DataFrame) -> tuple[int, int]:
    folder = output_dir / MANIFEST_DIR
    parts = sorted(folder.glob(f"part-{run_id}-{shard}-*.parquet"))
    if parts:
        seen = pl.scan_parquet(parts, schema=SCHEMA, missing_columns="insert", extra_columns="ignore")
        frame = frame.join(seen.select("request_key").collect(), on="request_key", how="anti")
    frame = frame.unique("request_key", keep="last", maintain_order=True)
    # an image's name is synced before the part that names it, not before its journal line: after
    # a power loss the line may be there and the file not; then the row goes, and the request is sent
    images = frame.filter((pl.col("status") == "ok") & pl.col("image_path").is_not_null())
    missing = [
        key for key, path in images.select("request_key", "image_path").iter_rows() if not (output_dir / path).is_file()
    ]
    if missing:
        frame = frame.filter(~pl.col("request_key").is_in(missing))
    if frame.height:
        if not folder.is_dir():  # killed before its first part
            make_folder(folder)
            fsync_dir(output_dir)
        seq = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in parts), default=-1)
        write_part(folder, part_name(run_id, shard, seq), frame)
    return frame.height, len(missing)
