"""The rows the page shows one by one, not counted: the answers table and the contact sheet. Only
these rows' texts are read of the manifest, and their prompts found (``prompts``): a sample keeps
the page and the memory small at any size of run."""

from __future__ import annotations

import polars as pl

from .prompts import Prompts
from .results import Results

SAMPLE_ROWS = 2_000  # rows in the answers table: ~2 MB of text at most, searchable in the page
SAMPLE_IMAGES = 240  # thumbnails in the contact sheet: ~5 MB of JPEG at 256 px

_IMAGES = ["row_index", "row_id", "sample", "seed", "endpoint", "image_path"]


def sample_rows(frame: pl.DataFrame) -> pl.Series:
    """The first ``SAMPLE_ROWS`` input rows (in input order): a reader finds row 12 where row 12 is."""
    return frame["row_index"].unique().sort().head(SAMPLE_ROWS)


def answers(picked: pl.DataFrame, prompts: Prompts) -> pl.DataFrame:
    """One line per sampled (row, sample), one answer column per endpoint (side by side)."""
    answer = (
        pl.when(pl.col("status") == "ok")
        .then(pl.col("response_text"))
        .otherwise(pl.lit("[failed: ") + pl.col("error").fill_null("") + pl.lit("]"))
    )
    wide = (
        picked.with_columns(answer.alias("answer"))
        .pivot(on="endpoint", index=["row_index", "sample"], values="answer", aggregate_function="first")
        .sort("row_index", "sample")
    )
    ids = picked.group_by("row_index").agg(pl.col("row_id").first())
    wide = wide.join(ids, on="row_index", how="left")
    return wide.with_columns(prompts.column(wide["row_index"]))


def images(results: Results, prompts: Prompts) -> pl.DataFrame:
    """The images of the first ``SAMPLE_IMAGES`` rows that have one."""
    has_image = pl.col("image_path").is_not_null()
    chosen = results.read("row_index", where=has_image)["row_index"].unique().sort().head(SAMPLE_IMAGES)
    picked = (
        results.read(*_IMAGES, where=pl.col("row_index").is_in(chosen.implode()) & has_image)
        .sort("row_index", "endpoint", "sample")
        .head(SAMPLE_IMAGES)
    )
    return picked.with_columns(prompts.column(picked["row_index"]))
