"""Output on object storage (issue 19): ``output = "s3://bucket/prefix"`` against moto's real S3 API
server on 127.0.0.1 (``moto[server]``): parts and images go up whole, the lock is a conditional
create with a lease, resume reads the done keys from the bucket, and no credential reaches a file or
a log."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from helpers import JobWriter, questions

pytest.importorskip("obstore")
moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from batchrun.cli import main  # noqa: E402
from batchrun.errors import OutputLockedError, SinkError  # noqa: E402
from batchrun.runner import run_job  # noqa: E402
from batchrun.shard import Shard  # noqa: E402
from batchrun.simulator import FaultPlan, create_app, serve_in_thread  # noqa: E402
from batchrun.sink.lease import Lease, running_shards  # noqa: E402
from batchrun.sink.remote import Mirror  # noqa: E402
from batchrun.spec import load_job  # noqa: E402
from batchrun.status import read_status  # noqa: E402

SECRET = "moto-secret-" + uuid.uuid4().hex  # found nowhere but in the environment


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A new bucket; the AWS variables point at the server, the staging folders go under tmp_path."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAMOTOTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("BATCHRUN_CACHE_DIR", str(tmp_path / "cache"))
    name = f"bkt-{uuid.uuid4().hex[:12]}"
    client().create_bucket(Bucket=name)
    return name


def client() -> Any:
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")


def keys(bucket: str, prefix: str) -> list[str]:
    pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return sorted(o["Key"].removeprefix(prefix + "/") for page in pages for o in page.get("Contents", []))


def object_bytes(bucket: str, key: str) -> bytes:
    data: bytes = client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def bucket_rows(bucket: str, prefix: str) -> pl.DataFrame:
    """Every row of every part in the bucket (not the latest per key)."""
    parts = [k for k in keys(bucket, prefix) if k.startswith("manifest/part-")]
    frames = [pl.read_parquet(io.BytesIO(object_bytes(bucket, f"{prefix}/{k}"))) for k in parts]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(schema={"request_key": pl.String})


def chat_job(write_job: JobWriter, bucket: str, n: int, *, flush: int = 10, base_url: str = "http://sim.test") -> Path:
    path = write_job(rows=questions(n), endpoint=f'base_url = "{base_url}"\nmodel = "m"', top='id_column = "id"')
    text = path.read_text().replace('output = "out"', f'output = "s3://{bucket}/jobs/one"')
    path.write_text(text + f"\n[sink]\nflush_rows = {flush}\n")
    return path


def write_lease(bucket: str, name: str, **info: Any) -> None:
    body = {"run_id": "elsewhere-run", "host": "another-machine", "pid": 1, "staging": "/x", "since": time.time()}
    client().put_object(Bucket=bucket, Key=f"jobs/one/{name}", Body=json.dumps({**body, **info}).encode())


@pytest.mark.anyio
async def test_a_chat_job_writes_its_parts_to_the_bucket_and_resumes_from_it(
    write_job: JobWriter, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = create_app()
    path = chat_job(write_job, bucket, 25)
    job = load_job(path)
    assert job.remote is not None and job.remote.url == f"s3://{bucket}/jobs/one"
    assert job.output_dir.is_relative_to(tmp_path / "cache")
    summary = await run_job(job, transport=httpx.ASGITransport(sim), quiet=True)
    assert (summary.ok, summary.failed, sim.stats.total) == (25, 0, 25)
    names = keys(bucket, "jobs/one")
    parts = [n for n in names if n.startswith("manifest/part-")]
    assert len(parts) >= 3  # flush_rows = 10: parts went up during the run, not only at its end
    assert {".batchrun-job", ".batchrun.lock"} <= set(names)
    assert json.loads(object_bytes(bucket, "jobs/one/.batchrun.lock"))["released"] is True
    rows = bucket_rows(bucket, "jobs/one")
    assert rows.height == 25 and rows["request_key"].is_unique().all() and set(rows["status"]) == {"ok"}
    assert sorted(rows["row_id"]) == sorted(str(q["id"]) for q in questions(25))

    again = await run_job(load_job(path), transport=httpx.ASGITransport(sim), quiet=True)
    assert (again.counts.done, sim.stats.total) == (25, 25)  # the rerun sends nothing

    # a new machine: no staging folder, the done keys come from the bucket alone
    shutil.rmtree(job.output_dir)
    fresh = await run_job(load_job(path), transport=httpx.ASGITransport(sim), quiet=True)
    assert (fresh.counts.done, sim.stats.total) == (25, 25)

    # status and export read the bucket (from yet another empty staging folder)
    shutil.rmtree(job.output_dir)
    capsys.readouterr()
    assert main(["status", f"s3://{bucket}/jobs/one", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert next(iter(status["endpoints"].values()))["ok"] == 25
    assert main(["export", f"s3://{bucket}/jobs/one", "--to", str(tmp_path / "results.parquet")]) == 0
    exported = pl.read_parquet(tmp_path / "results.parquet")
    assert exported.height == 25 and set(exported["status"]) == {"ok"}
    assert len(keys(bucket, "jobs/one")) == len(names)  # export --to stays local


@pytest.mark.anyio
async def test_an_image_job_puts_every_image_before_the_part_that_names_it(
    write_job: JobWriter, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    sim = create_app()
    path = write_job(
        rows=[{"id": i, "prompt": f"a cat {i}"} for i in range(12)],
        preset="hf-text-to-image",
        endpoint='base_url = "http://sim.test"\nmodel = "sdxl"',
        request='inputs = "{{ prompt }}"\nparameters = { width = 32, height = 32 }\nsamples = 2',
        top='id_column = "id"',
    )
    path.write_text(path.read_text().replace('output = "out"', f'output = "s3://{bucket}/jobs/one"'))
    job = load_job(path)
    summary = await run_job(job, transport=httpx.ASGITransport(sim), quiet=True)
    assert summary.ok == 24
    rows = bucket_rows(bucket, "jobs/one")
    images = [n for n in keys(bucket, "jobs/one") if n.startswith("images/")]
    assert sorted(rows["image_path"]) == sorted(images) and len(images) == 24
    first = rows.row(0, named=True)
    assert len(object_bytes(bucket, f"jobs/one/{first['image_path']}")) == first["image_bytes"]
    assert not list(job.output_dir.glob("images/*/*"))  # up with their part: no second copy kept here

    # another machine: the image exports and the report fetch the images they show from the bucket
    shutil.rmtree(job.output_dir)
    url = f"s3://{bucket}/jobs/one"
    assert main(["export", url, "--imagefolder"]) == 0
    assert sorted(p.relative_to(job.output_dir).as_posix() for p in job.output_dir.glob("images/*/*.png")) == images
    shutil.rmtree(job.output_dir)
    assert main(["report", url, "-o", str(tmp_path / "report.html")]) == 0
    assert (tmp_path / "report.html").read_text().count("data:image/jpeg;base64,") == 24
    assert len(list(job.output_dir.glob("images/*/*.png"))) == 24  # the contact sheet's sample: all 24 here


def test_a_live_lease_of_another_run_is_the_locked_exit(
    write_job: JobWriter, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job = load_job(chat_job(write_job, bucket, 3, base_url="http://127.0.0.1:9"))
    assert job.remote is not None
    other = Lease(Mirror(job.remote), "the-other-run")  # another run holds it now (same host, live pid)
    other.acquire()
    try:
        assert main(["run", str(job.path), "--quiet"]) == 5
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is in use by another run" in err[0] and "the-other-run" in err[0]
    finally:
        other.release()
    # a hand-written live lease of a process on another machine: the same
    write_lease(bucket, ".batchrun.lock", expires=time.time() + 600)
    assert main(["run", str(job.path), "--quiet"]) == 5
    assert "another-machine" in capsys.readouterr().err


def test_a_run_on_another_machine_is_locked_out_while_one_runs(
    write_job: JobWriter, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    sim = create_app(FaultPlan(latency_ms=50))
    with serve_in_thread(sim) as url:
        path = chat_job(write_job, bucket, 40, base_url=url)
        path.write_text(path.read_text().replace("concurrency = 4", "concurrency = 1"))
        first = subprocess.Popen(
            [sys.executable, "-m", "batchrun", "run", str(path), "--quiet"], stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 60
            while sim.stats.total < 1 and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)  # sending: it holds the lease
            monkeypatch.setenv("BATCHRUN_CACHE_DIR", str(tmp_path / "another-machine"))  # its own staging folder
            assert main(["run", str(path), "--quiet"]) == 5
            assert "is in use by another run" in capsys.readouterr().err
            assert first.poll() is None  # the first was still running: the refusal was its lease's
        finally:
            _, err = first.communicate(timeout=60)
        assert first.returncode == 0, err.decode()
    assert sim.stats.total == 40  # every request once: the refused run sent none
    rows = bucket_rows(bucket, "jobs/one")
    assert rows.height == 40 and rows["request_key"].is_unique().all()


@pytest.mark.anyio
async def test_an_expired_lease_is_taken_over(write_job: JobWriter, bucket: str) -> None:
    write_lease(bucket, ".batchrun.lock", expires=time.time() - 1)  # its holder died a while ago
    sim = create_app()
    path = chat_job(write_job, bucket, 5)
    summary = await run_job(load_job(path), transport=httpx.ASGITransport(sim), quiet=True)
    assert summary.ok == 5
    lock = json.loads(object_bytes(bucket, "jobs/one/.batchrun.lock"))
    assert lock["run_id"] == summary.run_id and lock["released"] is True


def test_of_two_holders_one_loses_the_lease_and_stops_sending(write_job: JobWriter, bucket: str) -> None:
    job = load_job(chat_job(write_job, bucket, 1))
    assert job.remote is not None
    now = [1000.0]
    first = Lease(Mirror(job.remote), "first", clock=lambda: now[0], lease_s=60, renew_s=20)
    first.acquire()
    first.mirror.guard = first.lost
    late = [1000.0]  # the second's clock: a lease expires at the same time for both, by the holder's clock
    second = Lease(Mirror(job.remote), "second", clock=lambda: late[0], lease_s=60, renew_s=20)
    with pytest.raises(OutputLockedError, match="first"):
        second.acquire()
    first.renew()  # If-Match on its own e-tag: still its lease
    assert first.lost() is None
    now[0] += 41  # a holder that could not renew for 40 s (lease - one renewal) gives up before it runs out
    assert "could not be renewed for 40 s" in (first.lost() or "")
    now[0] -= 41
    first._lost = None
    late[0] += 61  # the second sees the lease expired and takes it over (If-Match on the e-tag it read)
    second.acquire()
    first.renew()  # the first, whose clock says it still holds, finds its e-tag gone
    assert "taken over" in (first.lost() or "")
    with pytest.raises(SinkError, match="taken over"):
        first.mirror.put("manifest/part-x.parquet", b"")
    assert "manifest/part-x.parquet" not in keys(bucket, "jobs/one")
    first.release()  # leaves the second's lease alone
    assert json.loads(object_bytes(bucket, "jobs/one/.batchrun.lock"))["run_id"] == "second"
    second.release()


def test_shards_take_their_own_lock_objects(write_job: JobWriter, bucket: str) -> None:
    job = load_job(chat_job(write_job, bucket, 1))
    assert job.remote is not None

    def lease(shard: Shard | None) -> Lease:
        return Lease(Mirror(job.remote), f"run-{shard}", shard)  # type: ignore[arg-type]

    zero, one = lease(Shard(0, 2)), lease(Shard(1, 2))
    zero.acquire()
    one.acquire()  # siblings run together
    assert {".lock-s0of2", ".lock-s1of2"} <= set(keys(bucket, "jobs/one"))
    shards = read_status(replace(job, output_dir=job.output_dir.with_name("elsewhere"))).shards
    assert {name: shard["running"] for name, shard in shards.items()} == {"s0of2": True, "s1of2": True}
    with pytest.raises(OutputLockedError, match="shard s0of2"):
        lease(None).acquire()  # an unsharded run would send what the shards send
    with pytest.raises(OutputLockedError, match="shard s"):
        lease(Shard(0, 4)).acquire()  # and so would a shard of another count
    with pytest.raises(OutputLockedError, match="run of shard s0of2"):
        lease(Shard(0, 2)).acquire()
    zero.release()
    one.release()
    assert not running_shards(Mirror(job.remote))
    alone = lease(None)
    alone.acquire()  # released shards: the unsharded run goes
    with pytest.raises(OutputLockedError, match="unsharded run"):
        lease(Shard(1, 2)).acquire()
    alone.release()


def test_a_killed_run_is_resumed_with_one_ok_row_per_key(write_job: JobWriter, bucket: str) -> None:
    n, concurrency = 200, 8
    sim = create_app(FaultPlan(latency_ms=20, latency_jitter_ms=10))
    with serve_in_thread(sim) as url:
        path = chat_job(write_job, bucket, n, flush=20, base_url=url)
        path.write_text(path.read_text().replace("concurrency = 4", f"concurrency = {concurrency}"))
        command = [sys.executable, "-m", "batchrun", "run", str(path), "--quiet"]
        for target in (60, 120):  # killed twice mid-way, with parts in the bucket and results in its journal
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            while sim.stats.total < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        # the lease of the killed run is live, but its process (this host, this staging folder) is gone
        final = subprocess.run([*command[:-1], "--progress", "lines"], capture_output=True, timeout=120)
        assert final.returncode == 0, final.stderr.decode()
    assert f"-> s3://{bucket}/jobs/one: {n} rows" in final.stderr.decode()  # the bucket, not the staging folder
    rows = bucket_rows(bucket, "jobs/one")
    assert rows.height == n and rows["request_key"].is_unique().all() and set(rows["status"]) == {"ok"}
    assert n <= sim.stats.by_outcome["ok"] <= n + 2 * concurrency


def test_credentials_reach_no_file_no_log_and_no_error_line(
    write_job: JobWriter,
    bucket: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    path = chat_job(write_job, bucket, 4)
    path.write_text(path.read_text().replace('preset = "openai-compatible"', 'preset = "simulator"'))
    assert main(["run", str(path)]) == 0
    assert json.loads(object_bytes(bucket, "jobs/one/last_run.json"))["exit_code"] == 0  # for status elsewhere
    assert main(["status", f"s3://{bucket}/jobs/one"]) == 0
    # a run refused by the server: its error line names the object, never the key
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONG")
    missing = path.with_name("other.toml")
    missing.write_text(path.read_text().replace(f"s3://{bucket}/", "s3://no-such-bucket-here/"))
    assert main(["run", str(missing)]) == 2
    out = capsys.readouterr()
    assert "no-such-bucket-here" in out.err
    assert SECRET not in out.out + out.err + caplog.text
    for name in keys(bucket, "jobs/one"):
        assert SECRET.encode() not in object_bytes(bucket, f"jobs/one/{name}"), name
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file
    job = load_job(path)
    assert SECRET not in repr(job) + repr(Mirror(job.remote))  # type: ignore[arg-type]


def test_unsupported_urls_and_a_missing_obstore_are_one_line(
    write_job: JobWriter, bucket: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = chat_job(write_job, bucket, 1)
    assert main(["plan", str(path), "--output", "ftp://host/x"]) == 2
    assert "ftp:// is not an output batchrun writes to" in capsys.readouterr().err
    for url in ("gs://a-bucket/evals/x/", "az://a-container/evals/x"):  # obstore's other stores
        remote = load_job(path, output=url).remote
        assert remote is not None and remote.url == url.rstrip("/") and not remote.allow_http
    monkeypatch.setitem(sys.modules, "obstore", None)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'batchrun[s3]'" in err[0] and "output" in err[0]


def test_no_credentials_is_said_so_not_as_the_metadata_address() -> None:
    from batchrun.sink.remote import _first_line

    seen = OSError("Generic S3 error: Error performing PUT http://169.254.169.254/latest/api/token in 1ms - 403")
    assert _first_line(seen) == (
        "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a role the machine has)"
    )
    assert _first_line(OSError("NoSuchBucket\nmore")) == "NoSuchBucket"
