"""``export --embed-images``: Parquet shards whose image column ``datasets`` decodes, as the Hub takes them."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import anyio
import httpx
import polars as pl
import pytest
from helpers import JobWriter, read_manifest
from PIL import Image

from batchrun.cli import main
from batchrun.errors import ExitCode
from batchrun.hub import export_hub
from batchrun.runner import run_job
from batchrun.simulator import FaultPlan, Trigger, create_app, render_image
from batchrun.spec import load_job

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")

HF_REQUEST = (
    'inputs = "{{ prompt }}"\n'
    'parameters = { num_inference_steps = 4, width = 48, height = 32, negative_prompt = "{{ negative }}" }\n'
    "samples = 2"
)


@pytest.fixture(autouse=True)
def offline_hf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def run_images(write_job: JobWriter, n: int) -> Path:
    """``n`` prompts x 2 samples against the in-process simulator; the prompt 'style 5' fails. The
    input has a column named ``image`` too."""
    job_path = write_job(
        rows=[{"id": i, "prompt": f"a cat, style {i}", "negative": "blurry", "image": f"ref {i}"} for i in range(n)],
        preset="hf-text-to-image",
        endpoint='base_url = "http://sim.test/"\nmodel = "black-forest-labs/FLUX.1-dev"',
        request=HF_REQUEST,
        top='id_column = "id"',
        limits="concurrency = 8\nmax_retry_wait_s = 0.01",
    )
    sim = create_app(FaultPlan(triggers=[Trigger("style 5", "400")]))

    async def go() -> ExitCode:
        summary = await run_job(load_job(job_path), transport=httpx.ASGITransport(app=sim), quiet=True)
        return summary.exit_code

    assert anyio.run(go) == ExitCode.FAILED_ROWS
    return job_path


def load(folder: Path) -> Any:
    files = sorted(str(p) for p in folder.glob("train-*.parquet"))
    return datasets.load_dataset("parquet", data_files=files, split="train")


def test_shards_load_with_images_decoded(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = load_job(run_images(write_job, 8))
    out = job.output_dir
    hub = tmp_path / "hub"
    assert main(["export", str(out), "--embed-images", "--to", str(hub)]) == 0
    assert "14 images" in capsys.readouterr().out
    assert [p.name for p in hub.iterdir()] == ["train-00000-of-00001.parquet"]

    ds = load(hub)
    assert ds.num_rows == 14  # 8 prompts x 2 samples, less the two of the failed prompt
    assert isinstance(ds.features["image"], datasets.Image)
    assert {"prompt", "negative", "id", "seed", "sample", "endpoint", "request_key"} <= set(ds.column_names)
    assert "style 5" not in " ".join(ds["prompt"])
    assert [f"ref {i}" for i in ds["id"]] == ds["input_image"]  # the input's own image column, renamed
    assert set(ds["endpoint"]) == {job.endpoint.name}
    manifest = {r["request_key"]: r for r in read_manifest(out).iter_rows(named=True)}
    for row in ds:
        image = row["image"]
        assert isinstance(image, Image.Image) and image.size == (48, 32)
        recorded = manifest[row["request_key"]]
        assert (row["seed"], row["sample"]) == (recorded["seed"], recorded["sample"])
        expected = Image.open(io.BytesIO(render_image(row["prompt"], seed=row["seed"], width=48, height=32)))
        assert image.tobytes() == expected.tobytes()
    # the struct is datasets' own Image type, bytes and file name inside
    table = pq.read_table(hub / "train-00000-of-00001.parquet")
    assert table.schema.field("image").type == datasets.Features({"image": datasets.Image()}).arrow_schema[0].type
    first = table.column("image")[0].as_py()
    assert first["bytes"] == (out / manifest[table.column("request_key")[0].as_py()]["image_path"]).read_bytes()
    assert first["path"].endswith(".png") and "/" not in first["path"]


def test_a_small_shard_limit_gives_several_shards_and_replaces_old_ones(write_job: JobWriter, tmp_path: Path) -> None:
    job = load_job(run_images(write_job, 8))
    out = job.output_dir
    sizes = read_manifest(out).filter(pl.col("status") == "ok")["image_bytes"]
    hub = tmp_path / "hub"
    limit = 3 * int(sizes.max())
    shards, n = export_hub(job, hub, shard_bytes=limit)
    assert n == 14 and len(shards) >= -(-int(sizes.sum()) // limit) >= 4
    names = [f"train-{i:05d}-of-{len(shards):05d}.parquet" for i in range(len(shards))]
    assert sorted(p.name for p in hub.iterdir()) == names == [p.name for p in shards]
    for shard in shards:
        images = pq.read_table(shard).column("image").to_pylist()
        assert images and sum(len(image["bytes"]) for image in images) <= limit
    ds = load(hub)
    assert ds.num_rows == 14 and len(set(ds["request_key"])) == 14
    assert ds[13]["image"].size == (48, 32)

    (hub / ".tmp-train-00003.parquet").write_bytes(b"left by a killed export")
    shards, n = export_hub(job, hub)  # one shard now: the earlier ones go
    assert [p.name for p in hub.iterdir()] == ["train-00000-of-00001.parquet"] and (n, len(shards)) == (14, 1)
    assert load(hub).num_rows == 14


def test_embed_images_wants_a_folder_and_images(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = load_job(run_images(write_job, 6)).output_dir
    assert main(["export", str(out), "--embed-images", "--imagefolder"]) == 2
    assert "--to FOLDER" in capsys.readouterr().err
    assert main(["export", str(out), "--embed-images", "--to", str(tmp_path / "h"), "--format", "jsonl"]) == 2
    assert "--format parquet or webdataset" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()


def test_webdataset_shards_load_with_images_decoded(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = load_job(run_images(write_job, 6))
    out, hub = job.output_dir, tmp_path / "wds"
    assert main(["export", str(out), "--embed-images", "--to", str(hub), "--format", "webdataset"]) == 0
    assert "10 images" in capsys.readouterr().out
    with tarfile.open(hub / "train-00000-of-00001.tar") as archive:
        names = archive.getnames()
    assert len(names) == 20 and names[0].endswith(".png") and names[1] == names[0].replace(".png", ".json")
    ds = datasets.load_dataset("webdataset", data_files=[str(hub / "train-00000-of-00001.tar")], split="train")
    assert ds.num_rows == 10 and isinstance(ds.features["png"], datasets.Image)
    manifest = {r["request_key"]: r for r in read_manifest(out).iter_rows(named=True)}
    for row in ds:
        meta = row["json"]
        assert row["__key__"] == meta["request_key"] and meta["seed"] == manifest[meta["request_key"]]["seed"]
        expected = render_image(meta["prompt"], seed=meta["seed"], width=48, height=32)
        assert row["png"].size == (48, 32) and row["png"].tobytes() == Image.open(io.BytesIO(expected)).tobytes()
        assert meta["input_image"] == f"ref {meta['id']}" and meta["endpoint"] == job.endpoint.name

    sizes = read_manifest(out).filter(pl.col("status") == "ok")["image_bytes"]
    shards, n = export_hub(job, hub, fmt="webdataset", shard_bytes=2 * int(sizes.max()) + 4096)
    assert n == 10 and len(shards) >= 4 and sorted(p.name for p in hub.iterdir()) == [p.name for p in shards]
    files = [str(p) for p in shards]
    assert datasets.load_dataset("webdataset", data_files=files, split="train").num_rows == 10
    assert main(["export", str(out), "--imagefolder", "--format", "webdataset"]) == 2
    assert "goes with --embed-images" in capsys.readouterr().err
    gone = next(out.glob("images/*/*.png"))
    gone.unlink()
    assert main(["export", str(out), "--embed-images", "--to", str(tmp_path / "h")]) == 2
    assert f"cannot read {gone}" in capsys.readouterr().err
    assert not list((tmp_path / "h").iterdir())  # no shard, no temp file left
