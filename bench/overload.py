"""Overload scenarios (issue 15): how much of what is sent is refused, and how much of the server's
capacity the job gets, for each way an endpoint pushes back.

    .venv/bin/python bench/overload.py [--only NAME] [--client /path/to/other/checkout]

Each scenario runs this checkout's simulator (``batchrun simulate`` with the scenario's fault flags) in
a process of its own, and a real ``batchrun run`` against it: this checkout's, or, with ``--client``,
another checkout's (say, the commit before the change) for the "before" column. Counted at the
simulator: requests received, refused (429, 402), ok. Goodput: ok answers per second of the run,
as a fraction of what the server can serve.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import SUMMARY, tmpdir, write_input, write_job
from servers import PYTHON, ROOT, free_port, stop, wait_http


@dataclass(frozen=True)
class Scenario:
    name: str
    flags: list[str]
    rows: int
    concurrency: int
    capacity_per_s: float | None  # what the server can serve; None: no limit (compare with "clean")
    requests_per_minute: float | None = 6_000_000


SCENARIOS = [
    Scenario("rate 20/s, refusals counted", ["--max-rps", "20", "--count-refused"], 400, 64, 20.0),
    Scenario("8 in flight (TGI), 100 ms", ["--max-concurrent", "8", "--latency", "100ms"], 800, 64, 80.0),
    Scenario("queues above 8, 100 ms", ["--queue-after", "8", "--latency", "100ms"], 800, 64, 80.0),
    Scenario(
        "sporadic 2 % 429 + 5 % 500",
        ["--latency", "200ms", "--error-rate", "0.05", "--rate-429", "0.02", "--retry-after", "1s"],
        2000,
        32,
        None,
    ),
    Scenario("clean, 200 ms", ["--latency", "200ms"], 2000, 32, None),
    Scenario("quota openai", ["--quota", "openai"], 200, 16, None),
    Scenario("quota hf", ["--quota", "hf"], 200, 16, None),
]


def run(scenario: Scenario, client: Path) -> dict[str, Any]:
    work = tmpdir("overload")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [PYTHON, "-m", "batchrun", "simulate", "--port", str(port), *scenario.flags],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_http(url + "/health", proc=server)
        source = write_input(work / "input.parquet", scenario.rows)
        job = write_job(
            work / "job",
            source,
            url,
            concurrency=scenario.concurrency,
            requests_per_minute=scenario.requests_per_minute,
            max_attempts=50,
        )
        env = {**os.environ, "PYTHONPATH": str(client)}
        started = time.perf_counter()
        done = subprocess.run(
            [PYTHON, "-m", "batchrun", "run", str(job), "--quiet"],
            cwd=client,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=1800,
        )
        wall = time.perf_counter() - started
        with urllib.request.urlopen(url + "/_sim/stats", timeout=30) as r:
            stats = json.loads(r.read())
    finally:
        stop(server, signal_int())
        shutil.rmtree(work, ignore_errors=True)
    outcomes = stats["by_outcome"]
    total = stats["total"]
    refused = sum(n for k, n in outcomes.items() if k in ("429", "overloaded", "quota_openai", "quota_hf"))
    ok = outcomes.get("ok", 0)
    found = SUMMARY.search(done.stdout)
    elapsed = float(found.group(4)) if found else wall  # the run's own time, without Python's start-up
    goodput = ok / elapsed if elapsed > 0 else 0.0
    return {
        "scenario": scenario.name,
        "exit": done.returncode,
        "sent": total,
        "ok": ok,
        "refused_share": refused / total if total else 0.0,
        "run_s": round(elapsed, 1),
        "goodput_per_s": round(goodput, 1),
        "of_capacity": round(goodput / scenario.capacity_per_s, 2) if scenario.capacity_per_s else None,
        "last_line": (done.stdout.strip().splitlines() or [""])[-1][:160],
    }


def signal_int() -> int:
    import signal

    return signal.SIGINT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="run the scenarios whose name contains this")
    parser.add_argument("--client", type=Path, default=ROOT, help="the checkout whose batchrun runs the job")
    args = parser.parse_args()
    for scenario in SCENARIOS:
        if args.only and args.only not in scenario.name:
            continue
        result = run(scenario, args.client.resolve())
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
