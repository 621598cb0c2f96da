"""The servers the benchmarks talk to, each a child process on 127.0.0.1.

* ``Nginx``: nginx from Debian answering a fixed OpenAI chat completion, with zero latency
  (``return 200``) or a fixed latency (``echo_sleep`` from libnginx-mod-http-echo).
* ``Simulator``: batchrun's own simulator (``python -m batchrun simulate --latency ...``), in a
  process of its own so its CPU time is never counted against the client under test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")

#: What nginx answers: a complete, ordinary OpenAI chat completion (non-streaming).
CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1764115200,
    "model": "bench-model",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The answer is 42."},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 17, "completion_tokens": 6, "total_tokens": 23},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no answer from {url} within {timeout}s")


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop one child process we started, by its pid."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def nginx(latency_ms: float = 0.0, access_log: bool = False) -> Iterator[Nginx]:
    server = Nginx(latency_ms=latency_ms, access_log=access_log)
    try:
        server.start()
        yield server
    finally:
        server.close()


class Nginx:
    def __init__(self, latency_ms: float = 0.0, access_log: bool = False) -> None:
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            raise RuntimeError("nginx is not installed: run bench/setup.sh")
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.latency_ms = latency_ms
        self.prefix = Path(tempfile.mkdtemp(prefix="batchrun-bench-nginx-"))
        os.chmod(self.prefix, 0o755)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = self.prefix / "access.log" if access_log else None
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        body = json.dumps(CHAT_COMPLETION, separators=(",", ":"))
        assert "'" not in body and "$" not in body
        if self.latency_ms > 0:
            if not ECHO_MODULE.exists():
                raise RuntimeError("nginx with latency needs libnginx-mod-http-echo: run bench/setup.sh")
            modules = f"load_module {ECHO_MODULE};"
            handler = f"echo_sleep {self.latency_ms / 1000:.3f};\n            echo -n '{body}';"
        else:
            modules = ""
            handler = f"return 200 '{body}';"
        text = (BENCH / "nginx.conf").read_text()
        access = f"{self.access_log} arrivals" if self.access_log else "off"
        for key, value in {
            "@MODULES@": modules,
            "@PREFIX@": str(self.prefix),
            "@PORT@": str(self.port),
            "@HANDLER@": handler,
            "@ACCESS_LOG@": access,
        }.items():
            text = text.replace(key, value)
        return text

    def start(self) -> None:
        conf = self.prefix / "nginx.conf"
        conf.write_text(self.config())
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / sub).mkdir(mode=0o777, exist_ok=True)
        cmd = [self.binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.prefix / "error.log")]
        cmd += ["-g", "daemon off;"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        wait_http(self.url + "/health", proc=self.proc)

    def arrivals(self) -> list[float]:
        """Epoch seconds (ms resolution) of every chat request logged so far."""
        if self.access_log is None or not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1] == "200":
                out.append(float(parts[0]))
        return out

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGQUIT)  # graceful: the master stops its worker and exits
        shutil.rmtree(self.prefix, ignore_errors=True)


@contextlib.contextmanager
def simulator(latency_ms: float = 0.0, source: Path | None = None) -> Iterator[Simulator]:
    server = Simulator(latency_ms, source)
    try:
        server.start()
        yield server
    finally:
        server.close()


class Simulator:
    """``python -m batchrun simulate`` in its own process (the project's code, not changed);
    ``source``: another checkout's batchrun (say, the commit before a change)."""

    def __init__(self, latency_ms: float = 0.0, source: Path | None = None) -> None:
        self.latency_ms = latency_ms
        self.source = source
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        latency = f"{self.latency_ms:g}ms" if self.latency_ms else "0"
        cmd = [PYTHON, "-m", "batchrun", "simulate", "--port", str(self.port), "--latency", latency]
        cwd, env = ROOT, None
        if self.source is not None:
            cwd, env = self.source, {**os.environ, "PYTHONPATH": str(self.source)}
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        wait_http(self.url + "/health", proc=self.proc)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_sim/stats", timeout=30) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def reset(self) -> None:
        req = urllib.request.Request(self.url + "/_sim/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGINT)
