"""Contact-sheet thumbnails, made with Pillow and inlined as ``data:`` JPEG (one file, no folder)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

SIZE = 192  # px on the long side: ~8 KB a JPEG, a sheet of 240 is ~2.5 MB inline


def thumbnail(source: Path) -> str | None:
    """A ``data:image/jpeg`` URI of ``source`` made small; None when the image cannot be read."""
    try:
        with Image.open(source) as image:
            image.thumbnail((SIZE, SIZE))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
