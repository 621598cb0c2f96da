"""The real command line in real processes: ``batchrun simulate`` read by curl and by the official
``openai`` SDK (JSON and streamed), stopped by Ctrl-C; and the demo job run twice by ``batchrun run``."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import openai
import polars as pl
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from batchrun.simulator import expected_chat_text

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]
CURL = "/usr/bin/curl"
MODEL = "sim-chat"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Why is the sea salty, in a few words?"},
]
EXPECTED = expected_chat_text(MODEL, MESSAGES)


@dataclass
class SimulatorProcess:
    process: Process
    stdout: BufferedByteReceiveStream
    banner: list[str]
    url: str

    async def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; the exit status and what it printed after the banner."""
        self.process.send_signal(signal.SIGINT)
        rest = b""
        with anyio.fail_after(15):
            with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
                while True:
                    rest += await self.stdout.receive()
            return await self.process.wait(), rest.decode()


@contextlib.asynccontextmanager
async def simulate(*options: str) -> AsyncIterator[SimulatorProcess]:
    """``python -m batchrun simulate --port 0 ...``, up once it has printed its banner; killed if still running
    when the test ends."""
    command = [sys.executable, "-m", "batchrun", "simulate", "--port", "0", *options]
    process = await anyio.open_process(command, cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        stdout = BufferedByteReceiveStream(process.stdout)
        banner: list[str] = []
        with anyio.fail_after(20):
            while not banner or not banner[-1].startswith("Press Ctrl-C"):
                banner.append((await stdout.receive_until(b"\n", 4096)).decode())
        match = re.fullmatch(r"batchrun simulator listening on (http://127\.0\.0\.1:[1-9]\d*)", banner[0])
        assert match is not None, banner
        yield SimulatorProcess(process, stdout, banner, match.group(1))
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.fail_after(10):
            await process.aclose()


def sse_data(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body, JSON-decoded but for ``[DONE]``."""
    events = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def curl(url: str, payload: dict[str, Any]) -> str:
    command = [CURL, "--silent", "--show-error", "--fail", "--no-buffer", "--max-time", "10"]
    command += ["--header", "Content-Type: application/json", "--data", json.dumps(payload), url]
    with anyio.fail_after(15):
        done = await anyio.run_process(command)
    return done.stdout.decode()


@pytest.mark.skipif(shutil.which(CURL) is None, reason="curl is not installed")
async def test_curl_reads_a_completion_and_a_stream() -> None:
    async with simulate("--latency", "1ms") as sim:
        assert any("/v1/chat/completions" in line for line in sim.banner)
        chat_url = f"{sim.url}/v1/chat/completions"

        completion = json.loads(await curl(chat_url, {"model": MODEL, "messages": MESSAGES}))
        assert completion["object"] == "chat.completion" and completion["model"] == MODEL
        assert completion["choices"][0]["message"] == {"role": "assistant", "content": EXPECTED}
        assert completion["choices"][0]["finish_reason"] == "stop"
        assert completion["usage"]["completion_tokens"] == len(EXPECTED.split())

        payload = {"model": MODEL, "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
        events = sse_data(await curl(chat_url, payload))
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        assert "".join(ch["delta"].get("content", "") for c in chunks for ch in c["choices"]) == EXPECTED
        assert [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]] == ["stop"]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == completion["usage"]

        code, tail = await sim.interrupt()
    assert code == 0
    assert "stopped; 2 requests served" in tail


async def test_openai_sdk_reads_a_completion_and_a_stream() -> None:
    async with simulate() as sim:
        client = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="unused", max_retries=0, timeout=10)
        async with client:
            with anyio.fail_after(20):
                completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
                stream = await client.chat.completions.create(
                    model=MODEL,
                    messages=MESSAGES,  # type: ignore[arg-type]
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = [chunk async for chunk in stream]
        assert completion.choices[0].message.content == EXPECTED
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None
        assert completion.usage.completion_tokens == len(EXPECTED.split())

        assert "".join(ch.delta.content or "" for c in chunks for ch in c.choices) == EXPECTED
        assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["stop"]
        usage = [c.usage for c in chunks if c.usage is not None]
        assert usage == [completion.usage]

        code, tail = await sim.interrupt()
    assert code == 0
    assert "stopped; 2 requests served" in tail


async def test_demo_job_runs_end_to_end_and_a_second_run_sends_nothing(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "batchrun", "run", "jobs/demo.toml", "--output", str(out)]
    with anyio.fail_after(90):
        first = await anyio.run_process(command, cwd=REPO, check=False)
    assert first.returncode == 0, first.stderr.decode()
    assert "finished 200 requests (200 ok, 0 failed)" in first.stdout.decode()

    prompts = pl.read_csv(REPO / "jobs" / "demo-prompts.csv")
    assert prompts.height == 200
    expected = {
        row["id"]: expected_chat_text(
            "sim-model",
            [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": row["question"]}],
            64,
        )
        for row in prompts.iter_rows(named=True)
    }
    parts = sorted((out / "manifest").glob("part-*.parquet"))
    manifest = pl.read_parquet(parts)
    assert manifest.height == 200
    assert set(manifest["status"]) == {"ok"}
    assert dict(zip(manifest["row_id"], manifest["response_text"], strict=True)) == expected

    with anyio.fail_after(90):
        second = await anyio.run_process(command, cwd=REPO, check=False)
    assert second.returncode == 0, second.stderr.decode()
    assert "nothing to do: 200/200 done" in second.stdout.decode()
    assert sorted((out / "manifest").glob("part-*.parquet")) == parts
