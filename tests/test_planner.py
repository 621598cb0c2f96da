"""The pure middle: templates, request keys, dedupe and resume filtering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import JobWriter
from hypothesis import given
from hypothesis import strategies as st

from batchrun.errors import TemplateError
from batchrun.models import DoneKeys, sorted_unique
from batchrun.plan.planner import Planner
from batchrun.plan.shape import check_columns
from batchrun.plan.templates import compile_template
from batchrun.spec import load_job


def planner_for(write_job: JobWriter, top: str = "", request: str = 'prompt = "{{ question }}"') -> Planner:
    return Planner(load_job(write_job(top=top, request=request)))


def test_single_expression_keeps_native_types() -> None:
    render = compile_template({"seed": "{{ seed }}", "p": "{{ q }}", "t": "n={{ seed }}"}, "x")
    assert render({"seed": 7, "q": "42"}) == {"seed": 7, "p": "42", "t": "n=7"}


def test_missing_variable_names_the_template() -> None:
    render = compile_template({"a": ["{{ nope }}"]}, "request")
    with pytest.raises(TemplateError, match=r"request\.a\.0.*nope"):
        render({"q": 1})


def test_syntax_error_is_reported_at_compile_time() -> None:
    with pytest.raises(TemplateError, match="syntax error"):
        compile_template("{{ question ", "request.prompt")


def test_every_row_gets_its_own_key_even_identical_ones(write_job: JobWriter) -> None:
    planner = planner_for(write_job)
    reqs = list(planner.plan([{"question": "a"}, {"question": "a"}, {"question": "b"}]))
    assert len({r.key for r in reqs}) == 3
    assert json.loads(reqs[0].body)["messages"] == [{"role": "user", "content": "a"}]


def test_dedupe_sends_identical_requests_once(write_job: JobWriter) -> None:
    planner = planner_for(write_job, top="dedupe = true")
    reqs = list(planner.plan([{"question": "a"}, {"question": "a"}, {"question": "b"}]))
    assert len(reqs) == 2
    assert planner.counts.shared == 1
    # the first occurrence has the same key with or without dedupe, so switching it on reuses results
    plain = list(planner_for(write_job).plan([{"question": "a"}]))
    assert reqs[0].key == plain[0].key


def test_keys_survive_reordering_and_change_with_the_template(write_job: JobWriter) -> None:
    rows = [{"question": str(i)} for i in range(5)]
    a = {r.key for r in planner_for(write_job).plan(rows)}
    b = {r.key for r in planner_for(write_job).plan(list(reversed(rows)))}
    c = {r.key for r in planner_for(write_job, request='prompt = "Q: {{ question }}"').plan(rows)}
    assert a == b
    assert not a & c


def test_done_keys_are_skipped_and_counted(write_job: JobWriter) -> None:
    rows = [{"question": str(i)} for i in range(4)]
    keys = [r.key for r in planner_for(write_job).plan(rows)]
    done = DoneKeys.of(ok=[keys[0], "0123456789abcdef0123456789abcdef"], failed=[keys[1]])
    planner = Planner(load_job(write_job()), done)
    todo = list(planner.plan(rows))
    assert [r.key for r in todo] == keys[2:]
    assert (planner.counts.done, planner.counts.done_failed, planner.counts.todo) == (2, 1, 2)
    assert planner.stale == 1


def test_csv_numbers_become_text_in_chat_messages(write_job: JobWriter) -> None:
    req = next(planner_for(write_job).plan([{"question": 42}]))
    assert json.loads(req.body)["messages"][0]["content"] == "42"


def test_samples_make_one_request_each(write_job: JobWriter) -> None:
    planner = planner_for(write_job, request='prompt = "{{ question }}"\nsamples = 3')
    reqs = list(planner.plan([{"question": "a"}]))
    assert [r.sample for r in reqs] == [0, 1, 2]
    assert len({r.key for r in reqs}) == 3


def test_check_columns_names_the_missing_column(write_job: JobWriter, tmp_path: Path) -> None:
    job = load_job(write_job(request='prompt = "{{ questoin }}"'))
    with pytest.raises(TemplateError, match=r"'questoin'.*columns: id, question"):
        check_columns(job, ["id", "question"])


def test_row_variable_reaches_awkward_column_names(write_job: JobWriter) -> None:
    planner = planner_for(write_job, request="prompt = \"{{ row['my question'] }}\"")
    (req,) = planner.plan([{"my question": "hi there"}])
    assert json.loads(req.body)["messages"][0]["content"] == "hi there"


def test_plain_column_lookup_reports_a_missing_column() -> None:
    render = compile_template({"p": "{{ question }}", "t": "{{ true }}"}, "request")
    assert render({"question": None}) == {"p": None, "t": True}
    with pytest.raises(TemplateError, match=r"request\.p: 'question' is undefined"):
        render({"other": 1})


def test_keys_are_stable_across_versions(write_job: JobWriter) -> None:
    # a manifest written by an earlier run must still match: the key recipe is part of the format
    (req,) = planner_for(write_job).plan([{"question": "what is 1?"}])
    assert req.key == "852b5303745e9ba133c3cb4c8a610614"


def test_done_keys_read_from_a_manifest_are_one_sorted_array() -> None:
    import polars as pl

    done = DoneKeys(failed={9})
    done.add_read(pl.Series([5, 3, 2**64 - 1, 3], dtype=pl.UInt64))  # as read: may repeat
    done.add_read(pl.Series([7, 5], dtype=pl.UInt64))
    assert list(done.read) == [3, 5, 7, 2**64 - 1]
    assert all(k in done for k in (3, 5, 7, 9, 2**64 - 1))
    assert not any(k in done for k in (0, 4, 8, 2**64 - 2))
    assert len(done) == 5


@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=200))
def test_sorted_unique_is_numpys_unique(values: list[int]) -> None:
    import numpy as np

    array = np.array(values, dtype=np.uint64)
    assert sorted_unique(array).tolist() == np.unique(array).tolist() == sorted(set(values))
