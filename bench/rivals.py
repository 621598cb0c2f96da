"""Rivals: batchrun beside curator and the OpenAI cookbook's parallel processor, side by side.

    .venv/bin/python bench/rivals.py [--requests 20000] [--concurrency 64 256] [--repeat 2]
                                     [--tools batchrun curator cookbook] [--cookbook PATH]

Issue 7: a full ``batchrun run`` against zero-latency nginx at concurrency 256 should reach at
least 4x the requests/second of each rival, the ratios measured in one run. Every tool sends
the same ``--requests`` short prompts (``clients.prompt``) with the same model and parameters to
the same nginx (``servers.Nginx``), one tool after the other, interleaved at each repetition:

* ``batchrun``: ``python -m batchrun run job.toml --quiet`` on the job ``overhead.py`` writes
  (``common.write_job``); its req/s is its summary line's (from the start of ``run_job``).
* ``curator``: ``bespokelabs-curator`` from PyPI, OpenAI backend (``rival_drivers.py``).
* ``cookbook``: ``examples/api_request_parallel_processor.py`` of openai/openai-cookbook, which
  is not on PyPI and whose code this repository does not carry: pass your copy with
  ``--cookbook PATH``; without it that tool is skipped. See ``rival_drivers.py`` for the two
  things set from outside its code (its connection pool = the concurrency; ``http://`` URLs).

The rivals run in a venv of their own (``$RIVALS_VENV``, default ``bench/.venv-rivals``), made
by ``sh bench/setup.sh rivals`` on first use: curator pulls in litellm, datasets, openai and
more, none of which belongs in the project's venv. They run offline (``rival_drivers.offline_env``:
no telemetry, no hosted viewer, litellm's local price list, tiktoken's encodings from the files
litellm ships, curator's cache and datasets' cache in a temporary folder).

Each tool's req/s counts its own timed section (``elapsed_s``: start-up and imports left out,
as batchrun's summary leaves them out); "wall req/s" divides by the whole process's wall time.
A run counts only when the tool wrote every answer (counted in its own output: batchrun's
manifest, curator's returned dataset and responses file, the cookbook's results JSONL); CPU is
user + system of the whole process (imports included), peak RSS its ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import Measured, batchrun_run, machine, measure, note, save, table, tmpdir, write_input, write_job
from servers import BENCH, ROOT, nginx

RIVALS_VENV = Path(os.environ.get("RIVALS_VENV", BENCH / ".venv-rivals"))
DRIVER = BENCH / "rival_drivers.py"
TARGET = 4.0  # issue 7: batchrun >= 4x each rival at concurrency 256
LABELS = {
    "batchrun": "batchrun run (full CLI)",
    "curator": "curator (OpenAI backend)",
    "cookbook": "OpenAI cookbook parallel processor",
}


def rivals_python() -> Path:
    """The rivals' interpreter, with curator installed (``setup.sh rivals`` on first use)."""
    python = RIVALS_VENV / "bin" / "python"
    check = [str(python), "-c", "import bespokelabs.curator, aiohttp, tiktoken"]
    if not python.exists() or subprocess.run(check, capture_output=True).returncode != 0:
        note(f"installing the rivals into {RIVALS_VENV} (sh bench/setup.sh rivals)")
        env = {**os.environ, "RIVALS_VENV": str(RIVALS_VENV), "VENV": sys.prefix}  # setup.sh: this venv, not a new one
        subprocess.run(["sh", str(BENCH / "setup.sh"), "rivals"], cwd=ROOT, check=True, env=env)
    return python


def manifest_answers(out: Path) -> int:
    """Distinct rows with an ok answer in batchrun's manifest (every part file)."""
    import polars as pl

    parts = sorted((out / "manifest").glob("part-*.parquet"))
    if not parts:
        return 0
    frame = pl.scan_parquet(parts).filter((pl.col("status") == "ok") & pl.col("response_text").is_not_null())
    return int(frame.select(pl.col("row_id").n_unique()).collect().item())


def run_batchrun(work: Path, source: Path, url: str, n: int, c: int, rep: int) -> Measured:
    folder = work / f"batchrun-c{c}-{rep}"
    m = batchrun_run(write_job(folder, source, url, concurrency=c))
    if "rate" not in m.extra:
        m.extra.update(ok=0, elapsed_s=m.wall_s)
    m.extra["answers"] = manifest_answers(folder / "out")
    shutil.rmtree(folder, ignore_errors=True)
    return m


def run_rival(python: Path, tool: str, url: str, n: int, c: int, work: Path, cookbook: Path | None) -> Measured:
    folder = work / f"{tool}-c{c}"
    env_out = subprocess.run(
        [str(python), str(DRIVER), "env", "--work", str(folder)], capture_output=True, text=True, check=True
    )
    env = {**os.environ, **json.loads(env_out.stdout)}
    cmd = [str(python), str(DRIVER), tool, "--url", url, "--requests", str(n), "--concurrency", str(c)]
    cmd += ["--work", str(folder)]
    if cookbook is not None:
        cmd += ["--script", str(cookbook)]
    m = measure(cmd, env=env)
    try:
        data = m.json()
    except (RuntimeError, ValueError):
        data = {"ok": 0, "elapsed_s": m.wall_s, "failure": f"exit {m.returncode}: {m.stderr[-1500:]}"}
    m.extra.update(data)
    m.extra["answers"] = int(data.get("ok", 0))
    m.extra["rate"] = m.extra["answers"] / data["elapsed_s"] if data.get("elapsed_s") else 0.0
    shutil.rmtree(folder, ignore_errors=True)
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tools", nargs="+", default=["batchrun", "curator", "cookbook"], choices=list(LABELS))
    parser.add_argument(
        "--cookbook", type=Path, default=None, help="a copy of openai-cookbook api_request_parallel_processor.py"
    )
    args = parser.parse_args()
    tools = list(args.tools)
    if "cookbook" in tools and args.cookbook is None:
        note("cookbook: skipped (no --cookbook PATH: its code is not in this repository)")
        tools.remove("cookbook")
    cookbook = args.cookbook.resolve() if args.cookbook else None
    python = rivals_python() if {"curator", "cookbook"} & set(tools) else None
    work = tmpdir("rivals")
    source = write_input(work / "input.parquet", args.requests)
    n = args.requests
    results: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    with nginx() as server:
        note(f"nginx on {server.url}; {n} requests per tool; tools {tools}")
        for c in args.concurrency:
            measured: dict[str, list[Measured]] = {t: [] for t in tools}
            for rep in range(args.repeat):
                for tool in tools:
                    if tool == "batchrun":
                        m = run_batchrun(work, source, server.url, n, c, rep)
                    else:
                        assert python is not None
                        m = run_rival(python, tool, server.url, n, c, work, cookbook if tool == "cookbook" else None)
                    measured[tool].append(m)
                    note(
                        f"c={c} {tool:<9} #{rep + 1}: {m.extra['answers']:>6} answers  {m.extra['rate']:7.0f} req/s  "
                        f"wall {m.wall_s:6.1f}s  cpu {m.cpu_s:6.1f}s  rss {m.peak_rss_mib:5.0f} MiB"
                        + (f"  FAILED: {m.extra['failure'][-300:]}" if "failure" in m.extra else "")
                    )
            complete = {t: [m for m in ms if m.extra["answers"] == n] for t, ms in measured.items()}
            rate = {t: statistics.median(m.extra["rate"] for m in ms) for t, ms in complete.items() if ms}
            wall = {t: statistics.median(n / m.wall_s for m in ms) for t, ms in complete.items() if ms}
            for tool, ms in measured.items():
                good = complete[tool]
                answers = " / ".join(f"{m.extra['answers']:,}" for m in ms)
                rates = [m.extra["rate"] for m in good]
                spread = f"{min(rates):,.0f}-{max(rates):,.0f}" if len(rates) > 1 else ""
                versus = vs_wall = ""
                if tool != "batchrun" and tool in rate and "batchrun" in rate:
                    ratio = rate["batchrun"] / rate[tool]
                    versus = f"{ratio:.1f}x" + (f" ({'holds' if ratio >= TARGET else 'below 4x'})" if c == 256 else "")
                    vs_wall = f"{wall['batchrun'] / wall[tool]:.1f}x"
                rows.append(
                    [
                        LABELS[tool],
                        c,
                        answers,
                        rate.get(tool, "incomplete"),
                        spread,
                        wall.get(tool, ""),
                        statistics.median(m.cpu_s for m in ms) / n * 1e6,
                        max(m.peak_rss_mib for m in ms),
                        versus,
                        vs_wall,
                    ]
                )
                results.append(
                    {
                        "tool": tool,
                        "concurrency": c,
                        "requests": n,
                        "runs": [{k: v for k, v in m.__dict__.items() if k not in ("stdout", "stderr")} for m in ms],
                        "failures": [m.stderr[-3000:] for m in ms if m.extra["answers"] != n],
                    }
                )
    shutil.rmtree(work, ignore_errors=True)
    versions = sorted({str(m["extra"].get("version")) for r in results for m in r["runs"] if m["extra"].get("version")})
    print(f"\n### Rivals: nginx, zero latency, {n:,} requests ({machine()})\n")
    if versions:
        print(f"Rivals: {'; '.join(versions)}.\n")
    print(
        table(
            [
                "tool",
                "conc.",
                "answers",
                "req/s",
                "range",
                "wall req/s",
                "CPU µs/req",
                "peak RSS MiB",
                "batchrun / this (req/s)",
                "batchrun / this (wall)",
            ],
            rows,
        )
    )
    print(f"\nraw results: {save('rivals', results)}")


if __name__ == "__main__":
    main()
