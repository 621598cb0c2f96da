"""``batchrun simulate``: serve the simulator from the command line until Ctrl-C or SIGTERM.

The main CLI adds these arguments to its subparser and calls :func:`run_simulate_command`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from ..durations import parse_duration
from .faults import ENDPOINT_STATES, FaultPlan

if TYPE_CHECKING:
    from .app import Simulator
    from .server import ServerTLS

#: (flag, FaultPlan field, help) for the plain fault rates.
_RATES = (
    ("--rate-429", "rate_429", "share of requests answered 429 with Retry-After"),
    ("--rate-500", "rate_500", "share answered 500"),
    ("--rate-502", "rate_502", "share answered 502"),
    ("--rate-503", "rate_503", "share answered 503"),
    ("--rate-loading", "rate_loading", "share answered 503 'Model is loading' with estimated_time"),
    ("--rate-reset", "rate_reset", "share whose connection is reset without a response"),
    ("--rate-stream-cut", "rate_stream_cut", "share of streams closed before finish_reason and [DONE]"),
    ("--rate-html", "rate_html", "share answered 200 with an HTML page"),
    ("--rate-truncated", "rate_truncated", "share answered 200 with a truncated JSON body or image"),
    ("--rate-wrong-content-type", "rate_wrong_content_type", "share answered 200 with a wrong content type"),
    ("--rate-midstream-error", "rate_midstream_error", "share of streams that end with a TGI error event"),
    ("--rate-wrong-shape", "rate_wrong_shape", "share answered 200 with a whole answer of the wrong shape"),
)

ENDPOINTS = (
    "POST /v1/chat/completions            OpenAI chat completions (JSON or SSE)",
    "POST /models/{model}                 HF serverless text generation / text-to-image",
    "POST /hf-inference/models/{model}    HF router text-to-image (raw image bytes)",
    "POST /v1/images/generations          OpenAI images (b64_json)",
    "GET  /v2/endpoint/{ns}/{name}        HF Inference Endpoints API (POST .../resume, .../pause, ...)",
    "GET  /health  GET /_sim/stats  POST /_sim/reset  GET|POST /_sim/plan",
)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}: give a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}: give a number between 0 and 1")
    return value


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port, 0 for any free one (default: 8080)")
    parser.add_argument("--latency", type=parse_duration, default=0.0, help="fixed latency, e.g. 50ms")
    parser.add_argument("--jitter", type=parse_duration, default=0.0, help="uniform extra latency, e.g. 20ms")
    parser.add_argument("--tail-latency", type=parse_duration, default=0.0, help="long-tail extra latency")
    parser.add_argument("--tail-rate", type=_rate, default=0.0, help="share of requests with tail latency")
    parser.add_argument("--chunk-delay", type=parse_duration, default=0.0, help="pause between SSE chunks")
    parser.add_argument("--error-rate", type=_rate, default=None, help="share answered 500 (= --rate-500)")
    for flag, _field, text in _RATES:
        parser.add_argument(flag, type=_rate, default=0.0, help=text)
    parser.add_argument("--retry-after", type=parse_duration, default=1.0, help="Retry-After sent with 429s")
    parser.add_argument(
        "--header-429",
        type=_header,
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a header sent with every 429, e.g. 'x-ratelimit-remaining-tokens: 0' (repeat it for several)",
    )
    parser.add_argument("--max-rps", type=float, default=None, help="answer 429 above this many requests/s")
    parser.add_argument(
        "--count-refused",
        action="store_true",
        help="with --max-rps: refused requests count in the window too (as many gateways do)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="answer TGI's 429 'Model is overloaded' above this many requests in flight",
    )
    parser.add_argument(
        "--queue-after",
        type=int,
        default=None,
        help="above this many requests in flight, latency grows with them (a server that queues)",
    )
    parser.add_argument(
        "--quota", choices=("openai", "hf"), default=None, help="answer every request as an account with no quota left"
    )
    parser.add_argument(
        "--estimated-time",
        type=parse_duration,
        default=2.0,
        help="estimated_time sent with 'Model is loading'",
    )
    parser.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' (401 otherwise)")
    hf = parser.add_argument_group("a Hugging Face Inference Endpoint (management API under /v2/endpoint/NS/NAME)")
    hf.add_argument(
        "--cold-start",
        type=parse_duration,
        default=0.0,
        help="scaled to zero at start; a replica takes this long to start (503 meanwhile), e.g. 40s",
    )
    hf.add_argument(
        "--endpoint-state",
        choices=ENDPOINT_STATES,
        default=None,
        help="its state at start (default: scaledToZero with --cold-start, else running)",
    )
    hf.add_argument(
        "--no-manage-rights", action="store_true", help="answer 403 to the management calls (a token without rights)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws (default: 0)")
    parser.add_argument(
        "--close-after-response",
        action="store_true",
        help="advertise keep-alive, then close each connection after its response (as llama-server does)",
    )
    tls = parser.add_argument_group("HTTPS")
    tls.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate (PEM; needs --tls-key)")
    tls.add_argument("--tls-key", default=None, help="the certificate's private key (PEM)")
    tls.add_argument("--tls-client-ca", default=None, help="require client certificates signed by this CA (mTLS)")
    tls.add_argument(
        "--tls-generate",
        metavar="FOLDER",
        default=None,
        help="serve HTTPS with a new test CA and certificate for localhost/127.0.0.1, written to FOLDER "
        "(ca.pem: give it to the client as ca_bundle); needs the trustme package",
    )


def tls_from_args(args: argparse.Namespace) -> ServerTLS | None:
    """The HTTPS settings the options ask for (``ValueError`` when they do not fit together)."""
    from .server import ServerTLS

    if args.tls_generate:
        if args.tls_cert or args.tls_key:
            raise ValueError("give --tls-generate or --tls-cert/--tls-key, not both")
        return generate_tls(Path(args.tls_generate), client_ca=args.tls_client_ca)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise ValueError("--tls-client-ca needs HTTPS: --tls-cert and --tls-key, or --tls-generate")
    return ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None


def generate_tls(folder: Path, client_ca: str | None = None) -> ServerTLS:
    """A test CA (``ca.pem``) and a certificate it signs for localhost and 127.0.0.1, in ``folder``."""
    try:
        import trustme
    except ImportError:
        raise ValueError("--tls-generate needs the trustme package (pip install trustme)") from None
    from .server import ServerTLS

    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    return ServerTLS(str(folder / "cert.pem"), str(folder / "key.pem"), client_ca)


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"invalid header {text!r}: use NAME:VALUE")
    return name.strip(), value.strip()


def plan_from_args(args: argparse.Namespace) -> FaultPlan:
    """The fault plan the parsed options describe (``ValueError`` if the rates add up to more than 1)."""
    rates = {name: getattr(args, name) for _flag, name, _text in _RATES}
    if args.error_rate is not None:
        rates["rate_500"] = args.error_rate
    return FaultPlan(
        latency_ms=args.latency * 1000,
        latency_jitter_ms=args.jitter * 1000,
        latency_tail_ms=args.tail_latency * 1000,
        latency_tail_rate=args.tail_rate,
        chunk_delay_ms=args.chunk_delay * 1000,
        retry_after_s=args.retry_after,
        headers_429=dict(args.header_429),
        max_rps=args.max_rps,
        max_rps_counts_refused=args.count_refused,
        max_concurrent=args.max_concurrent,
        queue_after=args.queue_after,
        quota=args.quota,
        estimated_time_s=args.estimated_time,
        require_token=args.token,
        close_after_response=args.close_after_response,
        cold_start_s=args.cold_start,
        endpoint_state=args.endpoint_state or ("scaledToZero" if args.cold_start else "running"),
        manage_rights=not args.no_manage_rights,
        seed=args.seed,
        **rates,
    )


async def _serve_until_signal(sim: Simulator, host: str, port: int, tls: ServerTLS | None = None) -> None:
    from .server import serve  # uvicorn: only when serving, not when the main CLI adds these options

    async with serve(sim, host, port, tls) as url:
        print(f"batchrun simulator listening on {url}", flush=True)
        if tls is not None:
            print(
                f"  certificate {tls.cert}" + (f", client certificates from {tls.client_ca}" if tls.client_ca else "")
            )
            if Path(tls.cert).with_name("ca.pem").exists():
                print(f'  trust it with: ca_bundle = "{Path(tls.cert).with_name("ca.pem")}"', flush=True)
        for line in ENDPOINTS:
            print(f"  {line}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
    print(f"stopped; {sim.stats.total} requests served", flush=True)


def run_simulate_command(args: argparse.Namespace) -> int:
    """Serve until interrupted; 0 after a clean stop, 2 for a bad option."""
    try:
        plan = plan_from_args(args)
        tls = tls_from_args(args)
    except ValueError as exc:
        print(f"batchrun simulate: {exc}", file=sys.stderr)
        return 2
    from .app import Simulator  # starlette: only when serving
    from .server import loop_options

    try:
        anyio.run(
            _serve_until_signal,
            Simulator(plan),
            args.host,
            args.port,
            tls,
            backend="asyncio",
            backend_options=loop_options(),
        )
    except RuntimeError as exc:
        print(f"batchrun simulate: {exc}", file=sys.stderr)
        return 1
    return 0
