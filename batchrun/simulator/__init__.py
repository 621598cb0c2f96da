"""A local stand-in for the endpoints batchrun talks to: deterministic answers, injected faults.

In-process: ``httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app()))``.
Over a real socket: ``async with serve(sim) as base_url: ...`` (or ``serve_in_thread`` from sync code).

The names below are imported on first use: every ``batchrun`` command builds the ``simulate``
subcommand's arguments, and starlette, uvicorn and Pillow would add ~0.1 s to each start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .answers import expected_chat_text, expected_generated_text
    from .app import Simulator, create_app
    from .cli import add_simulate_arguments, run_simulate_command
    from .faults import FaultPlan, Trigger
    from .images import render_image
    from .server import ServerTLS, serve, serve_in_thread
    from .stats import SimStats

_MODULES = {
    "FaultPlan": "faults",
    "ServerTLS": "server",
    "SimStats": "stats",
    "Simulator": "app",
    "Trigger": "faults",
    "add_simulate_arguments": "cli",
    "create_app": "app",
    "expected_chat_text": "answers",
    "expected_generated_text": "answers",
    "render_image": "images",
    "run_simulate_command": "cli",
    "serve": "server",
    "serve_in_thread": "server",
}

__all__ = [
    "FaultPlan",
    "ServerTLS",
    "SimStats",
    "Simulator",
    "Trigger",
    "add_simulate_arguments",
    "create_app",
    "expected_chat_text",
    "expected_generated_text",
    "render_image",
    "run_simulate_command",
    "serve",
    "serve_in_thread",
]


def __getattr__(name: str) -> object:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
