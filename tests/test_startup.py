"""What a start costs: a chat job with a plain ``{{ column }}`` template plans without importing
the libraries that only some jobs or commands need (each is tens of milliseconds at every start;
aiohttp is for runs that go on the network)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import JobWriter, questions

from batchrun.plan.templates import referenced_names

ONLY_SOMETIMES = ["aiohttp", "jinja2", "tenacity", "PIL", "jmespath", "numpy", "starlette", "uvicorn"]


def test_planning_a_plain_job_imports_only_what_it_needs(write_job: JobWriter) -> None:
    job = write_job(rows=questions(3))
    script = f"""
import json, sys
from batchrun.cli import build_parser
from batchrun.plan.planner import Planner
from batchrun.spec import load_job
build_parser().parse_args(["presets"])
list(Planner(load_job({str(job)!r})).plan([{{"id": "q0", "question": "what?"}}]))
print(json.dumps(sorted(name for name in {ONLY_SOMETIMES!r} if name in sys.modules)))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=Path.cwd())
    assert json.loads(proc.stdout) == []


@pytest.mark.parametrize(
    "template",
    ["{{ question }}", "{{question}}", " {{ question }} ", "{{ row }}", "{{ true }}", "{{ range }}", "{{ a.b }}"],
)
def test_a_plain_column_is_found_without_jinja_as_jinja_finds_it(template: str) -> None:
    import jinja2
    import jinja2.meta

    expected = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template))
    assert referenced_names(template) == ({"request": expected} if expected else {})
