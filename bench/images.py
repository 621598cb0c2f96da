"""Images: can the sink keep up? 10,000 images of ~200 KB, validated, hashed and written atomically.

    .venv/bin/python bench/images.py [--images 10000] [--kib 200] [--tasks 1 8 64] [--whole-run 2000]

Issue 7's target: writing 10,000 images of 200 KB (validated, hashed, atomic) never makes the sink
the bottleneck at 500 images/s.

No network: batchrun's own image path, in-process, on a ~200 KB PNG of random noise (Pillow; noise
does not compress, so the file really is ~200 KB; the size is checked). For every image:
``batchrun.endpoints.images.check_image`` (checks every byte, as an adapter does on a 200) and
``batchrun.sink.images.ImageStore.save`` (temp file, write, fsync, rename, sha256, in
``images/<2 hex>/<key>.png``), on a ``Result`` whose request key is a 32-hex string; every 1,000
images (the manifest writer's default flush) ``ImageStore.sync`` fsyncs the folders that gained a
file, as the writer does before each manifest part.
16 distinct images are cycled (10,000 distinct ones would be 2 GB in memory); every key, so every
file, is distinct.

* ``tasks = 1``: one loop, no threads: check, then save, one image after the other.
* ``tasks = N``: as the runner does: N concurrent tasks on one event loop, each checks its image in
  a worker thread (``Caller`` parses image answers there) and then
  ``await anyio.to_thread.run_sync(store.save, result)`` (anyio's default thread limiter: 40
  threads); the task that saves the 1,000th image since the last sync runs the sync, in a thread.

``--whole-run N``: a full ``batchrun run`` of an ``hf-text-to-image`` job of N rows against
``python -m batchrun simulate`` (zero latency). The simulator's images are tiny (64x64 PNGs of a
few hundred bytes), so that row measures batchrun's per-request cost on the image path (request,
check, save, manifest) and the simulator's ceiling, not the cost of 200 KB images.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import ROOT, SUMMARY, machine, measure, note, save, table, tmpdir, write_input
from servers import PYTHON, simulator

sys.path.insert(0, str(ROOT))

TARGET = 500.0  # images/s
FLUSH_ROWS = 1000  # the manifest writer's default: one ImageStore.sync per part


def noise_png(kib: float, seed: int) -> bytes:
    """A PNG of random RGB noise of about ``kib`` KiB (noise does not compress: ~3 bytes a pixel)."""
    import random

    from PIL import Image

    rng = random.Random(seed)
    side = int((kib * 1024 / 3) ** 0.5)
    for _ in range(5):  # refine: the PNG adds a row filter byte and a little framing
        raw = rng.randbytes(side * side * 3)
        out = io.BytesIO()
        Image.frombytes("RGB", (side, side), raw).save(out, format="PNG")
        data = out.getvalue()
        if abs(len(data) - kib * 1024) <= 0.02 * kib * 1024:
            return data
        side = int(side * (kib * 1024 / len(data)) ** 0.5)
    return data


def key(i: int) -> str:
    return hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest()  # 32 hex, like a request key


def make_result(i: int, parsed: Any) -> Any:
    from batchrun.models import Request, Result

    request = Request(
        key=key(i),
        row_id=str(i),
        row_index=i,
        sample=0,
        method="POST",
        url="http://127.0.0.1:9/models/bench-diffusion",
        body=b'{"inputs":"x","parameters":{}}',
        model="bench-diffusion",
    )
    now = time.time()
    return Result(request, "ok", 1, now, now + 0.5, latency_ms=500.0, parsed=parsed, http_status=200)


def run_serial(images: list[bytes], n: int, folder: Path) -> dict[str, float]:
    from batchrun.endpoints.images import check_image
    from batchrun.sink.images import ImageStore

    store = ImageStore(folder)
    check_s = save_s = 0.0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        a = time.perf_counter()
        parsed = check_image(images[i % len(images)], "image/png")
        b = time.perf_counter()
        stored = store.save(make_result(i, parsed))
        if (i + 1) % FLUSH_ROWS == 0 or i + 1 == n:
            store.sync()
        c = time.perf_counter()
        check_s += b - a
        save_s += c - b
        assert stored.parsed is not None and stored.parsed.image is None
    total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "total_s": total,
        "cpu_s": cpu,
        "check_us": check_s / n * 1e6,
        "save_us": save_s / n * 1e6,
        "saved": store.saved,
    }


def run_tasks(images: list[bytes], n: int, folder: Path, tasks: int) -> dict[str, float]:
    import anyio
    import anyio.to_thread

    from batchrun.endpoints.images import check_image
    from batchrun.sink.images import ImageStore

    store = ImageStore(folder)
    counter = iter(range(n))
    spent = {"check": 0.0, "save": 0.0}
    saved = [0]

    async def worker() -> None:
        for i in counter:
            a = time.perf_counter()
            parsed = await anyio.to_thread.run_sync(check_image, images[i % len(images)], "image/png")
            b = time.perf_counter()
            stored = await anyio.to_thread.run_sync(store.save, make_result(i, parsed))
            saved[0] += 1
            if saved[0] % FLUSH_ROWS == 0 or saved[0] == n:
                await anyio.to_thread.run_sync(store.sync)
            spent["check"] += b - a
            spent["save"] += time.perf_counter() - b  # latency of one save, queueing for a thread included
            assert stored.parsed is not None and stored.parsed.image is None

    async def main() -> float:
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(worker)
        return time.perf_counter() - t0

    cpu0 = time.process_time()
    total = anyio.run(main)
    return {
        "total_s": total,
        "cpu_s": time.process_time() - cpu0,
        "check_us": spent["check"] / n * 1e6,
        "save_us": spent["save"] / n * 1e6,
        "saved": store.saved,
    }


def whole_run(rows: int, concurrency: int, work: Path) -> tuple[list[Any], dict[str, Any]]:
    source = write_input(work / f"input-{rows}.parquet", rows)
    with simulator() as sim:
        folder = work / "image-job"
        folder.mkdir(parents=True, exist_ok=True)
        job = folder / "job.toml"
        job.write_text(
            f"""name = "bench-images"
input = "{source}"
id_column = "id"
output = "{folder / "out"}"

[endpoint]
preset = "hf-text-to-image"
base_url = "{sim.url}"
model = "bench/stable-diffusion"

[request]
inputs = "{{{{ question }}}}"

[limits]
concurrency = {concurrency}
max_attempts = 6
timeout_s = 120
"""
        )
        env = {**os.environ, "HF_TOKEN": "hf_bench"}
        m = measure([PYTHON, "-m", "batchrun", "run", str(job), "--quiet"], env=env)
        files = list((folder / "out" / "images").rglob("*.png"))
        sizes = [p.stat().st_size for p in files[:200]]
    match = SUMMARY.search(m.stdout)
    if m.returncode != 0 or not match:
        raise SystemExit(f"image job failed ({m.returncode}): {m.stdout}{m.stderr[-3000:]}")
    _done, ok, failed, _elapsed, rate = match.groups()
    avg = sum(sizes) / len(sizes) if sizes else 0
    row = [
        f"`batchrun run`, hf-text-to-image vs simulator, c={concurrency} (tiny images: request overhead)",
        f"{int(ok):,} ok, {int(failed)} failed",
        f"{avg:,.0f} B",
        float(rate),
        "",
        "",
        f"{m.cpu_s / rows * 1e6:,.0f} (whole process)",
        f"{float(rate) / TARGET:.2f}x (not 200 KB images)",
        m.peak_rss_mib,
    ]
    return row, {"what": "whole-run", "files": len(files), "avg_bytes": avg, **m.__dict__}


def run_cases(
    args: argparse.Namespace, images: list[bytes], size: float, work: Path
) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    for case, tasks in enumerate(args.tasks):
        folder = work / f"out-{case}-{tasks}"  # kept to the end: --tasks 8 8 needs two folders
        folder.mkdir()
        if tasks == 1:
            r = run_serial(images, args.images, folder)
            how = "1 loop, no threads (check + save in line)"
        else:
            r = run_tasks(images, args.images, folder, tasks)
            how = f"{tasks} tasks, check and save via anyio.to_thread.run_sync (40 threads)"
        written = sum(1 for _ in (folder / "images").rglob("*.png"))
        assert written == args.images == r["saved"], (written, r)
        rate = args.images / r["total_s"]
        note(f"{how}: {rate:,.0f} images/s, check {r['check_us']:,.0f} µs, save {r['save_us']:,.0f} µs")
        rows.append(
            [
                how,
                f"{args.images:,} written",
                f"{size:,.0f} B",
                rate,
                f"{r['check_us']:,.0f}",
                f"{r['save_us']:,.0f}",
                f"{r['cpu_s'] / args.images * 1e6:,.0f}",
                f"{rate / TARGET:.2f}x ({'holds' if rate >= TARGET else 'misses'})",
                "",
            ]
        )
        raw.append({"what": "sink", "tasks": tasks, "images": args.images, "bytes": size, **r})
        # No rmtree here, only at the end: ext4 without a journal (this machine's /) steps over each
        # inode freed in the last minute or more when it creates a file, so 10,000 deletions just
        # before the next case made each of its files cost up to ~0.5 ms more to create.
    if args.whole_run:
        row, data = whole_run(args.whole_run, args.concurrency, work)
        note(f"whole run: {row[3]:,.0f} images/s")
        rows.append(row)
        raw.append(data)
    return rows, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--kib", type=float, default=200.0, help="size of each PNG in KiB")
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 8, 64], help="1 = one loop, no threads")
    parser.add_argument("--whole-run", type=int, default=2000, help="rows of the hf-text-to-image job; 0 to skip")
    parser.add_argument("--concurrency", type=int, default=64, help="of the whole-run job")
    args = parser.parse_args()
    import PIL

    work = tmpdir("images")
    images = [noise_png(args.kib, seed) for seed in range(16)]
    size = sum(map(len, images)) / len(images)
    if abs(size - args.kib * 1024) > 0.05 * args.kib * 1024:
        raise SystemExit(f"the PNGs are {size:,.0f} B, not ~{args.kib:g} KiB")
    fs = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
    note(f"{len(images)} PNGs of {size:,.0f} B each on average; writing to {work} ({fs})")
    try:
        rows, raw = run_cases(args, images, size, work)
    finally:  # 2 GB a case
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n### Images: check_image + ImageStore.save, no network ({machine()}; Pillow {PIL.__version__}; {fs})\n")
    print(
        table(
            [
                "how",
                "images",
                "image size",
                "images/s",
                "check µs/image",
                "save µs/image",
                "CPU µs/image",
                f"vs {TARGET:g}/s",
                "peak RSS MiB",
            ],
            rows,
        )
    )
    print(
        "\ncheck = check_image (every byte checked); save = ImageStore.save (temp file, fsync, rename, sha256) "
        f"plus ImageStore.sync (fsync of the folders that gained a file) every {FLUSH_ROWS:,} images; with "
        "tasks, check and save run in worker threads and their µs are latencies, queueing for a thread included."
    )
    print(f"\nraw results: {save('images', raw)}")


if __name__ == "__main__":
    main()
