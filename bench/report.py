"""``batchrun report`` of a 1M-row run: the page's size and the time to write it (issue 17: under
~20 MB, under 30 s).

    .venv/bin/python bench/report.py [--rows 1000000] [--repeat 2] [--compare DIR ...]

How the run is made (honest, and said so in the table): a 1M-request run takes far longer than
this benchmark may, so its manifest is fabricated with polars in the manifest's own schema, as a
run at the default flush size leaves it (parts of 1000 rows): one endpoint, answers of ~80
characters, lognormal latencies and TTFTs, 2 % failed in three kinds, over one simulated hour. The
job file and its 1M-row input are real and the output folder is claimed by the job, so the
report reads prompts back from the input as it does after a real run. Then ``python -m batchrun
report`` runs as a child process, measured alone (wall, CPU, peak RSS); with ``--compare``, the
report of each other checkout too (its source first on ``PYTHONPATH``), interleaved on the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    PYTHON,
    ROOT,
    add_compare_argument,
    machine,
    measure,
    note,
    save,
    table,
    tmpdir,
    write_input,
    write_job,
)

PART_ROWS = 1000


def build_run(folder: Path, rows: int) -> Path:
    """A job, its input and a manifest of ``rows`` results; returns the output folder."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import polars as pl

    from batchrun.export import remember_job
    from batchrun.sink.manifest import SCHEMA, part_name
    from batchrun.spec import load_job

    job_path = write_job(folder, write_input(folder / "input.parquet", rows), "http://127.0.0.1:9/v1", concurrency=64)
    job = load_job(str(job_path), needs_key=False)
    out = job.output_dir
    (out / "manifest").mkdir(parents=True, exist_ok=True)
    remember_job(job)
    rng = np.random.default_rng(0)
    start = 1_800_000_000.0
    index = np.arange(rows)
    finished = start + index * (3600 / rows) + rng.uniform(0, 1, rows)
    latency = rng.lognormal(np.log(800), 0.5, rows)
    failed = rng.uniform(0, 1, rows) < 0.02
    kinds = np.array(["retries_exhausted", "permanent", "timeout"])[rng.integers(0, 3, rows)]
    status = np.array([503, 400, 0])[rng.integers(0, 3, rows)]
    frame = pl.DataFrame(
        {
            "row_id": pl.Series(index).cast(pl.String),
            "row_index": index,
            "endpoint": "openai-compatible",
            "model": "bench-model",
            "sample": 0,
            "status": np.where(failed, "failed", "ok"),
            "kind": kinds,
            "code": status,
            "attempts": np.where(failed, 6, 1),
            "finish_reason": "stop",
            "prompt_tokens": rng.integers(12, 20, rows),
            "completion_tokens": rng.integers(8, 64, rows),
            "latency_ms": latency,
            "ttft_ms": latency * 0.2,
            "started_at": ((finished - latency / 1000) * 1e6).astype("int64"),
            "finished_at": (finished * 1e6).astype("int64"),
            "run_id": "20261204T000000Z-bench0",
        }
    )
    frame = frame.with_columns(
        pl.Series("request_key", [hashlib.sha256(b"%d" % i).hexdigest() for i in range(rows)]),  # keys are digests
        pl.format(
            "The answer to question {} is {}. It follows from adding them.", "row_index", pl.col("row_index") % 186
        ).alias("response_text"),
        pl.when(failed).then(pl.col("kind")).alias("error_kind"),
        pl.when(failed).then(pl.col("code")).otherwise(200).alias("http_status"),
        pl.when(failed).then(pl.format("HTTP {}: the server said no", "code")).alias("error"),
    ).with_columns(
        pl.col("started_at", "finished_at").cast(pl.Datetime("us", "UTC")),
        *(pl.when(pl.col("status") == "ok").then(pl.col(c)).alias(c) for c in ("response_text", "finish_reason")),
    )
    full = frame.with_columns(pl.lit(None, dtype=t).alias(n) for n, t in SCHEMA.items() if n not in frame.columns)
    full = full.select(pl.col(n).cast(t) for n, t in SCHEMA.items())
    for seq, begin in enumerate(range(0, rows, PART_ROWS)):
        part = out / "manifest" / part_name("20261204T000000Z-bench0", "s0", seq)
        full.slice(begin, PART_ROWS).write_parquet(part, compression="zstd", statistics=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    add_compare_argument(parser)
    args = parser.parse_args()
    sources: list[Path | None] = [None, *(Path(d).resolve() for d in args.compare)]
    folder = tmpdir("report")
    try:
        t = time.perf_counter()
        out = build_run(folder, args.rows)
        note(f"run of {args.rows} rows fabricated in {time.perf_counter() - t:.0f}s")
        rows: list[list[Any]] = []
        raw: list[dict[str, Any]] = []
        for rep in range(args.repeat):
            for source in sources:
                label = f"report of {args.rows:,} rows" + (f", {source}" if source else "") + f" #{rep + 1}"
                page = folder / f"report-{rep}-{len(raw)}.html"
                extra: dict[str, Any] = {}
                if source is not None:
                    extra = {"cwd": source, "env": {**os.environ, "PYTHONPATH": str(source)}}
                m = measure([PYTHON, "-m", "batchrun", "report", str(out), "-o", str(page)], **extra)
                assert m.returncode == 0, m.stderr[-2000:]
                size_mb = page.stat().st_size / 1e6
                rows.append([label, m.wall_s, m.cpu_s, m.peak_rss_mib, size_mb])
                raw.append(
                    {
                        "rows": args.rows,
                        "source": str(source or ROOT),
                        "wall_s": m.wall_s,
                        "cpu_s": m.cpu_s,
                        "rss_mib": m.peak_rss_mib,
                        "mb": size_mb,
                    }
                )
                note(f"{label}: {m.wall_s:.1f}s, {m.peak_rss_mib:.0f} MiB, {size_mb:.1f} MB")
        print(machine())
        print(table(["what", "seconds", "CPU s", "peak RSS MiB", "page MB"], rows))
        print(f"\nraw results: {save('report', raw)}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
