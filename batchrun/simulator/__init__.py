"""A local stand-in for the endpoints batchrun talks to: deterministic answers, injected faults.

In-process: ``httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app()))``.
Over a real socket: ``async with serve(sim) as base_url: ...`` (or ``serve_in_thread`` from sync code).
"""

from .answers import expected_chat_text, expected_generated_text
from .app import Simulator, create_app
from .cli import add_simulate_arguments, run_simulate_command
from .faults import FaultPlan, Trigger
from .images import render_image
from .server import serve, serve_in_thread
from .stats import SimStats

__all__ = [
    "FaultPlan",
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
