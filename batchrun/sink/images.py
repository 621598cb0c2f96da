"""Images go to disk, whole, before their manifest row: temp file, fsync, rename; the folders that
gained a file are synced once per manifest part, before the part (``sync``), not once per image.

An image found under its final name with no row (a run was killed between the rename and its
row) is adopted: checked as a fresh answer is, hashed and recorded, and its request is not sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
import time
from pathlib import Path

from ..endpoints.images import EXTENSION_BY_MIME, check_image
from ..errors import PermanentError, RetryableError, SinkError
from ..models import Request, Result
from .files import fsync_dir, make_folder, write_bytes_atomic, write_failure
from .layout import image_relpath

MIME_BY_EXTENSION = {ext: mime for mime, ext in EXTENSION_BY_MIME.items()}


class ImageStore:
    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.saved = 0
        self.adopted = 0  # found on disk with no row, checked, recorded without a request
        self.discarded = 0  # found on disk, failed the check, removed (the request is sent)
        self._known: set[Path] = set()  # folders written into (and whose parents will be synced)
        self._unsynced: set[Path] = set()  # folders whose new entries may not be durable yet
        self._lock = threading.Lock()  # saves run in many worker threads

    def save(self, result: Result) -> Result:
        """Write the image of an ok result (blocking: run it in a worker thread); the returned
        result holds the path, size and hash instead of the bytes. The file's name is durable
        only after the next ``sync``."""
        parsed = result.parsed
        if parsed is None or parsed.image is None or parsed.mime_type is None:
            return result
        relpath = image_relpath(result.request.key, parsed.mime_type)
        final = self.output_dir / relpath
        data = parsed.image
        try:
            if final.parent not in self._known:
                self._first_use(final.parent)
            write_bytes_atomic(final, data)
        except OSError as exc:
            reason = write_failure(exc)
            raise SinkError(f"cannot write {final}: {reason}") from None
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._unsynced.add(final.parent)
            self.saved += 1
        stored = dataclasses.replace(parsed, image=None, image_path=relpath, image_sha256=digest, image_bytes=len(data))
        return dataclasses.replace(result, parsed=stored)

    def find(self, key: str) -> Path | None:
        """The image already on disk under ``key``'s final name, if any: one ``stat`` per image
        type (~1 µs each when absent), called before each image request is sent."""
        for mime in EXTENSION_BY_MIME:
            path = self.output_dir / image_relpath(key, mime)
            try:
                os.stat(path)
            except OSError:
                continue
            return path
        return None

    def adopt(self, request: Request, path: Path) -> Result | None:
        """The ok result of the image at ``path`` (blocking), checked as a fresh answer is
        (``check_image``, and of the type its extension names); None, and the file removed, if it fails.
        ``attempts`` is 0: no request was sent for it."""
        mime = MIME_BY_EXTENSION[path.suffix[1:]]
        try:
            data = path.read_bytes()
            parsed = check_image(data)
            if parsed.mime_type != mime:  # not what the store would have named it: not its file
                raise RetryableError(f"{path.name} holds {parsed.mime_type}")
        except (OSError, RetryableError, PermanentError):
            with contextlib.suppress(OSError):
                path.unlink()
            with self._lock:
                self.discarded += 1
            return None
        self._first_use(path.parent)
        with self._lock:
            self._unsynced.add(path.parent)  # renamed by the run that was killed, maybe never synced
            self.adopted += 1
        stored = dataclasses.replace(
            parsed,
            image=None,
            image_path=image_relpath(request.key, mime),
            image_sha256=hashlib.sha256(data).hexdigest(),
            image_bytes=len(data),
        )
        now = time.time()
        return Result(request, "ok", attempts=0, started_at=now, finished_at=now, parsed=stored)

    def sync(self) -> int:
        """Make every file saved so far durable under its name: fsync each folder that gained an
        entry since the last call (blocking). The manifest writer calls it before each part."""
        with self._lock:
            folders, self._unsynced = sorted(self._unsynced), set()
        for i, folder in enumerate(folders):
            try:
                fsync_dir(folder)
            except OSError as exc:
                with self._lock:
                    self._unsynced.update(folders[i:])
                raise SinkError(f"cannot sync the image folder {folder}: {exc.strerror or exc}") from None
        return len(folders)

    def _first_use(self, folder: Path) -> None:
        """Create ``images/<prefix>/`` if needed, and mark its parents for the next sync: the folder
        may be new, or left unsynced by a run that was killed. Under the lock, so that no save can
        find the folder made before its parents are marked."""
        with self._lock:
            if folder not in self._known:
                make_folder(folder, within=self.output_dir)
                self._unsynced.update((folder.parent, folder.parent.parent))
                self._known.add(folder)

    def __repr__(self) -> str:
        return (
            f"ImageStore(saved={self.saved}, adopted={self.adopted}, discarded={self.discarded}, "
            f"unsynced_folders={len(self._unsynced)})"
        )
