"""``batchrun export``: results joined back to the input, as a table, an OpenAI batch output file, an
imagefolder or Hub shards; images fetched first when the output is on object storage."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import JobError
from ..export import export_imagefolder, export_openai_batch, export_table, fetch_images, job_for


def export_command(args: argparse.Namespace) -> int:
    job = job_for(args.target)
    if args.format == "webdataset" and not args.embed_images:
        raise JobError("--format webdataset goes with --embed-images --to FOLDER")
    if job.remote is not None and (args.embed_images or args.imagefolder):
        fetch_images(job)
    if args.embed_images:
        from ..hub import export_hub_command

        return export_hub_command(job, args)
    if args.imagefolder:
        path, n = export_imagefolder(job, args.format)
        print(f"wrote {path}: {n} images; load with datasets.load_dataset('imagefolder', data_dir='{path.parent}')")
    elif args.format == "openai-batch":
        n = export_openai_batch(job, Path(args.to))
        print(f"wrote {args.to}: {n} lines")
    else:
        n = export_table(job, Path(args.to), wide=args.wide)
        print(f"wrote {args.to}: {n} rows")
    return 0
