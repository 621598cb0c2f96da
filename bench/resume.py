"""Resume is instant: 1M rows of which 900k are done; then the whole 1M done.

    .venv/bin/python bench/resume.py [--rows 1000000] [--done 900000] [--repeat 2]

How the manifest is made (honest, and said so in the table): sending 1M requests through
batchrun takes far longer than this benchmark may, so the done part is written by batchrun's own
code, without HTTP: its ``Planner`` keys the job's rows (the same keys a run computes, URL and
body included; through ``Feed``, so the plan index is noted as a run notes it), and its
``ManifestWriter`` (``flush_rows`` = 1000, the default) writes an "ok"
result per key, i.e. the same part files a real run at the default flush size leaves behind
(1 part per 1000 results). ``batchrun plan`` then has to report exactly ``--done`` rows done, which
checks the keys. The done rows are the first ones of the input (a run that reads or renders the
rows it has done pays for all of them before its first new request; with the plan index it skips
them unread).

Measured, through the real CLI:
  * time to first new request: from spawning ``python -m batchrun run`` to the first request that
    nginx logs (``$msec``); the run is then interrupted (SIGINT) and its new parts removed;
  * "nothing to do": the same job once every row is done, spawn to exit;
  * ``batchrun plan`` on both states.
Issue 7's targets: first request within 3 s; "nothing to do" within 5 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from common import PYTHON, ROOT, machine, measure, note, save, table, tmpdir, write_input, write_job
from servers import nginx

CACHE = Path(os.environ.get("BENCH_CACHE", "/tmp/batchrun-bench-cache"))
RUN_ID = "20261126T000000Z-bench0"


def build_manifest(job_path: Path, start: int, stop: int, seq: int) -> int:
    """Write "ok" results for rows [start, stop) with batchrun's own planner and writer."""
    sys.path.insert(0, str(ROOT))
    from batchrun.models import Parsed, Result
    from batchrun.plan.feed import Feed
    from batchrun.plan.planner import Planner
    from batchrun.plan.reader import Table
    from batchrun.sink.manifest import read_done_keys
    from batchrun.sink.writer import ManifestWriter
    from batchrun.spec import load_job

    job = load_job(str(job_path))
    done = read_done_keys(job.output_dir)
    planner = Planner(job, done)
    feed = Feed.open(job, planner)  # as a real run does: the plan index is noted as rows are keyed
    writer = ManifestWriter(job.output_dir, run_id=RUN_ID, endpoint=job.endpoint.name, flush_rows=1000)
    writer.seq = seq
    writer.flush_seconds = 1e9
    parsed = Parsed(text="The answer is 42.", finish_reason="stop", prompt_tokens=17, completion_tokens=6)
    now = time.time() - 3600
    offset = 0
    for frame in Table(job.input).frames(2048):
        for request in feed.requests(offset, frame):
            if request.row_index >= stop:
                break
            if request.row_index < start:
                continue
            t = now + request.row_index * 1e-3
            writer.add(Result(request, "ok", 1, t, t + 0.002, latency_ms=2.0, parsed=parsed, http_status=200))
            if writer.due():
                writer.flush()
        else:
            offset += frame.height
            feed.checkpoint()
            continue
        break
    feed.checkpoint(final=True)
    writer.flush()
    return writer.seq


def plan_counts(m: Any) -> dict[str, int]:
    out = {}
    for line in m.stdout.splitlines():
        for key in ("rows read", "already done", "to do"):
            if line.startswith(key):
                out[key] = int(line[len(key) :].split()[0])
    return out


def drop_new_parts(job_dir: Path) -> None:
    for part in (job_dir / "out" / "manifest").glob("part-*.parquet"):
        if RUN_ID not in part.name:
            part.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--done", type=int, default=900_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    work = tmpdir("resume")
    source = write_input(CACHE / f"input-{args.rows}.parquet", args.rows)
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    with nginx(access_log=True) as server:
        job = write_job(work / "job", source, server.url, concurrency=args.concurrency)
        t = time.perf_counter()
        seq = build_manifest(job, 0, args.done, 0)
        parts = len(list((work / "job" / "out" / "manifest").glob("part-*.parquet")))
        note(f"manifest: {args.done} ok results in {parts} parts, built in {time.perf_counter() - t:.0f}s")

        m = measure([PYTHON, "-m", "batchrun", "plan", str(job)])
        counts = plan_counts(m)
        note(f"plan: {counts} in {m.wall_s:.1f}s")
        if counts.get("already done") != args.done:
            raise SystemExit(f"the synthesized manifest does not match the job's keys: {m.stdout}{m.stderr}")
        rows.append(
            [f"`batchrun plan`, {args.done:,}/{args.rows:,} done", m.wall_s, m.cpu_s, m.peak_rss_mib, "", str(counts)]
        )
        raw.append({"what": "plan-partial", **m.__dict__})

        for rep in range(args.repeat):
            log = server.access_log
            assert log is not None
            log.write_text("")  # nginx appends (O_APPEND), so truncating is safe
            spawned = time.time()
            m = measure(
                [PYTHON, "-m", "batchrun", "run", str(job), "--quiet"],
                stop_when=lambda log=log: log.stat().st_size > 0,
                stop_after=120,
            )
            arrivals = server.arrivals()
            first = min(arrivals) - spawned if arrivals else float("nan")
            note(f"run #{rep + 1}: first new request {first:.2f}s after spawn; stopped after {m.wall_s:.1f}s")
            rows.append(
                [
                    f"`batchrun run`, {args.done:,}/{args.rows:,} done: first new request (#{rep + 1})",
                    first,
                    m.cpu_s,
                    m.peak_rss_mib,
                    "target <= 3 s",
                    "interrupted after the first request",
                ]
            )
            raw.append({"what": "first-request", "first_s": first, **m.__dict__})
            drop_new_parts(work / "job")

        t = time.perf_counter()
        build_manifest(job, args.done, args.rows, seq)
        note(f"manifest completed to {args.rows} in {time.perf_counter() - t:.0f}s")
        for rep in range(args.repeat):
            m = measure([PYTHON, "-m", "batchrun", "run", str(job), "--quiet"])
            said = m.stdout.strip().splitlines()[-1] if m.stdout.strip() else m.stderr.strip()[-200:]
            note(f"finished job #{rep + 1}: {m.wall_s:.2f}s: {said}")
            rows.append(
                [
                    f"`batchrun run`, {args.rows:,}/{args.rows:,} done (#{rep + 1})",
                    m.wall_s,
                    m.cpu_s,
                    m.peak_rss_mib,
                    "target <= 5 s",
                    said,
                ]
            )
            raw.append({"what": "nothing-to-do", **m.__dict__})
        m = measure([PYTHON, "-m", "batchrun", "plan", str(job)])
        rows.append(
            [
                f"`batchrun plan`, {args.rows:,}/{args.rows:,} done",
                m.wall_s,
                m.cpu_s,
                m.peak_rss_mib,
                "",
                str(plan_counts(m)),
            ]
        )
        raw.append({"what": "plan-full", **m.__dict__})
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n### Resume ({machine()})\n")
    print("manifest: written by batchrun's Planner + ManifestWriter (1000 results per part), not over HTTP\n")
    print(table(["what", "seconds", "CPU s", "peak RSS MiB", "target", "result"], rows))
    print(f"\nraw results: {save('resume', raw)}")


if __name__ == "__main__":
    main()
