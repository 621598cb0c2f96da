"""Images go to disk, whole, before their manifest row: temp file, fsync, rename."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
from pathlib import Path

from ..errors import SinkError
from ..models import Result
from .files import write_atomic
from .layout import image_relpath


class ImageStore:
    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.saved = 0

    def save(self, result: Result) -> Result:
        """Write the image of an ok result (blocking: run it in a worker thread); the returned
        result holds the path, size and hash instead of the bytes."""
        parsed = result.parsed
        if parsed is None or parsed.image is None or parsed.mime_type is None:
            return result
        relpath = image_relpath(result.request.key, parsed.mime_type)
        final = self.output_dir / relpath
        data = parsed.image
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(final, lambda tmp: tmp.write_bytes(data))
        except OSError as exc:
            reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise SinkError(f"cannot write {final}: {reason}") from None
        self.saved += 1
        stored = dataclasses.replace(
            parsed, image=None, image_path=relpath, image_sha256=hashlib.sha256(data).hexdigest(), image_bytes=len(data)
        )
        return dataclasses.replace(result, parsed=stored)
