"""Which web pages may open the WebSocket stream: the agent's own, and the origins listed in
`[api] cors_origins` (the one list of other origins the API trusts from a browser).

Why check at all when the stream needs a ticket: a browser lets any page open a WebSocket to any
address (CORS does not apply to WebSockets), and the ticket travels in the URL, where it can be
seen and replayed within its few seconds. A browser always sends the page's origin and no page
can forge it, so an upgrade whose `Origin` names another site is refused whatever it carries.
Clients that are not browsers send no `Origin`; they are let through (their ticket still decides).

Origins are compared as (scheme, host, port), with the scheme's default port filled in and the
scheme and host in lower case, the way browsers serialize them. "The agent's own origin" is the
scheme the request came in on (ws -> http, wss -> https) with the host and port of its `Host`
header: the address the page that opened the socket was loaded from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from agent.api.errors import ApiError
from oht_errors import ErrorKind

__all__ = ["OriginNotAllowed", "OriginPolicy", "parse_origin"]

Origin = tuple[str, str, int]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REQUEST_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


class OriginNotAllowed(ApiError):
    code = "ORIGIN_NOT_ALLOWED"
    kind = ErrorKind.FORBIDDEN
    hint = (
        "Open the stream from the agent's own page, from a client that sends no Origin, or list the "
        "page's origin (scheme://host[:port]) in [api] cors_origins."
    )


def _split(scheme: str, netloc: str) -> Origin | None:
    """(scheme, host, port) of a bare `host[:port]`, or None if it is anything more or less."""
    if not netloc or any(c in netloc for c in "/?#@\\ "):
        return None
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:  # a port that is not a number in 0-65535, a broken [v6] literal
        return None
    if not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), _DEFAULT_PORTS[scheme] if port is None else port


def parse_origin(value: str) -> Origin | None:
    """An `Origin` header value or a listed origin (`scheme://host[:port]`, nothing else), or None.

    `null` (sandboxed pages, local files), other schemes, paths, credentials: None."""
    scheme, sep, rest = value.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        return None
    return _split(scheme, rest)


class OriginPolicy:
    def __init__(self, listed: Iterable[str] = ()) -> None:
        parsed = {}
        for origin in listed:
            key = parse_origin(origin)
            if key is None:
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])")
            parsed[key] = origin
        self._listed = frozenset(parsed)

    def own(self, request_scheme: str, host: str | None) -> Origin | None:
        """The origin of the page the request came from, if it was served by this agent."""
        scheme = _REQUEST_SCHEMES.get(request_scheme.lower())
        if scheme is None or host is None:
            return None
        return _split(scheme, host)

    def allows(self, origins: Sequence[str], request_scheme: str, host: str | None) -> bool:
        """May an upgrade with these `Origin` header values (usually none or one) go on?

        No header: yes (not a browser). One: if it is the agent's own origin or a listed one.
        More than one: no (no browser sends two)."""
        if not origins:
            return True
        if len(origins) > 1:
            return False
        origin = parse_origin(origins[0])
        if origin is None:
            return False
        return origin in self._listed or origin == self.own(request_scheme, host)
