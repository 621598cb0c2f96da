"""The HTML page: one file, no network. Every value from the run (prompts, answers, errors, file
names) goes through Jinja2's autoescape or into a JSON block whose ``<``, ``>`` and ``&`` are
``\\u``-escaped and is drawn with ``textContent``; the Content-Security-Policy allows the one
inline script by its hash, inline styles, and ``data:`` images, nothing else."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import polars as pl

from ..sink.files import write_atomic
from . import charts
from .data import Report, load
from .thumbs import thumbnail

_HERE = Path(__file__).parent


def write_report(output_dir: Path, destination: Path, before_render: Callable[[Report], object] | None = None) -> Path:
    """``before_render``: an output on object storage fetches the sampled images here."""
    report = load(output_dir)
    if before_render is not None:
        before_render(report)
    html = render(report, destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(destination, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return destination


def script_json(value: Any) -> str:
    """JSON safe inside a ``<script type="application/json">``: no ``</script>``, no markup."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render(report: Report, destination: Path) -> str:
    script = (_HERE / "table.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE), autoescape=True, undefined=jinja2.StrictUndefined)
    endpoints = report.by_endpoint["endpoint"].to_list()
    answers = report.answers
    answer_rows = [
        [r.get("row_id") or str(r["row_index"]), r["sample"], r.get("prompt") or "", *(r.get(e) for e in endpoints)]
        for r in answers.iter_rows(named=True)
    ]
    return env.get_template("page.html.j2").render(
        r=report,
        csp=csp,
        script=_markup(script),
        endpoints=endpoints,
        by_endpoint=report.by_endpoint.to_dicts(),
        totals=_totals(report.by_endpoint),
        charts={title: _markup(svg) for title, svg in charts.render(report).items()},
        errors=report.errors.head(50).to_dicts(),
        answers_json=_markup(script_json({"columns": ["row", "sample", "prompt", *endpoints], "rows": answer_rows})),
        rows_shown=answers["row_index"].n_unique() if answers.height else 0,
        answer_rows_total=report.rows,
        sheet=_sheet(report, destination) if report.is_image else [],
        fmt=_fmt,
    )


def _markup(text: str) -> Any:
    from markupsafe import Markup

    return Markup(text)


def _totals(by_endpoint: pl.DataFrame) -> dict[str, int]:
    return {c: int(by_endpoint[c].sum() or 0) for c in ("requests", "ok", "failed", "tokens")}


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _sheet(report: Report, destination: Path) -> list[dict[str, Any]]:
    """Thumbnails as data: URIs, grouped by row; each links to the full image, relative to the page."""
    cells: list[dict[str, Any]] = []
    folder = destination.parent
    for row in report.images.iter_rows(named=True):
        source = (report.output_dir / row["image_path"]).resolve()
        if not source.is_relative_to(report.output_dir.resolve()):
            continue  # a manifest path never leaves the output folder; one that does is not shown
        data = thumbnail(source)
        cells.append(
            {
                **row,
                "thumb": data,
                "href": Path(os.path.relpath(source, folder.resolve())).as_posix(),
            }
        )
    return cells
