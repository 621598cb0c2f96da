"""Overhead: zero-latency nginx, 20,000 POSTs, concurrency 64 and 256.

    .venv/bin/python bench/overhead.py [--requests 20000] [--concurrency 64 256] [--repeat 1] [--compare DIR ...]

Each client runs in a process of its own; CPU time and peak RSS are that process's own (wait4),
imports and start-up included. The bare loops time their send loop; batchrun's req/s is the one
its summary line prints (from the start of run_job: reading the input, planning and the final
manifest flush included, interpreter start-up and imports not). "wall req/s" divides by the whole
process's wall time, for every client alike.

The slow loops (httpx's default transport at pool = concurrency and at pool 8, httpx2) send
``--slow-requests`` (5,000) to keep the whole run near 5 minutes; their rates are steady.

Issue 7's target: batchrun >= 0.8x the best bare httpx loop at concurrency 256. "best httpx" is the
fastest ``httpx.AsyncClient`` loop; "httpx.Request direct" (an ``httpx.Request`` handed straight to
``AiohttpTransport``) is what batchrun's ``Sender`` does, so it is the stricter yardstick.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

from common import (
    Measured,
    add_compare_argument,
    bare_client,
    batchrun_run,
    has_module,
    machine,
    note,
    save,
    table,
    tmpdir,
    write_input,
    write_job,
)
from servers import nginx

HTTPX_LOOPS = ("httpx", "httpx-pool8", "httpx-aiohttp", "httpx2")
DIRECT = "httpx-aiohttp-direct"  # what batchrun's Sender does: httpx.Request straight to the transport
SLOW = ("httpx", "httpx-pool8", "httpx2")  # < 1,000 req/s here: fewer requests keep the run short


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument(
        "--slow-requests", type=int, default=5_000, help="for the slow loops (httpx default transport, pool 8, httpx2)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--clients", nargs="+", default=None, help="a subset (batchrun included by default)")
    add_compare_argument(parser)
    args = parser.parse_args()

    kinds = ["aiohttp", "httpx", "httpx-pool8", "httpx-aiohttp", "httpx-aiohttp-direct", "httpx2"]
    kinds += ["batchrun"]
    if not has_module("httpx_aiohttp"):
        for kind in ("httpx-aiohttp", "httpx-aiohttp-direct"):
            kinds.remove(kind)
    if not has_module("httpx2"):
        kinds.remove("httpx2")
    if args.clients:
        kinds = [k for k in kinds if k in args.clients]
    kinds += [f"batchrun@{Path(d).resolve()}" for d in args.compare]
    work = tmpdir("overhead")
    source = write_input(work / "input.parquet", args.requests)
    results: list[dict[str, object]] = []
    rows: list[list[object]] = []
    with nginx() as server:
        note(f"nginx on {server.url}; {args.requests} requests per client")
        for c in args.concurrency:
            measured: dict[str, list[Measured]] = {k: [] for k in kinds}
            for rep in range(args.repeat):
                for kind in kinds:
                    if kind == "batchrun" or kind.startswith("batchrun@"):
                        checkout = Path(kind[9:]) if "@" in kind else None
                        folder = work / f"job-c{c}-{rep}-{len(kind)}"
                        job = write_job(folder, source, server.url, concurrency=c)
                        m = batchrun_run(job, checkout)
                        if m.returncode != 0 or "rate" not in m.extra:
                            raise SystemExit(f"batchrun failed ({m.returncode}): {m.stdout}{m.stderr[-3000:]}")
                        m.extra["requests"] = args.requests
                        if rep == 0:
                            # the fixed cost: the same job again, everything done, nothing sent
                            again = batchrun_run(job, checkout)
                            m.extra["nothing_to_do_cpu_s"] = again.cpu_s
                            m.extra["nothing_to_do_wall_s"] = again.wall_s
                            m.extra["nothing_to_do_rss"] = again.peak_rss_mib
                        shutil.rmtree(folder / "out", ignore_errors=True)
                    else:
                        n = args.slow_requests if kind in SLOW else args.requests
                        m = bare_client(kind, server.url, n, c)
                    measured[kind].append(m)
                    note(
                        f"c={c} {kind:<14} {m.extra['rate']:8.0f} req/s  cpu {m.cpu_s:6.2f}s  "
                        f"rss {m.peak_rss_mib:5.0f} MiB  errors {m.extra.get('errors')}"
                    )
            rate = {k: statistics.median(m.extra["rate"] for m in ms) for k, ms in measured.items()}
            best_httpx = max((k for k in kinds if k in HTTPX_LOOPS), key=lambda k: rate[k], default=kinds[0])
            for kind, ms in measured.items():
                n = ms[0].extra["requests"]
                rates = [m.extra["rate"] for m in ms]
                spread = f"{min(rates):,.0f}-{max(rates):,.0f}" if len(rates) > 1 else ""
                cpu_us = statistics.median(m.cpu_s for m in ms) / n * 1e6
                rss = max(m.peak_rss_mib for m in ms)
                wall_rate = statistics.median(n / m.wall_s for m in ms)
                label = {
                    "httpx-aiohttp-direct": "bare httpx.Request -> AiohttpTransport, no AsyncClient.send",
                    "batchrun": "batchrun run (full CLI)",
                }.get(kind, f"batchrun run, {kind[9:]}" if kind.startswith("batchrun@") else f"bare {kind}")
                if kind == best_httpx:
                    label += " (best httpx)"
                rows.append(
                    [
                        label,
                        c,
                        n,
                        rate[kind],
                        spread,
                        f"{rate[kind] / rate[best_httpx]:.2f}x",
                        f"{rate[kind] / rate['aiohttp']:.2f}x" if "aiohttp" in rate else "",
                        f"{rate[kind] / rate[DIRECT]:.2f}x" if DIRECT in rate else "",
                        cpu_us,
                        rss,
                        wall_rate,
                        sum(int(m.extra.get("errors", 0)) for m in ms),
                    ]
                )
                if kind.startswith("batchrun"):
                    fixed = ms[0].extra
                    rows.append(
                        [
                            "batchrun run, nothing to do (fixed cost)",
                            c,
                            n,
                            "",
                            "",
                            "",
                            "",
                            "",
                            f"{fixed['nothing_to_do_cpu_s']:.2f} s CPU total",
                            fixed["nothing_to_do_rss"],
                            f"{fixed['nothing_to_do_wall_s']:.2f} s wall",
                            "",
                        ]
                    )
                results.append(
                    {"client": kind, "concurrency": c, "best_httpx": best_httpx, "runs": [m.__dict__ for m in ms]}
                )
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n### Overhead: nginx, zero latency ({machine()})\n")
    print(
        table(
            [
                "client",
                "conc.",
                "requests",
                "req/s",
                "range",
                "vs best httpx",
                "vs aiohttp",
                "vs httpx.Request direct",
                "CPU µs/req",
                "peak RSS MiB",
                "wall req/s",
                "errors",
            ],
            rows,
        )
    )
    print(f"\nraw results: {save('overhead', results)}")


if __name__ == "__main__":
    main()
