"""Exactly what the table says: optional columns, list and struct columns, the model and the body
as sent in the manifest, and requests that tokens_per_minute could never let through."""

from __future__ import annotations

import collections.abc
import json
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from helpers import JobWriter, questions, read_manifest, write_table

from batchrun.cli import main
from batchrun.errors import ExitCode, TemplateError
from batchrun.models import estimated_tokens
from batchrun.plan.bodies import EMPTY_PROMPT
from batchrun.plan.planner import Planner
from batchrun.plan.shape import job_body_template, prompt_reader, prompt_template
from batchrun.plan.templates import compile_template
from batchrun.runner import RunSummary, run_job
from batchrun.simulator import Simulator, create_app, serve_in_thread
from batchrun.spec import load_job

SIM = 'base_url = "http://sim"\nmodel = "m"'
OPTIONAL = "{% if context %}Context: {{ context }}\n{% endif %}Question: {{ question }}"


class Recording(httpx.AsyncBaseTransport):
    """The in-process simulator, noting every body exactly as it went over the wire."""

    def __init__(self, sim: Simulator) -> None:
        self.inner = httpx.ASGITransport(app=sim)
        self.bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(await request.aread())
        return await self.inner.handle_async_request(request)


async def run(job: Path, sim: Simulator) -> RunSummary:
    return await run_job(load_job(job), transport=httpx.ASGITransport(app=sim), quiet=True)


@pytest.fixture(scope="module")
def live() -> collections.abc.Iterator[tuple[Simulator, str]]:
    sim = create_app()
    with serve_in_thread(sim) as url:
        yield sim, url


def refused(job: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]) -> str:
    """Exit 2 through the CLI, one line, nothing sent, no output folder: the line."""
    before = sim.stats.total
    assert main(["run", str(job)]) == ExitCode.BAD_JOB
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("batchrun: error:"), err
    assert sim.stats.total == before
    assert not (job.parent / "out").exists()
    return err[0]


# 1. optional columns: emptiness is judged on the rendered prompt


@pytest.mark.anyio
async def test_null_optional_columns_are_sent_as_the_template_renders_them(
    write_job: JobWriter, tmp_path: Path
) -> None:
    rows = [
        {"id": "a", "question": "why?", "context": None},
        {"id": "b", "question": "how?", "context": "a manual"},
        {"id": "c", "question": "when?", "context": ""},
        {"id": "d", "question": "who?", "context": None},
    ]
    sim = create_app()
    job = write_job(rows=rows, endpoint=SIM, request=f"prompt = '''{OPTIONAL}'''", top='id_column = "id"')
    summary = await run(job, sim)
    assert summary.exit_code == ExitCode.OK
    assert sorted(sim.stats.prompts()) == sorted(
        ["Question: why?", "Context: a manual\nQuestion: how?", "Question: when?", "Question: who?"]
    )
    manifest = read_manifest(tmp_path / "out").sort("row_id")
    assert manifest["row_id"].to_list() == ["a", "b", "c", "d"]
    assert manifest["status"].to_list() == ["ok"] * 4


@pytest.mark.anyio
async def test_a_default_for_a_null_column_is_sent(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app()
    rows = [{"question": None}, {"question": ""}, {"question": "real"}]
    job = write_job(rows=rows, endpoint=SIM, request="""prompt = '{{ question | default("none", true) }}'""")
    assert (await run(job, sim)).exit_code == ExitCode.OK
    assert sorted(sim.stats.prompts()) == ["none", "none", "real"]


@pytest.mark.anyio
async def test_a_null_cell_is_missing_text_and_takes_a_plain_default(write_job: JobWriter, tmp_path: Path) -> None:
    """The issue's own template, ``default("none")`` without ``true``: a null cell is a missing value,
    so it takes the default, and inside text it renders as nothing, never as the word None."""
    sim = create_app()
    rows = [{"q": "a", "context": None}, {"q": "b", "context": "doc"}]
    prompt = """prompt = '{{ q }} [{{ context }}] {{ context | default("none") }}'"""
    job = write_job(rows=rows, endpoint=SIM, request=prompt)
    assert (await run(job, sim)).exit_code == ExitCode.OK
    assert sorted(sim.stats.prompts()) == ["a [] none", "b [doc] doc"]


def test_a_prompt_that_renders_empty_is_refused_before_sending(
    live: tuple[Simulator, str], write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim, url = live
    rows = [
        {"question": "a", "context": None},
        {"question": "b", "context": "x"},
        {"question": "c", "context": "   "},  # whitespace only: empty
        {"question": "d", "context": None},
    ]
    job = write_job(
        rows=rows,
        endpoint=f'base_url = "{url}"\nmodel = "m"',
        request="prompt = '{% if context %}{{ context }}{% endif %}'",
    )
    line = refused(job, sim, capsys)
    assert "3 rows have an empty prompt (column context; the first is row 0)" in line


@pytest.mark.anyio
async def test_skip_drops_only_rows_whose_rendered_prompt_is_empty(write_job: JobWriter, tmp_path: Path) -> None:
    rows = [
        {"id": "a", "question": "", "context": None},  # renders empty: skipped
        {"id": "b", "question": "", "context": "only context"},
        {"id": "c", "question": "q", "context": None},
        {"id": "d", "question": " \n", "context": ""},  # whitespace: skipped
    ]
    sim = create_app()
    job = write_job(
        rows=rows,
        endpoint=SIM,
        request="prompt = '{{ question }}{% if context %} ({{ context }}){% endif %}'",
        top='id_column = "id"\nempty_prompts = "skip"',
    )
    summary = await run(job, sim)
    assert summary.counts.skipped == 2 and sim.stats.total == 2
    assert sorted(sim.stats.prompts()) == [" (only context)", "q"]
    assert sorted(read_manifest(tmp_path / "out")["row_id"]) == ["b", "c"]


@pytest.mark.anyio
async def test_an_empty_prompt_found_mid_run_fails_that_row_unsent(write_job: JobWriter, tmp_path: Path) -> None:
    """``{% if n > 2 %}`` empties a row whose columns are neither null nor blank nor false: the
    check before sending cannot see it, so the row fails for good when it is planned."""
    rows = [{"q": f"q{i}", "n": 5 if i != 3 else 1} for i in range(6)]
    sim = create_app()
    job = write_job(rows=rows, endpoint=SIM, request="prompt = '{% if n > 2 %}{{ q }}{% endif %}'")
    summary = await run(job, sim)
    assert summary.exit_code == ExitCode.FAILED_ROWS
    assert sim.stats.total == 5 and "q3" not in sim.stats.prompts()
    failed = read_manifest(tmp_path / "out").filter(pl.col("status") == "failed")
    assert failed.select("row_index", "error_kind", "attempts", "error").rows() == [(3, "permanent", 0, EMPTY_PROMPT)]


def test_only_rows_with_a_null_blank_or_false_column_are_rendered_before_sending(write_job: JobWriter) -> None:
    from batchrun.plan.reader import Table

    rows = [{"q": "a", "flag": True}, {"q": "", "flag": True}, {"q": "b", "flag": False}, {"q": None, "flag": True}]
    write_table(Path(write_job()).parent / "input.parquet", rows)
    seen: list[dict[str, Any]] = []

    def renders_empty(row: dict[str, Any]) -> bool:
        seen.append(row)
        return not row["q"]

    stats = Table(str(Path(write_job()).parent / "input.parquet")).inspect(["q", "flag"], renders_empty)
    assert seen == rows[1:]
    assert (stats.empty_prompts, stats.first_empty) == (2, 1)


def test_the_prompt_is_read_from_the_rendered_body_where_the_template_puts_it(write_job: JobWriter) -> None:
    row = {"q": "hello", "s": "sys", "neg": "blurry"}
    cases = [
        ("openai-compatible", 'base_url = "http://x"\nmodel = "m"', 'system = "{{ s }}"\nprompt = "{{ q }}!"'),
        (
            "openai-compatible",
            'base_url = "http://x"\nmodel = "m"',
            'system = "x"\nmessages = [{role = "user", content = "{{ q }}"}, '
            '{role = "assistant", content = "ok"}, {role = "user", content = "{{ s }}"}]',
        ),
        ("hf-text-to-image", 'base_url = "http://x"\nmodel = "sdxl"', 'inputs = "{{ q }}"'),
        ("openai-images", 'base_url = "http://x"\nmodel = "dall-e"', 'prompt = "{{ q }}"'),
        ("hf-serverless", 'base_url = "http://x"\nmodel = "gpt2"', 'inputs = "{{ q }}"'),
    ]
    for preset, endpoint, request in cases:
        path = write_job(preset=preset, endpoint=endpoint + '\napi_key_env = "T"', request=request)
        job = load_job(path, env={"T": "t"})
        body = compile_template(job_body_template(job), "request")(row)
        reader = prompt_reader(job)
        assert reader is not None
        assert reader(body) == compile_template(prompt_template(job), "prompt")(row), preset


@pytest.mark.parametrize(
    "source",
    [
        "{% if context %}Context: {{ context }}\n{% endif %}Q: {{ question }}",
        "{% for i in range(n) %}{{ i }},{% endfor %}{{ lipsum is defined }}",
        "{% set ns = namespace(x=0) %}{% for t in tags %}{% set ns.x = ns.x + 1 %}{% endfor %}{{ ns.x }}",
        "{% macro m(v) %}<{{ v }}>{% endmacro %}{{ m(question) }}",
        "{{ cycler }} {{ question }}",  # a column named like a Jinja global wins, as in render
        "{{ tags | join(', ') }} {{ meta.k }} {{ context | default('none', true) }}",
    ],
)
def test_the_template_renderer_renders_what_jinja_renders(source: str) -> None:
    import jinja2

    from batchrun.plan.templates import _env

    row = {"question": "q?", "context": None, "n": 3, "tags": ["a", "b"], "meta": {"k": 1}, "cycler": "mine"}
    expected = _env().from_string(source).render(row)
    assert compile_template(source, "prompt")(row) == expected
    try:
        _env().from_string(source).render({})
    except TypeError:  # range(undefined): not a template error to Jinja, but one to batchrun (the row fails)
        with pytest.raises(TemplateError, match="template prompt: TypeError"):
            compile_template(source, "prompt")({})
    except jinja2.UndefinedError as exc:
        with pytest.raises(TemplateError, match=f"template prompt: {exc.message}"):
            compile_template(source, "prompt")({})


# 2. list and struct columns


@pytest.mark.anyio
async def test_parquet_list_and_struct_columns_reach_templates(write_job: JobWriter, tmp_path: Path) -> None:
    rows = [
        {"id": "a", "tags": ["red", "round"], "meta": {"source": "wiki", "year": 2001}},
        {"id": "b", "tags": [], "meta": {"source": "book", "year": None}},
        {"id": "c", "tags": ["x"], "meta": None},
    ]
    sim = create_app()
    prompt = "{{ tags | join(',') }} from {{ meta.source if meta else 'nowhere' }}"
    job = write_job(rows=rows, endpoint=SIM, request=f'prompt = "{prompt}"', top='id_column = "id"')
    summary = await run(job, sim)
    assert summary.exit_code == ExitCode.OK
    assert sorted(sim.stats.prompts()) == sorted(["red,round from wiki", " from book", "x from nowhere"])
    assert read_manifest(tmp_path / "out").height == 3


# 3. the manifest records what was sent


@pytest.mark.anyio
async def test_a_templated_model_is_recorded_as_rendered(write_job: JobWriter, tmp_path: Path) -> None:
    rows = [{"id": str(i), "question": f"q{i}", "model": ["alpha", "beta"][i % 2]} for i in range(4)]
    sim = create_app()
    job = write_job(rows=rows, endpoint='base_url = "http://sim"\nmodel = "{{ model }}"', top='id_column = "id"')
    assert (await run(job, sim)).exit_code == ExitCode.OK
    assert sorted(r.model for r in sim.stats.records) == ["alpha", "alpha", "beta", "beta"]
    manifest = read_manifest(tmp_path / "out").sort("row_id")
    assert manifest["model"].to_list() == ["alpha", "beta", "alpha", "beta"]


@pytest.mark.anyio
async def test_keep_request_records_the_body_exactly_as_sent(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "sk-never-in-the-manifest"
    monkeypatch.setenv("TEST_TOKEN", token)
    sim = create_app()
    job = write_job(
        rows=questions(5),
        endpoint='base_url = "http://sim"\nmodel = "m"\napi_key_env = "TEST_TOKEN"\nstream = true',
        request='system = "Be brief."\nprompt = "{{ question }}"\nparams = { max_tokens = 8 }',
        top='id_column = "id"\n[sink]\nkeep_request = true',
    )
    transport = Recording(sim)
    summary = await run_job(load_job(job), transport=transport, quiet=True)
    assert summary.exit_code == ExitCode.OK
    manifest = read_manifest(tmp_path / "out")
    assert sorted(manifest["request_body"].to_list()) == sorted(b.decode() for b in transport.bodies)
    body = json.loads(manifest.filter(pl.col("row_id") == "q3")["request_body"].item())
    assert body["messages"][-1] == {"role": "user", "content": "what is 3?"}
    assert body["stream"] is True and body["max_tokens"] == 8
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes()


@pytest.mark.anyio
async def test_parts_without_the_new_columns_are_still_read(write_job: JobWriter, tmp_path: Path) -> None:
    """A manifest part written before ``request_body`` existed: resume and export read it."""
    sim = create_app()
    job = write_job(rows=questions(4), endpoint=SIM, top='id_column = "id"\n[sink]\nkeep_request = true')
    await run(job, sim)
    for part in (tmp_path / "out" / "manifest").glob("part-*.parquet"):
        pl.read_parquet(part).drop("request_body").write_parquet(part)
    write_table(tmp_path / "input.parquet", questions(6))
    summary = await run(job, sim)
    assert (summary.counts.done, summary.ok, sim.stats.total) == (4, 2, 6)
    parts = sorted((tmp_path / "out" / "manifest").glob("part-*.parquet"))
    manifest = pl.concat([pl.read_parquet(p) for p in parts], how="diagonal")
    assert manifest.filter(pl.col("request_body").is_not_null()).height == 2
    target = tmp_path / "results.parquet"
    assert main(["export", str(job), "--to", str(target)]) == 0
    assert pl.read_parquet(target).filter(pl.col("status") == "ok").height == 6


# 4. a request that tokens_per_minute could never let through


def test_a_first_request_over_tokens_per_minute_is_refused_before_sending(
    live: tuple[Simulator, str], write_job: JobWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    sim, url = live
    job = write_job(
        rows=questions(3),
        endpoint=f'base_url = "{url}"\nmodel = "m"',
        request='prompt = "{{ question }}"\nparams = { max_tokens = 64 }',
        limits="tokens_per_minute = 50",
    )
    line = refused(job, sim, capsys)
    assert "row 0: about 84 tokens (81 bytes / 4 + max_tokens 64)" in line, line
    assert "more than limits.tokens_per_minute = 50: it can never be sent" in line


@pytest.mark.anyio
async def test_a_request_over_tokens_per_minute_found_mid_run_fails_that_row(
    write_job: JobWriter, tmp_path: Path
) -> None:
    rows = questions(5)
    rows[2]["question"] = "long " * 2000  # ~2,500 tokens against a limit of 1,000
    sim = create_app()
    job = write_job(rows=rows, endpoint=SIM, limits="tokens_per_minute = 1000", top='id_column = "id"')
    summary = await run(job, sim)
    assert summary.exit_code == ExitCode.FAILED_ROWS and sim.stats.total == 4
    manifest = read_manifest(tmp_path / "out")
    failed = manifest.filter(pl.col("status") == "failed").row(0, named=True)
    assert (failed["row_id"], failed["error_kind"], failed["attempts"]) == ("q2", "permanent", 0)
    assert "more than limits.tokens_per_minute = 1,000: it can never be sent" in failed["error"]


def test_the_estimate_is_the_one_the_token_budget_charges(write_job: JobWriter) -> None:
    job = load_job(
        write_job(request='prompt = "{{ question }}"\nparams = { max_tokens = 10 }', limits="tokens_per_minute = 60")
    )
    requests = list(Planner(job).plan([{"question": "x" * 40}, {"question": "x" * 400}]))
    assert [estimated_tokens(r.body, 10) > 60 for r in requests] == [False, True]
    assert [r.refused is not None for r in requests] == [False, True]
