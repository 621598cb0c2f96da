"""``batchrun status``: what a run made, read from its output folder (or bucket), as text or JSON."""

from __future__ import annotations

import argparse

from ..export import job_for
from ..status import read_status
from .jobargs import sharded


def status_command(args: argparse.Namespace) -> int:
    found = read_status(sharded(job_for(args.target), args))
    print(found.as_json() if args.json else found.text())
    return 0
