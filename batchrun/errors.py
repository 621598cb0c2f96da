"""The error tree, and the exit code each branch ends a run with.

BatchrunError
├── JobError              exit 2: bad job file, input table or usage; nothing was sent
│   ├── SpecError         the job file: which file, which field, why
│   ├── InputError        the input table: which file, what is wrong with it
│   └── TemplateError     a template that does not parse or does not render for a row
├── OutputLockedError     exit 5: another run holds the output folder
├── SinkError             the output folder cannot be written (full disk, permissions)
├── StoppedError          exit 4: a run stopped by what it met after sending (an input error mid-run,
│                         a bug): what finished is saved, the lock released
└── RequestError          one request failed; carries the endpoint's answer as context
    ├── RetryableError    worth another attempt (429, 5xx, timeouts, resets, broken 200 bodies)
    ├── PermanentError    this row will never succeed as sent (400, 404, 422, a whole 200 answer
    │                     that does not fit the job)
    └── FatalError        the endpoint refuses us (401, 403, bad URL): stop the whole job
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What a run's exit status means: the summary line, ``--help`` and the README's table all say
    it with the words below (a test holds the README to them)."""

    OK = 0
    BAD_JOB = 2
    FAILED_ROWS = 3
    INCOMPLETE = 4
    LOCKED = 5

    @property
    def meaning(self) -> str:
        """A few words, for the end of the summary line."""
        return _MEANINGS[self][0]

    @property
    def explained(self) -> str:
        """The meaning with what leads to it, for ``--help`` and the README."""
        meaning, detail = _MEANINGS[self]
        return f"{meaning} ({detail})" if detail else meaning


_MEANINGS = {
    ExitCode.OK: ("every request ok", ""),
    ExitCode.BAD_JOB: ("bad job file, input or usage; nothing was sent", ""),
    ExitCode.FAILED_ROWS: ("finished, some requests failed", "see the manifest's error column"),
    ExitCode.INCOMPLETE: (
        "stopped early; run again to resume",
        "signal, --max-runtime, fatal endpoint error such as 401/403, full disk",
    ),
    ExitCode.LOCKED: ("the output folder is locked by another run", ""),
}


def exit_codes_help() -> str:
    return "exit codes:\n" + "".join(f"  {int(code)}  {code.explained}\n" for code in ExitCode)


class BatchrunError(Exception):
    """Base of every error batchrun raises on purpose."""

    exit_code: ExitCode = ExitCode.INCOMPLETE


class JobError(BatchrunError):
    exit_code = ExitCode.BAD_JOB


class SpecError(JobError):
    def __init__(self, path: str, field: str, reason: str) -> None:
        self.path, self.field, self.reason = path, field, reason
        where = f"{path}: {field}" if field else path
        super().__init__(f"{where}: {reason}")


class InputError(JobError):
    pass


class TemplateError(JobError):
    pass


class OutputLockedError(BatchrunError):
    exit_code = ExitCode.LOCKED


class SinkError(BatchrunError):
    exit_code = ExitCode.INCOMPLETE


class StoppedError(BatchrunError):
    """The run stopped after requests were sent, so "nothing was sent" (exit 2) would be false.
    ``__cause__`` keeps the error that stopped it, for ``--debug``."""

    exit_code = ExitCode.INCOMPLETE

    @classmethod
    def after(cls, exc: BaseException) -> StoppedError:
        if isinstance(exc, BatchrunError):
            reason = str(exc)
        else:  # not raised on purpose: say what it was, in one line
            reason = f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"
        stopped = cls(f"stopped: {reason}; what finished is saved, run again to resume")
        stopped.__cause__ = exc
        return stopped


class RequestError(BatchrunError):
    """One attempt at one request failed; ``kind`` names the branch for the manifest."""

    kind = "request"

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        unreachable: bool = False,
        reason: str | None = None,
        answer: str | None = None,
        raw: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.unreachable = unreachable  # no such endpoint: a 404, a name that does not resolve, refused
        self.http_status = http_status
        self.retry_after = retry_after
        self.request_id = request_id
        # what went wrong without the parts that differ from row to row (a body excerpt), so failures
        # can be compared; the message when None
        self.reason = reason
        # a well-formed answer that did not fit the job: its start, and all of it when raw is kept
        self.answer = answer
        self.raw = raw

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, http_status={self.http_status})"


class RetryableError(RequestError):
    kind = "retryable_exhausted"


class PermanentError(RequestError):
    kind = "permanent"


class FatalError(RequestError):
    kind = "fatal"
