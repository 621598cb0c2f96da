"""How an endpoint is reached: the CAs trusted, a client certificate, a proxy, from the endpoint's
table and the environment (the CA and proxy variables curl, requests and urllib read)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]  # pure with a dict

from pydantic import SecretStr

from ..errors import SpecError
from .models import EndpointSection


@dataclass(frozen=True, slots=True)
class Network:
    """How the endpoint is reached: the CAs trusted (a file or a folder, and what named it, for error
    hints; neither: certifi's), a client certificate, a proxy. The proxy (it may hold a password in
    its URL) and the key's password are secrets: they never print."""

    ca_file: str | None = None
    ca_dir: str | None = None
    ca_source: str = "certifi"
    verify: bool = True
    client_cert: str | None = None
    client_key: str | None = None
    client_key_password: SecretStr | None = None
    proxy: SecretStr | None = None


#: Where the CAs to trust come from when the job does not name them, first set wins (requests' and
#: curl's variables after OpenSSL's, as pip and huggingface_hub read them).
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def resolve_network(ep: EndpointSection, url: str, where: str, env: Any) -> Network:
    base = Path(where).resolve().parent

    def path(value: str, name: str, *, folder: bool = False) -> Path:
        found = Path(value).expanduser()
        found = found if found.is_absolute() else base / found
        if not (found.is_file() or (folder and found.is_dir())):
            raise SpecError(where, name, f"no such {'file or folder' if folder else 'file'}: {value}")
        return found

    ca_file = ca_dir = None
    source = "certifi"
    named = [("endpoint.ca_bundle", ep.ca_bundle)] + [(name, env.get(name)) for name in CA_VARIABLES]
    for name, value in named:
        if value:
            ca = path(value, name, folder=True)
            ca_file, ca_dir, source = (None, str(ca), name) if ca.is_dir() else (str(ca), None, name)
            break
    password = None
    if ep.client_key_password_env:
        if not env.get(ep.client_key_password_env):
            variable = ep.client_key_password_env
            raise SpecError(where, "endpoint.client_key_password_env", f"environment variable {variable} is not set")
        password = SecretStr(env[ep.client_key_password_env])
    if (ep.client_key or password) and not ep.client_cert:
        raise SpecError(where, "endpoint.client_cert", "client_key needs client_cert (the certificate it goes with)")
    return Network(
        ca_file=ca_file,
        ca_dir=ca_dir,
        ca_source=source,
        verify=ep.verify,
        client_cert=str(path(ep.client_cert, "endpoint.client_cert")) if ep.client_cert else None,
        client_key=str(path(ep.client_key, "endpoint.client_key")) if ep.client_key else None,
        client_key_password=password,
        proxy=_proxy(ep.proxy, url, where, env),
    )


def _proxy(given: str | None, url: str, where: str, env: Any) -> SecretStr | None:
    """``[endpoint] proxy``, else the environment's proxy for the URL's scheme (``https_proxy`` /
    ``HTTPS_PROXY``, ``http_proxy`` / ``HTTP_PROXY``, then ``ALL_PROXY``; lower case first, as curl
    and urllib read them) unless ``NO_PROXY`` names the host (urllib's matching: suffixes, ports, ``*``)."""
    parsed = urllib.parse.urlsplit(url)

    def var(name: str) -> str | None:
        return env.get(name) or env.get(name.upper()) or None

    name = "endpoint.proxy"
    proxy = given
    if proxy is None:
        no_proxy = var("no_proxy")
        host = parsed.netloc.rpartition("@")[2]  # with its port: NO_PROXY may name one
        if host and no_proxy and proxy_bypass_environment(host, {"no": no_proxy}):
            return None
        for name in (f"{parsed.scheme}_proxy", "all_proxy"):
            if proxy := var(name):
                name = name.upper()
                break
    if not proxy:
        return None
    if "://" not in proxy:
        proxy = f"http://{proxy}"  # curl's reading of a bare host:port
    scheme = proxy.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise SpecError(where, name, f"a {scheme} proxy is not supported: give an http:// proxy")
    return SecretStr(proxy)
