"""Where a request may go: credentials are bound to origins the job file fixes.

A table can come from anywhere, so a URL template that takes its host from a row must not carry
the job's token to a host the row names. An origin is (scheme, host, port). The origins a job
allows are the literal origin of its URL (or base URL) and those listed in ``[endpoint]
allowed_origins``; a URL whose origin is outside them is refused before it is sent. Some places a
table should never reach at all (link-local and cloud metadata addresses, userinfo in a URL, a
scheme other than http and https) are refused even as a literal origin, unless listed.

``OriginPolicy.check`` is the one check, pure and reusable: any other URL batchrun will call with a
credential (a management API, object storage) asks it too. Host names are not resolved: a name
that resolves to a metadata address is not caught here (DNS can change between a check and the
connection); the binding of credentials to listed origins is the guarantee (``docs/security.md``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

Origin = tuple[str, str, int]  # scheme, host (lower case, IPv6 without brackets), port

DEFAULT_PORTS = {"http": 80, "https": 443}

# the strict grammar every URL must fit: scheme://host[:port] then a path, query or fragment. A URL
# outside it (userinfo, a backslash, spaces, percent-escapes in the host) could be read as another
# host by one of the parsers on the way (httpx, yarl), so it is refused rather than interpreted.
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):(?P<rest>.*)$", re.DOTALL)
_AUTHORITY = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)(?::(?P<port>[0-9]{1,5}))?$")

# metadata services and link-local addresses: credentials of the machine, not of an endpoint
_LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
_METADATA = frozenset(
    {
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})


class OriginError(ValueError):
    """A URL that cannot be sent anywhere safely, with the reason."""


def parse_origin(url: str) -> Origin:
    """The origin of ``url``, or ``OriginError`` when the URL is not a plain http(s) URL."""
    match = _URL.match(url)
    if match is None:
        raise OriginError(f"not a URL: {url[:80]!r}")
    scheme = match["scheme"].lower()
    if scheme not in DEFAULT_PORTS:
        raise OriginError(f"the scheme {scheme}: is not http or https")
    rest = match["rest"]
    if not rest.startswith("//"):
        raise OriginError(f"not an http(s) URL: {url[:80]!r}")
    authority = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
    if "@" in authority:
        raise OriginError("a user or password in the URL (user:pass@host): give credentials by api_key_env")
    found = _AUTHORITY.match(authority)
    if found is None:
        raise OriginError(f"the host part {authority[:80]!r} is not a plain host[:port]")
    host = found["host"].lower().strip("[]").rstrip(".")
    port = int(found["port"]) if found["port"] else DEFAULT_PORTS[scheme]
    if not host or port > 65535:
        raise OriginError(f"the host part {authority[:80]!r} is not a plain host[:port]")
    return scheme, host, port


def origin_text(origin: Origin) -> str:
    scheme, host, port = origin
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" + ("" if DEFAULT_PORTS[scheme] == port else f":{port}")


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a host names literally, in any form the C library would read: ``inet_aton``
    takes ``2852039166``, ``0xa9.0xfe.0xa9.0xfe`` and ``169.254.43518`` as 169.254.169.254."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[0-9A-Fa-fXx.]+", host):
            return None
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def off_limits(host: str) -> str | None:
    """Why a table should never reach ``host`` (a link-local or cloud metadata address), or None."""
    if host in _METADATA_NAMES:
        return "a cloud metadata service"
    address = _address(host)
    if address is None:
        return None
    if address in _METADATA:
        return "a cloud metadata address"
    if any(address in net for net in _LINK_LOCAL):
        return "a link-local address (cloud metadata lives there)"
    return None


def literal_origin(template: str) -> str | None:
    """The part of a URL template that fixes its origin (``scheme://host:port``) when no template
    syntax is in it, else None: only then can the origin be checked once, before any row."""
    match = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*", template)
    if match is None:
        return None
    head = match[0]
    if any(mark in head for mark in ("{{", "{%", "{#")):
        return None
    rest = template[len(head) :]
    if rest and rest[0] not in "/?#":  # "{{ x }}" right after the host could extend it
        return None
    return head


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """The origins a job's credentials may go to. ``fixed``: the URL's origin is literal (checked
    once when the job was read), so no URL needs a check per row."""

    allowed: frozenset[Origin]
    fixed: bool = True

    def refusal(self, url: str) -> str | None:
        """Why ``url`` must not be sent, or None. Pure, a few µs: fit for every row."""
        try:
            origin = parse_origin(url)
        except OriginError as exc:
            return f"the URL is refused: {exc}"
        if origin in self.allowed:
            return None
        listed = ", ".join(sorted(origin_text(o) for o in self.allowed))
        return (
            f"the origin {origin_text(origin)} is not one the job allows ({listed}); "
            "add it to [endpoint] allowed_origins if it is meant"
        )

    def fingerprint(self) -> str:
        return ",".join(sorted(origin_text(o) for o in self.allowed))


def allowed_origin(text: str) -> Origin:
    """One entry of ``allowed_origins``: ``scheme://host[:port]``, nothing after it."""
    origin = parse_origin(text)
    if re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*/?", "", text):
        raise OriginError(f"{text!r} has a path or query: an origin is scheme://host[:port] only")
    return origin


def checked_literal(head: str, allowed: frozenset[Origin]) -> Origin:
    """The literal origin of a job's URL, refused if a table should never reach it (unless listed)."""
    origin = parse_origin(head)
    if origin not in allowed and (why := off_limits(origin[1])):
        raise OriginError(f"{origin_text(origin)} is {why}; list it in allowed_origins if it is meant")
    return origin


def policy_for(url_template: str, allowed: frozenset[Origin]) -> OriginPolicy:
    """The origins a job with this URL template and ``allowed_origins`` (parsed) may send to;
    ``OriginError`` names what is wrong. A templated origin needs the list: a row must not choose
    the host."""
    head = literal_origin(url_template)
    if head is None:
        if not allowed:
            raise OriginError(
                "its origin (scheme://host:port) comes from the table: list the origins it may take in "
                '[endpoint] allowed_origins = ["https://host:port", ...]'
            )
        return OriginPolicy(allowed, fixed=False)
    return OriginPolicy(allowed | {checked_literal(head, allowed)}, fixed=True)
