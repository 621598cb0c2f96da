"""Text-to-image jobs: whole, checked image files; seeds per sample; the imagefolder export."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import random
import struct
import zlib
from pathlib import Path

import httpx
import polars as pl
import pytest
from helpers import JobWriter, read_manifest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from batchrun.cli import main
from batchrun.endpoints.images import OpenAIImageAdapter, RawImageAdapter, check_image
from batchrun.endpoints.png import PngError, check_png
from batchrun.errors import ExitCode, PermanentError, RetryableError, SinkError
from batchrun.models import Parsed, Request, Result
from batchrun.plan.planner import Planner
from batchrun.runner import run_job
from batchrun.simulator import FaultPlan, Trigger, create_app, render_image
from batchrun.sink import images as image_sink
from batchrun.sink import writer as manifest_writer
from batchrun.sink.images import ImageStore
from batchrun.sink.writer import ManifestWriter
from batchrun.spec import load_job

HF_IMAGE = 'base_url = "http://sim.test/"\nmodel = "black-forest-labs/FLUX.1-dev"'
HF_REQUEST = (
    'inputs = "{{ prompt }}"\n'
    'parameters = { num_inference_steps = 4, width = 48, height = 32, negative_prompt = "{{ negative }}" }\n'
    "samples = 2"
)


def prompts(n: int) -> list[dict[str, object]]:
    return [{"id": i, "prompt": f"a cat, style {i}", "negative": "blurry"} for i in range(n)]


def image_job(write_job: JobWriter, n: int, request: str = HF_REQUEST, **kwargs: str) -> Path:
    return write_job(
        rows=prompts(n),
        preset="hf-text-to-image",
        endpoint=HF_IMAGE,
        request=request,
        top='id_column = "id"',
        limits=kwargs.pop("limits", "concurrency = 8\nmax_retry_wait_s = 0.01"),
        **kwargs,
    )


@pytest.fixture(autouse=True)
def hf_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")


def test_check_image_accepts_whole_images_only() -> None:
    png = render_image("x", width=20, height=10)
    parsed = check_image(png)
    assert (parsed.mime_type, parsed.width, parsed.height) == ("image/png", 20, 10)
    with pytest.raises(RetryableError, match="not a valid image"):
        check_image(png[: len(png) // 2])
    # a whole PNG labelled image/jpeg is a paid answer: kept as the PNG it is
    assert RawImageAdapter().parse({"content-type": "image/jpeg"}, png).mime_type == "image/png"
    with pytest.raises(RetryableError, match="expected an image, got application/json"):
        RawImageAdapter().parse({"content-type": "application/json"}, b'{"error": "out of memory"}')
    with pytest.raises(RetryableError, match="not a valid image"):
        RawImageAdapter().parse({"content-type": "image/png"}, b'{"error": "x"}')
    jpeg = render_image("x", fmt="jpeg")
    assert RawImageAdapter().parse({"content-type": "image/jpeg"}, jpeg).mime_type == "image/jpeg"


def noise(mode: str, width: int, height: int, **options: int) -> bytes:
    rng = random.Random(f"{mode}{width}{height}{options}")
    image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3)).convert(mode)
    out = io.BytesIO()
    image.save(out, format="PNG", **options)
    return out.getvalue()


PNGS = [
    noise(mode, width, height, **options)
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")
    for width, height in ((1, 1), (7, 3), (40, 24))
    for options in ({}, {"compress_level": 0})
]


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_fixed_crcs(data: bytes) -> bytes:
    """Every chunk's CRC recomputed: damage that only a decoder, not a checksum, can find."""
    fixed, pos = bytearray(data), 8
    while pos + 12 <= len(fixed):
        (length,) = struct.unpack_from(">I", fixed, pos)
        if pos + 12 + length > len(fixed):
            break
        fixed[pos + 8 + length : pos + 12 + length] = struct.pack(">I", zlib.crc32(fixed[pos + 4 : pos + 8 + length]))
        pos += 12 + length
    return bytes(fixed)


def full_decode_accepts(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def test_check_png_accepts_every_kind_of_whole_png() -> None:
    for png in PNGS:
        with Image.open(io.BytesIO(png)) as image:
            assert check_png(png) is True
            assert check_image(png).width == image.width


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(PNGS), st.data())
def test_check_png_accepts_nothing_a_full_decode_refuses(png: bytes, data: st.DataObject) -> None:
    """Truncated anywhere: refused. Bytes changed, with or without fixed CRCs: if the fast check
    passes it, Pillow's full decode passes it too."""
    cut = data.draw(st.integers(0, len(png) - 1))
    with pytest.raises(PngError):
        check_png(png[:cut])
    damaged = bytearray(png)
    for at, value in data.draw(st.lists(st.tuples(st.integers(8, len(png) - 1), st.integers(0, 255)), min_size=1)):
        damaged[at] = value
    for candidate in (bytes(damaged), with_fixed_crcs(bytes(damaged))):
        try:
            check_png(candidate)
        except PngError:
            continue
        assert full_decode_accepts(candidate)


def test_check_png_refuses_bad_rows_with_good_checksums() -> None:
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))  # 2x2 grey: rows of 1 + 2 bytes

    def png(rows: bytes, *extra: bytes) -> bytes:
        data = chunk(b"IDAT", zlib.compress(rows)) + b"".join(extra)
        return b"\x89PNG\r\n\x1a\n" + header + data + chunk(b"IEND", b"")

    assert check_png(png(b"\x00ab\x04cd"))
    for rows, why in [
        (b"\x00ab\x05cd", "unknown filter type"),
        (b"\x00ab\x00c", "not 6"),
        (b"\x00ab\x00cde", "more image data"),
    ]:
        with pytest.raises(PngError, match=why):
            check_png(png(rows))
    cut = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00ab\x00cd")[:-4]) + chunk(b"IEND", b"")
    with pytest.raises(PngError, match="ends before its zlib stream"):
        check_png(cut)
    with pytest.raises(PngError, match="after the end of the zlib stream"):
        check_png(png(b"\x00ab\x00cd", chunk(b"IDAT", b"junk")))


def test_an_interlaced_png_gets_a_full_decode() -> None:
    # 1x1 Adam7: only the first pass holds a pixel, so its data is that of a plain 1x1 image
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 1))
    png = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00\x10\x20\x30")) + chunk(b"IEND", b"")
    assert (check_image(png).width, check_image(png).height) == (1, 1)
    assert check_png(png) is False  # whole, but its rows are left to the decoder
    with pytest.raises(RetryableError, match="not a valid image"):
        check_image(png[:-20])  # cut after its last pixel: Pillow alone would take it


def test_openai_images_reads_b64_json() -> None:
    import base64

    png = render_image("y", width=16, height=16)
    body = json.dumps({"data": [{"b64_json": base64.b64encode(png).decode(), "revised_prompt": "a y"}]}).encode()
    parsed = OpenAIImageAdapter().parse({}, body)
    assert (parsed.image, parsed.text, parsed.width) == (png, "a y", 16)
    with pytest.raises(PermanentError, match="b64_json"):  # a whole answer, not the one asked for
        OpenAIImageAdapter().parse({}, b'{"data": [{"url": "https://x"}]}')


def test_samples_get_distinct_recorded_seeds(write_job: JobWriter) -> None:
    job = load_job(image_job(write_job, 1, request=HF_REQUEST.replace("samples = 2", "samples = 4")))
    first = list(Planner(job).plan(prompts(1)))
    again = list(Planner(job).plan(prompts(1)))
    seeds = [r.seed for r in first]
    assert len(set(seeds)) == 4 and seeds == [r.seed for r in again]
    assert [json.loads(r.body)["parameters"]["seed"] for r in first] == seeds
    # a seed from the row is used, plus the sample index
    seeded = HF_REQUEST.replace("width = 48", 'seed = "{{ id }}", width = 48')
    job = load_job(image_job(write_job, 1, request=seeded.replace("samples = 2", "samples = 3")))
    assert [r.seed for r in Planner(job).plan([{"id": 100, "prompt": "p", "negative": ""}])] == [100, 101, 102]


@pytest.mark.anyio
async def test_200_prompts_by_2_samples_give_400_checked_images(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app()
    job_path = image_job(write_job, 200)
    summary = await run_job(load_job(job_path), transport=httpx.ASGITransport(app=sim), quiet=True)
    assert summary.exit_code == ExitCode.OK
    assert sim.stats.total == 400
    out = tmp_path / "out"
    manifest = read_manifest(out)
    assert manifest.height == 400 and set(manifest["status"]) == {"ok"}
    assert manifest["seed"].n_unique() == 400
    files = sorted(out.glob("images/*/*.png"))
    assert len(files) == 400
    for row in manifest.iter_rows(named=True):
        data = (out / row["image_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["image_sha256"]
        assert len(data) == row["image_bytes"]
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (row["width"], row["height"]) == (48, 32)
        assert row["image_path"] == f"images/{row['request_key'][:2]}/{row['request_key']}.png"
        assert data == render_image(f"a cat, style {row['row_id']}", seed=row["seed"], width=48, height=32)
    # the request carried the prompt, the parameters and asked for PNG
    assert not list(out.rglob(".tmp-*"))

    again = await run_job(load_job(job_path), transport=httpx.ASGITransport(app=sim), quiet=True)
    assert sim.stats.total == 400 and again.exit_code == ExitCode.OK

    assert main(["export", str(out), "--imagefolder"]) == 0
    meta = pl.read_parquet(out / "images" / "metadata.parquet")
    assert meta.height == 400
    assert {"file_name", "prompt", "negative", "id", "seed", "sample", "width"} <= set(meta.columns)
    assert all((out / "images" / f).is_file() for f in meta["file_name"])


@pytest.mark.anyio
async def test_bad_200s_are_retried_and_never_saved(write_job: JobWriter, tmp_path: Path) -> None:
    sim = create_app(
        FaultPlan(
            triggers=[
                Trigger("style 1", "truncated", times=1),
                Trigger("style 2", "wrong_content_type", times=2),
                Trigger("style 3", "html", times=1),
            ]
        )
    )
    job_path = image_job(write_job, 4, request=HF_REQUEST.replace("samples = 2", "samples = 1"))
    summary = await run_job(load_job(job_path), transport=httpx.ASGITransport(app=sim), quiet=True)
    assert summary.exit_code == ExitCode.OK
    assert sim.stats.total == 4 + 1 + 2 + 1
    manifest = read_manifest(tmp_path / "out")
    assert dict(zip(manifest["row_id"], manifest["attempts"], strict=True)) == {"0": 1, "1": 2, "2": 3, "3": 2}
    files = list((tmp_path / "out").glob("images/*/*"))
    assert len(files) == 4
    for f in files:
        assert check_image(f.read_bytes()).mime_type == "image/png"


@pytest.mark.anyio
async def test_openai_images_preset(write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    sim = create_app()
    job_path = write_job(
        rows=prompts(3),
        preset="openai-images",
        endpoint='base_url = "http://sim.test"\nmodel = "gpt-image-1"',
        request='prompt = "{{ prompt }}"\nparams = { size = "40x24" }',
    )
    summary = await run_job(load_job(job_path), transport=httpx.ASGITransport(app=sim), quiet=True)
    assert summary.exit_code == ExitCode.OK
    manifest = read_manifest(tmp_path / "out")
    assert manifest["width"].to_list() == [40] * 3 and manifest["mime_type"].to_list() == ["image/png"] * 3
    assert len(list((tmp_path / "out").glob("images/*/*.png"))) == 3


def image_result(key: str) -> Result:
    request = Request(key, "r", 0, 0, "POST", "http://sim.test/", b"{}", "m")
    parsed = Parsed(image=render_image(key, width=4, height=4), mime_type="image/png", width=4, height=4)
    return Result(request, "ok", 1, 0.0, 1.0, parsed=parsed)


def test_image_store_syncs_each_folder_that_gained_a_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(image_sink, "fsync_dir", synced.append)
    store = ImageStore(tmp_path)
    saved = [store.save(image_result(key)) for key in ("ab" + "0" * 30, "ab" + "1" * 30, "cd" + "0" * 30)]
    assert synced == [] and store.saved == 3  # a save syncs its file, not its folder
    assert store.sync() == 4
    images = tmp_path / "images"
    assert sorted(synced) == [tmp_path, images, images / "ab", images / "cd"]  # new folders in their parents
    assert store.sync() == 0
    store.save(image_result("cd" + "1" * 30))
    assert store.sync() == 1 and synced[-1] == images / "cd"
    # a new store (a new run) syncs the parents of a folder it finds: a killed run may have left them unsynced
    again = ImageStore(tmp_path)
    again.save(image_result("cd" + "2" * 30))
    synced.clear()
    assert again.sync() == 3 and sorted(synced) == [tmp_path, images, images / "cd"]
    for result in saved:
        assert result.parsed is not None and result.parsed.image_path is not None
        data = (tmp_path / result.parsed.image_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == result.parsed.image_sha256
    assert not list(tmp_path.rglob(".tmp-*"))


def test_a_full_disk_is_named_when_an_image_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(final: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(image_sink, "write_bytes_atomic", full)
    with pytest.raises(SinkError, match=r"cannot write .*/images/ab/ab0+\.png: the disk is full$"):
        ImageStore(tmp_path).save(image_result("ab" + "0" * 30))


def test_writer_syncs_images_before_each_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_write_part = manifest_writer.write_part

    def write_part(folder: Path, name: str, rows: list[dict[str, object]]) -> Path:
        events.append("part")
        return real_write_part(folder, name, rows)

    def sync() -> None:
        events.append("sync")
        if len(events) == 1:
            raise SinkError("cannot sync the image folder x: I/O error")

    monkeypatch.setattr(manifest_writer, "write_part", write_part)
    writer = ManifestWriter(tmp_path, run_id="r1", endpoint="e", before_part=sync)
    writer.add(image_result("ab" + "0" * 30))
    with pytest.raises(SinkError, match="cannot sync"):
        writer.flush()
    assert events == ["sync"] and len(writer.buffer) == 1 and writer.seq == 0  # no part, rows kept
    writer.flush()
    assert events == ["sync", "sync", "part"] and writer.written == 1


@pytest.mark.anyio
async def test_every_image_a_part_names_is_synced_before_the_part(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash-safety order in a whole run: file fsync and rename (in ``save``), then an fsync of
    its folder, then the manifest part that names it."""
    events: list[tuple[str, object]] = []
    real_save, real_write_part, real_fsync_dir = ImageStore.save, manifest_writer.write_part, image_sink.fsync_dir

    def save(self: ImageStore, result: Result) -> Result:
        stored = real_save(self, result)
        assert stored.parsed is not None
        events.append(("saved", stored.parsed.image_path))
        return stored

    def fsync_dir(path: Path) -> None:
        events.append(("synced", path))
        real_fsync_dir(path)

    def write_part(folder: Path, name: str, frame: pl.DataFrame) -> Path:
        events.append(("part", frame.get_column("image_path").to_list()))
        return real_write_part(folder, name, frame)

    monkeypatch.setattr(ImageStore, "save", save)
    monkeypatch.setattr(image_sink, "fsync_dir", fsync_dir)
    monkeypatch.setattr(manifest_writer, "write_part", write_part)
    job_path = write_job(
        rows=prompts(40),
        preset="hf-text-to-image",
        endpoint=HF_IMAGE,
        request=HF_REQUEST,
        top='id_column = "id"\n[sink]\nflush_rows = 7',
        limits="concurrency = 8",
    )
    summary = await run_job(load_job(job_path), transport=httpx.ASGITransport(app=create_app()), quiet=True)
    assert summary.exit_code == ExitCode.OK
    out = tmp_path / "out"
    parts = [i for i, (kind, _) in enumerate(events) if kind == "part"]
    assert len(parts) >= 80 // 7 and len(read_manifest(out)) == 80
    for at in parts:
        paths = events[at][1]
        assert isinstance(paths, list)
        for path in paths:
            saved_at = events.index(("saved", path))
            folder = (out / path).parent
            assert ("synced", folder) in events[saved_at + 1 : at], path
    first_saved = next(i for i, (kind, _) in enumerate(events) if kind == "saved")
    for created in (out, out / "images"):  # gained the new folders images/ and images/<prefix>/
        assert ("synced", created) in events[first_saved + 1 : parts[0]]


def test_imagefolder_loads_with_datasets(write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    import anyio

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    sim = create_app(FaultPlan(triggers=[Trigger("style 5", "400")]))
    job_path = image_job(write_job, 20)

    async def go() -> ExitCode:
        summary = await run_job(load_job(job_path), transport=httpx.ASGITransport(app=sim), quiet=True)
        return summary.exit_code

    assert anyio.run(go) == ExitCode.FAILED_ROWS
    assert main(["export", str(tmp_path / "out"), "--imagefolder", "--format", "jsonl"]) == 0
    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "out" / "images"), split="train")
    assert ds.num_rows == 38  # 20 prompts x 2 samples, less the two of the failed prompt
    assert "prompt" in ds.column_names and "style 5" not in " ".join(ds["prompt"])
    assert ds[0]["image"].size == (48, 32)
