"""Memory flat in input size, for the reader alone: peak RSS of ``Table.inspect`` and ``Table.frames``.

    .venv/bin/python bench/reader.py [--format csv] [--sizes 100000 1000000 10000000] [--block-bytes N]

Each size runs in a fresh child process (``python bench/reader.py --child FILE PHASE``) that
builds the ``Table``, then either runs ``inspect(["question"])`` (the up-front pass: every field
parsed, rows counted, empty prompts found) or walks ``frames(2048)`` (what ``run`` and ``plan``
read) to the end. The child samples its own ``RssAnon`` (heap: what the reader holds, not the page
cache of the file) every 2 ms and prints the peak; GNU time gives the peak total RSS (``ru_maxrss``:
heap + mapped files + libraries). Rows/s is rows over the phase's own wall time, imports excluded.

Inputs: the memory benchmark's Parquet files in $BENCH_CACHE (default /tmp/batchrun-bench-cache),
written once as ``input-N.csv`` / ``input-N.tsv`` / ``input-N.jsonl`` next to them (short prompts:
``id,question``; 10M rows is ~700 MB of CSV).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import PYTHON, ROOT, machine, measure, note, save, table, write_input

CACHE = Path(os.environ.get("BENCH_CACHE", "/tmp/batchrun-bench-cache"))
SUFFIX = {"csv": ".csv", "tsv": ".tsv", "ndjson": ".jsonl", "parquet": ".parquet"}


def text_input(size: int, fmt: str) -> Path:
    import polars as pl

    parquet = write_input(CACHE / f"input-{size}.parquet", size)
    if fmt == "parquet":
        return parquet
    path = CACHE / f"input-{size}{SUFFIX[fmt]}"
    if not path.exists():
        frame, tmp = pl.read_parquet(parquet), path.with_name(path.name + ".tmp")
        if fmt == "ndjson":
            frame.write_ndjson(tmp)
        else:
            frame.write_csv(tmp, separator="\t" if fmt == "tsv" else ",")
        tmp.rename(path)
    return path


def rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def child(path: str, phase: str, block_bytes: int | None) -> None:
    sys.path.insert(0, str(ROOT))
    from batchrun.plan.reader import BLOCK_BYTES, Table

    peak, stop = [rss_anon_kib()], threading.Event()

    def sample() -> None:
        while not stop.wait(0.002):
            peak[0] = max(peak[0], rss_anon_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    reader = Table(path, block_bytes=block_bytes or BLOCK_BYTES)
    if phase == "inspect":
        rows = reader.inspect(["question"]).rows
    else:
        rows = sum(frame.height for frame in reader.frames(2048))
    elapsed = time.perf_counter() - t0
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], rss_anon_kib())
    print(json.dumps({"rows": rows, "seconds": elapsed, "peak_rss_anon_mib": peak[0] / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=sorted(SUFFIX), default="csv")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--block-bytes", type=int, help="text formats: bytes parsed at a time (the reader's default)")
    parser.add_argument("--child", nargs=2, metavar=("FILE", "PHASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.block_bytes)
        return
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    for size in args.sizes:
        source = text_input(size, args.format)
        for phase in ("inspect", "frames"):
            cmd = [PYTHON, str(Path(__file__).resolve()), "--child", str(source), phase]
            m = measure(cmd + (["--block-bytes", str(args.block_bytes)] if args.block_bytes else []))
            if m.returncode != 0:
                raise SystemExit(f"{phase} failed: {m.stdout}{m.stderr[-2000:]}")
            data = m.json()
            assert data["rows"] == size, data
            rate = size / data["seconds"]
            note(f"{args.format} {phase} {size}: {data['seconds']:.1f}s, {data['peak_rss_anon_mib']:.0f} MiB anon")
            rows.append(
                [f"Table.{phase}", f"{size:,}", data["peak_rss_anon_mib"], m.peak_rss_mib, data["seconds"], rate]
            )
            raw.append({"format": args.format, "phase": phase, "size": size, **data, **m.__dict__})
    print(f"\n### Reader memory, {args.format} ({machine()})\n")
    print(table(["phase", "input rows", "peak RssAnon MiB", "peak RSS MiB", "s", "rows/s"], rows))
    print(f"\nraw results: {save(f'reader-{args.format}', raw)}")


if __name__ == "__main__":
    main()
