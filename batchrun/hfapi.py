"""The Inference Endpoints management API, through huggingface_hub (the ``hf`` extra): an endpoint's
state, resume, pause. The edge: huggingface_hub is sync (its HTTP client blocks), so callers run these
in a worker thread (``dispatch/wake.py``); its exceptions are translated here, once.

The routes huggingface_hub calls (``HfApi.get_inference_endpoint`` and friends, 0.24 to 2.4), under
``https://api.endpoints.huggingface.cloud/v2``: ``GET /endpoint/{namespace}/{name}``, ``POST
.../resume`` (a 400 "already running" is fine with ``running_ok=True``), ``POST .../pause``. The answer's
``status.state`` is one of pending, initializing, updating, updateFailed, running, paused, failed,
scaledToZero; ``status.url`` the endpoint's URL once deployed. huggingface_hub takes that root from a
constant, not from ``HF_ENDPOINT`` (which names the Hub, and is often a mirror that must not get the
token): ``[endpoint] hf_api_url`` replaces it for the duration of each call (the simulator, a gateway).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import JobError

if TYPE_CHECKING:
    from huggingface_hub import InferenceEndpoint

#: huggingface_hub's ``constants.INFERENCE_ENDPOINTS_ENDPOINT``, where the token goes by default.
MANAGEMENT_API = "https://api.endpoints.huggingface.cloud/v2"
INSTALL_HINT = "pip install 'batchrun[hf]'"

RUNNING = "running"
ASLEEP = frozenset({"paused", "scaledToZero"})  # resumed before the first request
BROKEN = frozenset({"failed", "updateFailed"})  # no wait mends these

_API_ROOT = threading.Lock()  # the constant is process-wide: one call with another root at a time


def require_installed(where: str) -> None:
    """huggingface_hub is an extra: a job that names an Inference Endpoint without it installed is
    refused before anything is sent (exit 2), saying what to install."""
    if importlib.util.find_spec("huggingface_hub") is None:
        raise JobError(f"{where}: endpoint.hf_endpoint needs huggingface_hub: {INSTALL_HINT}")


@dataclass(frozen=True, slots=True)
class EndpointState:
    state: str
    url: str | None
    message: str = ""  # what the API says about a failed state, when it says anything


class ManagementError(Exception):
    """The management API did not do what was asked; ``status`` is its HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def no_rights(self) -> bool:
        """401/403: the token may call the endpoint but not manage it (or there is no token)."""
        return self.status in (401, 403)


class Manager:
    """One Inference Endpoint, ``namespace/name``, managed with ``token``. Each method blocks."""

    def __init__(self, hf_endpoint: str, token: str, api_url: str | None = None) -> None:
        self.namespace, self.name = hf_endpoint.split("/", 1)
        self._token = token
        self.api_url = api_url

    def get(self) -> EndpointState:
        return self._call(
            lambda api: api.get_inference_endpoint(self.name, namespace=self.namespace, token=self._token)
        )

    def resume(self) -> EndpointState:
        return self._call(
            lambda api: api.resume_inference_endpoint(
                self.name, namespace=self.namespace, running_ok=True, token=self._token
            )
        )

    def pause(self) -> EndpointState:
        return self._call(
            lambda api: api.pause_inference_endpoint(self.name, namespace=self.namespace, token=self._token)
        )

    def _call(self, call: Callable[[Any], InferenceEndpoint]) -> EndpointState:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        # the session library's HTTPError (httpx2 in 2.x, requests in 0.x) and OSError: no answer
        foreign: tuple[type[BaseException], ...] = (
            *(base for base in HfHubHTTPError.__bases__ if issubclass(base, BaseException)),
            OSError,
            KeyError,
            TypeError,
            ValueError,
        )
        try:
            with self._root():
                found = call(HfApi(token=self._token))
            return EndpointState(str(found.status), found.url, _message(found.raw))
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            said = exc.server_message or str(exc)  # str(exc): "403 Forbidden: None.", then the URL...
            raise ManagementError(f"HTTP {status}: {self._clean(said)}", status) from None
        except foreign as exc:
            raise ManagementError(f"{type(exc).__name__}: {self._clean(str(exc))}") from None

    def _clean(self, text: str) -> str:
        """The first line of a message, without the token (a server may echo it)."""
        return _first_line(text.replace(self._token, "***")) if self._token else _first_line(text)

    @contextmanager
    def _root(self) -> Iterator[None]:
        if self.api_url is None:
            yield
            return
        from huggingface_hub import constants

        with _API_ROOT:
            before = constants.INFERENCE_ENDPOINTS_ENDPOINT
            constants.INFERENCE_ENDPOINTS_ENDPOINT = self.api_url.rstrip("/")
            try:
                yield
            finally:
                constants.INFERENCE_ENDPOINTS_ENDPOINT = before

    def __repr__(self) -> str:
        return f"Manager({self.namespace}/{self.name}, api={self.api_url or MANAGEMENT_API})"


def _message(raw: Any) -> str:
    status = raw.get("status") if isinstance(raw, dict) else None
    message = status.get("message") if isinstance(status, dict) else None
    return _first_line(message) if isinstance(message, str) else ""


def _first_line(text: str) -> str:
    return " ".join(text.split("\n", 1)[0].split())[:300]
