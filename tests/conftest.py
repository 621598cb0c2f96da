"""Shared fixtures: the asyncio backend (aiolimiter is asyncio-only), a scripted endpoint,
job files written into ``tmp_path``, and an environment without stray tokens."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    networks = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NO_PROXY", "no_proxy")
    proxies = tuple(f"{s}_proxy" for s in ("http", "https", "all")) + tuple(
        f"{s}_PROXY" for s in ("HTTP", "HTTPS", "ALL")
    )
    for name in ("HF_TOKEN", "OPENAI_API_KEY", "TEST_TOKEN", *networks, *proxies):
        monkeypatch.delenv(name, raising=False)


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


@pytest.fixture
def endpoint() -> ScriptedEndpoint:
    return ScriptedEndpoint()


JobWriter = Callable[..., Path]


@pytest.fixture
def write_job(tmp_path: Path) -> JobWriter:
    """Write a job file (and its input table) into tmp_path; returns the job file's path."""

    def write(
        body: str = "",
        *,
        rows: list[dict[str, Any]] | None = None,
        fmt: str = "parquet",
        name: str = "t",
        preset: str = "openai-compatible",
        endpoint: str = 'base_url = "http://llm.test"\nmodel = "m"',
        request: str = 'prompt = "{{ question }}"',
        limits: str = "concurrency = 4",
        top: str = "",
    ) -> Path:
        if rows is not None:
            write_table(tmp_path / f"input.{fmt}", rows)
        text = body or textwrap.dedent(
            f"""
            name = "{name}"
            input = "input.{fmt}"
            output = "out"
            {top}
            [endpoint]
            preset = "{preset}"
            {endpoint}
            [request]
            {request}
            [limits]
            {limits}
            """
        )
        path = tmp_path / "job.toml"
        path.write_text(text)
        return path

    return write


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
