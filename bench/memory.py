"""Memory flat in input size: peak RSS of ``batchrun plan`` and ``batchrun run`` for 100k, 1M (and 10M) rows.

    .venv/bin/python bench/memory.py [--sizes 100000 1000000] [--run-seconds 20] [--concurrency 256]
        [--skip-plan | --skip-run]

Short prompts (the overhead job's), Parquet input. ``batchrun plan`` walks every row through the
planner (read, render, key, resume filter), so it shows any per-row state that grows with the
input. ``batchrun run`` against zero-latency nginx cannot finish 1M rows in a few minutes on this
machine, so it is stopped with SIGINT after ``--run-seconds`` (the same time for every size) and
its peak RSS read then; the table says how many results it had written to the manifest.
Issue 7's target: within +20 % of each other across sizes, and under 200 MiB at 1M.
Inputs are cached in $BENCH_CACHE (default /tmp/batchrun-bench-cache).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

from common import PYTHON, machine, measure, note, save, table, tmpdir, write_input, write_job
from servers import nginx

CACHE = Path(os.environ.get("BENCH_CACHE", "/tmp/batchrun-bench-cache"))


def manifest_rows(folder: Path) -> int:
    import polars as pl

    parts = sorted((folder / "out" / "manifest").glob("part-*.parquet"))
    if not parts:
        return 0
    return int(pl.scan_parquet(parts).select(pl.len()).collect().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--run-seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--skip-plan", action="store_true")
    parser.add_argument("--skip-run", action="store_true")
    args = parser.parse_args()
    work = tmpdir("memory")
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    with nginx() as server:
        for size in args.sizes:
            source = write_input(CACHE / f"input-{size}.parquet", size)
            folder = work / f"job-{size}"
            job = write_job(folder, source, server.url, concurrency=args.concurrency)
            if not args.skip_plan:
                m = measure([PYTHON, "-m", "batchrun", "plan", str(job)])
                if m.returncode != 0:
                    raise SystemExit(f"plan failed: {m.stdout}{m.stderr[-2000:]}")
                note(f"plan {size}: {m.wall_s:.1f}s wall, {m.cpu_s:.1f}s CPU, {m.peak_rss_mib:.0f} MiB")
                rows.append(
                    [
                        "batchrun plan",
                        f"{size:,}",
                        m.peak_rss_mib,
                        m.wall_s,
                        m.cpu_s,
                        size / m.wall_s,
                        f"{size:,} planned",
                    ]
                )
                raw.append({"command": "plan", "rows": size, **m.__dict__})
            if args.skip_run:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            m = measure([PYTHON, "-m", "batchrun", "run", str(job), "--quiet"], stop_after=args.run_seconds)
            written = manifest_rows(folder)
            note(
                f"run {size}: {m.wall_s:.1f}s wall, {m.peak_rss_mib:.0f} MiB, "
                f"{written} results written, rc {m.returncode}"
            )
            what = "finished" if m.returncode == 0 else f"SIGINT after {args.run_seconds:g} s"
            rows.append(
                [
                    "batchrun run (nginx)",
                    f"{size:,}",
                    m.peak_rss_mib,
                    m.wall_s,
                    m.cpu_s,
                    written / m.wall_s,
                    f"{written:,} results written; {what}",
                ]
            )
            raw.append({"command": "run", "rows": size, "written": written, **m.__dict__})
            shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n### Memory: peak RSS by input size ({machine()})\n")
    print(table(["command", "input rows", "peak RSS MiB", "wall s", "CPU s", "rows/s", "note"], rows))
    print(f"\nraw results: {save('memory', raw)}")


if __name__ == "__main__":
    main()
