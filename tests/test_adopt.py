"""Images already on disk are adopted, not bought again: an image written whole under its final
name whose row was lost is checked like a fresh answer, hashed and recorded without a request; one
that fails the check is removed and requested again."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import httpx
import polars as pl
import pytest
from helpers import JobWriter, read_manifest
from PIL import Image

from batchrun.endpoints.images import check_image
from batchrun.models import Request
from batchrun.runner import run_job
from batchrun.simulator import create_app
from batchrun.sink.images import ImageStore
from batchrun.sink.manifest import MANIFEST_DIR
from batchrun.spec import load_job

KEY = "ab" * 32


@pytest.fixture(autouse=True)
def hf_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test")


def encoded(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (12, 8), (200, 30, 30)).save(out, format=fmt)
    return out.getvalue()


def request() -> Request:
    return Request(KEY, "r", 0, 0, "POST", "http://x", b"{}", "sd")


def test_a_whole_image_is_adopted_with_its_type_size_and_hash(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert store.find(KEY) is None
    path = tmp_path / "images" / "ab" / f"{KEY}.jpg"
    path.parent.mkdir(parents=True)
    data = encoded("JPEG")
    path.write_bytes(data)
    assert store.find(KEY) == path
    result = store.adopt(request(), path)
    assert result is not None and result.status == "ok" and result.attempts == 0
    assert result.parsed is not None and result.parsed.image is None
    assert (result.parsed.mime_type, result.parsed.width, result.parsed.height) == ("image/jpeg", 12, 8)
    assert result.parsed.image_path == f"images/ab/{KEY}.jpg"
    assert result.parsed.image_sha256 == hashlib.sha256(data).hexdigest()
    assert result.parsed.image_bytes == len(data)
    assert store.sync() == 3  # its folder and parents are synced before the part that names it
    assert (store.adopted, store.discarded) == (1, 0)


@pytest.mark.parametrize("content", [encoded("JPEG"), encoded("PNG")[:-20], b'{"error": "overloaded"}', b""])
def test_a_file_that_fails_the_check_is_removed(tmp_path: Path, content: bytes) -> None:
    store = ImageStore(tmp_path)
    path = tmp_path / "images" / "ab" / f"{KEY}.png"  # a JPEG under .png fails as a mislabelled answer does
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert store.adopt(request(), path) is None
    assert not path.exists() and store.find(KEY) is None
    assert (store.adopted, store.discarded) == (0, 1)


@pytest.mark.anyio
async def test_images_whose_rows_were_lost_are_not_requested_again(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app()
    job = load_job(
        write_job(
            rows=[{"id": i, "prompt": f"a fox, take {i}"} for i in range(10)],
            preset="hf-text-to-image",
            endpoint='base_url = "http://sim.test/"\nmodel = "sdxl"',
            request='inputs = "{{ prompt }}"\nparameters = { width = 24, height = 16 }\nsamples = 2',
            top='id_column = "id"',
        )
    )
    await run_job(job, transport=httpx.ASGITransport(app=sim), quiet=True)
    first = read_manifest(job.output_dir).sort("request_key")
    assert first.height == 20 and sim.stats.total == 20
    shutil.rmtree(job.output_dir / MANIFEST_DIR)  # every row lost, every image still there
    paths = first["image_path"].to_list()
    truncated, mislabelled = job.output_dir / paths[3], job.output_dir / paths[11]
    truncated.write_bytes(truncated.read_bytes()[:-30])
    mislabelled.write_bytes(b"<html>502 Bad Gateway</html>")

    sim.reset()
    summary = await run_job(job, transport=httpx.ASGITransport(app=sim), quiet=True)
    assert sim.stats.total == 2 and summary.sent == 2 and summary.ok == 20
    rows = read_manifest(job.output_dir).sort("request_key")
    assert rows.height == 20 and set(rows["status"]) == {"ok"}
    assert rows["attempts"].to_list() == [1 if i in (3, 11) else 0 for i in range(20)]
    assert rows["image_path"].to_list() == paths
    assert rows.select("image_sha256", "image_bytes", "width", "height", "mime_type").equals(
        first.select("image_sha256", "image_bytes", "width", "height", "mime_type")
    )
    for path, sha in rows.select("image_path", "image_sha256").iter_rows():
        data = (job.output_dir / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
        assert check_image(data).mime_type == "image/png"
    assert rows.filter(pl.col("attempts") == 0)["latency_ms"].null_count() == 18


@pytest.mark.anyio
async def test_a_chat_job_never_looks_for_images(write_job: JobWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    looked: list[str] = []
    monkeypatch.setattr(ImageStore, "find", lambda self, key: looked.append(key))
    sim = create_app()
    job = load_job(write_job(rows=[{"id": "a", "question": "hi"}], endpoint='base_url = "http://x"\nmodel = "m"'))
    await run_job(job, transport=httpx.ASGITransport(app=sim), quiet=True)
    assert sim.stats.total == 1 and looked == []
