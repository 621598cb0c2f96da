"""Deterministic images: a picture drawn from a hash of (prompt, seed, width, height).

The same inputs give the same bytes (for one Pillow version); any change gives another picture.
A missing seed counts as seed 0.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping

from PIL import Image, ImageDraw

DEFAULT_SIZE = 64
MAX_SIZE = 2048


def image_digest(prompt: str, seed: int | None, width: int, height: int) -> bytes:
    """The hash the picture is drawn from."""
    key = f"{prompt}\x00{seed or 0}\x00{width}x{height}".encode()
    return hashlib.blake2b(key, digest_size=32).digest()


def render_image(
    prompt: str,
    *,
    seed: int | None = None,
    width: int = DEFAULT_SIZE,
    height: int = DEFAULT_SIZE,
    fmt: str = "png",
) -> bytes:
    """Encode the picture for these inputs as PNG (``fmt="png"``) or JPEG (``fmt="jpeg"``)."""
    digest = image_digest(prompt, seed, width, height)
    image = Image.new("RGB", (width, height), tuple(digest[0:3]))
    draw = ImageDraw.Draw(image)
    for i in range(4):
        b = digest[3 + i * 7 : 10 + i * 7]
        x0, x1 = sorted((b[0] * width // 256, b[1] * width // 256))
        y0, y1 = sorted((b[2] * height // 256, b[3] * height // 256))
        box = (x0, y0, x1, y1)
        colour = (b[4], b[5], b[6])
        if i % 2:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    out = io.BytesIO()
    if fmt == "jpeg":
        image.save(out, format="JPEG", quality=85)
    else:
        image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def wants_jpeg(accept: str) -> bool:
    """True when the ``Accept`` header asks for JPEG and not PNG."""
    accept = accept.lower()
    return "image/jpeg" in accept and "image/png" not in accept


def parse_size(value: object, default: int = DEFAULT_SIZE) -> int:
    """A width or height from a request; ``ValueError`` outside 1..MAX_SIZE."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"size must be an integer, got {value!r}")
    size = int(value)
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(f"size must be between 1 and {MAX_SIZE}, got {size}")
    return size


def parse_openai_size(value: object) -> tuple[int, int]:
    """OpenAI's ``size`` field, ``"WxH"`` (default 64x64 here, to stay cheap)."""
    if value is None or value == "auto":
        return DEFAULT_SIZE, DEFAULT_SIZE
    if not isinstance(value, str) or "x" not in value:
        raise ValueError(f"size must look like '512x512', got {value!r}")
    w, _, h = value.partition("x")
    return parse_size(w), parse_size(h)


def int_or_none(params: Mapping[str, object], name: str) -> int | None:
    """An optional integer parameter (``ValueError`` if present and not an integer)."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value
