"""Results joined back to the input table: a flat results file, or an imagefolder that
``datasets.load_dataset("imagefolder", data_dir=...)`` loads with every input column."""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl

from .errors import InputError, JobError
from .owner import JOB_POINTER, check_owner, claim, read_owner
from .plan.batchfile import output_line
from .plan.jsonl import plain
from .plan.occurrences import Occurrences
from .plan.planner import Planner
from .plan.reader import Table
from .plan.sources import input_files, is_glob
from .shard import Shard
from .sink.files import write_atomic
from .sink.layout import IMAGES_DIR
from .sink.manifest import scan_latest
from .sink.remote import Mirror
from .spec import Job, load_job, remote_target

RESULT_COLUMNS = [
    "request_key",
    "sample",
    "seed",
    "status",
    "error_kind",
    "error",
    "response_text",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "image_path",
    "image_sha256",
    "width",
    "height",
    "latency_ms",
    "ttft_ms",
]


def remember_job(job: Job) -> None:
    """Claim the output folder for this job (refused if another job's runs wrote it) and note
    its job file, so ``export OUTPUT`` can find the input."""
    claim(job)


def job_for(target: str, output: str | None = None) -> Job:
    """``target`` is a job file, or an output folder that a run has written. Export sends
    nothing, so the API key variable need not be set."""
    if (remote := remote_target(target)) is not None:
        Mirror(remote).pull((JOB_POINTER,), notes=True)
        owner = read_owner(remote.staging)
        if owner is None:
            raise JobError(f"{target} holds no output of batchrun (no {JOB_POINTER}); pass the job file")
        if not owner.job_file.is_file():
            raise JobError(f"the job file that wrote {target} is not on this machine: {owner.job_file}")
        return load_job(owner.job_file, output=target, needs_key=False)
    path = Path(target)
    if path.is_dir():
        owner = read_owner(path)
        if owner is None:
            raise JobError(f"{path} is not an output folder of batchrun (no {JOB_POINTER}); pass the job file")
        if not owner.job_file.is_file():
            raise JobError(f"the job file that wrote {path} is gone: {owner.job_file}")
        return load_job(owner.job_file, output=str(path), needs_key=False)
    job = load_job(path, output=output, needs_key=False)
    if job.remote is not None:
        Mirror(job.remote).pull((JOB_POINTER,), notes=True)
    check_owner(job)
    return job


def fetch_images(job: Job) -> int:
    """An output on object storage: the images of its ok rows that the staging folder lacks come
    down (for the exports that read images); returns how many."""
    latest = scan_latest(job.output_dir)
    if job.remote is None or latest is None:
        return 0
    paths = latest.filter(pl.col("status") == "ok").select("image_path").drop_nulls().collect()
    return Mirror(job.remote).pull_images(paths.get_column("image_path").to_list())


def keyed_input(job: Job) -> pl.DataFrame:
    """Every input row with the request key of each of its samples (no resume filtering)."""
    table = Table(job.input, job.input_options)
    expected = table.inspect().rows * job.request.samples  # the occurrence index's filter is sized by it
    planner = Planner(replace(job, shard=Shard()), occurrences=Occurrences(expected))  # every shard's keys
    planner.include_shared = True
    keys: list[str] = []
    samples: list[int] = []
    row_indices: list[int] = []
    frames: list[pl.DataFrame] = []
    with planner.occurrences:
        for frame in table.frames(65_536):
            indices = []
            start = planner.counts.rows
            for request in planner.plan(frame.to_dicts()):
                keys.append(request.key)
                samples.append(request.sample)
                row_indices.append(request.row_index)
                indices.append(request.row_index - start)
            frames.append(frame.select(pl.all().gather(indices)))
            if planner.occurrences.flush_due:
                planner.occurrences.flush()
    rows = plain(pl.concat(frames, how="vertical_relaxed")) if frames else pl.DataFrame()
    return rows.with_columns(
        pl.Series("request_key", keys, dtype=pl.String),
        pl.Series(ROW, row_indices, dtype=pl.Int64),
        pl.Series(SAMPLE, samples, dtype=pl.Int32),
    )


ROW, SAMPLE = "_batchrun_row", "_batchrun_sample"  # where a request sits in the input: for joins, never exported


def results(job: Job, *, wide: bool = False) -> pl.DataFrame:
    """Input rows (one per request) with the latest result of each; rows not yet done have nulls.
    With several endpoints, one row per request and an ``endpoint`` column (long), or with
    ``wide`` one row per input row x sample and each endpoint's results side by side
    (``<endpoint>.status``, ...)."""
    latest = scan_latest(job.output_dir)
    if latest is None:
        raise InputError(f"no results in {job.output_dir} yet: run the job first")
    done = latest.select(RESULT_COLUMNS).collect()
    lanes = job.lanes()
    first = keyed_input(lanes[0])
    clash = [c for c in [*RESULT_COLUMNS, "endpoint"] if c in first.columns and c != "request_key"]
    first = first.rename({c: f"input_{c}" for c in clash})
    if wide:
        frame = first.drop("request_key")
        for lane, inputs in zip(lanes, [first, *(keyed_input(lane) for lane in lanes[1:])], strict=True):
            name = lane.endpoint.name
            answers = inputs.select(ROW, SAMPLE, "request_key").join(done.drop("sample"), on="request_key", how="left")
            answers = answers.rename({c: f"{name}.{c}" for c in answers.columns if c not in (ROW, SAMPLE)})
            frame = frame.join(answers, on=[ROW, SAMPLE], how="left", maintain_order="left")
        return frame.drop(ROW).rename({SAMPLE: "sample"})
    parts = []
    for lane in lanes:
        inputs = first if lane is lanes[0] else keyed_input(lane).rename({c: f"input_{c}" for c in clash})
        part = inputs.drop(ROW, SAMPLE).join(done, on="request_key", how="left", maintain_order="left")
        if job.several:
            part = part.insert_column(inputs.width - 2, pl.lit(lane.endpoint.name).alias("endpoint"))
        parts.append(part)
    return pl.concat(parts, how="vertical_relaxed")


def export_table(job: Job, destination: Path, *, wide: bool = False) -> int:
    """Write the results file; its folder is made if missing. JSONL and Parquet keep list and
    struct columns as they are; CSV, which has no such type, gets them as JSON text."""
    writers: dict[str, Any] = {
        ".parquet": pl.DataFrame.write_parquet,
        ".csv": _write_csv,
        ".jsonl": pl.DataFrame.write_ndjson,
    }
    write = writers.get(destination.suffix)
    if write is None:
        raise JobError(f"export to .parquet, .csv or .jsonl, not {destination.suffix or 'no extension'}")
    if clash := _input_clash(job, destination):
        raise JobError(clash)
    frame = results(job, wide=wide)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(destination, lambda tmp: write(frame, tmp))
    except OSError as exc:
        raise JobError(f"cannot write {destination}: {exc.strerror or exc}") from None
    return frame.height


def _input_clash(job: Job, destination: Path) -> str | None:
    """Why ``destination`` must not be written: it is the input table (after links, or a hard link
    to it), or it would join the input (a file in the input folder, a name the input's glob takes)."""
    target = destination.resolve()
    for name in input_files(job.input):
        found = Path(name)
        if found.resolve() == target or (target.exists() and found.exists() and os.path.samefile(found, target)):
            return f"export --to {destination}: that is the job's input table ({name}); write the results elsewhere"
    source = Path(job.input)
    joins = (source.is_dir() and target.parent == source.resolve()) or (
        is_glob(job.input) and fnmatch.fnmatch(str(target), str(Path(job.input).resolve()))
    )
    if joins:
        return f"export --to {destination}: the next run would read it as input ({job.input}); write it elsewhere"
    return None


def _write_csv(frame: pl.DataFrame, path: Path) -> None:
    nested = [name for name, dtype in frame.schema.items() if dtype.is_nested()]
    frame.with_columns(
        pl.Series(name, [_json_text(v) for v in frame[name].to_list()], dtype=pl.String) for name in nested
    ).write_csv(path)


def _json_text(value: Any) -> str | None:
    """A list or struct cell as JSON (null stays an empty cell); text as it is, never escaped."""
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def export_imagefolder(job: Job, fmt: str = "parquet") -> tuple[Path, int]:
    """``images/metadata.<fmt>`` with ``file_name`` relative to ``images/``; ok rows only."""
    frame = results(job).filter((pl.col("status") == "ok") & pl.col("image_path").is_not_null())
    frame = frame.with_columns(pl.col("image_path").str.strip_prefix(f"{IMAGES_DIR}/").alias("file_name")).select(
        "file_name", pl.exclude("file_name", "image_path", "status", "error_kind", "error")
    )
    folder = job.output_dir / IMAGES_DIR
    if not folder.is_dir():
        raise InputError(f"no images in {job.output_dir}")
    destination = folder / f"metadata.{fmt}"
    if fmt == "parquet":
        write_atomic(destination, frame.write_parquet)
    else:
        write_atomic(destination, frame.write_ndjson)
    return destination, frame.height


def export_openai_batch(job: Job, destination: Path) -> int:
    """The Batch API's output file: one line per request in input order (``plan/batchfile``),
    the answer's body as the endpoint gave it (kept raw for openai-batch inputs)."""
    if not job.batch_input:
        raise JobError("export --format openai-batch is for jobs whose input is an openai-batch file ([input] format)")
    if job.several:
        raise JobError("export --format openai-batch writes one endpoint's answers; this job has several (use --to)")
    if clash := _input_clash(job, destination):
        raise JobError(clash)
    latest = scan_latest(job.output_dir)
    if latest is None:
        raise InputError(f"no results in {job.output_dir} yet: run the job first")
    done = latest.select("request_key", "status", "http_status", "error_kind", "error", "raw_response").collect()
    frame = (
        keyed_input(job)
        .select("custom_id", "request_key")
        .join(done, on="request_key", how="left", maintain_order="left")
    )
    lines = [output_line(**row) for row in frame.iter_rows(named=True)]
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(destination, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise JobError(f"cannot write {destination}: {exc.strerror or exc}") from None
    return len(lines)
