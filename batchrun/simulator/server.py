"""Serve a simulator on a loopback socket, inside the caller's event loop or in a thread of its own.

Uvicorn runs embedded: no lifespan, no access log, and no signal handlers (``capture_signals`` is
replaced by a no-op), so Ctrl-C and SIGTERM stay with the program that embeds it.

HTTP is parsed by httptools (C), not h11 (pure Python): the simulator shares the machine with the
client it serves, and h11 doubled its CPU per request. A loop the simulator owns (``batchrun simulate``,
``serve_in_thread``) is uvloop where it is installed; ``serve`` runs in the caller's loop, whatever it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import queue
import socket
import ssl
import struct
import threading
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass

import anyio
import uvicorn

from .app import Killer, Simulator

_LINGER_ZERO = struct.pack("ii", 1, 0)


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host program."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _killer(server: uvicorn.Server) -> Killer:
    """End a client's connection, found by its remote address: abort it with an RST (SO_LINGER 0),
    or close it once what was written has gone out (FIN)."""

    def kill(client: tuple[str, int] | None, abort: bool) -> bool:
        for conn in list(server.server_state.connections):
            transport = getattr(conn, "transport", None)
            if client is None or transport is None or getattr(conn, "client", None) != client:
                continue
            if not abort:
                transport.close()
                return True
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            transport.abort()
            return True
        return False

    return kill


def loop_options() -> dict[str, bool]:
    """``anyio.run``'s backend options for a loop the simulator owns: uvloop, where it is installed."""
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """HTTPS for the simulator: its certificate and key (PEM files), and, for mutual TLS, the CA
    whose client certificates it requires (uvicorn's ``ssl_cert_reqs=CERT_REQUIRED``)."""

    cert: str
    key: str
    client_ca: str | None = None

    def options(self) -> dict[str, object]:
        required = {"ssl_ca_certs": self.client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED} if self.client_ca else {}
        return {"ssl_certfile": self.cert, "ssl_keyfile": self.key, **required}


def make_server(
    sim: Simulator, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", tls: ServerTLS | None = None
) -> EmbeddedServer:
    """An embedded uvicorn server for ``sim``, always with the same HTTP protocol (resets reach its
    connections the same way everywhere)."""
    config = uvicorn.Config(
        sim,
        host=host,
        port=port,
        lifespan="off",
        log_level=log_level,
        access_log=False,
        http="httptools",
        proxy_headers=False,  # a loopback test server: X-Forwarded-For must not rename the client a reset kills
        timeout_graceful_shutdown=2,
        **(tls.options() if tls else {}),  # type: ignore[arg-type]
    )
    return EmbeddedServer(config)


def bound_url(server: uvicorn.Server) -> str:
    """``http(s)://host:port`` of a started server (the real port when 0 was asked)."""
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"{'https' if server.config.is_ssl else 'http'}://{host}:{port}"


async def _run(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as exc:  # a failed bind; SystemExit would escape the event loop itself
        raise OSError(f"uvicorn exited with status {exc.code} (is the port in use?)") from None


@contextlib.asynccontextmanager
async def serve(
    sim: Simulator, host: str = "127.0.0.1", port: int = 0, tls: ServerTLS | None = None
) -> AsyncIterator[str]:
    """Serve ``sim`` in the running asyncio loop; yield its base URL; shut down cleanly on exit.

    Uvicorn is asyncio-only, so it runs as a plain ``asyncio`` task rather than in a task group: an
    exception from the ``async with`` body then reaches the caller as itself, not in an ExceptionGroup.
    """
    server = make_server(sim, host, port, tls=tls)
    detach = sim.attach_killer(_killer(server))
    task = asyncio.get_running_loop().create_task(_run(server), name="batchrun-simulator")
    try:
        while not server.started and not task.done():
            await anyio.sleep(0.005)
        if not server.started:
            reason = task.exception() if not task.cancelled() else None
            raise RuntimeError(f"simulator failed to start on {host}:{port}: {reason!r}")
        yield bound_url(server)
    finally:
        server.should_exit = True
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(5):
                while not task.done():
                    await anyio.sleep(0.01)
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):  # its failure was reported above, or is moot now
                await task
        detach()


@contextlib.contextmanager
def serve_in_thread(
    sim: Simulator, host: str = "127.0.0.1", port: int = 0, tls: ServerTLS | None = None
) -> Iterator[str]:
    """Serve ``sim`` from a daemon thread with its own event loop; yield its base URL."""
    urls: queue.Queue[str | BaseException] = queue.Queue()
    stop = threading.Event()

    async def main() -> None:
        try:
            async with serve(sim, host, port, tls) as url:
                urls.put(url)
                while not stop.is_set():
                    await anyio.sleep(0.02)
        except Exception as exc:  # reported to the caller through the queue
            urls.put(exc)

    thread = threading.Thread(
        target=anyio.run,
        args=(main,),
        kwargs={"backend": "asyncio", "backend_options": loop_options()},
        name="batchrun-simulator",
        daemon=True,
    )
    thread.start()
    first = urls.get(timeout=10)
    if isinstance(first, BaseException):
        thread.join(timeout=5)
        raise RuntimeError("simulator thread failed to start") from first
    try:
        yield first
    finally:
        stop.set()
        thread.join(timeout=10)
