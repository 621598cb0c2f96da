"""What every benchmark shares: generated jobs, measured child processes, markdown tables."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clients import MODEL, PARAMS, prompt
from servers import BENCH, PYTHON, ROOT

SUMMARY = re.compile(r"finished (\d+) requests \((\d+) ok, (\d+) failed\) in ([\d.]+)s, ([\d.]+)/s")


# ---------------------------------------------------------------- jobs


def write_input(path: Path, rows: int, start: int = 0) -> Path:
    """A Parquet input of ``rows`` short prompts (ids ``start..``), written in slices so that
    10M rows never sit in this process as Python strings."""
    import polars as pl

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = pl.int_range(start, start + rows, eager=True, dtype=pl.Int64).alias("id")
    frame = pl.DataFrame(ids).with_columns(
        question=pl.format(
            "Question {}: what is {} plus {}? Answer with one number.",
            pl.col("id"),
            pl.col("id") % 97,
            pl.col("id") % 89,
        )
    )
    assert frame["question"][0] == prompt(start)
    tmp = path.with_suffix(".tmp")
    frame.write_parquet(tmp, row_group_size=100_000)
    tmp.rename(path)
    return path


def write_job(
    folder: Path,
    input_path: Path,
    base_url: str,
    *,
    concurrency: int,
    requests_per_minute: float | None = 6_000_000,
    name: str = "bench",
    max_attempts: int = 6,
) -> Path:
    """A chat job like a user's: openai-compatible preset, a prompt template, an id column,
    the limiter armed (but far above what the machine can send unless asked otherwise),
    retries armed, the manifest written with the default flush settings."""
    folder.mkdir(parents=True, exist_ok=True)
    params = ", ".join(f"{k} = {json.dumps(v)}" for k, v in PARAMS.items())
    rpm = f"requests_per_minute = {requests_per_minute}\n" if requests_per_minute else ""
    text = f"""name = "{name}"
input = "{input_path}"
id_column = "id"
output = "{folder / "out"}"

[endpoint]
preset = "openai-compatible"
base_url = "{base_url}"
model = "{MODEL}"

[request]
prompt = "{{{{ question }}}}"
params = {{ {params} }}

[limits]
concurrency = {concurrency}
{rpm}max_attempts = {max_attempts}
timeout_s = 120
"""
    job = folder / "job.toml"
    job.write_text(text)
    return job


def tmpdir(prefix: str) -> Path:
    base = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir()))
    return Path(tempfile.mkdtemp(prefix=f"batchrun-bench-{prefix}-", dir=base))


# ---------------------------------------------------------------- measured processes


@dataclass
class Measured:
    """One child process: wall time, CPU time (user + sys) and peak RSS, from ``wait4``."""

    cmd: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    peak_rss_mib: float
    stdout: str
    stderr: str
    extra: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{"):
                return json.loads(line)  # type: ignore[no-any-return]
        raise RuntimeError(f"no JSON line from {self.cmd}: {self.stdout!r} {self.stderr[-2000:]!r}")


GNU_TIME = "/usr/bin/time"


def measure(
    cmd: list[str],
    *,
    cwd: Path = ROOT,
    stop_after: float | None = None,
    stop_when: Any = None,
    sig: int = signal.SIGINT,
    env: dict[str, str] | None = None,
) -> Measured:
    """Run ``cmd`` to its end (or send ``sig`` after ``stop_after`` seconds, or once
    ``stop_when()`` is true) and measure the process alone.

    It runs under GNU time (``/usr/bin/time``, a 2 MiB process), which reads the child's rusage
    with wait4. Spawning it from this process directly would not do: on Linux a child's
    ``ru_maxrss`` starts at its parent's RSS at fork (exec keeps the high-water mark of the
    forked copy), and this process holds polars. The servers are other children: never counted.
    """
    import psutil

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as rus:
        t0 = time.perf_counter()
        full = [GNU_TIME, "-f", "%e %U %S %M", "-o", rus.name, *cmd]
        proc = subprocess.Popen(full, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        stopper = None
        done = threading.Event()
        if stop_after is not None or stop_when is not None:

            def watch() -> None:
                deadline = t0 + stop_after if stop_after is not None else float("inf")
                while not done.wait(0.02):
                    if time.perf_counter() >= deadline or (stop_when is not None and stop_when()):
                        try:  # GNU time ignores SIGINT while it waits: signal the command itself
                            for child in psutil.Process(proc.pid).children():
                                child.send_signal(sig)
                        except psutil.Error:
                            pass
                        return

            stopper = threading.Thread(target=watch, daemon=True)
            stopper.start()
        proc.wait()
        wall = time.perf_counter() - t0
        done.set()
        if stopper is not None:
            stopper.join()
        out.seek(0)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        lines = Path(rus.name).read_text().strip().splitlines()
        # GNU time prefixes "Command exited with non-zero status N" / "Command terminated by signal"
        _elapsed, user, system, maxrss = lines[-1].split()
        return Measured(
            cmd=cmd,
            returncode=proc.returncode,
            wall_s=wall,
            cpu_s=float(user) + float(system),
            user_s=float(user),
            sys_s=float(system),
            peak_rss_mib=int(maxrss) / 1024,
            stdout=out.read().decode(errors="replace"),
            stderr=stderr,
        )


def bare_client(kind: str, url: str, requests: int, concurrency: int) -> Measured:
    cmd = [PYTHON, str(BENCH / "clients.py"), kind, "--url", url]
    cmd += ["--requests", str(requests), "--concurrency", str(concurrency)]
    m = measure(cmd)
    if m.returncode != 0:
        raise RuntimeError(f"{kind} failed ({m.returncode}): {m.stderr[-2000:]}")
    data = m.json()
    m.extra.update(data)
    m.extra["rate"] = data["ok"] / data["elapsed_s"]
    return m


def batchrun_run(job: Path, source: Path | None = None, **kwargs: Any) -> Measured:
    """``python -m batchrun run job.toml --quiet``, the real CLI; ``source``: another checkout's
    batchrun (say, the commit before a change), to compare the two in one session."""
    if source is not None:
        kwargs.update(cwd=source, env={**os.environ, "PYTHONPATH": str(source)})
    m = measure([PYTHON, "-m", "batchrun", "run", str(job), "--quiet"], **kwargs)
    match = SUMMARY.search(m.stdout)
    if match:
        _done, ok, failed, elapsed, rate = match.groups()
        m.extra.update(ok=int(ok), errors=int(failed), elapsed_s=float(elapsed), rate=float(rate))
    return m


def add_compare_argument(parser: argparse.ArgumentParser) -> None:
    """``--compare DIR ...``: also run the batchrun of other checkouts, side by side (before/after)."""
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="DIR",
        help="also run the batchrun of these checkouts (before/after)",
    )


def has_module(name: str) -> bool:
    r = subprocess.run([PYTHON, "-c", f"import {name}"], capture_output=True)
    return r.returncode == 0


# ---------------------------------------------------------------- output


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores ({cpu}); "
        f"Python {platform.python_version()}; {platform.system()} {platform.release()}"
    )


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save(name: str, data: Any) -> Path:
    folder = BENCH / "results"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_client(kind: str, url: str, requests: int, concurrency: int, work: Path, **job: Any) -> Measured:
    """One bare loop, or a full ``batchrun run`` of a fresh job of ``requests`` rows; ``extra['rate']``.
    ``batchrun@DIR`` runs the batchrun found in DIR (see ``batchrun_run``)."""
    if kind != "batchrun" and not kind.startswith("batchrun@"):
        return bare_client(kind, url, requests, concurrency)
    checkout = Path(kind.split("@", 1)[1]) if "@" in kind else None
    source = write_input(work / f"input-{requests}.parquet", requests)
    folder = Path(tempfile.mkdtemp(prefix=f"job-c{concurrency}-", dir=work))
    m = batchrun_run(write_job(folder, source, url, concurrency=concurrency, **job), checkout)
    if m.returncode != 0 or "rate" not in m.extra:
        raise RuntimeError(f"batchrun failed ({m.returncode}): {m.stdout}{m.stderr[-3000:]}")
    m.extra["requests"] = requests
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return m
