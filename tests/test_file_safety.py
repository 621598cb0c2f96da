"""Shared output folders: nothing batchrun creates is world-writable (whatever the umask), a link
planted where it creates a file is refused or removed, never followed, and ``export --to`` never
writes over (or into) the input table. Through the CLI, on the built-in simulator."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from helpers import JobWriter, questions, read_manifest

from batchrun.cli import main
from batchrun.errors import ExitCode, SinkError
from batchrun.sink.files import TMP_PREFIX, write_atomic
from batchrun.sink.journal import Journal
from batchrun.sink.lock import LOCK_NAME


def sim_job(write_job: JobWriter, n: int = 5) -> Path:
    return write_job(rows=questions(n), preset="simulator", endpoint="", top='id_column = "id"')


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_nothing_in_the_output_folder_is_world_writable_even_with_umask_0(
    umask_zero: None, write_job: JobWriter, tmp_path: Path
) -> None:
    path = sim_job(write_job)
    assert main(["run", str(path), "-q"]) == ExitCode.OK
    out = tmp_path / "out"
    made = [out, *out.rglob("*")]
    assert len(made) > 4 and read_manifest(out).height == 5
    writable = [str(p) for p in made if not p.is_symlink() and p.stat().st_mode & stat.S_IWOTH]
    assert writable == []
    assert stat.S_IMODE(out.stat().st_mode) == 0o775  # the umask (0) applied to 0o775: group keeps write


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_untouched(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).symlink_to(victim)
    path = sim_job(write_job)
    assert main(["run", str(path)]) == ExitCode.BAD_JOB
    err = capsys.readouterr().err
    assert "symbolic link" in err and LOCK_NAME in err
    assert victim.read_text() == "keep me\n"
    assert not (tmp_path / "out" / "manifest").exists()


def test_a_temp_file_planted_as_a_link_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    final = tmp_path / ".batchrun-job"
    (tmp_path / f"{TMP_PREFIX}{os.getpid()}-{final.name}").symlink_to(victim)
    write_atomic(final, lambda tmp: tmp.write_text("mine\n"))
    assert final.read_text() == "mine\n" and not final.is_symlink()
    assert victim.read_text() == "keep me\n"


def test_a_journal_segment_planted_as_a_link_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    journal = Journal(tmp_path, run_id="r1", shard="s0of1", endpoint="e")
    journal.folder.mkdir()
    journal.path(0).symlink_to(victim)
    from batchrun.models import Request, Result

    result = Result(Request("k", None, 0, 0, "POST", "http://x", b"{}", None), "ok", 1, 0.0, 0.0)
    with pytest.raises(SinkError):
        journal.add(result)
    assert victim.read_text() == "keep me\n"


@pytest.mark.parametrize("how", ["same", "link", "folder"])
def test_export_never_writes_over_or_into_the_input(
    how: str, write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sim_job(write_job)
    assert main(["run", str(path), "-q"]) == ExitCode.OK
    table = tmp_path / "input.parquet"
    before = table.read_bytes()
    if how == "same":
        target = table
    elif how == "link":
        target = tmp_path / "alias.parquet"
        target.symlink_to(table)
    else:  # the input is a folder: a results file in it would be read as input next run
        (tmp_path / "data").mkdir()
        table.rename(tmp_path / "data" / "input.parquet")
        table = tmp_path / "data" / "input.parquet"
        path.write_text(path.read_text().replace('input = "input.parquet"', 'input = "data"'))
        target = tmp_path / "data" / "results.parquet"
    capsys.readouterr()
    assert main(["export", str(path), "--to", str(target)]) == ExitCode.BAD_JOB
    err = capsys.readouterr().err
    assert "export --to" in err and "input" in err
    assert table.read_bytes() == before
    assert how != "folder" or not target.exists()
    # elsewhere is fine
    assert main(["export", str(path), "--to", str(tmp_path / "results.parquet")]) == 0
    assert pl.read_parquet(tmp_path / "results.parquet").height == 5


@pytest.mark.parametrize("name", ["manifest", "journal", "images", ".batchrun-job"])
def test_a_folder_planted_as_a_link_in_the_output_folder_is_refused(
    name: str, write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / name).symlink_to(elsewhere)
    path = sim_job(write_job)
    assert main(["run", str(path)]) == ExitCode.BAD_JOB
    assert "symbolic link" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


def test_an_image_folder_planted_as_a_link_is_not_written_through(tmp_path: Path) -> None:
    from batchrun.sink.images import ImageStore
    from batchrun.sink.layout import image_relpath

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    relpath = Path(image_relpath("ab" * 16, "image/png"))
    (tmp_path / relpath.parent.parent).mkdir(parents=True)
    (tmp_path / relpath.parent).symlink_to(elsewhere)
    store = ImageStore(tmp_path)
    from batchrun.models import Parsed, Request, Result

    request = Request("ab" * 16, None, 0, 0, "POST", "http://x", b"{}", None)
    result = Result(request, "ok", 1, 0.0, 0.0, parsed=Parsed(image=b"\x89PNG", mime_type="image/png"))
    with pytest.raises(SinkError, match="symbolic link"):
        store.save(result)
    assert list(elsewhere.iterdir()) == []
