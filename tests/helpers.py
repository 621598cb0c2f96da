"""Helpers the tests import: a scripted endpoint, chat replies, input tables and manifests.
(Fixtures live in conftest.py, which pytest loads itself; a test imports this module, never conftest.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import polars as pl


def chat_reply(content: str, *, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


class ScriptedEndpoint:
    """An ``httpx.MockTransport`` handler: answers each chat request with ``echo: <last message>``,
    unless ``script`` (consumed in order) or ``by_prompt`` says otherwise. Counts what it got."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.script: list[httpx.Response] = []
        self.by_prompt: dict[str, list[httpx.Response]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        prompt = self.prompt_of(body)
        queue = self.by_prompt.get(prompt)
        if queue:
            return queue.pop(0)
        if self.script:
            return self.script.pop(0)
        if "messages" in body:
            return httpx.Response(200, json=chat_reply(f"echo: {prompt}"))
        return httpx.Response(200, json=[{"generated_text": f"gen: {prompt}"}])

    @staticmethod
    def prompt_of(body: dict[str, Any]) -> str:
        if "messages" in body:
            return str(body["messages"][-1]["content"])
        return str(body.get("inputs"))

    @property
    def count(self) -> int:
        return len(self.requests)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


JobWriter = Callable[..., Path]


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    frame = pl.DataFrame(rows)
    if path.suffix == ".csv":
        frame.write_csv(path)
    elif path.suffix in (".jsonl", ".ndjson"):
        frame.write_ndjson(path)
    else:
        frame.write_parquet(path)


def questions(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "question": f"what is {i}?"} for i in range(start, start + n)]


def read_manifest(out: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted((out / "manifest").glob("part-*.parquet")))


def every_row(out: Path) -> pl.DataFrame:
    """Every row recorded, in every part and every journal (not the latest per key)."""
    from batchrun.sink.manifest import journal_frame, part_files

    frames = [pl.read_parquet(part_files(out))] if part_files(out) else []
    journal = journal_frame(out)
    if journal is not None:
        frames.append(journal)
    return pl.concat(frames) if frames else pl.DataFrame(schema={"request_key": pl.String})


def most_in_one_second(times: list[float]) -> int:
    """The most of ``times`` (seconds) in any sliding window of one second."""
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


async def run_on(sim: Any, write_job: JobWriter, rows: int, limits: str) -> Any:
    """A chat job of ``rows`` questions with ``limits``, run in-process against ``sim`` (an ASGI app)."""
    from batchrun.runner import run_job
    from batchrun.spec import load_job

    job = write_job(
        rows=questions(rows),
        top='id_column = "id"',
        endpoint='base_url = "http://sim.test"\nmodel = "m"',
        limits=limits,
    )
    return await run_job(load_job(job), transport=httpx.ASGITransport(app=sim), quiet=True)


def count_renders(monkeypatch: Any) -> list[int]:
    """The index of every row rendered from now on (``Renderer.render`` spied on), in order."""
    from batchrun.plan.rendering import Renderer

    rendered: list[int] = []
    real = Renderer.render

    def counted(self: Renderer, row: Any, index: int) -> Any:
        rendered.append(index)
        return real(self, row, index)

    monkeypatch.setattr(Renderer, "render", counted)
    return rendered
