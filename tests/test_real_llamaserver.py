"""Against llama.cpp's own llama-server, when it runs (``SERVERS=llamaserver bash
../shared/realservers/start_real_servers.sh``): it closes the connection after each streamed answer
while saying keep-alive, and every row must still be right on its first and only attempt."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from helpers import JobWriter, questions, read_manifest

from batchrun.errors import ExitCode
from batchrun.runner import run_job
from batchrun.spec import load_job

HOST, PORT = "127.0.0.1", 8080


def llama_server_runs() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=0.5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return b"Server: llama.cpp" in sock.recv(4096)  # not some other server on the port
    except OSError:
        return False


pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not llama_server_runs(), reason=f"no llama-server on {HOST}:{PORT} (see realservers/README.md)"),
]


async def test_streamed_rows_are_ok_on_the_first_attempt(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TOKEN", "sk-test-1234")
    job = write_job(
        rows=questions(20),
        top='id_column = "id"',
        endpoint=f'base_url = "http://{HOST}:{PORT}"\nmodel = "smollm2-135m"\n'
        'api_key_env = "TEST_TOKEN"\nstream = true',
        request='prompt = "{{ question }}"\nparams = { max_tokens = 8, temperature = 0.0 }',
        limits="concurrency = 1\nmax_attempts = 1\ntimeout_s = 120",
    )
    summary = await run_job(load_job(job), quiet=True)
    assert summary.exit_code == ExitCode.OK, summary.line()
    manifest = read_manifest(tmp_path / "out")
    assert manifest.height == 20 and set(manifest["status"]) == {"ok"} and set(manifest["attempts"]) == {1}
    assert summary.sent == 20
