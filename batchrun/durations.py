"""Durations on the command line (``batchrun run --grace``, ``--max-runtime``, the simulator's
latencies and Retry-After): ``500ms``, ``30s``, ``1.5m``, ``2h``; a bare number is seconds, as
``sleep`` and ``timeout`` read it."""

from __future__ import annotations

import argparse
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds, or an error line (argparse prints it) showing what a duration looks like."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 500ms, 30s, 50m or 2h")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]
