"""Where a full ``batchrun run`` spends its CPU: py-spy over the real CLI against zero-latency nginx.

    .venv/bin/python bench/profile.py [--requests 20000] [--concurrency 256] [--rate 250]

Writes bench/results/profile-<time>.txt (collapsed stacks, py-spy ``--format raw``) and
``.speedscope.json``, then prints: the share of samples by stage (the batchrun frame a sample is
under), the top functions by self time and by inclusive time. py-spy stops the process for each
sample (its default: whole stacks, never torn ones); at 250 Hz that costs a few per cent.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from common import BENCH, PYTHON, note, tmpdir, write_input, write_job
from servers import nginx

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

#: the input reader's modules and the runner's, each split in several
READER_FILES = tuple(f"batchrun/plan/{name}.py" for name in ("reader", "csvtext", "jsonl", "empties", "inputerrors"))
RUNNER_FILES = tuple(f"batchrun/{name}.py" for name in ("runner", "runfolder", "runlanes", "runprogress", "prepare"))

#: (stage, test on (function, file)); a sample goes to the first stage that matches, walking from
#: the leaf frame towards the root, so it lands in the innermost batchrun (or tenacity/aiolimiter)
#: frame it runs under. Samples under no such frame are the event loop's own work (socket reads
#: and writes done in callbacks, scheduling) or start-up.
STAGES = [
    (
        "manifest: write part (rows, DataFrame, parquet; thread)",
        lambda f, p: (
            ("batchrun/sink/" in p and f in ("flush", "write_part", "manifest_frame")) or "batchrun/sink/files.py" in p
        ),
    ),
    (
        "crash journal: encode, write, seal; image lookup (sink/journal, sink/recording)",
        lambda f, p: "batchrun/sink/journal.py" in p or "batchrun/sink/recording.py" in p,
    ),
    ("manifest: writer per result (consume, add)", lambda f, p: "batchrun/sink/" in p),
    (
        "planning: polars batches -> dicts (thread)",
        lambda f, p: any(name in p for name in READER_FILES),
    ),
    ("planning: render, canonical JSON, key", lambda f, p: "batchrun/plan/" in p),
    ("response parsing (endpoints)", lambda f, p: "batchrun/endpoints/" in p),
    ("progress", lambda f, p: "batchrun/progress.py" in p),
    (
        "limiter + cool-down",
        lambda f, p: (
            "aiolimiter" in p
            or p.endswith(
                ("batchrun/dispatch/limits.py", "batchrun/dispatch/adaptive.py", "batchrun/dispatch/inflight.py")
            )
        ),
    ),
    ("retry wrapper (tenacity)", lambda f, p: "tenacity" in p),
    (
        "HTTP: Sender.send ... aread/aclose (httpx, httpx-aiohttp, aiohttp)",
        lambda f, p: (
            ("batchrun/dispatch/exchange.py" in p and f.endswith("_exchange")) or "batchrun/dispatch/client.py" in p
        ),
    ),
    ("Caller, rest", lambda f, p: "batchrun/dispatch/" in p and "pool.py" not in p),
    ("pool worker + memory streams", lambda f, p: "batchrun/dispatch/pool.py" in p),
    (
        "runner (producer, consume)",
        lambda f, p: any(name in p for name in RUNNER_FILES),
    ),
    ("start-up: imports", lambda f, p: "<frozen importlib" in p),
    ("event loop: socket callbacks, scheduling (no task frame)", lambda f, p: p.endswith("batchrun/cli.py")),
    ("other batchrun", lambda f, p: "batchrun/" in p),
]

PACKAGES = [
    "httpx_aiohttp",
    "aiohttp",
    "yarl",
    "multidict",
    "httpcore",
    "h11",
    "httpx",
    "anyio",
    "asyncio",
    "polars",
    "jinja2",
    "tenacity",
    "aiolimiter",
    "json",
    "hashlib",
    "datetime",
    "selectors",
    "ssl",
    "socket",
    "rich",
    "pydantic",
    "batchrun",
]


def parse(path: Path) -> list[tuple[list[tuple[str, str, str]], int]]:
    samples = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = []
        for raw in stack.split(";"):
            m = FRAME.match(raw)
            frames.append((m["func"], m["file"], m["line"] or "") if m else (raw, "", ""))
        samples.append((frames, int(count)))
    return samples


def package(path: str) -> str:
    """py-spy names files relative to their sys.path entry: ``httpcore/_async/http11.py``."""
    for name in PACKAGES:
        if path.startswith((f"{name}/", f"{name}.py")) or f"/{name}/" in path or path.endswith(f"/{name}.py"):
            return name
    if "asyncio" in path:
        return "asyncio"
    return Path(path).name or "?"


def report(samples: list[tuple[list[tuple[str, str, str]], int]], top: int = 25) -> str:
    total = sum(c for _, c in samples)
    stage: collections.Counter[str] = collections.Counter()
    leaf_pkg: collections.Counter[str] = collections.Counter()
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    other_leaf: collections.Counter[str] = collections.Counter()
    for frames, count in samples:
        name = f"not under a batchrun frame: {package(frames[-1][1])}"
        for func, path, _ in reversed(frames):  # leaf first
            hit = next((s for s, test in STAGES if test(func, path)), None)
            if hit:
                name = hit
                break
        stage[name] += count
        if name.startswith("not under"):
            other_leaf[f"{frames[-1][0]} ({_short(frames[-1][1])})"] += count
        func, path, line = frames[-1]
        self_t[f"{func} ({_short(path)}:{line})"] += count
        leaf_pkg[package(path)] += count
        seen = set()
        for func, path, _ in frames:
            key = f"{func} ({_short(path)})"
            if key not in seen:
                seen.add(key)
                incl[key] += count
    out = [f"{total} samples", "", "| stage (innermost batchrun frame) | share |", "| --- | --- |"]
    out += [f"| {k} | {100 * v / total:.1f} % |" for k, v in stage.most_common()]
    out += ["", "| not under batchrun: leaf function | share |", "| --- | --- |"]
    out += [f"| {k} | {100 * v / total:.1f} % |" for k, v in other_leaf.most_common(10)]
    out += ["", "| leaf package (self time) | share |", "| --- | --- |"]
    out += [f"| {k} | {100 * v / total:.1f} % |" for k, v in leaf_pkg.most_common(15)]
    out += ["", "| function (self) | share |", "| --- | --- |"]
    out += [f"| {k} | {100 * v / total:.1f} % |" for k, v in self_t.most_common(top)]
    out += ["", "| function (inclusive) | share |", "| --- | --- |"]
    out += [f"| {k} | {100 * v / total:.1f} % |" for k, v in incl.most_common(top + 15)]
    return "\n".join(out)


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--report", type=Path, help="only summarize an existing raw profile")
    args = parser.parse_args()
    if args.report:
        print(report(parse(args.report)))
        return
    pyspy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    work = tmpdir("profile")
    source = write_input(work / "input.parquet", args.requests)
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    raw = results / f"profile-{stamp}.txt"
    with nginx() as server:
        job = write_job(work / "job", source, server.url, concurrency=args.concurrency)
        cmd = [PYTHON, "-m", "batchrun", "run", str(job), "--quiet"]
        for fmt, out in (("raw", raw), ("speedscope", results / f"profile-{stamp}.speedscope.json")):
            shutil.rmtree(work / "job" / "out", ignore_errors=True)
            spy = [pyspy, "record", "-r", str(args.rate), "-f", fmt, "-o", str(out), "--"]
            r = subprocess.run(spy + cmd, capture_output=True, text=True)
            note(f"py-spy {fmt}: rc {r.returncode}; {r.stdout.strip().splitlines()[-1:]}")
            if r.returncode != 0:
                raise SystemExit(r.stderr[-3000:])
    shutil.rmtree(work, ignore_errors=True)
    print(f"### Profile: batchrun run, {args.requests} requests, concurrency {args.concurrency}, nginx\n")
    print(report(parse(raw)))
    print(f"\nraw: {raw}")


if __name__ == "__main__":
    main()
