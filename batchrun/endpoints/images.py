"""Text-to-image answers: HF's raw image bytes and OpenAI's base64 JSON, checked before kept.

An image is kept only if its bytes decode as the type the server claims: a 200 carrying a JSON
error, an HTML page or a truncated PNG is a retryable failure, never a file.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Mapping
from typing import Any

from ..errors import RetryableError
from ..models import Parsed
from .base import error_excerpt, load_json
from .png import check_png

MIME_BY_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
EXTENSION_BY_MIME = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def hf_image_body(inputs: Any, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"inputs": prompt, "parameters": {guidance_scale, negative_prompt, num_inference_steps,
    width, height, scheduler, seed}}``; the seed is filled in per sample by the planner."""
    return {"inputs": inputs, "parameters": dict(parameters or {})}


def openai_image_body(model: str | None, prompt: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """One image per request (``samples`` for more), as base64 so it can be checked and hashed."""
    body: dict[str, Any] = {"prompt": prompt, "n": 1, "response_format": "b64_json", **params}
    if model:
        body["model"] = model
    return body


def check_image(content: bytes, claimed: str | None) -> Parsed:
    """Check every byte of ``content``, enough to know it is whole; return its type and size.

    A PNG gets ``check_png`` (every chunk's CRC, the whole zlib stream, every row), which finds all
    that a full decode would, and a cut after the last row, for a fifth less; other formats, and
    the rows of interlaced PNGs, a full decode."""
    if not content:
        raise RetryableError("an empty body where an image was expected")
    from PIL import Image, UnidentifiedImageError  # Pillow: only image jobs pay for importing it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content)) as image:
                fmt, size = image.format, image.size
                if fmt != "PNG" or not check_png(content):
                    image.load()  # decodes every byte: a truncated file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise RetryableError(f"not a valid image ({type(exc).__name__}: {exc}): {error_excerpt(content)}") from None
    mime = MIME_BY_FORMAT.get(fmt or "")
    if mime is None:
        raise RetryableError(f"unsupported image format {fmt}")
    if claimed is not None and claimed != mime:
        raise RetryableError(f"the server said {claimed} but sent {mime}")
    return Parsed(image=content, mime_type=mime, width=size[0], height=size[1])


class RawImageAdapter:
    """HF text-to-image: the body of a 200 is the image itself."""

    streaming = False
    decodes_images = True

    def parse(self, headers: Mapping[str, str], content: bytes) -> Parsed:
        claimed = headers.get("content-type", "").partition(";")[0].strip().lower()
        if not claimed.startswith("image/"):
            raise RetryableError(f"expected an image, got {claimed or 'no content type'}: {error_excerpt(content)}")
        return check_image(content, "image/jpeg" if claimed == "image/jpg" else claimed)


class OpenAIImageAdapter:
    """OpenAI images: ``data[0].b64_json``."""

    streaming = False
    decodes_images = True

    def parse(self, headers: Mapping[str, str], content: bytes) -> Parsed:
        data = load_json(content)
        try:
            encoded = data["data"][0]["b64_json"]
            raw = base64.b64decode(encoded, validate=True)
        except (KeyError, IndexError, TypeError):
            raise RetryableError(f"no data[0].b64_json in the response: {error_excerpt(content)}") from None
        except (binascii.Error, ValueError):
            raise RetryableError("data[0].b64_json is not valid base64") from None
        parsed = check_image(raw, None)
        revised = data["data"][0].get("revised_prompt")
        return Parsed(
            text=revised, image=parsed.image, mime_type=parsed.mime_type, width=parsed.width, height=parsed.height
        )
