"""Pure pieces of the wire formats and the spec: classification, Retry-After, parsing, presets."""

from __future__ import annotations

import email.utils
import json

import httpx
import pytest
from helpers import JobWriter

from batchrun.dispatch.client import Sender, make_sender
from batchrun.dispatch.exchange import transport_errors
from batchrun.dispatch.network import NetworkTransport
from batchrun.endpoints.base import classify, error_excerpt, parse_retry_after
from batchrun.endpoints.chat import ChatAdapter
from batchrun.endpoints.custom import CustomAdapter
from batchrun.errors import FatalError, PermanentError, RetryableError
from batchrun.spec import load_job, normalize_base_url


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504, 529, 599])
def test_retryable_statuses(status: int) -> None:
    assert isinstance(classify(status, {}, b""), RetryableError)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, PermanentError), (404, PermanentError), (422, PermanentError), (401, FatalError), (403, FatalError)],
)
def test_permanent_and_fatal_statuses(status: int, kind: type) -> None:
    error = classify(status, {"x-request-id": "req-9"}, b'{"error": {"message": "nope"}}')
    assert type(error) is kind
    assert (error.http_status, error.request_id, error.message) == (status, "req-9", f"HTTP {status}: nope")


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    date = email.utils.formatdate(1_000_010, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=1_000_000) == pytest.approx(10)
    assert parse_retry_after({"retry-after": "soon"}) is None
    loading = json.dumps({"error": "Model is loading", "estimated_time": 20.5}).encode()
    assert parse_retry_after({}, loading) == 20.5
    assert classify(503, {}, loading).retry_after == 20.5
    assert parse_retry_after({}, b"") is None


def test_error_excerpt_is_one_short_line() -> None:
    assert error_excerpt(b"<html>\n<body>Bad   gateway</body>\n</html>") == "<html> <body>Bad gateway</body> </html>"
    assert error_excerpt(b'{"error": "Model is loading", "estimated_time": 3}') == "Model is loading"
    assert error_excerpt(b'{"detail": [{"loc": ["body"], "msg": "x"}]}').startswith('[{"loc"')
    assert len(error_excerpt(b"x" * 10_000)) == 300
    assert error_excerpt(b"") == "(empty body)"


def test_chat_parse_and_bad_bodies() -> None:
    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "length"}], "usage": {"prompt_tokens": 2}}
    parsed = ChatAdapter(keep_raw=True).parse({}, json.dumps(body).encode())
    assert (parsed.text, parsed.finish_reason, parsed.prompt_tokens, parsed.completion_tokens) == (
        "hi",
        "length",
        2,
        None,
    )
    assert parsed.raw is not None and json.loads(parsed.raw) == body
    with pytest.raises(RetryableError, match="invalid JSON"):
        ChatAdapter().parse({}, b'{"choices": [')
    with pytest.raises(RetryableError, match="no choices"):
        ChatAdapter().parse({}, b'{"object": "error"}')


def test_custom_parse_with_jmespath() -> None:
    adapter = CustomAdapter("[0].generated_text")
    assert adapter.parse({}, b'[{"generated_text": "abc"}]').text == "abc"
    assert CustomAdapter("data.items").parse({}, b'{"data": {"items": [1, 2]}}').text == "[1, 2]"
    with pytest.raises(RetryableError, match="nothing at"):
        adapter.parse({}, b'{"error": "x"}')


@pytest.mark.parametrize("url", ["https://x.cloud", "https://x.cloud/", "https://x.cloud/v1", "https://x.cloud/v1/"])
def test_base_url_forms(url: str) -> None:
    assert normalize_base_url(url) == "https://x.cloud"


def test_hf_endpoint_streams_by_default_and_hides_its_token(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_very_secret")
    job = load_job(write_job(preset="hf-endpoint", endpoint='base_url = "https://x.cloud/v1/"'))
    assert job.endpoint.url == "https://x.cloud/v1/chat/completions"
    assert (job.endpoint.stream, job.endpoint.model, job.endpoint.auth) == (True, "tgi", "bearer")
    assert "hf_very_secret" not in repr(job) and "hf_very_secret" not in str(job)


@pytest.mark.parametrize(
    ("base_url", "proxy", "tls"),
    [
        ("http://127.0.0.1:8000/v1", None, False),
        ("https://x.cloud/v1", None, True),
        ("http://x.internal/v1", "https://proxy.example:3128", True),
        ("http://x.internal/v1", "http://proxy.example:3128", False),
    ],
)
@pytest.mark.anyio
async def test_tls_is_set_up_only_when_https_may_be_used(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch, base_url: str, proxy: str | None, tls: bool
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    if proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
    job = load_job(write_job(endpoint=f'base_url = "{base_url}"\nmodel = "m"'))
    async with make_sender(job.endpoint, concurrency=4, timeout_s=10) as sender:
        assert isinstance(sender.transport, NetworkTransport) and sender.transport.tls is tls


@pytest.mark.parametrize(
    ("raised", "expected", "unreachable"),
    [
        (httpx.ConnectTimeout("slow"), RetryableError, False),
        (httpx.ReadTimeout("slow"), RetryableError, False),
        (httpx.InvalidURL("no host"), FatalError, False),
        (httpx.UnsupportedProtocol("ftp"), FatalError, False),
        (httpx.ConnectError("refused"), RetryableError, True),
        (httpx.RemoteProtocolError("cut short"), RetryableError, False),
        (httpx.StreamClosed(), RetryableError, False),
    ],
)
def test_transport_errors_are_translated_once(raised: Exception, expected: type[Exception], unreachable: bool) -> None:
    with pytest.raises(expected) as caught, transport_errors("http://x/v1"):
        raise raised
    assert caught.value.__cause__ is None
    assert getattr(caught.value, "unreachable", False) is unreachable


def test_other_errors_pass_through_transport_errors() -> None:
    with pytest.raises(KeyError), transport_errors("http://x/v1"):
        raise KeyError("a bug of ours is not retried")
    with transport_errors("http://x/v1"):
        pass


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "url", "body", "headers"),
    [
        ("POST", "http://127.0.0.1:8000/v1/chat/completions", b'{"a": 1}', {"Accept": "application/json"}),
        ("POST", "https://x.cloud/v1", b"", {"Authorization": "Bearer t"}),
        ("GET", "http://x.cloud:8080/v1/x?q=1", b"", {}),
        ("POST", "http://10.0.0.1/v1", b"{}", {"Host": "api.example"}),
    ],
)
async def test_sender_sends_what_httpx_would_build(method: str, url: str, body: bytes, headers: dict[str, str]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    async with Sender(httpx.MockTransport(handler), headers, timeout_s=10) as sender:
        await sender.send(method, url, body)
    expected = httpx.Request(method, url, headers=headers, content=body)
    (sent,) = seen
    assert (sent.method, sent.url, sent.content) == (expected.method, expected.url, expected.content)
    assert sorted(sent.headers.multi_items()) == sorted(expected.headers.multi_items())
