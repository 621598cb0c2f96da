"""Keeping concurrency full: a server with 50 ms latency, concurrency 64 and 256.

    .venv/bin/python bench/concurrency.py [--latency-ms 50] [--concurrency 64 256] [--seconds 5]
                                          [--servers simulator nginx] [--compare DIR ...]

Two servers with the same fixed latency, each in its own process:
  * ``simulator``: batchrun's own simulator (``batchrun simulate --latency 50ms``), as issue 7 asks.
    It is one Python process (uvicorn, h11) on a 2-core machine shared with the client, so it has a
    ceiling of its own; the bare aiohttp loop against it shows that ceiling.
  * ``nginx``: nginx with ``echo_sleep`` (libnginx-mod-http-echo): a server that is never the limit.

ideal = min(concurrency / latency, the zero-latency ceiling of the same client stack at the same
concurrency), the ceiling measured here against zero-latency nginx. Each run sends about
``seconds`` x ideal requests (ramp-up included in the rate). Target (issue 7): >= 90 % of ideal.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common import add_compare_argument, has_module, machine, note, run_client, save, table, tmpdir
from servers import nginx, simulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=5.0, help="about how long each run lasts")
    parser.add_argument("--servers", nargs="+", default=["simulator", "nginx"], choices=["simulator", "nginx"])
    parser.add_argument("--clients", nargs="+", default=["aiohttp", "httpx", "httpx-aiohttp", "batchrun"])
    add_compare_argument(parser)
    args = parser.parse_args()
    kinds = [k for k in args.clients if "aiohttp" not in k or k == "aiohttp" or has_module("httpx_aiohttp")]
    kinds += [f"batchrun@{Path(d).resolve()}" for d in args.compare]
    work = tmpdir("concurrency")
    latency = args.latency_ms / 1000

    ceiling: dict[tuple[str, int], float] = {}
    with nginx() as zero:
        for c in args.concurrency:
            for kind in kinds:
                n = 1500 if kind == "httpx" else 8000 if "aiohttp" in kind else 4000
                ceiling[kind, c] = run_client(kind, zero.url, n, c, work).extra["rate"]
                note(f"zero-latency ceiling c={c} {kind}: {ceiling[kind, c]:.0f} req/s")

    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    for server_kind in args.servers:
        starter = simulator if server_kind == "simulator" else nginx
        with starter(latency_ms=args.latency_ms) as server:
            label = (
                f"batchrun simulator ({args.latency_ms:g} ms)"
                if server_kind == "simulator"
                else f"nginx echo_sleep ({args.latency_ms:g} ms)"
            )
            for c in args.concurrency:
                server_ref = None
                for kind in kinds:
                    ideal = min(c / latency, ceiling[kind, c])
                    n = max(1000, int(ideal * args.seconds))
                    m = run_client(kind, server.url, n, c, work)
                    rate = m.extra["rate"]
                    if kind == "aiohttp":
                        server_ref = rate
                    note(f"{server_kind} c={c} {kind}: {rate:.0f} req/s of ideal {ideal:.0f} ({n} requests)")
                    rows.append(
                        [
                            label,
                            c,
                            "batchrun run (full CLI)"
                            if kind == "batchrun"
                            else f"batchrun run, {kind[9:]}"
                            if kind.startswith("batchrun@")
                            else f"bare {kind}",
                            n,
                            rate,
                            c / latency,
                            ceiling[kind, c],
                            ideal,
                            f"{100 * rate / ideal:.0f} %",
                            f"{rate / server_ref:.2f}x" if server_ref else "",
                            m.cpu_s / n * 1e6,
                            m.peak_rss_mib,
                            m.extra.get("errors", 0),
                        ]
                    )
                    raw.append({"server": server_kind, "concurrency": c, "client": kind, "ideal": ideal, **m.__dict__})
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    print(f"\n### Keeping concurrency full: {args.latency_ms:g} ms latency ({machine()})\n")
    print(
        table(
            [
                "server",
                "conc.",
                "client",
                "requests",
                "req/s",
                "conc./latency",
                "zero-latency ceiling",
                "ideal",
                "% of ideal",
                "vs aiohttp, same server",
                "CPU µs/req",
                "peak RSS MiB",
                "errors",
            ],
            rows,
        )
    )
    print(f"\nraw results: {save('concurrency', raw)}")


if __name__ == "__main__":
    main()
