"""Credentials are bound to origins the job fixes: a table cannot steer the token (or a request)
to a host the job did not name. Through the CLI, against two simulators on two ports (two origins)."""

from __future__ import annotations

import collections.abc
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from helpers import JobWriter, read_manifest

from batchrun.cli import main
from batchrun.dispatch.client import Sender
from batchrun.errors import ExitCode, PermanentError
from batchrun.origins import OriginError, OriginPolicy, literal_origin, off_limits, parse_origin, policy_for
from batchrun.simulator import Simulator, create_app, serve_in_thread

TOKEN = "sk-origin-test-4f1c9a"


@pytest.fixture(scope="module")
def two() -> collections.abc.Iterator[tuple[tuple[Simulator, str], tuple[Simulator, str]]]:
    a, b = create_app(), create_app()
    with serve_in_thread(a) as url_a, serve_in_thread(b) as url_b:
        yield (a, url_a), (b, url_b)


def host(url: str) -> str:
    return url.removeprefix("http://")


def templated_job(write_job: JobWriter, hosts: list[str], allowed: list[str] | None) -> Path:
    rows = [{"id": f"q{i}", "question": f"what is {i}?", "host": h} for i, h in enumerate(hosts)]
    listed = "" if allowed is None else "allowed_origins = [" + ", ".join(f'"{o}"' for o in allowed) + "]\n"
    return write_job(
        rows=rows,
        top='id_column = "id"',
        endpoint=('url = "http://{{ host }}/v1/chat/completions"\nmodel = "m"\napi_key_env = "TEST_TOKEN"\n' + listed),
    )


def test_a_row_naming_another_origin_is_refused_unsent_and_the_token_never_arrives_there(
    two: Any, write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (a, url_a), (b, url_b) = two
    monkeypatch.setenv("TEST_TOKEN", TOKEN)
    a_before, b_before = a.stats.total, b.stats.total
    hosts = [host(url_a)] * 10
    hosts[4] = hosts[7] = host(url_b)  # the user's case: a row names a port of its own
    path = templated_job(write_job, hosts, [url_a])

    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "refused          2" in out and f"row 4: the origin {url_b} is not one the job allows" in out

    assert main(["run", str(path), "-q"]) == ExitCode.FAILED_ROWS
    assert b.stats.total == b_before  # nothing reached the other origin: no token, no request
    assert a.stats.total - a_before == 8 and all(a.stats.auth_present[a_before:])
    manifest = read_manifest(tmp_path / "out")
    failed = manifest.filter(pl.col("status") == "failed").sort("row_id")
    assert failed["row_id"].to_list() == ["q4", "q7"]
    assert failed["error_kind"].to_list() == ["permanent", "permanent"] and failed["attempts"].to_list() == [0, 0]
    assert all(url_b in e and "allowed_origins" in e for e in failed["error"].to_list())

    # the same job again: those rows failed for good, nothing is sent
    assert main(["run", str(path), "-q"]) == ExitCode.FAILED_ROWS
    assert a.stats.total - a_before == 8 and b.stats.total == b_before

    # the job allows the second origin (the job file alone changes, not the input: the plan index of the
    # earlier runs must not be reused): its rows are new requests, sent there
    path.write_text(
        path.read_text().replace(f'allowed_origins = ["{url_a}"]', f'allowed_origins = ["{url_a}", "{url_b}"]')
    )
    assert main(["run", str(path), "-q"]) == ExitCode.OK
    assert b.stats.total - b_before == 2 and all(b.stats.auth_present[b_before:])
    assert a.stats.total - a_before == 8


def test_a_first_row_naming_another_origin_is_exit_2_before_anything_is_sent(
    two: Any, write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (a, url_a), (b, url_b) = two
    monkeypatch.setenv("TEST_TOKEN", TOKEN)
    before = a.stats.total + b.stats.total
    path = templated_job(write_job, [host(url_b), host(url_a), host(url_a)], [url_a])
    for command in ("plan", "run"):
        assert main([command, str(path)]) == ExitCode.BAD_JOB
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "row 0" in err[0] and url_b in err[0], err
    assert a.stats.total + b.stats.total == before
    assert not (tmp_path / "out" / "manifest").exists()


def test_a_host_from_the_table_without_allowed_origins_is_a_bad_job(
    two: Any, write_job: JobWriter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (a, url_a), _ = two
    monkeypatch.setenv("TEST_TOKEN", TOKEN)
    before = a.stats.total
    path = templated_job(write_job, [host(url_a)], None)
    assert main(["run", str(path)]) == ExitCode.BAD_JOB
    err = capsys.readouterr().err
    assert "endpoint.url" in err and "allowed_origins" in err
    assert a.stats.total == before


@pytest.mark.parametrize(
    ("endpoint", "field", "words"),
    [
        ('base_url = "http://169.254.169.254"', "endpoint.base_url", "link-local"),
        ('base_url = "http://[fd00:ec2::254]"', "endpoint.base_url", "metadata"),
        ('base_url = "http://user:pw@llm.test"', "endpoint.base_url", "user or password"),
        ('url = "http://metadata.google.internal/v1/x"', "endpoint.url", "metadata"),
        ('base_url = "http://llm.test"\nallowed_origins = ["http://x.test/v1"]', "endpoint.allowed_origins", "path"),
        ('base_url = "http://llm.test"\nallowed_origins = ["file:///etc"]', "endpoint.allowed_origins", "scheme"),
    ],
)
def test_places_a_job_should_not_reach_are_refused_when_the_job_is_read(
    endpoint: str, field: str, words: str, write_job: JobWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_job(rows=[{"question": "q"}], endpoint=endpoint + '\nmodel = "m"')
    assert main(["plan", str(path)]) == ExitCode.BAD_JOB
    err = capsys.readouterr().err
    assert field in err and words in err, err


def test_a_metadata_address_the_job_lists_is_allowed(write_job: JobWriter, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = 'base_url = "http://169.254.169.254"\nallowed_origins = ["http://169.254.169.254"]\nmodel = "m"'
    path = write_job(rows=[{"question": "q"}], endpoint=endpoint)
    assert main(["plan", str(path)]) == 0
    assert "to do            1" in capsys.readouterr().out


def test_rows_with_other_schemes_userinfo_or_odd_hosts_are_refused(
    two: Any, write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (a, url_a), (b, url_b) = two
    monkeypatch.setenv("TEST_TOKEN", TOKEN)
    good = f"{host(url_a)}/v1/chat/completions"
    bad = [  # (a scheme other than http(s) cannot come from a row: the URL must start with one)
        f"user:pw@{host(url_a)}/v1/chat/completions",
        f"{host(url_a)}\\@{host(url_b)}/v1/chat/completions",
        "169.254.169.254/latest/meta-data",
        "2852039166/latest/meta-data",
        f"{host(url_b)}/v1/chat/completions",
        f"{host(url_a)}.evil.test/v1/chat/completions",
    ]
    rows = [{"id": f"q{i}", "question": f"what is {i}?", "u": u} for i, u in enumerate([good, *bad, good])]
    path = write_job(
        rows=rows,
        top='id_column = "id"',
        endpoint=f'url = "http://{{{{ u }}}}"\nmodel = "m"\napi_key_env = "TEST_TOKEN"\nallowed_origins = ["{url_a}"]',
    )
    a_before, b_before = a.stats.total, b.stats.total
    assert main(["run", str(path), "-q"]) == ExitCode.FAILED_ROWS
    assert a.stats.total - a_before == 2 and b.stats.total == b_before
    failed = read_manifest(tmp_path / "out").filter(pl.col("status") == "failed")
    assert failed.height == len(bad) and set(failed["attempts"].to_list()) == {0}


@pytest.mark.anyio
async def test_the_sender_refuses_an_origin_outside_the_policy_and_the_transport_sees_nothing() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json={}))
    policy = OriginPolicy(frozenset({parse_origin("http://a.test")}))
    sender = Sender(transport, {"Authorization": f"Bearer {TOKEN}"}, 5.0, policy)
    with pytest.raises(PermanentError, match=r"http://b\.test:9411"):
        await sender.send("POST", "http://b.test:9411/v1/chat/completions", b"{}")
    assert seen == []
    await sender.send("POST", "http://a.test/v1/chat/completions", b"{}")
    assert [str(r.url) for r in seen] == ["http://a.test/v1/chat/completions"]


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://A.test/v1", ("http", "a.test", 80)),
        ("HTTPS://a.test:443/x", ("https", "a.test", 443)),
        ("http://127.0.0.1:9411", ("http", "127.0.0.1", 9411)),
        ("http://[::1]:8080/", ("http", "::1", 8080)),
        ("http://a.test./v1", ("http", "a.test", 80)),
    ],
)
def test_origins_are_normalised(url: str, origin: tuple[str, str, int]) -> None:
    assert parse_origin(url) == origin


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://a.test/",
        "http:/a.test",
        "http://u:p@a.test/",
        "http://a.test\\@b.test/",
        "http://a test/",
        "http://a.test:99999/",
        "http://%61.test/",
        " http://a.test/",
    ],
)
def test_urls_outside_the_plain_grammar_are_refused(url: str) -> None:
    with pytest.raises(OriginError):
        parse_origin(url)


@pytest.mark.parametrize(
    ("host", "bad"),
    [
        ("169.254.169.254", True),
        ("2852039166", True),  # inet_aton reads it as 169.254.169.254
        ("0xa9.0xfe.0xa9.0xfe", True),
        ("::ffff:169.254.169.254", True),
        ("fe80::1", True),
        ("fd00:ec2::254", True),
        ("metadata.google.internal", True),
        ("127.0.0.1", False),
        ("api.openai.com", False),
        ("10.0.0.5", False),
    ],
)
def test_link_local_and_metadata_hosts(host: str, bad: bool) -> None:
    assert (off_limits(host) is not None) is bad


@pytest.mark.parametrize(
    ("template", "head"),
    [
        ("https://api.test/v1/{{ model }}", "https://api.test"),
        ("https://api.test", "https://api.test"),
        ("https://api.test?x={{ q }}", "https://api.test"),
        ("http://{{ host }}/v1", None),
        ("https://api.test{{ path }}", None),  # "{{ path }}" could go on with ".evil.test"
        ("https://{{ sub }}.api.test/v1", None),
        ("{{ url }}", None),
    ],
)
def test_the_literal_origin_of_a_template(template: str, head: str | None) -> None:
    assert literal_origin(template) == head


def test_a_policy_with_a_literal_origin_needs_no_check_per_row() -> None:
    policy = policy_for("https://api.test/v1/{{ model }}", frozenset())
    assert policy.fixed and policy.refusal("https://api.test/v1/m") is None
    assert "https://b.test" in (policy.refusal("https://b.test/v1/m") or "")
    with pytest.raises(OriginError, match="allowed_origins"):
        policy_for("https://{{ h }}/v1", frozenset())
