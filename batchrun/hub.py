"""Image datasets in the form the Hugging Face Hub takes: Parquet shards with the image bytes inside.

The ``image`` column is the ``datasets`` Image struct ``{bytes: binary, path: string}`` and the schema
metadata says so under the ``huggingface`` key, which is how ``datasets`` (and the Hub's viewer) know to
decode it: ``Features.from_arrow_schema`` takes a feature from that metadata only when the column's
Arrow type is exactly the feature's, so the struct must hold ``binary``/``string``, not the large types
polars writes. Hence pyarrow (the ``hub`` extra, already there wherever ``datasets`` is), whose
``ParquetWriter`` also appends row groups one at a time: at most one row group of images is in memory.
WebDataset tar shards are the other form ``datasets`` and the Hub read; the stdlib writes them.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from .errors import InputError, JobError
from .export import _input_clash, results
from .sink.files import TMP_PREFIX, make_folder
from .sink.layout import IMAGES_DIR
from .spec import Job

SHARD_BYTES = 500 * 1024 * 1024  # the Hub's advice for Parquet files: up to ~500 MB each
ROW_GROUP_ROWS = 100  # the Hub's viewer reads a row group at a time; it advises ~100 rows for images
SHARD_NAME = re.compile(r"train-\d{5}-of-\d{5}\.(parquet|tar)")
TEMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"train-\d{5}\.(parquet|tar)")
TAR_HEADERS = 3 * 512  # a member's header and padding, twice a sample, in the shard size
IMAGE_FEATURE = {"_type": "Image"}
DROPPED = [  # chat answers and error details: empty on the ok image rows exported here
    "status",
    "error_kind",
    "error",
    "response_text",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "image_path",
]


def export_hub_command(job: Job, args: argparse.Namespace) -> int:
    """``export --embed-images --to FOLDER``: the options that go with it, then the shards."""
    if args.to is None:
        raise JobError("--embed-images writes shards into a folder: give it with --to FOLDER")
    if args.format not in ("parquet", "webdataset") or args.wide:
        raise JobError("--embed-images writes one row per image: --format parquet or webdataset, without --wide")
    shards, n = export_hub(job, Path(args.to), fmt=args.format)
    loader, ext = ("parquet", "parquet") if args.format == "parquet" else ("webdataset", "tar")
    print(f"wrote {len(shards)} {args.format} file(s) to {args.to}: {n} images; load with")
    print(f"  datasets.load_dataset('{loader}', data_files='{Path(args.to) / f'train-*.{ext}'}')")
    return 0


def export_hub(
    job: Job, folder: Path, *, fmt: str = "parquet", shard_bytes: int = SHARD_BYTES
) -> tuple[list[Path], int]:
    """Write ``folder/train-0000i-of-0000N.parquet`` (or ``.tar``, WebDataset): one row per ok image,
    its bytes embedded, with every input column, ``endpoint``, ``sample`` and ``seed``. Shards from an
    earlier export there are replaced (a loader given the folder would otherwise read both)."""
    ext = "parquet" if fmt == "parquet" else "tar"
    if ext == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise JobError("--embed-images needs pyarrow: pip install 'batchrun[hub]'")
    if clash := _input_clash(job, folder / f"train-00000-of-00001.{ext}"):
        raise JobError(clash)
    frame = _image_rows(job)
    if frame.height == 0:
        raise InputError(f"no images in {job.output_dir}: nothing to export")
    write = _write_parquet if ext == "parquet" else _write_tars
    try:
        make_folder(folder)
        temps = write(job, frame, folder, shard_bytes)
        shards = [folder / f"train-{i:05d}-of-{len(temps):05d}.{ext}" for i in range(len(temps))]
        for temp, shard in zip(temps, shards, strict=True):
            temp.replace(shard)
        for old in folder.iterdir():  # an earlier export's shards, and a killed one's temp files
            if (SHARD_NAME.fullmatch(old.name) and old not in shards) or TEMP_NAME.fullmatch(old.name):
                old.unlink()
    except OSError as exc:
        raise JobError(f"cannot write {folder}: {exc.strerror or exc}") from None
    return shards, frame.height


def _image_rows(job: Job) -> pl.DataFrame:
    """The imagefolder export's rows (ok, with an image), joined to their input rows the same way."""
    frame = results(job).filter((pl.col("status") == "ok") & pl.col("image_path").is_not_null())
    if "image" in frame.columns:  # an input column of that name: kept beside the image, as export keeps clashes
        frame = frame.rename({"image": "input_image"})
    if "endpoint" not in frame.columns:
        frame = frame.with_columns(pl.lit(job.endpoint.name, dtype=pl.String).alias("endpoint"))
    return frame.select(pl.col("image_path").alias("image"), pl.exclude(DROPPED))


def _write_parquet(job: Job, frame: pl.DataFrame, folder: Path, shard_bytes: int) -> list[Path]:
    """Temp shard files in order; a shard is closed before the next row group would take it past
    ``shard_bytes`` of images (a single larger group gets a shard of its own)."""
    import pyarrow.parquet as pq

    temps: list[Path] = []
    writer: Any = None
    written = 0
    try:
        for group, size in _row_groups(job, frame, shard_bytes):
            if writer is not None and written + size > shard_bytes:
                writer.close()
                writer = None
            if writer is None:
                temps.append(folder / f"{TMP_PREFIX}train-{len(temps):05d}.parquet")
                writer = pq.ParquetWriter(temps[-1], group.schema)
                written = 0
            writer.write_table(group, row_group_size=group.num_rows)
            written += size
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.close()
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise
    return temps


def _row_groups(job: Job, frame: pl.DataFrame, shard_bytes: int) -> Iterator[tuple[Any, int]]:
    """Arrow tables of up to ``ROW_GROUP_ROWS`` rows, their images read from disk, and their image
    bytes; a group ends early rather than grow past ``shard_bytes``."""
    import pyarrow as pa

    start = 0
    while start < frame.height:
        images: list[bytes] = []
        size = 0
        for image_path in frame["image"].slice(start, ROW_GROUP_ROWS):
            data = _read_image(job, image_path)
            if images and size + len(data) > shard_bytes:
                break
            images.append(data)
            size += len(data)
        rows = frame.slice(start, len(images))
        start += len(images)
        image = pa.StructArray.from_arrays(
            [pa.array(images, pa.binary()), pa.array([Path(p).name for p in rows["image"]], pa.string())],
            names=["bytes", "path"],
        )
        table = rows.drop("image").to_arrow()
        table = table.add_column(0, "image", image)
        yield table.replace_schema_metadata(_metadata()), size


def _metadata() -> dict[str, str]:
    """The ``huggingface`` schema metadata that ``datasets`` reads its features from. Only the image
    is named: every other column's feature follows from its Arrow type."""
    return {"huggingface": json.dumps({"info": {"features": {"image": IMAGE_FEATURE}}})}


def _write_tars(job: Job, frame: pl.DataFrame, folder: Path, shard_bytes: int) -> list[Path]:
    """WebDataset shards: per image ``<request_key>.<ext>`` and ``<request_key>.json`` (the other
    columns), one image at a time; a shard is closed before the next sample would take it past
    ``shard_bytes``. The loader wants the same fields in every sample: one image type."""
    suffixes = sorted({Path(name).suffix for name in frame["image"]})
    if len(suffixes) > 1:
        raise InputError(f"WebDataset wants one image type, {job.output_dir} has {', '.join(suffixes)}: use parquet")
    temps: list[Path] = []
    archive: tarfile.TarFile | None = None
    written = 0
    try:
        for row in frame.iter_rows(named=True):
            data = _read_image(job, row["image"])
            key = row["request_key"]
            meta = {name: value for name, value in row.items() if name != "image"}
            text = json.dumps(meta, ensure_ascii=False, default=str).encode()
            size = len(data) + len(text) + TAR_HEADERS
            if archive is not None and written + size > shard_bytes:
                archive.close()
                archive = None
            if archive is None:
                temps.append(folder / f"{TMP_PREFIX}train-{len(temps):05d}.tar")
                archive = tarfile.open(temps[-1], "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (spans rows)
                written = 0
            for name, body in ((f"{key}{suffixes[0]}", data), (f"{key}.json", text)):
                member = tarfile.TarInfo(name)
                member.size, member.mode = len(body), 0o644
                archive.addfile(member, io.BytesIO(body))
            written += size
        if archive is not None:
            archive.close()
    except BaseException:
        if archive is not None:
            archive.close()
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise
    return temps


def _read_image(job: Job, image_path: str) -> bytes:
    """An image the manifest names; only from the output folder's ``images/``."""
    images_dir = (job.output_dir / IMAGES_DIR).resolve()
    path = (job.output_dir / image_path).resolve()
    if not path.is_relative_to(images_dir):
        raise InputError(f"the manifest names an image outside {images_dir}: {image_path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}, an image the manifest names: {exc.strerror or exc}") from None
