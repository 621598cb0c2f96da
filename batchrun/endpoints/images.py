"""Text-to-image answers: HF's raw image bytes and OpenAI's base64 JSON, checked before kept.

An image is kept only if its bytes decode whole: a 200 carrying a JSON error, an HTML page or a
truncated PNG is a retryable failure, never a file; a whole answer that is no image batchrun keeps
(an SVG, a JSON answer without an image) fails its row for good.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from collections.abc import Mapping
from typing import Any

from ..errors import PermanentError, RetryableError, SpecError
from ..models import Parsed
from .base import answer_start, error_excerpt, load_json, unfit_answer
from .format import Endpoint, PromptReader, RequestSection, WireFormat, field_reader
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


def check_image(content: bytes) -> Parsed:
    """Check every byte of ``content``, enough to know it is whole; return its type and size.

    A PNG gets ``check_png`` (every chunk's CRC, the whole zlib stream, every row), which finds all
    that a full decode would, and a cut after the last row, for a fifth less; other formats, and
    the rows of interlaced PNGs, a full decode. Bytes that do not decode are retryable (a cut, a
    proxy's page); a whole image in a format batchrun does not keep, or too large to decode, fails
    the row for good: asking again pays for the same picture."""
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
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        reason = "an image too large to decode"
        raise PermanentError(f"{reason} ({exc})", http_status=200, reason=reason) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RetryableError(f"not a valid image ({type(exc).__name__}: {exc}): {error_excerpt(content)}") from None
    mime = MIME_BY_FORMAT.get(fmt or "")
    if mime is None:
        raise unsupported_image(str(fmt), content)
    return Parsed(image=content, mime_type=mime, width=size[0], height=size[1])


def unsupported_image(kind: str, content: bytes) -> PermanentError:
    reason = f"an image in a format batchrun does not keep ({kind}; it keeps {', '.join(EXTENSION_BY_MIME)})"
    return PermanentError(
        f"{reason}: {len(content)} bytes", http_status=200, reason=reason, answer=answer_start(content)
    )


#: Content types that say nothing about the bytes: an image is looked for in them.
UNTYPED = frozenset({"", "application/octet-stream", "binary/octet-stream"})


class RawImageAdapter:
    """HF text-to-image: the body of a 200 is the image itself.

    The bytes decide the image's type (a whole PNG labelled image/jpeg is kept as the PNG it is).
    A JSON answer where an image was expected is ``unfit_answer`` (an error report is retried,
    anything else fails the row for good); an HTML page or plain text is retried."""

    streaming = False
    decodes_images = True

    def parse(self, headers: Mapping[str, str], content: bytes) -> Parsed:
        claimed = headers.get("content-type", "").partition(";")[0].strip().lower()
        if claimed.startswith("image/"):
            try:
                return check_image(content)
            except RetryableError:
                if claimed.replace("/jpg", "/jpeg") not in EXTENSION_BY_MIME:  # image/svg+xml, image/bmp...
                    raise unsupported_image(claimed, content) from None
                raise
        reason = f"expected an image, got {claimed or 'no content type'}"
        if "json" in claimed or content[:1] in (b"{", b"["):
            try:
                data = json.loads(content)
            except ValueError:
                pass
            else:
                raise unfit_answer(reason, data, content)
        if claimed in UNTYPED:
            try:
                return check_image(content)
            except RetryableError:
                pass
        raise RetryableError(f"{reason}: {error_excerpt(content)}")


class OpenAIImageAdapter:
    """OpenAI images: ``data[0].b64_json``."""

    streaming = False
    decodes_images = True

    def parse(self, headers: Mapping[str, str], content: bytes) -> Parsed:
        data = load_json(content)
        try:
            encoded = data["data"][0]["b64_json"]
        except (KeyError, IndexError, TypeError):
            raise unfit_answer("no data[0].b64_json", data, content) from None
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError, TypeError):  # in a whole JSON body: not a cut, the server's doing
            raise unfit_answer("data[0].b64_json is not valid base64", data, content) from None
        parsed = check_image(raw)
        revised = data["data"][0].get("revised_prompt")
        return Parsed(
            text=revised, image=parsed.image, mime_type=parsed.mime_type, width=parsed.width, height=parsed.height
        )


class HFImageFormat(WireFormat):
    """HF text-to-image: ``{"inputs", "parameters"}`` to ``/models/{model}``; the answer is the image."""

    name = "image-hf"
    route = "{base_url}/models/{model}"
    accept = "image/png"
    seeds_samples = True

    def check_request(self, req: RequestSection, where: str) -> None:
        if req.inputs is None and req.prompt is None:
            raise SpecError(where, "request.inputs", "a text-to-image endpoint needs inputs (or prompt)")

    def body_template(self, req: RequestSection, model: str | None) -> Any:
        return hf_image_body(req.inputs if req.inputs is not None else req.prompt, req.parameters)

    def prompt_template(self, req: RequestSection) -> Any:
        return req.inputs if req.inputs is not None else req.prompt

    def prompt_reader(self, req: RequestSection) -> PromptReader | None:
        return field_reader("inputs")

    def adapter(self, endpoint: Endpoint, *, keep_raw: bool, where: str) -> RawImageAdapter:
        return RawImageAdapter()


class OpenAIImageFormat(WireFormat):
    """OpenAI images: ``{"prompt", "n": 1, "response_format": "b64_json"}`` to ``/v1/images/generations``."""

    name = "image-openai"
    route = "{base_url}/v1/images/generations"

    def check_request(self, req: RequestSection, where: str) -> None:
        if req.prompt is None:
            raise SpecError(where, "request.prompt", "openai-images needs a prompt, e.g. '{{ prompt }}'")

    def body_template(self, req: RequestSection, model: str | None) -> Any:
        return openai_image_body(model, req.prompt, req.params)

    def prompt_template(self, req: RequestSection) -> Any:
        return req.prompt

    def prompt_reader(self, req: RequestSection) -> PromptReader | None:
        return field_reader("prompt")

    def adapter(self, endpoint: Endpoint, *, keep_raw: bool, where: str) -> OpenAIImageAdapter:
        return OpenAIImageAdapter()
