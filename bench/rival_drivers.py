"""The rival tools, one per process, run by ``bench/rivals.py`` in the rivals' own venv.

    bench/.venv-rivals/bin/python bench/rival_drivers.py curator --url U --requests N --concurrency C --work DIR
    bench/.venv-rivals/bin/python bench/rival_drivers.py cookbook --script PATH --url U ... (as above)

Both send the benchmark's prompts (``clients.prompt``: the same rows batchrun reads from its
Parquet input) with the same model and parameters to the same nginx, then count the answers
they wrote: a run that failed fast is not a speed.

* ``curator``: ``bespokelabs.curator.LLM`` with ``backend="openai"`` (its aiohttp processor for
  OpenAI-compatible servers), ``base_url`` = nginx, ``max_concurrent_requests`` = C, request and
  token limits far above what the machine can send, its cache in ``--work`` (a fresh fingerprint
  each run: ``CURATOR_DISABLE_CACHE``), its plain (tqdm) progress display. Timed: the
  ``llm(dataset)`` call, from the prompts (a list of dicts) to the returned dataset.
* ``cookbook``: the OpenAI cookbook's ``api_request_parallel_processor.py`` (a copy the user
  supplies: it is not on PyPI and its code is not in this repository), imported as a module and
  its ``process_api_requests_from_file`` awaited. Timed: that call, from the requests JSONL
  (written before the clock starts) to the last result line. Two things are set from outside
  its code: its ``aiohttp.ClientSession()`` gets ``TCPConnector(limit=C)`` (it has no
  concurrency knob of its own; aiohttp's default pool is 100 connections), and its
  ``api_endpoint_from_url`` also accepts ``http://`` (its regex takes ``https://`` only, and
  nginx here is plain HTTP on loopback). Logging at WARNING (its default, INFO, logs a line per
  request).

Nothing here may reach the internet: ``rivals.py`` sets the environment (see ``offline_env``).
Prints one JSON line: {"tool", "requests", "ok", "errors", "elapsed_s", "version"}.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from clients import MODEL, PARAMS, prompt  # bench/ is on sys.path; clients imports only the stdlib

API_KEY = "sk-bench-not-a-secret"


def offline_env(work: Path) -> dict[str, str]:
    """What keeps curator, litellm, datasets and tiktoken off the internet (merged into the
    environment by ``rivals.py``). tiktoken's encodings come from litellm's bundled copies."""
    spec = importlib.util.find_spec("litellm")
    env = {
        "TELEMETRY_ENABLED": "false",  # curator's PostHog events
        "CURATOR_VIEWER": "0",  # no hosted viewer session
        "CURATOR_DISABLE_CACHE": "1",  # a fresh run every time, never a cached answer
        "CURATOR_CACHE_DIR": str(work / "curator-cache"),
        "CURATOR_DISABLE_RICH_DISPLAY": "1",  # tqdm to stderr instead of a rich live display
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # litellm fetches its price list from GitHub otherwise
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(work / "hf-home"),  # datasets' cache in the temp folder, not ~/.cache
        "OPENAI_API_KEY": API_KEY,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    if spec is not None and spec.submodule_search_locations:
        env["TIKTOKEN_CACHE_DIR"] = str(Path(spec.submodule_search_locations[0]) / "litellm_core_utils" / "tokenizers")
    return env


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "question": prompt(i)} for i in range(n)]


# ---------------------------------------------------------------- curator


def run_curator(url: str, n: int, concurrency: int, work: Path) -> dict[str, Any]:
    from importlib.metadata import version

    from bespokelabs import curator

    class Bench(curator.LLM):  # type: ignore[misc]
        def prompt(self, row: dict[str, Any]) -> str:
            return str(row["question"])

        def parse(self, row: dict[str, Any], response: str) -> dict[str, Any]:
            return {"id": row["id"], "answer": response}

    data = rows(n)
    llm = Bench(
        model_name=MODEL,
        backend="openai",
        generation_params=dict(PARAMS),
        backend_params={
            "base_url": url.rstrip("/") + "/v1",
            "api_key": API_KEY,
            "max_concurrent_requests": concurrency,
            "max_requests_per_minute": 600_000_000,
            "max_tokens_per_minute": 600_000_000_000,
            "max_retries": 5,
            "require_all_responses": False,
        },
    )
    t0 = time.perf_counter()
    result = llm(data, working_dir=str(work / "curator-cache"))
    elapsed = time.perf_counter() - t0
    dataset = result.dataset
    answers = [a for a in dataset["answer"] if a]
    distinct = len(set(dataset["id"]))
    # the answers as curator wrote them to its responses file(s), counted line by line
    lines = ok_lines = 0
    for path in (work / "curator-cache").rglob("responses_*.jsonl"):
        with path.open() as f:
            for line in f:
                lines += 1
                ok_lines += json.loads(line).get("response_message") is not None
    return {
        "tool": "curator",
        "version": f"bespokelabs-curator {version('bespokelabs-curator')}, litellm {version('litellm')}",
        "requests": n,
        "ok": min(len(answers), distinct, ok_lines),
        "errors": n - min(len(answers), distinct, ok_lines),
        "dataset_rows": len(dataset),
        "response_lines": lines,
        "elapsed_s": elapsed,
    }


# ---------------------------------------------------------------- the OpenAI cookbook


def run_cookbook(script: Path, url: str, n: int, concurrency: int, work: Path) -> dict[str, Any]:
    import types
    from importlib.metadata import version

    import aiohttp

    requests_path = work / "cookbook-requests.jsonl"
    results_path = work / "cookbook-results.jsonl"
    with requests_path.open("w") as f:
        for row in rows(n):
            body = {"model": MODEL, **PARAMS, "messages": [{"role": "user", "content": row["question"]}]}
            f.write(json.dumps({**body, "metadata": {"row_id": row["id"]}}) + "\n")
    results_path.unlink(missing_ok=True)

    spec = importlib.util.spec_from_file_location("api_request_parallel_processor", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    # its one shared session, with the pool as large as the concurrency asked for
    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

    module.aiohttp = types.SimpleNamespace(ClientSession=session)
    original = module.api_endpoint_from_url

    def endpoint(request_url: str) -> str:  # plain http on loopback: the path is what it needs
        return str(original(re.sub(r"^http://", "https://", request_url)))

    module.api_endpoint_from_url = endpoint

    t0 = time.perf_counter()
    asyncio.run(
        module.process_api_requests_from_file(
            requests_filepath=str(requests_path),
            save_filepath=str(results_path),
            request_url=url.rstrip("/") + "/v1/chat/completions",
            api_key=API_KEY,
            max_requests_per_minute=600_000_000.0,
            max_tokens_per_minute=600_000_000_000.0,
            token_encoding_name="cl100k_base",
            max_attempts=5,
            logging_level=30,
        )
    )
    elapsed = time.perf_counter() - t0
    ok = lines = 0
    ids = set()
    with results_path.open() as f:
        for line in f:
            lines += 1
            item = json.loads(line)
            if isinstance(item[1], dict) and item[1].get("choices"):
                ok += 1
                ids.add(item[2]["row_id"])
    return {
        "tool": "cookbook",
        "version": f"cookbook processor with aiohttp {aiohttp.__version__}, tiktoken {version('tiktoken')}",
        "requests": n,
        "ok": min(ok, len(ids)),
        "errors": n - min(ok, len(ids)),
        "result_lines": lines,
        "elapsed_s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=["curator", "cookbook", "env"])
    parser.add_argument("--url", default="")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--script", type=Path, help="cookbook: the path to api_request_parallel_processor.py")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.tool == "env":
        print(json.dumps(offline_env(args.work)))
        return
    missing = [k for k in offline_env(args.work) if k not in os.environ]
    if missing:
        raise SystemExit(f"run me from bench/rivals.py (the offline environment is not set: {missing})")
    if args.tool == "curator":
        out = run_curator(args.url, args.requests, args.concurrency, args.work)
    else:
        if args.script is None:
            raise SystemExit("cookbook needs --script PATH")
        out = run_cookbook(args.script, args.url, args.requests, args.concurrency, args.work)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
