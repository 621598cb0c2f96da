"""Keyed, rendered requests -> ``Request`` values: one place makes each kind (to send, refused
for its URL, a row that does not render), so a request from the plan loop, from a replan and
from a shard's kept bodies is the same value.

What the table does not decide is added here, after the key is taken: the streaming fields,
the lane, and the refusal of a request the token limit can never let through.
"""

from __future__ import annotations

from ..models import Request, estimated_tokens
from ..spec import Job
from .bodies import stream_suffix
from .keying import UNRENDERED
from .shape import completion_cap


def _number(value: float) -> str:
    return f"{int(value):,}" if value == int(value) else f"{value:,}"


class RequestMaker:
    """Makes the requests of one endpoint of a job."""

    def __init__(self, job: Job, method: str) -> None:
        self.method = method
        self.model = job.endpoint.model  # as written: the model of a row that does not render
        self.endpoint = job.endpoint.name if job.several else None  # the lane of each request
        self.stream_suffix = stream_suffix(job)
        self.token_limit = job.limits.tokens_per_minute
        self.completion_cap = completion_cap(job)

    def request(
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

    def refused(
        self, key: str, row_id: str | None, index: int, sample: int, url: str, model: str | None, reason: str
    ) -> Request:
        """A request not sent, with the reason: its URL goes where the job did not say, or (as
        ``unrendered`` makes it) its row does not render."""
        return Request(key, row_id, index, sample, self.method, url, b"", model, refused=reason, endpoint=self.endpoint)

    def unrendered(self, key: str, row_id: str | None, index: int, sample: int, reason: str) -> Request:
        """A request of a row that does not render: the job's model as written, no URL."""
        return self.refused(key, row_id, index, sample, UNRENDERED, self.model, f"the row does not render: {reason}")
