"""The bare client loops, one per process: ``python bench/clients.py KIND --url U --requests N --concurrency C``.

Every loop does what batchrun must do at the least: build the same canonical JSON chat body that
batchrun sends for the benchmark job (see ``body()``), POST it with the same headers, read the
answer and take ``choices[0].message.content`` from it. ``concurrency`` workers share one client
and pull request numbers from one counter: no queue, no per-request task.

Prints one JSON line: {"kind", "requests", "ok", "errors", "elapsed_s", "loop_cpu_s"}.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

MODEL = "bench-model"
PARAMS = {"max_tokens": 16, "temperature": 0.0}
HEADERS = {"User-Agent": "bench/0.1", "Content-Type": "application/json", "Accept": "application/json"}
KINDS = ("aiohttp", "httpx", "httpx-pool8", "httpx-aiohttp", "httpx2", "httpx-aiohttp-direct")


def prompt(i: int) -> str:
    """The prompt of input row ``i`` (bench/jobs.py writes the same into the input table)."""
    return f"Question {i}: what is {i % 97} plus {i % 89}? Answer with one number."


def body(i: int) -> bytes:
    """Exactly what batchrun's planner sends for row ``i`` of the benchmark job (canonical JSON)."""
    value = {"model": MODEL, **PARAMS, "messages": [{"role": "user", "content": prompt(i)}]}
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def answer(content: bytes) -> str:
    data = json.loads(content)
    return str(data["choices"][0]["message"]["content"])


Send = Callable[[bytes], Awaitable[bool]]


async def drive(send: Send, n: int, concurrency: int) -> tuple[int, int]:
    counter = itertools.count()
    ok = errors = 0

    async def worker() -> None:
        nonlocal ok, errors
        for i in counter:
            if i >= n:
                return
            try:
                if await send(body(i)):
                    ok += 1
                else:
                    errors += 1
            except Exception as exc:  # a benchmark counts failures, it does not stop on them
                errors += 1
                if errors <= 3:
                    print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, errors


async def run(kind: str, url: str, n: int, concurrency: int) -> dict[str, Any]:
    endpoint = url.rstrip("/") + "/v1/chat/completions"
    if kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), headers=HEADERS)

        async def send(data: bytes) -> bool:
            async with session.post(endpoint, data=data) as r:
                content = await r.read()
                if r.status != 200:
                    return False
            answer(content)
            return True

        close: Callable[[], Awaitable[None]] = session.close
    elif kind in ("httpx", "httpx-pool8", "httpx-aiohttp", "httpx2"):
        if kind == "httpx2":
            import httpx2 as httpx  # type: ignore[import-not-found]
        else:
            import httpx
        pool = 8 if kind == "httpx-pool8" else concurrency
        transport = None
        if kind == "httpx-aiohttp":
            import aiohttp
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(
                client=aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
            )
        client = httpx.AsyncClient(
            headers=HEADERS,
            timeout=httpx.Timeout(120, connect=30),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            transport=transport,
        )

        async def send(data: bytes) -> bool:
            r = await client.post(endpoint, content=data)
            if r.status_code != 200:
                return False
            answer(r.content)
            return True

        close = client.aclose
    elif kind == "httpx-aiohttp-direct":
        # httpx types and transport seam, without AsyncClient.send (URL merge, cookies, auth, hooks):
        # one httpx.Request per call handed straight to the transport
        import aiohttp
        import httpx
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(client=aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)))
        url = httpx.URL(endpoint)
        headers = list(httpx.Headers(HEADERS).raw)
        timeout = {"connect": 30.0, "read": 120.0, "write": 120.0, "pool": 120.0}

        async def send(data: bytes) -> bool:
            request = httpx.Request("POST", url, headers=headers, content=data, extensions={"timeout": timeout})
            r = await transport.handle_async_request(request)
            try:
                content = await r.aread()
            finally:
                await r.aclose()
            if r.status_code != 200:
                return False
            answer(content)
            return True

        close = transport.aclose
    else:
        raise SystemExit(f"unknown client {kind!r}; known: {', '.join(KINDS)}")
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        ok, errors = await drive(send, n, concurrency)
    finally:
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await close()
    return {"kind": kind, "requests": n, "ok": ok, "errors": errors, "elapsed_s": elapsed, "loop_cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    result = asyncio.run(run(args.kind, args.url, args.requests, args.concurrency))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
