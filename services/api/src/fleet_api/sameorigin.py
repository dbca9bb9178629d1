"""What a web page in the operator's browser must not be able to do to the gateway.

A keyless gateway (loopback, no key configured) trusts whoever reaches it, and a
browser reaches it on a web page's behalf:

- **DNS rebinding**: a page at `evil.example` re-points its name to 127.0.0.1 and calls
  the API as same-origin. Its requests still say `Host: evil.example`, so a keyless
  gateway answers only a loopback `Host` (`localhost`, `127.0.0.1`, `[::1]`), the name
  it is bound to, or a name listed in `FLEET_API_ALLOWED_HOSTS` (400, 40001 naming the
  Host header). A gateway with keys checks `Host` only when that list is set.
- **Cross-site requests**: a page may send a body-less `POST` (retry-all, stop, retry)
  or a form post to any address without asking first. Browsers mark every such request
  with `Origin` (and `Sec-Fetch-Site`); a state-changing request (POST, PUT, PATCH,
  DELETE) whose `Origin` is neither this gateway (same scheme-less host and port as
  `Host`) nor an allowed host is refused with 403, code 40305. `Origin: null` (sandboxed
  frames, files) is refused too. Clients that are not browsers - curl, TikMatrix, the
  SDKs - send no `Origin` and are not affected.

The checks apply to every route, present and future (console pages, RPC routes), and
cost a few string comparisons before routing.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from fleet_api.auth import open_access
from fleet_api.errors import send_envelope
from fleet_api.settings import ApiSettings
from fleet_contracts.codes import ErrorCode

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost"})


def host_name(authority: str) -> str:
    """`authority` (a Host header or URL netloc) without its port, lower-cased."""
    text = authority.strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    if text.count(":") == 1:
        return text.split(":", 1)[0]
    return text


def is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_allowed(name: str, settings: ApiSettings) -> bool:
    return is_loopback(name) or name in settings.allowed_hosts or name == settings.api_host.lower()


def refusal(
    method: str, headers: Headers, settings: ApiSettings, keyless: bool
) -> tuple[ErrorCode, str] | None:
    """Why this request must not be served, or None. Pure: headers and settings in."""
    host = headers.get("host", "")
    if (keyless or settings.allowed_hosts) and not host_allowed(host_name(host), settings):
        return (
            ErrorCode.INVALID_PARAMETERS,
            f"Host: {host!r} is not a name this gateway answers to; call it as "
            "127.0.0.1 or localhost, or list the name in FLEET_API_ALLOWED_HOSTS",
        )
    if method not in UNSAFE_METHODS:
        return None
    origin = headers.get("origin")
    if origin is None:
        if headers.get("sec-fetch-site") == "cross-site":
            return ErrorCode.CROSS_SITE, "cross-site request refused (Sec-Fetch-Site)"
        return None
    authority = urlsplit(origin).netloc.lower() if origin != "null" else ""
    if authority and (authority == host.lower() or host_allowed(host_name(authority), settings)):
        return None
    return (
        ErrorCode.CROSS_SITE,
        f"Origin: {origin!r} may not change anything here (cross-site request refused); "
        "send the request without an Origin header or from this gateway's own pages",
    )


class SameOriginMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings: ApiSettings = scope["app"].state.settings
        gw = getattr(scope["app"].state, "gateway", None)
        keyless = open_access(settings, gw.keys.entries if gw is not None else {})
        found = refusal(scope["method"], Headers(scope=scope), settings, keyless)
        if found is None:
            await self.app(scope, receive, send)
            return
        await send_envelope(send, *found)
