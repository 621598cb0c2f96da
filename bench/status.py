"""``batchrun status`` on a 1M-row manifest: issue 16 asks for an answer within 3 s.

    .venv/bin/python bench/status.py [--rows 500000] [--endpoints 2] [--repeat 3]

The manifest is synthetic (no HTTP): ``--rows`` input rows x ``--endpoints`` endpoints, one row a
request, in parts of 1000 rows (what a run at the default ``flush_rows`` leaves), 5 % failed in
three kinds, latencies and tokens drawn at random. The time is the real CLI, spawn to exit, with
``--json``; the first run pays the page cache, the best of ``--repeat`` is reported as well.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from batchrun.sink.manifest import SCHEMA

PART_ROWS = 1000


def make(folder: Path, rows: int, endpoints: int) -> Path:
    pl.DataFrame({"id": [f"r{i}" for i in range(rows)], "question": [f"q {i}" for i in range(rows)]}).write_parquet(
        folder / "input.parquet"
    )
    job = folder / "job.toml"
    job.write_text(
        'name = "bench"\ninput = "input.parquet"\noutput = "out"\n[request]\nprompt = "{{ question }}"\n'
        + "".join(
            f'[[endpoints]]\nname = "e{e}"\npreset = "openai-compatible"\nbase_url = "http://e{e}.test"\nmodel = "m"\n'
            for e in range(endpoints)
        )
    )
    out = folder / "out" / "manifest"
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    total = rows * endpoints
    status = np.where(rng.random(total) < 0.05, "failed", "ok")
    kinds = rng.choice(["permanent", "retryable_exhausted", "retryable_exhausted"], total)
    now = datetime.now(UTC).timestamp()
    frame = pl.DataFrame(
        {
            "request_key": [f"{i:032x}" for i in rng.permutation(total)],
            "row_index": np.tile(np.arange(rows), endpoints),
            "endpoint": np.repeat([f"e{e}" for e in range(endpoints)], rows),
            "sample": np.zeros(total, dtype=np.int32),
            "status": status,
            "error_kind": kinds,
            "http_status": np.where(status == "failed", 429, 200).astype(np.int32),
            "attempts": np.ones(total, dtype=np.int32),
            "prompt_tokens": rng.integers(5, 500, total),
            "completion_tokens": rng.integers(5, 500, total),
            "latency_ms": rng.lognormal(6, 0.5, total),
            "ttft_ms": rng.lognormal(4, 0.5, total),
            "started_at": pl.Series(((now + np.arange(total) / 1000.0) * 1e6).astype(np.int64)).cast(
                pl.Datetime("us", "UTC")
            ),
            "run_id": ["20261204T000000000000Z-bench0"] * total,
        }
    ).with_columns(
        finished_at=pl.col("started_at"),
        error_kind=pl.when(pl.col("status") == "failed").then("error_kind"),
        error=pl.when(pl.col("status") == "failed").then(pl.lit("429 Too Many Requests: slow down")),
        response_text=pl.when(pl.col("status") == "ok").then(pl.lit("an answer of a few words")),
    )
    frame = frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in SCHEMA.items()
    )
    for seq, start in enumerate(range(0, total, PART_ROWS)):
        frame.slice(start, PART_ROWS).write_parquet(out / f"part-20261204T000000000000Z-bench0-s0of1-{seq:05d}.parquet")
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--endpoints", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        job = make(Path(tmp), args.rows, args.endpoints)
        print(f"manifest of {args.rows * args.endpoints:,} rows written in {time.perf_counter() - started:.1f}s")
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "batchrun", "status", str(job), "--json"], capture_output=True, text=True
            )
            times.append(time.perf_counter() - started)
            if done.returncode:
                sys.exit(done.stderr)
        print(done.stdout[:400])
        print(f"status, spawn to exit: first {times[0]:.2f}s, best {min(times):.2f}s")


if __name__ == "__main__":
    main()
