"""Rows -> keyed requests. Pure (the occurrence index it is given may spill to disk), so every
rule here is testable with plain values.

The request key is a hash of what is sent and where plus the occurrence number among identical
requests (the recipe: ``plan.keying``), so N rows in give N results, a reordered or appended
table resumes correctly, and a changed template makes new requests. With ``dedupe`` identical
requests share occurrence 0: sent once, shared by every row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import TemplateError
from ..models import DoneKeys, Request, short_key
from ..spec import Job
from .bodies import canonical_json, seeded
from .keying import OFF_LIMITS, UNRENDERED, Keying
from .occurrences import Occurrences
from .rendering import Renderer
from .requests import RequestMaker

if TYPE_CHECKING:
    import numpy as np


@dataclass(slots=True)
class PlanCounts:
    """Running totals, for ``batchrun plan`` and the progress line."""

    rows: int = 0
    requests: int = 0  # rows x samples
    shared: int = 0  # requests answered by an identical earlier one (dedupe)
    done: int = 0  # already in the manifest
    done_failed: int = 0  # of which failed for good in an earlier run
    skipped: int = 0  # rows with an empty prompt, when the job says to skip them
    todo: int = 0
    other_shards: int = 0  # to do, but keyed into another shard's part (``--shard K/N``)
    off_limits: int = 0  # requests refused, unsent: their URL's origin is not one the job allows
    first_off_limits: str | None = None  # the first of them: its row and why


#: what ``contents`` keeps of a rendered request: URL, body, seed, model, row id, refusal
Kept = tuple[str, bytes, int | None, str | None, str | None, str | None]


def _drop(_: object) -> None:
    """Keeps nothing."""


class Planner:
    """Renders rows into requests, keys them and drops what is already done."""

    def __init__(self, job: Job, done_keys: DoneKeys | None = None, occurrences: Occurrences | None = None) -> None:
        self.method = "POST"
        self.renderer = Renderer(job)
        self.samples = job.request.samples
        self.done_keys = done_keys if done_keys is not None else DoneKeys()
        # a URL whose origin comes from the row is checked per row (a literal one was, in spec)
        self.origins = None if job.endpoint.origins.fixed else job.endpoint.origins
        self.seeded = job.endpoint.wire.seeds_samples
        self.counts = PlanCounts()
        self.include_shared = False  # export: also yield the rows that dedupe answers with an earlier result
        self.skip_empty = job.empty_prompts == "skip"
        self.skipped_rows: list[tuple[int, str | None]] = []  # the first few, for the log
        # a row that does not render fails on its own (a permanent failure, not sent), keyed by the
        # templates and the row, so a fixed template renders it anew; ``strict`` raises instead: the
        # check of the first row, before anything is sent
        self.strict = False
        # how many identical requests came before each one, in flat memory (spills to disk); the
        # model as written (a template, maybe) is part of every request key
        occurrences = occurrences if occurrences is not None else Occurrences()
        self.keying = Keying(self.method, job.endpoint.model, job.dedupe, occurrences)
        self.make = RequestMaker(job, self.method)
        # with journal on, every planned request is noted (row, sample, key, content, shared; sample
        # -1 for a skipped row), so a later run over the same input can skip rendering these rows
        self.journal: list[tuple[int, int, str, int, bool]] | None = None
        # ``--shard K/N``: every row is rendered and keyed (occurrence numbers are the whole job's),
        # but another shard's request is only counted: not looked up as a request, never built
        self.shard = job.shard

    def plan(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[Request]:
        """Yield the requests still to send for ``rows``, in input order."""
        counts = self.counts
        for row in rows:
            index = counts.rows
            counts.rows += 1
            try:
                rendered, (url, row_id, model) = self.renderer.render(row, index)
            except TemplateError as exc:
                yield from self._unrendered(row, index, exc)
                continue
            # judged now only when it decides the keys (a skipped row has none); else when sent
            refused = self.renderer.refusal(rendered) if self.skip_empty else None
            judged = self.skip_empty
            if refused is not None:
                counts.skipped += 1
                if self.journal is not None:
                    self.journal.append((index, -1, "", 0, False))
                if counts.skipped <= 20:
                    id_column = self.renderer.id_column
                    self.skipped_rows.append((index, None if id_column is None else str(row.get(id_column))))
                continue
            unseeded = body = canonical_json(rendered)
            if self.origins is not None and (off := self.origins.refusal(url)) is not None:
                yield from self._off_limits(index, row_id, url, model, body, off)
                continue
            for sample in range(self.samples):
                counts.requests += 1
                seed = None
                if self.seeded:
                    seed, body = seeded(rendered, unseeded, sample, index)
                key, shared, content = self.keying.key(url, body, sample)
                if self.journal is not None:
                    self.journal.append((index, sample, key, content, shared))
                if shared:
                    counts.shared += 1
                    if not self.include_shared:
                        continue
                short = short_key(key)
                if not shared and short in self.done_keys:
                    counts.done += 1
                    if short in self.done_keys.failed:
                        counts.done_failed += 1
                    continue
                if not shared and short % self.shard.count != self.shard.index:
                    counts.other_shards += 1
                    continue
                counts.todo += not shared
                if not judged:
                    refused, judged = self.renderer.refusal(rendered), True
                yield self.make.request(key, row_id, index, sample, url, body, seed, model, refused)

    def _unrendered(self, row: Mapping[str, Any], index: int, error: TemplateError) -> Iterator[Request]:
        """The requests of a row that does not render: each fails for good, unsent, with the reason.
        Keyed by the templates and the row's values, so a later run with the same templates does not
        try again (``--retry-failed`` does) and a fixed template renders the row anew."""
        if self.strict:
            raise error
        row_id = self.renderer.row_id(row)
        for sample, key in self._unsendable(index, UNRENDERED, self.renderer.unrendered(row)):
            yield self.make.unrendered(key, row_id, index, sample, str(error))

    def _off_limits(
        self, index: int, row_id: str | None, url: str, model: str | None, body: bytes, reason: str
    ) -> Iterator[Request]:
        """The requests of a row whose URL goes where the job did not say: each fails for good,
        unsent. Keyed with the allowed origins, so a later run that allows the origin sends them."""
        assert self.origins is not None
        pseudo = f"{OFF_LIMITS}{self.origins.fingerprint()} {url}"
        for sample, key in self._unsendable(index, pseudo, body):
            yield self._refused(key, row_id, index, sample, url, model, reason)

    def _unsendable(self, index: int, pseudo_url: str, body: bytes) -> Iterator[tuple[int, str]]:
        """Key and count the samples of a row that will not be sent (keyed under ``pseudo_url``), as
        ``plan`` does a sendable row's; yields ``(sample, key)`` for those not already recorded."""
        counts = self.counts
        for sample in range(self.samples):
            counts.requests += 1
            key, shared, content = self.keying.key(pseudo_url, body, sample)
            if self.journal is not None:
                self.journal.append((index, sample, key, content, shared))
            short = short_key(key)
            if shared or short in self.done_keys:
                counts.shared += shared
                counts.done += not shared
                counts.done_failed += not shared and short in self.done_keys.failed
                continue
            counts.todo += 1
            yield sample, key

    def _refused(
        self, key: str, row_id: str | None, index: int, sample: int, url: str, model: str | None, reason: str
    ) -> Request:
        counts = self.counts
        counts.off_limits += 1
        if counts.first_off_limits is None:
            counts.first_off_limits = f"row {index}: {reason}"
        return self.make.refused(key, row_id, index, sample, url, model, reason)

    def contents(
        self, rows: Iterable[Mapping[str, Any]], start: int, kept: list[Kept | None] | None = None
    ) -> Iterator[tuple[int, int, bytes]]:
        """The key's first stage for ``rows`` (the first is row ``start``): ``(row, sample, content
        digest)`` per request, as ``plan`` would key them, and ``(row, -1, b"")`` for a row that
        ``empty_prompts = "skip"`` skips. Counts nothing: no row depends on another here, so any
        process may compute any rows (``plan.digests``: shards share this, the costly part).
        ``kept``: one entry is appended for each yielded, what ``build`` makes a request of (None
        for a row that does not render or a URL off limits: those are rendered again)."""
        keep = kept.append if kept is not None else _drop
        content = self.keying.content
        for index, row in enumerate(rows, start):
            try:
                rendered, (url, row_id, model) = self.renderer.render(row, index)
            except TemplateError:
                body = self.renderer.unrendered(row)
                for sample in range(self.samples):
                    keep(None)
                    yield index, sample, content(UNRENDERED, body, sample)
                continue
            refused = self.renderer.refusal(rendered) if self.skip_empty or kept is not None else None
            if self.skip_empty and refused is not None:
                keep(None)
                yield index, -1, b""
                continue
            unseeded = body = canonical_json(rendered)
            if self.origins is not None and self.origins.refusal(url) is not None:
                pseudo = f"{OFF_LIMITS}{self.origins.fingerprint()} {url}"
                for sample in range(self.samples):
                    keep(None)
                    yield index, sample, content(pseudo, body, sample)
                continue
            for sample in range(self.samples):
                seed = None
                if self.seeded:
                    seed, body = seeded(rendered, unseeded, sample, index)
                keep((url, body, seed, model, row_id, refused))
                yield index, sample, content(url, body, sample)

    def build(self, key: str, index: int, sample: int, kept: Kept) -> Request:
        """The request of a row rendered before (``contents``), from what was kept of it."""
        url, body, seed, model, row_id, refused = kept
        return self.make.request(key, row_id, index, sample, url, body, seed, model, refused)

    def restore(self, rows: int, contents: np.ndarray | Iterable[int]) -> None:
        """Continue after ``rows`` rows planned by an earlier run: ``contents`` are the short digests
        of their requests, in plan order, so occurrence numbers go on exactly as before."""
        self.occurrences.seed(contents)
        self.counts.rows = rows

    def replan(self, rows: Iterable[tuple[int, Mapping[str, Any], list[tuple[int, str]]]]) -> Iterator[Request]:
        """Requests for rows planned before, whose keys are known: (row index, row, [(sample, key)])."""
        for index, row, keys in rows:
            try:
                rendered, (url, row_id, model) = self.renderer.render(row, index)
            except TemplateError as exc:
                if self.strict:
                    raise
                row_id = self.renderer.row_id(row)
                yield from (self.make.unrendered(key, row_id, index, sample, str(exc)) for sample, key in keys)
                continue
            refused = self.renderer.refusal(rendered)
            if self.origins is not None and (off := self.origins.refusal(url)) is not None:
                yield from (self._refused(key, row_id, index, sample, url, model, off) for sample, key in keys)
                continue
            unseeded = body = canonical_json(rendered)
            for sample, key in keys:
                seed = None
                if self.seeded:
                    seed, body = seeded(rendered, unseeded, sample, index)
                yield self.make.request(key, row_id, index, sample, url, body, seed, model, refused)

    @property
    def occurrences(self) -> Occurrences:
        return self.keying.occurrences

    @property
    def stale(self) -> int:
        """Done keys in the manifest that this plan no longer asks for (changed job or input)."""
        return max(0, len(self.done_keys) - self.counts.done)
