"""Servers that advertise keep-alive and close the connection after each answer (llama.cpp's
llama-server after every streamed answer): every row is right on the first attempt, over real
loopback sockets and the network transport, and nothing the server may have received is re-sent."""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path

import aiohttp
import anyio
import httpx
import pytest
from helpers import JobWriter, questions, read_manifest

from batchrun.dispatch import network
from batchrun.dispatch.network import NetworkTransport, never_sent
from batchrun.errors import ExitCode
from batchrun.runner import RunSummary, run_job
from batchrun.simulator import FaultPlan, Simulator, Trigger, create_app, expected_chat_text, serve
from batchrun.spec import load_job

pytestmark = pytest.mark.anyio

ROWS = 20
FIRST_ATTEMPT_ONLY = "concurrency = 1\nmax_attempts = 1\ntimeout_s = 10"


async def run_over_socket(
    sim: Simulator, write_job: JobWriter, *, stream: bool, transport: NetworkTransport | None = None
) -> RunSummary:
    async with serve(sim) as url:
        job = write_job(
            rows=questions(ROWS),
            top='id_column = "id"',
            endpoint=f'base_url = "{url}"\nmodel = "m"\nstream = {str(stream).lower()}',
            limits=FIRST_ATTEMPT_ONLY,
        )
        return await run_job(load_job(job), transport=transport, quiet=True)


def assert_every_row_ok_first_time(out: Path) -> None:
    manifest = read_manifest(out).sort("row_index")
    assert manifest.height == ROWS
    assert set(manifest["status"]) == {"ok"}
    assert set(manifest["attempts"]) == {1}
    assert manifest["response_text"].to_list() == [
        expected_chat_text("m", [{"role": "user", "content": q["question"]}]) for q in questions(ROWS)
    ]


@pytest.mark.parametrize("stream", [True, False])
async def test_every_row_is_ok_on_its_first_attempt(stream: bool, write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app(FaultPlan(close_after_response=True))
    summary = await run_over_socket(sim, write_job, stream=stream)
    assert summary.exit_code == ExitCode.OK, summary.line()
    assert sim.stats.total == ROWS  # one request a row reached the server
    assert_every_row_ok_first_time(tmp_path / "out")


async def send_one_after_another(sim: Simulator, transport: NetworkTransport) -> list[str]:
    """ROWS streamed requests straight through the transport, each sent as soon as the last answer
    was read: no yield in between, as a busy run may do, so the server's close can still be on its
    way when the next request takes the connection (a run's own pauses hide that race)."""
    texts = []
    async with serve(sim) as url:
        for q in questions(ROWS):
            body = {"model": "m", "messages": [{"role": "user", "content": q["question"]}], "stream": False}
            response = await transport.handle_async_request(
                httpx.Request("POST", f"{url}/v1/chat/completions", json=body)
            )
            texts.append(json.loads(await response.aread())["choices"][0]["message"]["content"])
            await response.aclose()
    await transport.aclose()
    return texts


def expected_texts() -> list[str]:
    return [expected_chat_text("m", [{"role": "user", "content": q["question"]}]) for q in questions(ROWS)]


async def test_closed_pooled_connections_are_dropped_before_reuse() -> None:
    sim = create_app(FaultPlan(close_after_response=True))
    transport = NetworkTransport(1, tls=False)
    assert await send_one_after_another(sim, transport) == expected_texts()
    assert sim.stats.total == ROWS
    assert transport.connector is not None and transport.connector.dropped > 0
    assert len(transport.connector.not_reused) == 1  # the server closes every connection: none is reused
    assert transport.resent == 0


async def test_a_server_that_keeps_connections_alive_has_them_reused(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app()
    transport = NetworkTransport(1, tls=False)
    summary = await run_over_socket(sim, write_job, stream=True, transport=transport)
    assert summary.exit_code == ExitCode.OK, summary.line()
    assert transport.connector is not None
    assert (transport.connector.dropped, transport.connector.not_reused, transport.resent) == (0, set(), 0)
    assert_every_row_ok_first_time(tmp_path / "out")


async def test_a_body_that_could_not_be_written_is_sent_again_on_a_new_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the close is noticed only after the connection was handed out (the check before reuse
    found nothing), aiohttp cannot write the body; the request is sent again, not as an attempt."""
    monkeypatch.setattr(network, "peer_gone", lambda protocol: False)
    sim = create_app(FaultPlan(close_after_response=True))
    transport = NetworkTransport(1, tls=False)
    assert await send_one_after_another(sim, transport) == expected_texts()
    assert sim.stats.total == ROWS  # the unwritten requests never reached it
    assert transport.resent > 0


async def test_a_request_the_server_received_is_not_sent_again(write_job: JobWriter, tmp_path: Path) -> None:
    """A reset after the body was written may come from a server that acted on it: the dispatcher
    counts it as an attempt (here the only one), the transport never re-sends it."""
    broken = questions(ROWS)[3]["question"]
    sim = create_app(FaultPlan(close_after_response=True, triggers=[Trigger(broken, "reset")]))
    transport = NetworkTransport(1, tls=False)
    summary = await run_over_socket(sim, write_job, stream=True, transport=transport)
    assert summary.exit_code == ExitCode.FAILED_ROWS
    assert sim.stats.total == ROWS and sim.stats.by_outcome["reset"] == 1
    assert transport.resent == 0
    manifest = read_manifest(tmp_path / "out")
    failed = manifest.filter(manifest["status"] == "failed")
    assert failed["row_id"].to_list() == ["q3"] and failed["attempts"].to_list() == [1]
    assert failed["error_kind"].to_list() == ["retryable_exhausted"]


def test_only_a_body_never_handed_to_the_connection_counts_as_never_sent() -> None:
    unwritten = aiohttp.ClientOSError(None, "Can not write request body for http://x/")
    unwritten.__cause__ = aiohttp.ClientConnectionResetError("Cannot write to closing transport")
    reset = aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer")
    reset.__cause__ = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    mapped = httpx.ReadError("Can not write request body")
    mapped.__cause__ = unwritten
    assert never_sent(unwritten) and never_sent(mapped)
    assert not never_sent(reset)
    assert not never_sent(aiohttp.ServerDisconnectedError())
    assert not never_sent(httpx.ReadError("Server disconnected"))


async def test_the_simulator_advertises_keep_alive_then_closes() -> None:
    """What llama-server does, read from a bare socket: a whole answer saying keep-alive, then a FIN."""
    messages = [{"role": "user", "content": "hi"}]
    body = json.dumps({"model": "m", "messages": messages}).encode()
    request = f"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nContent-Length: {len(body)}\r\n\r\n"

    def exchange(host: str, port: int) -> bytes:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(request.encode() + body)
            received = b""
            while chunk := sock.recv(65536):  # until the FIN (a timeout if the server kept it open)
                received += chunk
            return received

    async with serve(create_app(FaultPlan(close_after_response=True))) as url:
        host, port = url.removeprefix("http://").split(":")
        received = await anyio.to_thread.run_sync(exchange, host, int(port))
    head, _, answer = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"\r\nkeep-alive: timeout=5, max=100" in head.lower() and b"connection:" not in head.lower()
    assert json.loads(answer)["choices"][0]["message"]["content"] == expected_chat_text("m", messages)
