"""Shared fixtures: the asyncio backend (aiolimiter is asyncio-only), a scripted endpoint,
job files written into ``tmp_path``, and an environment without stray tokens. Helpers that tests
import are in helpers.py."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

# chat_reply, questions and read_manifest stay importable from here until the branches written
# before helpers.py are merged; new tests import helpers
from helpers import JobWriter, ScriptedEndpoint, chat_reply, questions, read_manifest, write_table  # noqa: F401


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


@pytest.fixture
def endpoint() -> ScriptedEndpoint:
    return ScriptedEndpoint()


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
