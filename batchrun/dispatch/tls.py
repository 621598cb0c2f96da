"""TLS as the job and the environment set it: the SSL context (built once a run: loading a CA bundle
costs ~25 ms), and what a failed handshake means for the user.

A certificate that does not verify, a host name it does not name, an expired one, no TLS version
both sides accept, a client certificate the server wants or refuses: none of them mends itself on a
retry, so each is a ``TLSFailure`` (the dispatcher makes it fatal: exit 4, one line, what to set).
Pure ``ssl``: no aiohttp here, so the dispatcher can import it for the class.
"""

from __future__ import annotations

import ssl

import certifi
import httpx

from ..errors import JobError
from ..spec.network import Network

#: OpenSSL's verify codes (X509_V_ERR_*) the hints name; the rest are told by OpenSSL's own message.
_EXPIRED, _NOT_YET_VALID = 10, 9
_NOT_FOR_HOST = {62, 64}  # host name, IP address mismatch
_UNTRUSTED = {2, 18, 19, 20, 21}  # unknown issuer, self-signed (in chain), cannot verify the first

#: Handshake alerts and errors (``ssl.SSLError.reason``) that say the same on every attempt.
_PROTOCOL = {"WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE"}
_CLIENT_CERT_WANTED = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "PEER_DID_NOT_RETURN_A_CERTIFICATE"}
_CLIENT_CERT_REFUSED = {
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "TLSV1_ALERT_ACCESS_DENIED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
}


class TLSFailure(httpx.ConnectError):
    """A TLS check failed in a way no retry mends; its message says which check and what to set."""


class ProxyRefused(httpx.ConnectError):
    """The proxy refused us (a 407, or tinyproxy's 401, to the tunnel or the request): no retry mends it."""


def proxy_refusal(status: int, reason: str) -> str:
    return (
        f"the proxy refused the request ({status} {reason}); check the user and password in the proxy URL "
        "([endpoint] proxy, or HTTPS_PROXY / HTTP_PROXY)"
    )


def ssl_context(network: Network) -> ssl.SSLContext:
    """The context every HTTPS connection of the run shares; a ``JobError`` (exit 2, nothing sent)
    when a CA bundle or the client certificate cannot be loaded."""
    if not network.verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            if network.ca_file is None and network.ca_dir is None:
                context = ssl.create_default_context(cafile=certifi.where())
            else:
                context = ssl.create_default_context(cafile=network.ca_file, capath=network.ca_dir)
        except (ssl.SSLError, OSError) as exc:
            raise JobError(f"{network.ca_source}: cannot load the CA bundle {network.ca_file}: {exc}") from None
    if network.client_cert:
        password = network.client_key_password
        try:
            context.load_cert_chain(
                network.client_cert, network.client_key, password.get_secret_value() if password else None
            )
        except (ssl.SSLError, OSError) as exc:
            raise JobError(
                f"endpoint.client_cert: cannot load the client certificate {network.client_cert}"
                f"{' with key ' + network.client_key if network.client_key else ''} "
                f"(a PEM certificate and its key; an encrypted key needs client_key_password_env): {exc}"
            ) from None
    return context


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` under an aiohttp error, found through its ``certificate_error``,
    ``os_error``, cause or context (aiohttp keeps it in one of them, depending on where it failed)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError) and type(current).__module__ == "ssl":  # aiohttp's subclass it
            return current
        for attr in ("certificate_error", "os_error", "__cause__", "__context__"):
            inner = getattr(current, attr, None)
            if isinstance(inner, BaseException):
                todo.append(inner)
    return None


def tls_failure(exc: BaseException) -> str | None:
    """Which TLS check failed and what to set, when ``exc`` is a failure no retry mends; else None."""
    error = _ssl_error(exc)
    if error is None:
        return None
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        said = error.verify_message or error.reason or "certificate verify failed"
        if code in _NOT_FOR_HOST:
            return f"the server's certificate is not for this host name ({said}); use a host name it names"
        if code in (_EXPIRED, _NOT_YET_VALID):
            return f"the server's certificate is out of date ({said}); the server must renew it"
        if code in _UNTRUSTED:
            return (
                f"the server's certificate is not signed by a trusted CA ({said}); set [endpoint] ca_bundle "
                "(or SSL_CERT_FILE / REQUESTS_CA_BUNDLE) to the CA that signed it"
            )
        return f"the server's certificate does not verify ({said}); set [endpoint] ca_bundle to the CA that signed it"
    reason = error.reason or ""
    if reason in _PROTOCOL:
        return (
            f"no TLS version both sides accept ({reason}); is this an https:// URL for an http:// port, "
            "or a server older than TLS 1.2?"
        )
    if reason in _CLIENT_CERT_WANTED:
        return f"the server wants a client certificate ({reason}); set [endpoint] client_cert and client_key"
    if reason in _CLIENT_CERT_REFUSED:
        return (
            f"the server refused the client certificate ({reason}); check [endpoint] client_cert and "
            "client_key against the CA the server trusts"
        )
    return None


#: nginx finishes the handshake whatever the client certificate, then answers 400 with one of these
#: pages (its 495, 496 and 497 codes, sent as 400): ``ssl_verify_client on`` tells the refusal here.
_NGINX_PAGES = (
    (
        b"No required SSL certificate was sent",
        "the server wants a client certificate (nginx: none was sent); set [endpoint] client_cert and client_key",
    ),
    (
        b"The SSL certificate error",
        "the server refused the client certificate (nginx: it does not verify); "
        "check [endpoint] client_cert and client_key against the CA the server trusts",
    ),
    (
        b"The plain HTTP request was sent to HTTPS port",
        "the port speaks HTTPS (nginx: plain HTTP was sent); use an https:// URL",
    ),
)


def refused_by_page(status: int, body: bytes) -> httpx.ConnectError | None:
    """Which check failed, when a 400 is nginx's page for a client certificate or a plain request, or
    a 407 is the proxy's: what no retry mends before the endpoint is even reached."""
    if status == 407:
        return ProxyRefused(proxy_refusal(407, "Proxy Authentication Required"))
    if status != 400 or len(body) > 4096:
        return None
    said = next((said for page, said in _NGINX_PAGES if page in body), None)
    return TLSFailure(said) if said else None
