"""Buffers results and flushes them as manifest parts every N rows or T seconds.

Each result is in the crash journal (``journal``, written by whoever finished it) before it reaches
this buffer, so the flush interval bounds the number and size of parts, not what a crash can lose.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..errors import SinkError
from ..models import Result
from .files import fsync_dir, make_folder, write_failure
from .journal import Journal
from .manifest import MANIFEST_DIR, manifest_frame, part_name, write_part


class ManifestWriter:
    def __init__(
        self,
        output_dir: Path,
        *,
        run_id: str,
        endpoint: str,
        shard: str = "s0of1",
        flush_rows: int = 1000,
        flush_seconds: float = 5.0,
        before_part: Callable[[], object] | None = None,
        keep_request: bool = False,
        after_part: Callable[[Path, list[Result]], object] | None = None,
    ) -> None:
        """``before_part`` runs in the flush, before each part is written: ``ImageStore.sync``,
        so that every image a part names is durable before the part is. ``after_part`` gets each
        part written and its results (``Mirror.part_written`` sends them to object storage); its
        failure stops the run, and the part, on disk, goes up at the next start."""
        self.folder = output_dir / MANIFEST_DIR
        self.run_id = run_id
        self.endpoint = endpoint
        self.shard = shard
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.before_part = before_part
        self.keep_request = keep_request
        self.after_part = after_part
        self.buffer: list[Result] = []  # made into rows only when written, in the worker thread
        self.seq = 0
        self.written = 0
        self._last_flush = time.monotonic()
        self._folder_synced = False
        self.error: SinkError | None = None
        self.journal = Journal(output_dir, run_id=run_id, shard=shard, endpoint=endpoint)

    def add(self, result: Result) -> None:
        self.buffer.append(result)

    def due(self) -> bool:
        return len(self.buffer) >= self.flush_rows or (
            bool(self.buffer) and time.monotonic() - self._last_flush >= self.flush_seconds
        )

    def seconds_to_due(self) -> float:
        return max(0.0, self.flush_seconds - (time.monotonic() - self._last_flush))

    def flush(self) -> None:
        """Write the buffer as one new part (blocking; run it in a worker thread)."""
        self._last_flush = time.monotonic()
        if not self.buffer:
            return
        rows, self.buffer = self.buffer, []
        try:
            frame = manifest_frame(rows, endpoint=self.endpoint, run_id=self.run_id, keep_request=self.keep_request)
            if self.before_part is not None:
                self.before_part()
            self.journal.seal()  # what comes next goes to a new segment; this one is fsynced
            if not self._folder_synced:  # the entries of manifest/ and the output folder, once a run
                make_folder(self.folder)
                fsync_dir(self.folder.parent)
                fsync_dir(self.folder.parent.parent)
                self._folder_synced = True
            part = write_part(self.folder, part_name(self.run_id, self.shard, self.seq), frame)
        except OSError as exc:
            self.buffer = rows + self.buffer  # keep them for a later try
            reason = write_failure(exc)
            raise SinkError(f"cannot write the manifest in {self.folder}: {reason}") from None
        except SinkError:
            self.buffer = rows + self.buffer
            raise
        self.seq += 1
        self.written += len(rows)
        self.journal.recorded(rows)  # the segments whose every result is in a part go
        if self.after_part is not None:
            self.after_part(part, rows)

    async def consume(
        self,
        results: MemoryObjectReceiveStream[Result],
        on_result: Callable[[Result], None] | None = None,
        on_error: Callable[[SinkError], None] | None = None,
    ) -> None:
        """Drain ``results`` until the pool closes it, flushing on size and on time; the final
        flush is shielded so that a cancelled run still keeps what finished. A write that fails
        is reported once through ``on_error`` (which stops the pool) and kept in ``error``."""
        try:
            async with results:
                while True:
                    with anyio.move_on_after(self.seconds_to_due() or self.flush_seconds):
                        try:
                            result = await results.receive()
                        except anyio.EndOfStream:
                            break
                        while True:  # and whatever else is waiting, without a checkpoint each
                            self.add(result)
                            if on_result is not None:
                                on_result(result)
                            if len(self.buffer) >= self.flush_rows:
                                break
                            try:
                                result = results.receive_nowait()
                            except (anyio.WouldBlock, anyio.EndOfStream):
                                break
                    if self.due() and self.error is None:
                        await self._flush_reporting(on_error)
        finally:
            buffered = {r.request.key for r in self.buffer}
            for stranded in self.journal.unrecorded():  # journaled, then its worker was cancelled
                if stranded.request.key not in buffered:
                    self.add(stranded)
                    if on_result is not None:
                        on_result(stranded)
            with anyio.move_on_after(60, shield=True):
                if self.error is None:
                    await self._flush_reporting(on_error)
            self.journal.close()

    async def _flush_reporting(self, on_error: Callable[[SinkError], None] | None) -> None:
        try:
            await anyio.to_thread.run_sync(self.flush)
        except SinkError as exc:
            self.error = exc
            if on_error is not None:
                on_error(exc)

    def __repr__(self) -> str:
        return f"ManifestWriter(buffered={len(self.buffer)}, parts={self.seq}, written={self.written})"
