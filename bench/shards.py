"""Shards at one limit: N local ``--shard K/N`` processes against one simulator (issue 19).

    .venv/bin/python bench/shards.py [--rpm 1200] [--shards 4] [--seconds 60] [--plan-rows 1000000]

The job says ``requests_per_minute = 1200`` and ``shards = 4`` in ``[limits]``, so each shard paces
itself at 300 a minute (there is no shared limiter). All N start together, run for ``--seconds``
and are interrupted (SIGINT). The simulator (its own process) stamps every arrival; each shard's
parts say when each of its requests started. Measured:

- the combined rate while all N were sending (from the last shard's first send to the first
  shard's last one; a send is a result's ``finished_at`` less its latency), against the limit:
  the target is within 1 %;
- the most sends (every shard's, and each shard's) and the most arrivals in any one second
  (sliding windows, and fixed buckets) against limit / 60;
- requests sent twice: arrivals at the simulator beyond the distinct keys in every part;
- planning: ``batchrun plan`` of ``--plan-rows`` rows, one process against shard 0 of N (wall and
  CPU, the best of two), and shard 0 planning again once its own run has keyed every row (the
  plan index: only its own rows are read again).
"""

from __future__ import annotations

import argparse
import bisect
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from common import PYTHON, Measured, machine, measure, note, save, table, tmpdir, write_input, write_job
from servers import simulator


def shard_job(folder: Path, source: Path, url: str, *, rpm: float, shards: int, concurrency: int) -> Path:
    job = write_job(folder, source, url, concurrency=concurrency, requests_per_minute=rpm)
    job.write_text(job.read_text() + f"shards = {shards}\n")  # [limits] is the last table
    return job


def run_shards(job: Path, shards: int, seconds: float) -> list[Measured]:
    """Start every shard at once; each is interrupted ``seconds`` after it was started."""
    results: list[Measured | None] = [None] * shards

    def one(k: int) -> None:
        cmd = [PYTHON, "-m", "batchrun", "run", str(job), "--quiet", "--shard", f"{k}/{shards}"]
        results[k] = measure(cmd, stop_when=lambda: False, stop_after=seconds)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [m for m in results if m is not None]


def sends(out: Path, shards: int) -> tuple[list[list[float]], int, int]:
    """Each shard's send times (epoch seconds, sorted: ``finished_at`` less the last attempt's
    latency, which runs from the limiter's slot to the answer); rows, and distinct keys, in every part."""
    import polars as pl

    from batchrun.sink.manifest import part_files

    parts = part_files(out)
    columns = ["request_key", "finished_at", "latency_ms"]
    frame = pl.concat(pl.read_parquet(p, columns=columns).with_columns(file=pl.lit(p.name)) for p in parts)
    per_shard = []
    for k in range(shards):
        mine = frame.filter(pl.col("file").str.contains(f"-s{k}of{shards}-", literal=True))
        done = [t.timestamp() for t in mine["finished_at"]]
        per_shard.append(sorted(t - ms / 1000 for t, ms in zip(done, mine["latency_ms"], strict=True)))
    return per_shard, frame.height, frame["request_key"].n_unique()


def most_in_a_second(times: list[float]) -> int:
    return max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


def best_of(cmd: list[str], times: int = 2) -> Measured:
    runs = [measure(cmd) for _ in range(times)]
    for m in runs:
        if m.returncode != 0:
            raise SystemExit(f"{cmd} failed: {m.stderr[-2000:]}")
    return min(runs, key=lambda m: m.wall_s)


def row(label: str, m: Measured, base: Measured, note: str = "") -> list[Any]:
    """A planning table's row: wall and CPU seconds, and the CPU against ``base``'s."""
    return [label, f"{m.wall_s:.1f}", f"{m.cpu_s:.1f}", f"{m.cpu_s / base.cpu_s:.2f}{note}"]


def planning(work: Path, rows: int, shards: int) -> list[list[Any]]:
    source = write_input(work / f"plan-{rows}.parquet", rows)
    job = shard_job(work / "plan", source, "http://127.0.0.1:9", rpm=1200, shards=shards, concurrency=16)
    one = best_of([PYTHON, "-m", "batchrun", "plan", str(job)])
    (work / "plan" / "out").mkdir(exist_ok=True)  # ``plan`` shares digest blocks in an output folder that exists
    shard_cmd = [PYTHON, "-m", "batchrun", "plan", str(job), "--shard", f"0/{shards}"]
    alone = []
    for _ in range(2):  # no other shard's blocks: each run from a clean folder
        shutil.rmtree(work / "plan" / "out" / "plan-index", ignore_errors=True)
        alone.append(best_of(shard_cmd, 1))
    shard = min(alone, key=lambda m: m.wall_s)
    together = []
    for _ in range(2):
        shutil.rmtree(work / "plan" / "out" / "plan-index", ignore_errors=True)
        together.append(plan_together(job, shards))
    best = min(together, key=lambda runs: max(m.cpu_s for m in runs))
    cpu = [m.cpu_s for m in best]
    every = best_of(shard_cmd)  # every block there: the floor of a shard's first pass
    return [
        row(f"plan, 1 process ({rows:,} rows)", one, one),
        row(f"plan --shard 0/{shards}", shard, one, " (alone: no other shard's blocks)"),
        [
            f"plan --shard K/{shards}, all {shards} started together (each; most)",
            f"{max(m.wall_s for m in best):.1f}",
            ", ".join(f"{c:.1f}" for c in cpu),
            f"{sum(cpu) / len(cpu) / one.cpu_s:.2f}; {max(cpu) / one.cpu_s:.2f} (1/N = {1 / shards:.2f})",
        ],
        row(f"plan --shard 0/{shards}, every block written already", every, one),
    ]


def plan_together(job: Path, shards: int) -> list[Measured]:
    """``plan --shard K/N`` for every K, started at once: each computes its own digest blocks, then
    reads the others' (``plan.digests``)."""
    results: list[Measured | None] = [None] * shards

    def one(k: int) -> None:
        results[k] = measure([PYTHON, "-m", "batchrun", "plan", str(job), "--shard", f"{k}/{shards}"])

    threads = [threading.Thread(target=one, args=(k,)) for k in range(shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runs = [m for m in results if m is not None]
    for m in runs:
        if m.returncode != 0:
            raise SystemExit(f"{m.cmd} failed: {m.stderr[-2000:]}")
    return runs


def resumed_planning(work: Path, rows: int, shards: int) -> list[list[Any]]:
    """Shard 1's run keys every row into its plan index (and sends its own); then shard 0's plan
    against shard 1's: shard 1 reads the index and only its own rows (all done: none); shard 0,
    whose index does not exist, plans every row."""
    source = write_input(work / f"resume-{rows}.parquet", rows)
    with simulator() as sim:
        job = shard_job(work / "resume", source, sim.url, rpm=6_000_000, shards=shards, concurrency=64)
        ran = measure([PYTHON, "-m", "batchrun", "run", str(job), "--quiet", "--shard", f"1/{shards}"])
        if ran.returncode != 0:
            raise SystemExit(f"shard 1 failed: {ran.stderr[-2000:]}")
    again = best_of([PYTHON, "-m", "batchrun", "plan", str(job), "--shard", f"1/{shards}"])
    fresh = best_of([PYTHON, "-m", "batchrun", "plan", str(job), "--shard", f"0/{shards}"])
    return [
        row(f"plan --shard 0/{shards}, no index ({rows:,} rows)", fresh, fresh),
        row(f"plan --shard 1/{shards} after its run (index)", again, fresh),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=float, default=1200, help="the job's requests_per_minute (all shards)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=16, help="per shard")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--plan-rows", type=int, default=1_000_000, help="0: no planning measure")
    parser.add_argument("--resume-rows", type=int, default=100_000, help="0: no resumed planning measure")
    parser.add_argument("--plan-only", action="store_true", help="only the planning measures")
    args = parser.parse_args()
    work = tmpdir("shards")
    if args.plan_only:
        plan_rows = planning(work, args.plan_rows, args.shards) if args.plan_rows else []
        if args.resume_rows:
            plan_rows += resumed_planning(work, args.resume_rows, args.shards)
        print(table(["planning", "wall s", "CPU s", "CPU ratio"], plan_rows))
        shutil.rmtree(work, ignore_errors=True)
        return
    source = write_input(work / "input.parquet", int(args.rpm / 60 * (args.seconds + 30)) + 1000)
    with simulator(latency_ms=args.latency_ms) as sim:
        job = shard_job(work / "job", source, sim.url, rpm=args.rpm, shards=args.shards, concurrency=args.concurrency)
        started = time.time()
        runs = run_shards(job, args.shards, args.seconds)
        stats = sim.stats()
    arrivals = sorted(stats["arrivals"])
    per_shard, keyed, distinct = sends(work / "job" / "out", args.shards)
    if not arrivals or not all(per_shard):
        raise SystemExit(f"a shard sent nothing: {[m.stderr[-500:] for m in runs]}")
    per_second = args.rpm / 60
    # all N sending: from the last shard's first send to the first shard's last one
    begin, end = max(s[0] for s in per_shard), min(s[-1] for s in per_shard)
    together = sum(bisect.bisect_left(s, end) - bisect.bisect_left(s, begin) for s in per_shard)
    rate = together / (end - begin) * 60
    sliding = most_in_a_second(arrivals)
    sent = sorted(t for s in per_shard for t in s)
    first = arrivals[0]
    buckets: dict[int, int] = {}
    for t in arrivals:
        buckets[int(t - first)] = buckets.get(int(t - first), 0) + 1
    whole = list(buckets.values())[1:-1]  # the first and last buckets are partly outside the run
    stagger = max(s[0] for s in per_shard) - min(s[0] for s in per_shard)
    rows: list[list[Any]] = [
        [
            f"combined rate, all {args.shards} sending ({end - begin:.0f} s), per minute",
            f"{rate:,.1f} ({rate / args.rpm:.2%})",
            f"{args.rpm * 0.99:,.0f}-{args.rpm:,.0f}",
        ],
        ["most sends in any 1 s window, all shards (sliding)", most_in_a_second(sent), f"<= {per_second:.0f}"],
        ["most sends in any 1 s window, per shard", [most_in_a_second(s) for s in per_shard], ""],
        ["most arrivals in any 1 s window (sliding)", sliding, f"<= {per_second:.0f}"],
        ["most arrivals in a fixed 1 s bucket", max(buckets.values()), f"<= {per_second:.0f}"],
        ["fewest in a whole fixed 1 s bucket", min(whole) if whole else "", ""],
        ["first sends, first to last shard (s)", f"{stagger:.2f}", ""],
        ["arrivals at the simulator", stats["total"], ""],
        ["results in the parts (every part, every row)", keyed, ""],
        ["requests sent twice (arrivals - distinct keys)", stats["total"] - distinct, "0"],
        ["outcomes at the simulator", stats["by_outcome"], ""],
        ["shard exits", [m.returncode for m in runs], "SIGINT: 4"],
    ]
    note(f"{len(arrivals)} arrivals; started {started:.0f}")
    title = f"{args.shards} shards, requests_per_minute = {args.rpm:g} in all, concurrency {args.concurrency} each"
    print(f"\n### Shards: {title}, simulator latency {args.latency_ms:g} ms ({machine()})\n")
    print(table(["measure", "value", "target"], rows))
    series = [buckets.get(i, 0) for i in range(max(buckets) + 1)]
    print(f"\nper-second counts: {series}")
    plan_rows: list[list[Any]] = []
    if args.plan_rows:
        plan_rows += planning(work, args.plan_rows, args.shards)
    if args.resume_rows:
        plan_rows += resumed_planning(work, args.resume_rows, args.shards)
    if plan_rows:
        print("\n" + table(["planning", "wall s", "CPU s", "CPU ratio"], plan_rows))
    shutil.rmtree(work, ignore_errors=True)
    raw = {"arrivals": arrivals, "sends": per_shard, "runs": [m.__dict__ for m in runs], "planning": plan_rows}
    print(f"\nraw results: {save('shards', raw)}")


if __name__ == "__main__":
    main()
