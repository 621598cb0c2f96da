"""Rows -> keyed requests. Pure (the occurrence index it is given may spill to disk), so every
rule here is testable with plain values.

The request key is a hash of what is sent and where (method, URL, model, body, sample; never
credentials) plus the occurrence number among identical requests, so N rows in give N results,
a reordered or appended table resumes correctly, and a changed template makes new requests.
With ``dedupe`` identical requests share occurrence 0: sent once, shared by every row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import TemplateError
from ..models import DoneKeys, Request, estimated_tokens, short_key
from ..spec import Job
from .occurrences import Occurrences

if TYPE_CHECKING:
    import numpy as np
from .shape import completion_cap, job_body_template, prompt_reader, prompt_template
from .templates import compile_template, referenced_names


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


UNRENDERED = "unrendered:"  # stands for the URL in the key of a row that does not render
OFF_LIMITS = "off-limits:"  # before the allowed origins and the URL, in the key of a refused request
#: what ``contents`` keeps of a rendered request: URL, body, seed, model, row id, refusal
Kept = tuple[str, bytes, int | None, str | None, str | None, str | None]
EMPTY_PROMPT = 'the prompt renders empty; not sent (empty_prompts = "skip" skips such rows)'


def _is_empty(value: Any) -> bool:
    """Nothing to ask: a rendered prompt that is null, empty or whitespace, or made only of such."""
    if isinstance(value, list):
        return all(_is_empty(v) for v in value)
    return value is None or (isinstance(value, str) and not value.strip())


def _number(value: float) -> str:
    return f"{int(value):,}" if value == int(value) else f"{value:,}"


def _as_model(value: Any) -> str | None:
    return None if value is None else str(value)


def _stream_suffix(job: Job) -> bytes | None:
    """The streaming fields, added after the key is taken: streamed or not, the question is the
    same, so switching streaming on reuses the answers already in the manifest."""
    if not job.endpoint.stream:
        return None
    fields: dict[str, Any] = {"stream": True}
    if job.endpoint.stream_usage:
        fields["stream_options"] = {"include_usage": True}
    return b"," + canonical_json(fields)[1:]


def _seeded(rendered: dict[str, Any], body: bytes, sample: int, index: int) -> tuple[int, bytes]:
    """Each sample its own recorded seed: the row's seed plus the sample index when the row gives
    one, else one derived from the request itself, so a rerun asks for the same images."""
    parameters = rendered.get("parameters") or {}
    given = parameters.get("seed")
    if given is not None:
        seed = _as_seed(given, index) + sample
    else:
        digest = hashlib.blake2b(body + sample.to_bytes(4, "little"), digest_size=4).digest()
        seed = int.from_bytes(digest, "little") & 0x7FFFFFFF
    return seed, canonical_json({**rendered, "parameters": {**parameters, "seed": seed}})


def _as_seed(value: Any, index: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TemplateError(f"parameters.seed renders {value!r} for row {index}, not an integer") from None


def _text_contents(body: Any) -> None:
    """Chat message contents are text, even when a CSV column was read as numbers."""
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if content is not None and not isinstance(content, str | list):
            message["content"] = str(content)


def _drop(_: object) -> None:
    """Keeps nothing."""


def _json_default(value: Any) -> Any:
    return str(value)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()


class Planner:
    """Renders rows into requests, keys them and drops what is already done."""

    def __init__(self, job: Job, done_keys: DoneKeys | None = None, occurrences: Occurrences | None = None) -> None:
        self.method = "POST"
        self.model = job.endpoint.model  # as written (a template, maybe): part of every request key
        self.render_model = compile_template(job.endpoint.model, "endpoint.model")
        self.samples = job.request.samples
        self.dedupe = job.dedupe
        self.id_column = job.id_column
        self.done_keys = done_keys if done_keys is not None else DoneKeys()
        self.render_body = compile_template(job_body_template(job), "request")
        self.render_url = compile_template(job.endpoint.url, "endpoint.url")
        # a URL whose origin comes from the row is checked per row (a literal one was, in spec)
        self.origins = None if job.endpoint.origins.fixed else job.endpoint.origins
        self.needs_row = any(
            "row" in names
            for value in (job_body_template(job), job.endpoint.url, prompt_template(job))
            for names in referenced_names(value).values()
        )
        self.text_contents = job.endpoint.wire.text_contents and not job.batch_input  # a batch body goes as written
        self.stream_suffix = _stream_suffix(job)
        self.seeded = job.endpoint.wire.seeds_samples
        self.counts = PlanCounts()
        self.include_shared = False  # export: also yield the rows that dedupe answers with an earlier result
        # emptiness is judged on the prompt part of the rendered body: what would be sent
        self.prompt_of = prompt_reader(job)
        self.render_prompt = compile_template(prompt_template(job), "prompt") if self.prompt_of is not None else None
        self.skip_empty = job.empty_prompts == "skip"
        self.token_limit = job.limits.tokens_per_minute
        self.completion_cap = completion_cap(job)
        self.skipped_rows: list[tuple[int, str | None]] = []  # the first few, for the log
        # a row that does not render fails on its own (a permanent failure, not sent), keyed by the
        # templates and the row, so a fixed template renders it anew; ``strict`` raises instead: the
        # check of the first row, before anything is sent
        self.strict = False
        self.endpoint = job.endpoint.name if job.several else None  # the lane of each request
        self._templates = canonical_json([job_body_template(job), job.endpoint.url, job.endpoint.model])
        # how many identical requests came before each one, in flat memory (spills to disk)
        self.occurrences = occurrences if occurrences is not None else Occurrences()
        self._prefixes: dict[str, bytes] = {}  # method, URL and model, hashed before every body
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
            context = {**row, "row": row} if self.needs_row else row
            try:
                rendered, (url, row_id, model) = self._render(row, context, index)
            except TemplateError as exc:
                yield from self._unrendered(row, index, exc)
                continue
            # judged now only when it decides the keys (a skipped row has none); else when sent
            refused = self._refusal(rendered) if self.skip_empty else None
            judged = self.skip_empty
            if refused is not None:
                counts.skipped += 1
                if self.journal is not None:
                    self.journal.append((index, -1, "", 0, False))
                if counts.skipped <= 20:
                    self.skipped_rows.append((index, None if self.id_column is None else str(row.get(self.id_column))))
                continue
            unseeded = body = canonical_json(rendered)
            if self.origins is not None and (off := self.origins.refusal(url)) is not None:
                yield from self._off_limits(index, row_id, url, model, body, off)
                continue
            for sample in range(self.samples):
                counts.requests += 1
                seed = None
                if self.seeded:
                    seed, body = _seeded(rendered, unseeded, sample, index)
                key, shared, content = self._key(url, body, sample)
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
                    refused, judged = self._refusal(rendered), True
                yield self._request(key, row_id, index, sample, url, body, seed, model, refused)

    def _render(
        self, row: Mapping[str, Any], context: Mapping[str, Any], index: int
    ) -> tuple[Any, tuple[str, str | None, str | None]]:
        """The body, URL, row id and model of one row; ``TemplateError`` if any of them cannot be made."""
        rendered = self._body(context)
        where = self._where(row, context, rendered, index)
        seed = (rendered.get("parameters") or {}).get("seed") if self.seeded and isinstance(rendered, dict) else None
        if seed is not None:
            _as_seed(seed, index)  # a seed that is not an integer fails the row, every sample of it
        return rendered, where

    def _unrendered(self, row: Mapping[str, Any], index: int, error: TemplateError) -> Iterator[Request]:
        """The requests of a row that does not render: each fails for good, unsent, with the reason.
        Keyed by the templates and the row's values, so a later run with the same templates does not
        try again (``--retry-failed`` does) and a fixed template renders the row anew."""
        if self.strict:
            raise error
        row_id = None if self.id_column is None or row.get(self.id_column) is None else str(row[self.id_column])
        body = canonical_json([self._templates.decode(), dict(row)])
        for sample, key in self._unsendable(index, UNRENDERED, body):
            yield self._unsent(key, row_id, index, sample, str(error))

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
            key, shared, content = self._key(pseudo_url, body, sample)
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
        return Request(key, row_id, index, sample, self.method, url, b"", model, refused=reason, endpoint=self.endpoint)

    def _unsent(self, key: str, row_id: str | None, index: int, sample: int, reason: str) -> Request:
        return Request(
            key=key,
            row_id=row_id,
            row_index=index,
            sample=sample,
            method=self.method,
            url=UNRENDERED,
            body=b"",
            model=self.model,
            seed=None,
            refused=f"the row does not render: {reason}",
            endpoint=self.endpoint,
        )

    def _key(self, url: str, body: bytes, sample: int) -> tuple[str, bool, int]:
        """The request key, whether dedupe shares it with an identical request planned before, and
        the short digest of the content (what the occurrence index counts)."""
        return self.keyed(self._content(url, body, sample))

    def _content(self, url: str, body: bytes, sample: int) -> bytes:
        """The content digest of a request: the key's first stage, independent of every other row."""
        prefix = self._prefixes.get(url)
        if prefix is None:
            if len(self._prefixes) > 1024:
                self._prefixes.clear()
            prefix = self._prefixes[url] = b"\0".join((self.method.encode(), url.encode(), (self.model or "").encode()))
        return hashlib.blake2b(b"%s\0%d\0%s" % (prefix, sample, body), digest_size=16).digest()

    def keyed(self, content: bytes) -> tuple[str, bool, int]:
        """The key's second stage, in plan order: count the content digest among the requests
        planned before, and key it with its occurrence number. As ``_key``."""
        short = int.from_bytes(content[:8], "little")
        occurrence = self.occurrences.count(short)
        shared = bool(occurrence and self.dedupe)
        if shared:
            occurrence = 0  # the result of the first identical request serves this row too
        key = hashlib.blake2b(content + occurrence.to_bytes(8, "little"), digest_size=16).hexdigest()
        return key, shared, short

    def keyed_many(self, contents: np.ndarray, repeats: np.ndarray | None = None) -> tuple[list[bytes], np.ndarray]:
        """``keyed`` of a block of content digests (``V16``) at once: the keys as bytes and
        whether each is shared. The same recipe; only the hash is a step in Python. ``repeats``:
        the only short digests that may occur more than once in the job (``Occurrences.repeats``);
        the others are 0 without being counted."""
        import numpy as np

        shorts = np.ascontiguousarray(contents).view("<u8")[::2]  # the first 8 bytes, as ``keyed`` reads them
        if repeats is None:
            occurrences = self.occurrences.count_many(shorts)
        else:
            occurrences = np.zeros(len(shorts), dtype=np.int64)
            at = np.minimum(np.searchsorted(repeats, shorts), max(len(repeats) - 1, 0))
            maybe = (repeats[at] == shorts) if len(repeats) else np.zeros(len(shorts), dtype=bool)
            occurrences[maybe] = self.occurrences.count_many(shorts[maybe])
        shared = (occurrences > 0) & self.dedupe
        salted = np.empty(len(contents), dtype=[("content", "V16"), ("occurrence", "<u8")])
        salted["content"] = contents
        salted["occurrence"] = np.where(shared, 0, occurrences)
        blake2b = hashlib.blake2b
        keys = [blake2b(one, digest_size=16).digest() for one in salted.view("V24").tolist()]
        return keys, shared

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
        for index, row in enumerate(rows, start):
            context = {**row, "row": row} if self.needs_row else row
            try:
                rendered, (url, row_id, model) = self._render(row, context, index)
            except TemplateError:
                body = canonical_json([self._templates.decode(), dict(row)])
                for sample in range(self.samples):
                    keep(None)
                    yield index, sample, self._content(UNRENDERED, body, sample)
                continue
            refused = self._refusal(rendered) if self.skip_empty or kept is not None else None
            if self.skip_empty and refused is not None:
                keep(None)
                yield index, -1, b""
                continue
            unseeded = body = canonical_json(rendered)
            if self.origins is not None and self.origins.refusal(url) is not None:
                pseudo = f"{OFF_LIMITS}{self.origins.fingerprint()} {url}"
                for sample in range(self.samples):
                    keep(None)
                    yield index, sample, self._content(pseudo, body, sample)
                continue
            for sample in range(self.samples):
                seed = None
                if self.seeded:
                    seed, body = _seeded(rendered, unseeded, sample, index)
                keep((url, body, seed, model, row_id, refused))
                yield index, sample, self._content(url, body, sample)

    def build(self, key: str, index: int, sample: int, kept: Kept) -> Request:
        """The request of a row rendered before (``contents``), from what was kept of it."""
        url, body, seed, model, row_id, refused = kept
        return self._request(key, row_id, index, sample, url, body, seed, model, refused)

    def restore(self, rows: int, contents: np.ndarray | Iterable[int]) -> None:
        """Continue after ``rows`` rows planned by an earlier run: ``contents`` are the short digests
        of their requests, in plan order, so occurrence numbers go on exactly as before."""
        self.occurrences.seed(contents)
        self.counts.rows = rows

    def replan(self, rows: Iterable[tuple[int, Mapping[str, Any], list[tuple[int, str]]]]) -> Iterator[Request]:
        """Requests for rows planned before, whose keys are known: (row index, row, [(sample, key)])."""
        for index, row, keys in rows:
            context = {**row, "row": row} if self.needs_row else row
            try:
                rendered, (url, row_id, model) = self._render(row, context, index)
            except TemplateError as exc:
                if self.strict:
                    raise
                row_id = None if self.id_column is None or row.get(self.id_column) is None else str(row[self.id_column])
                yield from (self._unsent(key, row_id, index, sample, str(exc)) for sample, key in keys)
                continue
            refused = self._refusal(rendered)
            if self.origins is not None and (off := self.origins.refusal(url)) is not None:
                yield from (self._refused(key, row_id, index, sample, url, model, off) for sample, key in keys)
                continue
            unseeded = body = canonical_json(rendered)
            for sample, key in keys:
                seed = None
                if self.seeded:
                    seed, body = _seeded(rendered, unseeded, sample, index)
                yield self._request(key, row_id, index, sample, url, body, seed, model, refused)

    def renders_empty(self, row: Mapping[str, Any]) -> bool:
        """Whether the prompt of ``row`` renders empty: the check before sending, on the rows whose
        prompt columns are null, blank or false (``Table.inspect``). The prompt template alone is
        rendered (half the cost of the body); it renders what ``prompt_of`` reads from the body."""
        if self.render_prompt is None:
            return False
        try:
            return _is_empty(self.render_prompt({**row, "row": row} if self.needs_row else row))
        except TemplateError:
            return False  # not empty: a row that does not render fails on its own when planned

    def _body(self, context: Mapping[str, Any]) -> Any:
        rendered = self.render_body(context)
        if self.text_contents:
            _text_contents(rendered)
        return rendered

    def _refusal(self, rendered: Any) -> str | None:
        """Why this body is not to be sent: its prompt part is empty."""
        if self.prompt_of is not None and _is_empty(self.prompt_of(rendered)):
            return EMPTY_PROMPT
        return None

    def _where(
        self, row: Mapping[str, Any], context: Mapping[str, Any], rendered: Any, index: int
    ) -> tuple[str, str | None, str | None]:
        """The URL, the row id and the model (as sent) of one input row."""
        url = self.render_url(context)
        if not isinstance(url, str):
            raise TemplateError(f"template endpoint.url renders {url!r} for row {index}, not a URL")
        row_id = None
        if self.id_column is not None and row.get(self.id_column) is not None:
            row_id = str(row[self.id_column])
        model = rendered.get("model") if isinstance(rendered, dict) else None
        if model is None:  # not in the body (an image or serverless URL names it): the job's, rendered
            model = self.render_model(context)
        return url, row_id, _as_model(model)

    def _request(
        self,
        key: str,
        row_id: str | None,
        index: int,
        sample: int,
        url: str,
        body: bytes,
        seed: int | None,
        model: str | None,
        refused: str | None,
    ) -> Request:
        if self.stream_suffix is not None:
            body = body[:-1] + self.stream_suffix
        if refused is None and self.token_limit is not None:
            tokens = estimated_tokens(body, self.completion_cap)
            if tokens > self.token_limit:
                refused = (
                    f"about {tokens:,.0f} tokens ({len(body):,} bytes / 4 + max_tokens {self.completion_cap}), "
                    f"more than limits.tokens_per_minute = {_number(self.token_limit)}: it can never be sent"
                )
        return Request(
            key=key,
            row_id=row_id,
            row_index=index,
            sample=sample,
            method=self.method,
            url=url,
            body=body,
            model=model,
            seed=seed,
            refused=refused,
            endpoint=self.endpoint,
        )

    @property
    def stale(self) -> int:
        """Done keys in the manifest that this plan no longer asks for (changed job or input)."""
        return max(0, len(self.done_keys) - self.counts.done)
