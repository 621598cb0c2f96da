"""What is published works: the sdist builds, the wheel built from it installs into a fresh venv,
and that venv's ``batchrun`` runs the demo and writes its report, importing nothing from this tree.

The fresh venv reaches the dependencies through one ``.pth`` line naming this environment's
site-packages (a ``.pth`` path entry's own ``.pth`` files are not run, so this tree's editable
install stays out): only the wheel itself is installed, and whatever it lacks (a template, the
report's script, ``py.typed``) fails here. ``python -m build`` fetches setuptools for its isolated
build environment, as any build does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
# what .gitignore keeps out of a clone, and what a build leaves behind
SKIPPED = (
    ".git",
    ".venv*",
    "outputs",
    "results",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "build",
    "dist",
)
PACKAGE_DATA = {"batchrun/py.typed", "batchrun/report/page.html.j2", "batchrun/report/table.js"}

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(300)]


def run(*command: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(map(str, command))} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_the_wheel_built_from_the_sdist_installs_and_runs_the_demo(tmp_path: Path) -> None:
    source, dist, venv, work = (tmp_path / name for name in ("source", "dist", "venv", "work"))
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*SKIPPED), symlinks=True)
    run(sys.executable, "-m", "build", "--outdir", dist, ".", cwd=source)  # the sdist, then the wheel from it
    [sdist] = dist.glob("batchrun-*.tar.gz")
    [wheel] = dist.glob("batchrun-*-py3-none-any.whl")
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        assert {f"{top}/{name}" for name in PACKAGE_DATA | {"pyproject.toml", "README.md"}} <= set(archive.getnames())
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert names >= PACKAGE_DATA and "batchrun/simulator/app.py" in names
    assert not any(name.startswith(("tests/", "bench/", "jobs/")) for name in names)

    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    bin_dir = venv / "bin"
    purelib = run(bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
    (Path(purelib.strip()) / "batchrun-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        bin_dir / "python",
        "install",
        "--quiet",
        "--no-deps",
        wheel,
        cwd=tmp_path,
    )

    (work / "jobs").mkdir(parents=True)
    for name in ("demo.toml", "demo-prompts.csv"):
        shutil.copy(REPO / "jobs" / name, work / "jobs" / name)
    where = run(bin_dir / "python", "-c", "import batchrun; print(batchrun.__file__)", cwd=work)
    assert Path(where.strip()).is_relative_to(venv)
    assert run(bin_dir / "batchrun", "--version", cwd=work).strip() == "batchrun 0.1.0"
    said = run(bin_dir / "batchrun", "run", "jobs/demo.toml", "--quiet", cwd=work)
    assert "finished 200 requests (200 ok, 0 failed)" in said and said.rstrip().endswith("exit 0: every request ok")
    run(bin_dir / "batchrun", "report", "outputs/demo", cwd=work)
    page = (work / "outputs" / "demo" / "report.html").read_text()
    assert "<svg" in page and "demo" in page  # the template and the charts, from the installed package
