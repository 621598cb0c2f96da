"""Reaching Ray for ``run --ray [ADDRESS]``: importing it (kept on loopback when the cluster is),
and starting a local one or joining a cluster, with one clear line when that fails.

No address starts a new local Ray on 127.0.0.1; ``auto`` joins the cluster this machine belongs to;
``host:port`` a head (tried first: nothing there is one line at once, where Ray retries for two
minutes); on this machine, joined with the token ``ray start --head`` enabled (``_join_as_auto``).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from types import ModuleType
from typing import Any

from .errors import JobError

INSTALL = "pip install 'batchrun[ray]'"
REACH_S = 5.0  # the address is tried this long first: Ray retries a dead one for 2 minutes


def import_ray(address: str | None) -> ModuleType:
    """Ray, or exit 2 with the pip command. No address: the Ray this process will start listens on
    loopback only; a loopback address: a Ray started so. Ray turns 127.0.0.1 into the machine's
    public address unless this variable (read when ray is first imported,
    ``ray/_private/services.py``) says not to."""
    if _on_loopback(address) and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise JobError(f"--ray needs Ray: {INSTALL}") from None
    return ray


def _host_port(address: str | None) -> tuple[str, int] | None:
    """The host and port an address names (``host:port``, ``ray://host:port``); None for no address,
    ``auto`` and ``local``, which Ray resolves itself."""
    if address is None:
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    return (host.strip("[]"), int(port)) if sep and host and port.isdigit() else None


def _on_loopback(address: str | None) -> bool:
    if address is None:
        return True
    found = _host_port(address)
    return found is not None and found[0] in ("127.0.0.1", "localhost", "::1")


def _on_this_machine(host: str) -> bool:
    """The host is one of this machine's addresses: a socket can be bound to it."""
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, kind, _, _, sockaddr in found:
        with socket.socket(family, kind) as sock:
            try:
                sock.bind((sockaddr[0], 0))
            except OSError:
                continue
            return True
    return False


def _check_reachable(address: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=REACH_S).close()
    except OSError as exc:
        reason = exc.strerror or "timed out"
        raise JobError(
            f"--ray {address}: no Ray cluster answers there ({reason}): is `ray start --head` running?"
        ) from None


def _join_as_auto() -> None:
    """A cluster on this machine is joined as Ray joins the one ``auto`` finds: with the token that
    ``ray start --head`` enabled itself with (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN``) unless
    ``RAY_AUTH_MODE`` says otherwise. Ray never does this for an address it is given, even a local one
    (``ray/_private/worker.py``: a token is not sent to every address), so without it
    ``--ray 127.0.0.1:6379`` fails the cluster's token check where ``--ray auto`` joins. A Ray without
    token authentication (before 2.52) has nothing to enable."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def connect(ray: ModuleType, address: str | None, cpus: int | None) -> None:
    """No address: a new local Ray (``local``: not one that ``RAY_ADDRESS`` or an earlier
    ``ray start`` on this machine points to, which Ray would join for no address at all). An
    address: tried first, so nothing there is one line at once; on this machine, joined as ``auto``
    joins (its token)."""
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address is None:
        kwargs.update(num_cpus=cpus, _node_ip_address="127.0.0.1")
    elif (found := _host_port(address)) is not None:
        _check_reachable(address, *found)
        if not address.startswith("ray://") and _on_this_machine(found[0]):
            _join_as_auto()
    auth_error = getattr(ray.exceptions, "AuthenticationError", ())  # no token found (Ray 2.52+)
    try:
        ray.init(address=address or "local", **kwargs)
    except auth_error as exc:
        raise JobError(f"--ray {address}: {exc}".splitlines()[0]) from None
    except ConnectionError as exc:  # it did not let the driver in (or nothing there: auto): nothing was sent
        hint = ""
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":  # Ray's log names a refused token only
            hint = " (a cluster with token authentication: set RAY_AUTH_MODE=token, its token in RAY_AUTH_TOKEN)"
        raise JobError(f"--ray {address}: cannot connect to a Ray cluster: {exc}{hint}") from None
    except ValueError as exc:  # not an address, or Ray Client not installed
        raise JobError(f"--ray {address}: cannot connect to a Ray cluster: {exc}") from None
