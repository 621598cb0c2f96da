"""Through the real entry point: exit codes, one-line errors, locks, plan, presets, python -m.
(Bad jobs and bad tables, with the simulator counting that nothing was sent: test_bad_input.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import JobWriter, questions, read_manifest

from batchrun.cli import main
from batchrun.errors import ExitCode, exit_codes_help
from batchrun.sink.lock import OutputLock

# every job here points at a port nothing listens on: if a request were sent, the run would not exit 2
DEAD = 'base_url = "http://127.0.0.1:9"\nmodel = "m"'


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_job_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "job file not found" in error_line(capsys)
    bad = tmp_path / "bad.toml"
    bad.write_text("name = ")
    assert main(["run", str(bad)]) == 2
    assert "not valid TOML" in error_line(capsys)
    bad.write_text('name = "x"\ninput = "i.csv"\n')
    assert main(["run", str(bad)]) == 2
    assert "endpoint: Field required" in error_line(capsys)


def test_locked_output_exits_5(write_job: JobWriter, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    job = write_job(rows=questions(3), endpoint=DEAD)
    (tmp_path / "out").mkdir()
    with OutputLock(tmp_path / "out", "other-run"):
        assert main(["run", str(job)]) == 5
    line = error_line(capsys)
    assert "in use by another run" in line and "other-run" in line


def test_plan_counts_without_sending(write_job: JobWriter, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [*questions(5), {"id": "dup", "question": "what is 0?"}]
    job = write_job(rows=rows, endpoint=DEAD)
    assert main(["plan", str(job)]) == 0
    out = capsys.readouterr().out
    assert "rows read        6" in out
    assert "to do            6" in out


def test_presets_lists_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("hf-endpoint", "openai", "openai-compatible", "hf-serverless", "custom", "simulator"):
        assert name in out


def test_python_dash_m_and_a_failing_endpoint(write_job: JobWriter, tmp_path: Path) -> None:
    job = write_job(
        rows=questions(2), endpoint=DEAD, limits="concurrency = 2\nmax_attempts = 2\nmax_retry_wait_s = 0.1"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", str(job)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3, proc.stderr
    assert "2 failed" in proc.stdout
    manifest = read_manifest(tmp_path / "out")
    assert manifest["error_kind"].to_list() == ["retryable_exhausted"] * 2
    assert all("cannot connect to http://127.0.0.1:9/v1/chat/completions" in e for e in manifest["error"])


def test_only_simulate_imports_the_simulator() -> None:
    check = (
        "import sys; from batchrun.cli import main; main(['presets']); "
        "assert 'batchrun.simulator' not in sys.modules and 'uvicorn' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "simulate", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "--latency" in proc.stdout


def test_the_exit_codes_are_told_in_the_same_words_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    """errors.ExitCode holds the words; --help prints them, and the README's table must say them."""
    with pytest.raises(SystemExit):
        main(["--help"])
    assert exit_codes_help() in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert exit_codes_help() in capsys.readouterr().out
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert {int(code[2:]): text.rstrip(" |").replace("`", "") for code, text in rows} == {
        int(code): code.explained for code in ExitCode
    }
