"""Image datasets in the form the Hugging Face Hub takes: Parquet shards with the image bytes inside.

The ``image`` column is the ``datasets`` Image struct ``{bytes: binary, path: string}`` and the schema
metadata says so under the ``huggingface`` key, which is how ``datasets`` (and the Hub's viewer) know to
decode it: ``Features.from_arrow_schema`` takes a feature from that metadata only when the column's
Arrow type is exactly the feature's, so the struct must hold ``binary``/``string``, not the large types
polars writes. Hence pyarrow (the ``hub`` extra, already there wherever ``datasets`` is), whose
``ParquetWriter`` also appends row groups one at a time: at most one row group of images is in memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
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
SHARD_NAME = re.compile(r"train-\d{5}-of-\d{5}\.parquet")
TEMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"train-\d{5}\.parquet")
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
        raise JobError("--embed-images writes Parquet shards into a folder: give it with --to FOLDER")
    if args.format != "parquet" or args.wide:
        raise JobError("--embed-images writes Parquet, one row per image: leave out --format and --wide")
    shards, n = export_hub(job, Path(args.to))
    print(f"wrote {len(shards)} Parquet file(s) to {args.to}: {n} images; load with")
    print(f"  datasets.load_dataset('parquet', data_files='{Path(args.to) / 'train-*.parquet'}')")
    return 0


def export_hub(job: Job, folder: Path, *, shard_bytes: int = SHARD_BYTES) -> tuple[list[Path], int]:
    """Write ``folder/train-0000i-of-0000N.parquet``: one row per ok image, its bytes embedded, with
    every input column, ``endpoint``, ``sample`` and ``seed``. Shards from an earlier export there are
    replaced (a loader given ``folder/*.parquet`` would otherwise read both)."""
    if importlib.util.find_spec("pyarrow") is None:
        raise JobError("--embed-images needs pyarrow: pip install 'batchrun[hub]'")
    if clash := _input_clash(job, folder / "train-00000-of-00001.parquet"):
        raise JobError(clash)
    frame = _image_rows(job)
    if frame.height == 0:
        raise InputError(f"no images in {job.output_dir}: nothing to export")
    try:
        make_folder(folder)
        temps = _write_shards(job, frame, folder, shard_bytes)
        shards = [folder / f"train-{i:05d}-of-{len(temps):05d}.parquet" for i in range(len(temps))]
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


def _write_shards(job: Job, frame: pl.DataFrame, folder: Path, shard_bytes: int) -> list[Path]:
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

    images_dir = (job.output_dir / IMAGES_DIR).resolve()
    start = 0
    while start < frame.height:
        images: list[bytes] = []
        size = 0
        for image_path in frame["image"].slice(start, ROW_GROUP_ROWS):
            path = (job.output_dir / image_path).resolve()
            if not path.is_relative_to(images_dir):
                raise InputError(f"the manifest names an image outside {images_dir}: {image_path}")
            data = path.read_bytes()
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
