"""``run --ray 127.0.0.1:PORT`` against a head node started by ``ray start --head``, as
docs/scale-out.md says to: a subprocess of its own, on loopback only, with token authentication on
(a token in its home folder, which ``ray start --head`` enables itself with), and the CLI joins it
with that token. The head node is stopped by its process group and temp folder, never ``ray stop``,
which stops every Ray on the machine."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import JobWriter, every_row

from batchrun.cli import main
from batchrun.rayconnect import _host_port, _on_this_machine
from batchrun.simulator import FaultPlan, create_app, serve_in_thread

ray_cli = Path(sys.executable).with_name("ray")
needs_ray_cli = pytest.mark.skipif(
    not ray_cli.exists() or sys.platform != "linux", reason="needs Ray's CLI (pip install 'batchrun[ray]') on Linux"
)

ROWS = 60
START_S = 60  # a head node starts in ~3 s on an idle machine


def free_ports(count: int) -> list[int]:
    """Ports free now on 127.0.0.1, all different (held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


@dataclass(frozen=True)
class Head:
    address: str
    env: dict[str, str]  # what the driver runs with: the head's home folder (its token)
    started: str  # what ray start said


def _processes_under(folder: str) -> list[int]:
    """Processes whose command line names the folder: the head's, whatever their process group."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and folder in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
    return found


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[Head]:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    temp = tempfile.mkdtemp(prefix="br-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env["HOME"] = str(home)
    # Ray's own way to keep a node on loopback: without it, 127.0.0.1 becomes the machine's address
    head_env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    gcs, client, dashboard, agent, agent_grpc, runtime_env, metrics = free_ports(7)
    command = [
        str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
        "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp,
        # every port with a fixed default, so it meets no other Ray on this machine
        "--dashboard-port", str(dashboard),
        "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
        "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
    ]  # fmt: skip
    if importlib.util.find_spec("grpc") is not None:  # ray[client]: its server, else none
        command += ["--ray-client-server-port", str(client)]
    log = tmp_path / "ray-start.log"
    with log.open("w") as out:
        head = subprocess.Popen(command, env=head_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_S
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield Head(f"127.0.0.1:{gcs}", env, log.read_text())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)  # ray start --block stops what it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        for pid in _processes_under(temp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        head.wait(5)
        shutil.rmtree(temp, ignore_errors=True)


@needs_ray_cli
def test_run_joins_a_head_node_by_its_address_with_its_token(write_job: JobWriter, ray_head: Head) -> None:
    assert "Token authentication is enabled" in ray_head.started  # what the driver must answer
    rows = [{"id": f"r{i}", "question": f"question {i}"} for i in range(ROWS)]
    sim = create_app(FaultPlan(latency_ms=20))
    with serve_in_thread(sim) as url:
        job = write_job(rows=rows, endpoint=f'base_url = "{url}"\nmodel = "m"', top='id_column = "id"')
        command = [sys.executable, "-m", "batchrun", "run", str(job), "--ray", ray_head.address, "--shards", "2"]
        done = subprocess.run(command, env=ray_head.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith(f"ray, 2 shards: finished {ROWS} requests ({ROWS} ok")
    rows_made = every_row(job.parent / "out")
    assert rows_made.height == ROWS and rows_made["request_key"].is_unique().all()
    assert set(rows_made["status"]) == {"ok"}
    assert sim.stats.by_outcome == {"ok": ROWS}


def test_an_address_where_nothing_listens_is_one_line_and_exit_2(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # what a loopback address sets
    (port,) = free_ports(1)
    job = write_job(rows=[{"question": "q"}])
    assert main(["run", str(job), "--ray", f"127.0.0.1:{port}", "--shards", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"batchrun: error: --ray 127.0.0.1:{port}: no Ray cluster answers there (Connection refused): "
        "is `ray start --head` running?"
    ]
    assert not (tmp_path / "out").exists()


def test_addresses_name_a_host_and_port_or_leave_it_to_ray() -> None:
    assert _host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert _host_port("ray://head:10001") == ("head", 10001)
    assert _host_port("[::1]:6379") == ("::1", 6379)
    assert _host_port("auto") is None and _host_port(None) is None and _host_port("head") is None
    assert _on_this_machine("127.0.0.1") and _on_this_machine("localhost")
    assert not _on_this_machine("198.51.100.7")  # TEST-NET-2: documentation only, no machine's address
