"""The report as a person sees it: opened in headless Chromium (Debian's ``chromium``), the charts
drawn, no network request, no console error; and a page that never runs what a model wrote."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from browser import chromium, visit
from helpers import JobWriter, questions

from batchrun.cli import main
from batchrun.runner import run_job
from batchrun.simulator import FaultPlan, Trigger, create_app
from batchrun.spec import load_job

pytest.importorskip("vl_convert")
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium)"),
]

CHARTS = """Array.from(document.querySelectorAll('.chart svg')).map(s => {
  const box = s.getBoundingClientRect();
  return [Math.round(box.width), Math.round(box.height), s.querySelectorAll('path, rect').length];
})"""

PAYLOADS = [
    "<script>window.__xss = 1; alert(1)</script>",
    '<img src=x onerror="window.__xss = 2; alert(2)">',
    '<a href="javascript:alert(3)">click me</a>',
    "</script><script>window.__xss = 4</script>",
    "<svg onload=alert(5)><title>t</title></svg>",
    "{{ 7*7 }} &amp; &lt;b&gt;",
]


async def report_of(job_path: Path, sim: object, tmp_path: Path) -> Path:
    await run_job(load_job(job_path), transport=httpx.ASGITransport(app=sim), quiet=True)  # type: ignore[arg-type]
    assert main(["report", str(tmp_path / "out"), "-o", str(tmp_path / "page" / "report.html")]) == 0
    return tmp_path / "page" / "report.html"


async def test_charts_render_with_no_network_and_no_console_error(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app(FaultPlan(triggers=[Trigger("what is 3?", "400"), Trigger("what is 4?", "400")]))
    job = write_job(rows=questions(60), top='id_column = "id"', limits="concurrency = 4\nmax_attempts = 1")
    page = await report_of(job, sim, tmp_path)
    seen = visit(
        page,
        {
            "charts": CHARTS,
            "rows": "document.querySelectorAll('#answers-body tr').length",
            "info": "document.getElementById('answers-info').textContent",
            "searched": """(() => { const s = document.getElementById('answers-search');
                s.value = 'what is 42?'; s.dispatchEvent(new Event('input'));
                return Array.from(document.querySelectorAll('#answers-body tr td')).map(td => td.textContent); })()""",
            "errors_table": "Array.from(document.querySelectorAll('#errors td')).map(td => td.textContent)",
        },
    )
    assert seen.requests == [page.resolve().as_uri()]
    assert seen.errors == [] and seen.dialogs == []
    charts = seen.values["charts"]
    assert len(charts) == 3  # throughput, latency, errors over time (no streaming: no TTFT)
    for width, height, marks in charts:
        assert width > 200 and height > 100 and marks > 3
    assert seen.values["rows"] == 25 and seen.values["info"] == "60 of 60 rows, page 1 of 3"
    assert seen.values["searched"] == ["q42", "0", "what is 42?", "[m] answer to: what is 42?"]
    assert seen.values["errors_table"][:3] == ["permanent", "400", "2"]
    screenshot = tmp_path / "report.png"
    screenshot.write_bytes(seen.screenshot)
    assert seen.screenshot.startswith(b"\x89PNG\r\n\x1a\n") and len(seen.screenshot) > 20_000


async def test_markup_from_the_model_and_the_table_is_shown_as_text(write_job: JobWriter, tmp_path: Path) -> None:
    rows = [{"id": payload, "question": f"say {payload}"} for payload in PAYLOADS]
    rows.append({"id": "<b>bad</b>", "question": "fail <img src=x onerror=alert(6)>"})
    sim = create_app(FaultPlan(triggers=[Trigger("fail <img", "400")]))
    job = write_job(rows=rows, top='id_column = "id"', limits="concurrency = 2\nmax_attempts = 1")
    page = await report_of(job, sim, tmp_path)
    seen = visit(
        page,
        {
            "xss": "window.__xss === undefined ? null : window.__xss",
            "scripts": "document.scripts.length",
            "images": "document.images.length",
            "links": "document.querySelectorAll('a').length",
            "injected": "document.querySelectorAll('td *, figcaption *').length",  # cells hold text only
            "cells": "Array.from(document.querySelectorAll('#answers-body td')).map(td => td.textContent)",
            "text": "document.body.innerText",
        },
    )
    assert seen.values["xss"] is None and seen.dialogs == []
    assert seen.errors == []  # not even a CSP refusal: nothing was tried
    assert seen.values["scripts"] == 2  # the JSON block and the page's own script
    assert seen.values["images"] == 0 and seen.values["links"] == 0 and seen.values["injected"] == 0
    cells = seen.values["cells"]
    for payload in PAYLOADS:
        assert payload in cells  # the row id, as written
        assert f"say {payload}" in cells  # the prompt
        assert f"[m] answer to: say {payload}" in cells  # the simulator's answer
    assert "<b>bad</b>" in seen.values["text"]  # the failed row's id in the error table, as text
    assert seen.requests == [page.resolve().as_uri()]


async def test_image_contact_sheet_groups_samples_and_links_full_images(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    rows = [{"id": i, "prompt": f"a cat, style {i}"} for i in range(6)]
    job = write_job(
        rows=rows,
        preset="hf-text-to-image",
        endpoint='base_url = "http://sim.test/"\nmodel = "black-forest-labs/FLUX.1-dev"',
        request='inputs = "{{ prompt }}"\nparameters = { width = 48, height = 32 }\nsamples = 3',
        top='id_column = "id"',
    )
    page = await report_of(job, create_app(), tmp_path)
    seen = visit(
        page,
        {
            "groups": "Array.from(document.querySelectorAll('.group')).map(g => g.querySelectorAll('img').length)",
            "loaded": "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)",
            "captions": "Array.from(document.querySelectorAll('figcaption')).map(c => c.textContent)",
            "heads": "Array.from(document.querySelectorAll('.group p')).map(p => p.textContent)",
        },
    )
    assert seen.errors == [] and seen.values["loaded"] is True
    assert seen.values["groups"] == [3] * 6
    assert seen.values["heads"][2] == "row 2: a cat, style 2"
    assert re.fullmatch(r"sample 0 · seed \d+ · \S+", seen.values["captions"][0])
    assert all(url.startswith(("file://", "data:image/jpeg;base64,")) for url in seen.requests)
    hrefs = re.findall(r'<a href="([^"]+)">', page.read_text())
    assert len(hrefs) == 18
    assert all((page.parent / href).resolve().is_file() for href in hrefs)


def test_markup_in_endpoint_names_and_error_kinds_stays_text_in_charts(tmp_path: Path) -> None:
    from test_report import fabricate

    out = tmp_path / "out"
    fabricate(out, 20, endpoints=("<img src=x onerror=alert(7)>", "<script>alert(8)</script>"), fail_every=3)
    assert main(["report", str(out)]) == 0
    seen = visit(
        out / "report.html",
        {
            "charts": CHARTS,
            "injected": "document.querySelectorAll('svg img, svg script, td *, th *').length",
            "legends": "Array.from(document.querySelectorAll('.chart svg text')).map(t => t.textContent)",
        },
    )
    assert seen.errors == [] and seen.dialogs == [] and seen.values["injected"] == 0
    assert len(seen.values["charts"]) == 4
    assert "<img src=x onerror=alert(7)>" in seen.values["legends"]
    assert "<script>alert(8)</script>" in seen.values["legends"]
