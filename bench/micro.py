"""Per-row and per-result costs of batchrun's own stages, in-process, no network (µs each).

    .venv/bin/python bench/micro.py [--rows 100000]

Times batchrun's real functions on the overhead job's rows: reading (polars batches -> dicts),
the planner as a whole and its pieces (render, canonical JSON, key), one tenacity retry loop
around a call that succeeds, ``manifest_frame`` and ``write_part`` per 1000 results, the crash
journal's ``Journal.add`` and the image lookup ``ImageStore.find`` per result, and
``read_done_keys`` over a manifest of ``rows`` keys in parts of 1000. A profile says where the
time goes in a run; this says what each piece costs alone.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from common import ROOT, machine, table, tmpdir, write_input, write_job

sys.path.insert(0, str(ROOT))


def per_call(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def occurrence_costs(n: int) -> list[list[Any]]:
    """The occurrence index per request (filter + spills to SQLite), against a plain set of ints."""
    import random

    from batchrun.plan.occurrences import Occurrences

    rnd = random.Random(1)
    shorts = [rnd.getrandbits(64) for _ in range(n)]
    shorts += shorts[: n // 100]  # 1 % repeats
    work = tmpdir("micro-occurrences")
    with Occurrences(len(shorts), folder=work) as occurrences:
        t0, spill = time.perf_counter(), 0.0
        for short in shorts:
            occurrences.count(short)
            if occurrences.flush_due:
                t1 = time.perf_counter()
                occurrences.flush()
                spill += time.perf_counter() - t1
        total = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    seen: set[int] = set()
    t0 = time.perf_counter()
    for short in shorts:
        if short not in seen:
            seen.add(short)
    as_set = time.perf_counter() - t0
    return [
        ["  Occurrences.count, per request (1 % repeats)", (total - spill) / len(shorts) * 1e6],
        ["  Occurrences.flush to SQLite (a worker thread in a run), per request", spill / len(shorts) * 1e6],
        ["  (the set of ints it replaced, ~60 B a request)", as_set / len(shorts) * 1e6],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    import batchrun.plan.planner as planner_module
    from batchrun.dispatch.retry import RetryPolicy
    from batchrun.models import Parsed, Result
    from batchrun.plan.bodies import canonical_json
    from batchrun.plan.planner import Planner
    from batchrun.plan.reader import Table
    from batchrun.sink.images import ImageStore
    from batchrun.sink.journal import Journal
    from batchrun.sink.manifest import manifest_frame, read_done_keys
    from batchrun.sink.writer import ManifestWriter
    from batchrun.spec import load_job

    work = tmpdir("micro")
    n = args.rows
    source = write_input(work / "input.parquet", n)
    job = load_job(str(write_job(work / "job", source, "http://127.0.0.1:9", concurrency=256)))
    rows: list[list[Any]] = []

    t0 = time.perf_counter()
    batches = list(Table(job.input).batches(2048))
    rows.append(["read: Table.batches(2048) incl. to_dicts, per row", (time.perf_counter() - t0) / n * 1e6])
    dicts = [d for b in batches for d in b]

    planner = Planner(job)
    t0 = time.perf_counter()
    requests = [r for b in batches for r in planner.plan(b)]
    rows.append(["plan: Planner.plan, per row (render + JSON + key + Request)", (time.perf_counter() - t0) / n * 1e6])

    sample = dicts[: min(n, 20_000)]
    m = len(sample)
    it = iter(sample * 2)
    contexts = [{**row, "row": row} for row in sample]
    rows.append(["  context dict {**row, 'row': row}", per_call(lambda: {**next(it), "row": None}, m)])
    ci = iter(contexts * 2)
    rows.append(
        ["  render_body(context) (Jinja expression)", per_call(lambda: planner.renderer.render_body(next(ci)), m)]
    )
    rendered = [planner.renderer.render_body(c) for c in contexts]
    ri = iter(rendered * 2)
    rows.append(["  canonical_json(rendered) (sort_keys)", per_call(lambda: canonical_json(next(ri)), m)])
    bodies = [canonical_json(r) for r in rendered]
    fresh = Planner(job)
    bi = iter(bodies * 2)
    url = requests[0].url
    rows.append(
        ["  Keying.key (2x blake2b + occurrence index)", per_call(lambda: fresh.keying.key(url, next(bi), 0), m)]
    )
    expr = planner_module  # noqa: F841  (kept importable for ad-hoc timing)
    rows.extend(occurrence_costs(args.rows))

    policy = RetryPolicy(max_attempts=6)

    async def retry_once() -> int:
        async for attempt in policy.retrying(asyncio.sleep):
            with attempt:
                return 1
        return 0

    async def retry_loop(k: int) -> float:
        t = time.perf_counter()
        for _ in range(k):
            await retry_once()
        return (time.perf_counter() - t) / k * 1e6

    rows.append(["dispatch: tenacity AsyncRetrying loop around a call that succeeds", asyncio.run(retry_loop(20_000))])

    parsed = Parsed(text="The answer is 42.", finish_reason="stop", prompt_tokens=17, completion_tokens=6)
    now = time.time()
    results = [Result(r, "ok", 1, now, now + 0.002, latency_ms=2.0, parsed=parsed, http_status=200) for r in requests]
    k = min(len(results), 20_000)
    chunks = iter([results[i : i + 1000] for i in range(0, k, 1000)])
    per_chunk = per_call(lambda: manifest_frame(next(chunks), endpoint="x", run_id="r"), k // 1000)
    rows.append(["sink: manifest_frame(1000 results), per result", per_chunk / 1000])

    journal = Journal(work / "journal", run_id="20261126T000000Z-micro0", shard="s0of1", endpoint="x")
    each = iter(results[:k])
    rows.append(
        [
            "sink: Journal.add (one orjson line, one write(), no fsync), per result",
            per_call(lambda: journal.add(next(each)), k),
        ]
    )
    journal.close()
    store, key = ImageStore(work / "images-root"), results[0].request.key
    rows.append(
        ["sink: ImageStore.find, no image on disk (4 stats), per image request", per_call(lambda: store.find(key), k)]
    )

    out = work / "out"
    writer = ManifestWriter(out, run_id="20261126T000000Z-micro0", endpoint=job.endpoint.name, flush_rows=1000)
    writer.flush_seconds = 1e9
    t0 = time.perf_counter()
    adds = 0.0
    for r in results:
        ta = time.perf_counter()
        writer.add(r)
        adds += time.perf_counter() - ta
        if writer.due():
            writer.flush()
    writer.flush()
    total = time.perf_counter() - t0
    rows.append(["sink: ManifestWriter.flush (DataFrame + zstd parquet + fsync), per result", (total - adds) / n * 1e6])

    t0 = time.perf_counter()
    done = read_done_keys(out)
    rows.append(
        [
            f"resume: read_done_keys, {len(done.ok):,} keys in {writer.seq} parts, per key",
            (time.perf_counter() - t0) / n * 1e6,
        ]
    )
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n### Per-piece costs, {n:,} rows ({machine()})\n")
    print(table(["piece", "µs"], [[a, f"{b:.2f}"] for a, b in rows]))


if __name__ == "__main__":
    main()
