"""Durations on the command line: ``500ms``, ``30s``, ``50m``, ``2h``."""

from __future__ import annotations

import argparse
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds; a bare number means seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 500ms, 30s, 50m or 2h")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]
