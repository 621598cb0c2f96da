"""The simulator over real loopback sockets: resets, cut streams, threads, and the CLI process."""

from __future__ import annotations

import importlib.util
import json
import queue
import signal
import socket
import subprocess
import sys
import threading

import anyio
import httpx
import pytest

from batchrun.simulator import FaultPlan, create_app, expected_chat_text, serve, serve_in_thread

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "tell me a short story about a lighthouse"}]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_serve_answers_over_loopback_and_leaves_signals_alone() -> None:
    sim = create_app()
    before = signal.getsignal(signal.SIGINT)
    async with serve(sim) as url, httpx.AsyncClient(base_url=url) as client:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert signal.getsignal(signal.SIGINT) is before
        r = await client.post(CHAT, json={"model": "m", "messages": MESSAGES})
        assert r.json()["choices"][0]["message"]["content"] == expected_chat_text("m", MESSAGES)
        payload = {"model": "m", "messages": MESSAGES, "stream": True}
        async with client.stream("POST", CHAT, json=payload) as resp:
            lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        assert (
            "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
            == r.json()["choices"][0]["message"]["content"]
        )
    assert signal.getsignal(signal.SIGINT) is before
    assert sim.stats.total == 2


@pytest.mark.anyio
async def test_reset_is_a_read_error_and_the_client_recovers() -> None:
    sim = create_app(FaultPlan(script=["ok", "reset"]))
    async with serve(sim) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.post(CHAT, json={"messages": MESSAGES})).status_code == 200
        with pytest.raises(httpx.ReadError):  # RST on the kept-alive connection, no response at all
            await client.post(CHAT, json={"messages": MESSAGES})
        assert (await client.post(CHAT, json={"messages": MESSAGES})).status_code == 200
    assert sim.stats.by_outcome == {"ok": 2, "reset": 1}


@pytest.mark.anyio
async def test_stream_cut_ends_cleanly_without_done_over_socket() -> None:
    sim = create_app(FaultPlan(script=["stream_cut"]))
    async with serve(sim) as url, httpx.AsyncClient(base_url=url) as client:
        payload = {"model": "m", "messages": MESSAGES, "stream": True}
        async with client.stream("POST", CHAT, json=payload) as resp:
            assert resp.status_code == 200
            lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert lines and "data: [DONE]" not in lines
    assert all(json.loads(line[6:])["choices"][0]["finish_reason"] is None for line in lines)


@pytest.mark.anyio
async def test_concurrent_requests_with_latency() -> None:
    """Requests wait out their latency side by side: when the first answer comes back, the others
    have already arrived (served one after another, it would see only itself)."""
    sim = create_app(FaultPlan(latency_ms=300, latency_jitter_ms=20))
    arrived_before: list[int] = []  # requests the simulator had counted when each answer came back
    async with serve(sim) as url, httpx.AsyncClient(base_url=url) as client:

        async def one(i: int) -> None:
            r = await client.post(CHAT, json={"messages": [{"role": "user", "content": f"row {i}"}]})
            arrived_before.append(sim.stats.total)
            assert r.json()["choices"][0]["message"]["content"] == f"[tgi] answer to: row {i}"

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
    assert sim.stats.total == 40 and sim.stats.by_outcome == {"ok": 40}
    assert arrived_before[0] >= 20, arrived_before


@pytest.mark.anyio
async def test_serve_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="failed to start"):
            async with serve(create_app(), port=port):
                pass


def test_serve_in_thread_with_a_sync_client() -> None:
    sim = create_app(FaultPlan(require_token="tok", script=["ok", "reset"]))
    with serve_in_thread(sim) as url, httpx.Client(base_url=url) as client:
        assert client.post(CHAT, json={"messages": MESSAGES}).status_code == 401
        ok = client.post(CHAT, json={"messages": MESSAGES}, headers={"Authorization": "Bearer tok"})
        assert ok.status_code == 200
        with pytest.raises(httpx.ReadError):
            client.post(CHAT, json={"messages": MESSAGES}, headers={"Authorization": "Bearer tok"})
    assert sim.stats.by_outcome == {"401": 1, "ok": 1, "reset": 1}
    assert sim.stats.auth_present == [False, True, True]


HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


@pytest.mark.parametrize(
    "use_uvloop", [False, pytest.param(True, marks=pytest.mark.skipif(not HAS_UVLOOP, reason="no uvloop"))]
)
def test_a_reset_is_a_tcp_rst_on_either_loop(use_uvloop: bool) -> None:
    """What the kernel sends, read from a bare socket: an RST (ECONNRESET), never a FIN (an empty read)."""
    sim = create_app(FaultPlan(script=["ok", "reset"]))
    urls: queue.Queue[str] = queue.Queue()
    stop = threading.Event()

    async def main() -> None:
        async with serve(sim) as url:
            urls.put(url)
            while not stop.is_set():
                await anyio.sleep(0.01)

    options = {"backend": "asyncio", "backend_options": {"use_uvloop": use_uvloop}}
    thread = threading.Thread(target=anyio.run, args=(main,), kwargs=options, daemon=True)
    thread.start()
    try:
        host, port = urls.get(timeout=10).removeprefix("http://").split(":")
        body = json.dumps({"messages": MESSAGES}).encode()
        head = f"POST {CHAT} HTTP/1.1\r\nHost: sim\r\nContent-Length: {len(body)}\r\n\r\n"
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(head.encode() + body)  # the first answer, on a connection kept alive
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
            sock.sendall(head.encode() + body)
            with pytest.raises(ConnectionResetError):
                while sock.recv(65536):
                    pass
    finally:
        stop.set()
        thread.join(timeout=10)
    assert sim.stats.by_outcome == {"ok": 1, "reset": 1}


CLI = """
import argparse, sys
from batchrun.simulator import add_simulate_arguments, run_simulate_command
parser = argparse.ArgumentParser()
add_simulate_arguments(parser)
sys.exit(run_simulate_command(parser.parse_args(sys.argv[1:])))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_until_signal(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "--port", "0", "--token", "tok", "--latency", "1ms"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline()]
        while not banner[-1].startswith("Press Ctrl-C") and banner[-1]:
            banner.append(proc.stdout.readline())
        assert banner[0].startswith("batchrun simulator listening on http://127.0.0.1:"), banner
        assert any("/v1/chat/completions" in line for line in banner)
        url = banner[0].split()[-1]
        r = httpx.post(url + CHAT, json={"messages": MESSAGES}, headers={"Authorization": "Bearer tok"})
        assert r.status_code == 200
        assert httpx.post(url + CHAT, json={"messages": MESSAGES}).status_code == 401
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopped; 2 requests served" in out


def test_cli_rejects_rates_over_one() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CLI, "--port", "0", "--rate-500", "0.7", "--rate-429", "0.7"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "sum" in proc.stderr
