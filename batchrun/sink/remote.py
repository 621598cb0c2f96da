"""Output on object storage (issue 19): ``output = "s3://bucket/prefix"`` (or ``gs://``, ``az://``).

A run works in a local staging folder, as it does in any output folder (locks, crash journal, plan
index, atomic part files), and ``Mirror`` copies what is finished to the bucket:

- each manifest part, once written, goes up as one object after the images it names, so a part in
  the bucket never names an image that is not there (a PUT is atomic: no reader ever sees part of an
  object under its final name);
- at start, the parts in the bucket that the staging folder lacks come down (the done keys of other
  machines and shards), and the local parts the bucket lacks go up (a part folded from a crashed
  run's journal, or one whose upload was cut off).

Images leave the staging folder once their part is up. The journal stays local: a crash on the same
machine is folded and sent up by the next start, a lost machine loses the results since its last
part (they are requested again).

The library is obstore (Rust's ``object_store``), imported only when an output is on object storage.
Credentials come from the environment, read by obstore itself (``AWS_ACCESS_KEY_ID``, ...): nothing
here holds them, so no repr, log line or error message can show them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import JobError, SinkError
from .files import make_folder, write_bytes_atomic

if TYPE_CHECKING:
    from obstore.store import ClientConfig

    from ..models import Result

SCHEMES = ("s3", "gs", "az")
INSTALL = "pip install 'batchrun[s3]'"
# an image's name as sink/layout makes it: a name read from a manifest in the bucket is never a path
# that could leave the staging folder
_IMAGE = re.compile(r"^images/[0-9a-f]{2}/[0-9a-f]{16,64}\.[a-z]{2,4}$")
_NOTE = re.compile(r"^last_run(-s\d+of\d+)?\.json$")  # report/last_run.py's names
UPLOADS = 16  # objects sent or fetched at once: ~1,000 images of a part in a few seconds


@dataclass(frozen=True, slots=True)
class RemoteOutput:
    """Where a job's output lives in a bucket, and the local folder the run works in."""

    url: str  # scheme://bucket/prefix, no trailing slash
    staging: Path
    allow_http: bool = field(default=False, repr=False)  # AWS_ENDPOINT_URL is http:// (a local S3 server)

    def where(self, key: str = "") -> str:
        return f"{self.url}/{key}" if key else self.url

    def open(self) -> Any:
        """The obstore store for the URL (credentials and endpoint from the environment)."""
        from obstore.store import from_url

        options: ClientConfig | None = {"allow_http": True} if self.allow_http else None
        try:
            return from_url(self.url, client_options=options)
        except Exception as exc:  # a bad URL or configuration: obstore's own message, one line
            raise JobError(f"output {self.url}: {_first_line(exc)}") from None


def is_url(text: str) -> bool:
    return "://" in text


def remote_output(text: str, env: Mapping[str, str]) -> RemoteOutput | None:
    """``text`` as an object-storage output, or None for a local path; a ``JobError`` for a URL
    batchrun cannot write to (its reason is one line, said before anything is read or sent)."""
    if not is_url(text):
        return None
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise JobError(f"{scheme}:// is not an output batchrun writes to: a folder, or s3://, gs://, az://")
    bucket, _, prefix = rest.strip("/").partition("/")
    if not bucket:
        raise JobError(f"{text}: no bucket (write {scheme}://bucket/prefix)")
    if ".." in prefix.split("/"):
        raise JobError(f"{text}: '..' in the prefix")
    if importlib.util.find_spec("obstore") is None:
        raise JobError(f"an output on {scheme}:// needs obstore: {INSTALL}")
    url = f"{scheme}://{bucket}/{prefix}".rstrip("/")
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT") or ""
    return RemoteOutput(url, staging_dir(url, env), allow_http=scheme == "s3" and endpoint.startswith("http://"))


def staging_dir(url: str, env: Mapping[str, str]) -> Path:
    """``$BATCHRUN_CACHE_DIR``, else ``$XDG_CACHE_HOME/batchrun``, else ``~/.cache/batchrun``; then
    ``objects/<bucket>-<12 hex of the URL's hash>``: one folder per output URL."""
    if env.get("BATCHRUN_CACHE_DIR"):
        root = Path(env["BATCHRUN_CACHE_DIR"])
    elif env.get("XDG_CACHE_HOME"):
        root = Path(env["XDG_CACHE_HOME"]) / "batchrun"
    else:
        root = Path(env.get("HOME") or os.path.expanduser("~")) / ".cache" / "batchrun"
    bucket = url.partition("://")[2].partition("/")[0]
    tag = hashlib.sha256(url.encode()).hexdigest()[:12]
    return root.absolute() / "objects" / f"{''.join(c if c.isalnum() or c in '.-_' else '_' for c in bucket)}-{tag}"


# where object_store looks for credentials once the environment has none (EC2's instance metadata)
_METADATA = "169.254.169.254"


def _first_line(exc: BaseException) -> str:
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if _METADATA in line:  # the message would only name an address the user never gave
        return "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a role the machine has)"
    return line


class Mirror:
    """The staging folder and its bucket: what goes up and what comes down (blocking calls: run
    them in a worker thread). ``guard`` says why uploads must stop (a lost lease), or None."""

    def __init__(self, remote: RemoteOutput, *, store: Any = None, guard: Callable[[], str | None] | None = None):
        self.remote = remote
        self.staging = remote.staging
        self.store = store if store is not None else remote.open()
        self.guard = guard
        self.uploaded = 0
        self.downloaded = 0

    def __repr__(self) -> str:
        return f"Mirror({self.remote.url!r}, uploaded={self.uploaded}, downloaded={self.downloaded})"

    @contextlib.contextmanager
    def errors(
        self, verb: str, key: str, error: type[Exception] = SinkError, keep: tuple[type[Exception], ...] = ()
    ) -> Iterator[None]:
        """obstore's errors as one line naming the object (``keep``: those the caller handles)."""
        try:
            yield
        except Exception as exc:
            if isinstance(exc, (JobError, SinkError, *keep)):
                raise
            raise error(f"cannot {verb} {self.remote.where(key)}: {_first_line(exc)}") from None

    def names(self, prefix: str) -> set[str]:
        """The keys under ``prefix`` (relative to the output's prefix)."""
        import obstore

        with self.errors("list", prefix, JobError):
            return {meta["path"] for batch in obstore.list(self.store, prefix=prefix) for meta in batch}

    def top_names(self) -> set[str]:
        """The objects directly under the output's prefix (the locks, the job pointer), not those
        in its folders: object_store lists by path segment, so ``names(".lock")`` would look in a
        folder ``.lock/``."""
        import obstore

        with self.errors("list", "", JobError):
            return {meta["path"] for meta in obstore.list_with_delimiter(self.store)["objects"]}

    def read(self, key: str) -> bytes | None:
        import obstore
        from obstore.exceptions import NotFoundError

        with self.errors("read", key, JobError):
            try:
                return bytes(obstore.get(self.store, key).bytes())
            except (NotFoundError, FileNotFoundError):
                return None

    def put(self, key: str, data: bytes | Path) -> None:
        """One whole object (an S3 PUT, or a multipart upload completed at once: never half visible)."""
        import obstore

        if self.guard is not None and (why := self.guard()) is not None:
            raise SinkError(f"{why}: stopped sending results to {self.remote.url} (they stay in {self.staging})")
        with self.errors("write", key):
            obstore.put(self.store, key, data)
        self.uploaded += 1

    # -- down ----------------------------------------------------------------------------------

    def pull(self, files: tuple[str, ...] = (), *, notes: bool = False) -> int:
        """``files`` (the job pointer) that the staging folder lacks, and every part it lacks; with
        ``notes``, the last-run notes too, as the bucket has them (``status`` and ``report`` read
        them); returns the number of parts fetched."""
        from .manifest import MANIFEST_DIR

        make_folder(self.staging)
        for name in files:
            if not (self.staging / name).exists() and (data := self.read(name)) is not None:
                write_bytes_atomic(self.staging / name, data)
        for name in sorted(self.top_names()) if notes else ():
            if _NOTE.match(name) and (data := self.read(name)) is not None:
                write_bytes_atomic(self.staging / name, data)
        local = self.staging / MANIFEST_DIR
        missing = sorted(
            name
            for name in self.names(f"{MANIFEST_DIR}/")
            if _is_part(name) and not (local / name.rpartition("/")[2]).exists()
        )
        if missing:
            make_folder(local)

        def fetch(name: str) -> None:
            data = self.read(name)
            if data is not None:
                write_bytes_atomic(local / name.rpartition("/")[2], data)

        _each(fetch, missing)
        self.downloaded += len(missing)
        return len(missing)

    def pull_images(self, relpaths: Iterable[str]) -> int:
        """The images the staging folder lacks among ``relpaths`` (an export of another machine's run)."""
        wanted = [p for p in relpaths if _IMAGE.match(p) and not (self.staging / p).exists()]

        def fetch(relpath: str) -> None:
            data = self.read(relpath)
            if data is not None:
                make_folder((self.staging / relpath).parent)
                write_bytes_atomic(self.staging / relpath, data)

        _each(fetch, wanted)
        self.downloaded += len(wanted)
        return len(wanted)

    # -- up ------------------------------------------------------------------------------------

    def push_pending(self) -> int:
        """Every local part the bucket lacks, each after its images; returns the number sent."""
        import polars as pl

        from .manifest import MANIFEST_DIR, part_files

        there = {name.rpartition("/")[2] for name in self.names(f"{MANIFEST_DIR}/")}
        pending = [path for path in part_files(self.staging) if path.name not in there]
        for path in pending:
            images = pl.read_parquet(path, columns=["image_path"]).get_column("image_path").drop_nulls().to_list()
            self.push_part(path, [p for p in images if (self.staging / p).is_file()])
        return len(pending)

    def push_part(self, part: Path, images: Iterable[str]) -> None:
        """``images`` (paths relative to the staging folder), then the part that names them; then
        the images leave the staging folder: the bucket holds them, and a job of a million images
        does not keep a second copy on the machine (``export`` and ``report`` fetch what they show)."""
        sent = [p for p in images if _IMAGE.match(p)]
        _each(lambda relpath: self.put(relpath, self.staging / relpath), sent)
        self.put(part.relative_to(self.staging).as_posix(), part)
        for relpath in sent:
            with contextlib.suppress(OSError):
                (self.staging / relpath).unlink()

    def part_written(self, part: Path, results: list[Result]) -> None:
        """The manifest writer's hook: a part and the images of its rows go up."""
        self.push_part(part, [r.parsed.image_path for r in results if r.parsed is not None and r.parsed.image_path])

    def push_file(self, name: str) -> None:
        path = self.staging / name
        if path.is_file():
            self.put(name, path)


def _each(call: Callable[[str], object], names: list[str]) -> None:
    """``call`` on every name, ``UPLOADS`` at a time (obstore releases the GIL while it waits); the
    first error is raised once all are done."""
    if len(names) <= 1:
        for name in names:
            call(name)
        return
    with ThreadPoolExecutor(min(UPLOADS, len(names))) as pool:
        for _ in pool.map(call, names):
            pass


def _is_part(name: str) -> bool:
    from .manifest import PART_GLOB

    base = name.rpartition("/")[2]
    head, _, tail = PART_GLOB.partition("*")
    return "/" not in name.removeprefix("manifest/") and base.startswith(head) and base.endswith(tail)
