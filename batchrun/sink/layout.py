"""Where things go in the output folder. Pure: names come from request keys (hex digests), never
from input values, so no id or prompt can make a path outside the output folder."""

from __future__ import annotations

import re

from ..endpoints.images import EXTENSION_BY_MIME

IMAGES_DIR = "images"
_KEY = re.compile(r"^[0-9a-f]{16,64}$")


def image_relpath(request_key: str, mime_type: str) -> str:
    """``images/<2-char prefix>/<request_key>.<ext>``: a few thousand files per folder at most."""
    if not _KEY.match(request_key):
        raise ValueError(f"not a request key: {request_key!r}")
    return f"{IMAGES_DIR}/{request_key[:2]}/{request_key}.{EXTENSION_BY_MIME[mime_type]}"
