"""``--debug`` prints the traceback behind an error; the job's secrets are taken out of it (and
out of the error line), as out of every log line."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import JobWriter

from batchrun import cli
from batchrun.errors import SinkError

KEY = "sk-debug-0123456789abcdef"


@pytest.mark.parametrize("wrapped", [False, True])
def test_the_debug_traceback_names_no_secret(
    write_job: JobWriter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    wrapped: bool,
) -> None:
    monkeypatch.setenv("BENCH_KEY", KEY)
    job = str(
        write_job(
            rows=[{"question": "q"}], endpoint='base_url = "http://llm.test"\nmodel = "m"\napi_key_env = "BENCH_KEY"'
        )
    )

    def echo(*_: Any, **__: Any) -> Any:  # as a server page that echoes the header back
        error = RuntimeError(f"the page said: Authorization: Bearer {KEY}")
        if wrapped:  # a BatchrunError prints its cause's traceback
            raise SinkError("cannot write the manifest") from error
        raise error

    monkeypatch.setattr(cli, "run_job", echo)
    assert cli.main(["--debug", "run", job, "-q"]) == 4
    err = capsys.readouterr().err
    assert "RuntimeError: the page said: Authorization: Bearer ***" in err
    if wrapped:
        assert err.startswith("batchrun: error: cannot write the manifest\n")
    else:
        assert "Traceback (most recent call last)" in err
        assert "batchrun: error: stopped: unexpected RuntimeError: the page said: Authorization: Bearer ***" in err
    assert KEY not in err and KEY[:8] not in err
