"""What the simulator costs: its own CPU per request, and its zero-latency throughput.

    .venv/bin/python bench/simulator.py [--requests 20000] [--concurrency 64 256] [--latency-ms 0]
                                        [--repeat 3] [--compare DIR ...]

The simulator (``python -m batchrun simulate``) runs in a process of its own; a bare aiohttp loop
(``clients.py aiohttp``) sends it plain, non-streaming chat completions. The simulator's CPU time
(user + system, from ``/proc/<pid>/stat`` via psutil) is read before and after each run, so
"sim CPU µs/req" is the server's cost alone, start-up and warm-up excluded. On the 2-core machine
this is the CPU the client under test loses (issue 7's 50 ms benchmark runs both on the same cores).
``--compare DIR`` also runs the simulator of another checkout (before/after, in one session).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import psutil
from common import add_compare_argument, bare_client, machine, note, save, table
from servers import ROOT, simulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (the table shows each)")
    add_compare_argument(parser)
    args = parser.parse_args()
    sources: list[Path | None] = [None, *(Path(d).resolve() for d in args.compare)]

    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    for _ in range(args.repeat):  # alternate checkouts, so drift on a shared machine hits both alike
        for source in sources:
            label = str(source or ROOT)
            with simulator(latency_ms=args.latency_ms, source=source) as server:
                assert server.proc is not None
                proc = psutil.Process(server.proc.pid)
                bare_client("aiohttp", server.url, 1000, 64)  # warm-up: imports, first connections
                for c in args.concurrency:
                    before = proc.cpu_times()
                    m = bare_client("aiohttp", server.url, args.requests, c)
                    after = proc.cpu_times()
                    sim_cpu = (after.user - before.user) + (after.system - before.system)
                    n = m.extra["ok"] + m.extra["errors"]
                    us = sim_cpu / n * 1e6
                    note(f"{label} c={c}: {m.extra['rate']:.0f} req/s, simulator {us:.0f} µs CPU/req")
                    rows.append([label, c, n, m.extra["rate"], us, m.cpu_s / n * 1e6, m.extra["errors"]])
                    raw.append({"source": label, "concurrency": c, "sim_cpu_s": sim_cpu, **m.__dict__})
    print(f"\n### The simulator's own cost, {args.latency_ms:g} ms latency ({machine()})\n")
    headers = ["simulator", "conc.", "requests", "req/s", "sim CPU µs/req", "client CPU µs/req", "errors"]
    print(table(headers, sorted(rows, key=lambda r: (r[0], r[1]))))
    print(f"\nraw results: {save('simulator', raw)}")


if __name__ == "__main__":
    main()
