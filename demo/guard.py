"""The app's front door: who may talk to it and how much one request may send.

A page on another website (or another localhost port) can make the browser send requests to
``http://127.0.0.1:7860`` — form POSTs and WebSocket handshakes need no CORS permission — and a
DNS-rebinding name can even read the replies. So every request passes :class:`Guard` first:

- **Host**: exactly one, ``host[:port]`` and nothing else, naming a loopback name, the bound address, or
  (bound to every interface) an IP literal or this machine's name; a rebinding attacker's own domain
  name is refused.
- **Origin**: at most one; when the browser sends it, it must be this app's own ``scheme://host:port``
  (``null`` is refused).
- **Token**: a secret made at launch, which only a page served by this app knows (it is written into
  the page; a cross-origin page cannot read it). Every ``/api`` and ``/ws`` request carries it in the
  ``X-Pocketswap-Token`` header or a ``token`` query parameter. Bound beyond loopback, the page itself
  needs it too: the log prints the URL with it.
- **Body size**: ``Content-Length`` over the limit is refused at once, and a chunked body that grows past
  it is cut off with a 413 (streamed, never buffered whole).

A refusal is one JSON line ``{"error": ...}`` with a 4xx status (WebSocket: the handshake is refused).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from pocketswap.core.errors import PocketswapError

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-pocketswap-token"
TOKEN_QUERY = "token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
OPEN_PATHS = ("/favicon.ico",)  # served without a token
PAGES = ("/", "/device")  # the pages that carry the token: open on loopback
OPEN_PREFIXES = ("/js/", "/device/js/", "/device/lib/", "/device/models/")  # public code and face models
SINGLE_HEADERS = ("host", "origin", TOKEN_HEADER)  # headers a request may carry once at most

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for the names and addresses that reach only this machine."""
    return host in LOOPBACK_HOSTS


# host [":" port] of a Host header or an origin, nothing else: a bracketed IPv6 literal, or a name or IPv4
# address (dot-separated labels of letters, digits, "-" and "_"); a port of 1 to 5 digits.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_AUTHORITY = re.compile(
    rf"^(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>{_LABEL}(?:\.{_LABEL})*))(?::(?P<port>[0-9]{{1,5}}))?$"
)
_ORIGIN = re.compile(r"^(?P<scheme>https?)://(?P<authority>[^/?#@\s]+)$")


def parse_authority(value: str) -> tuple[str, int | None] | None:
    """(host, port) of a Host header or an origin's ``host[:port]`` ("[::1]:7860" -> ("::1", 7860)), host
    lowercased; None for anything else (spaces, a user part, a second colon, a port past 65535, ...)."""
    found = _AUTHORITY.match(value.strip().lower()) if len(value) <= 300 else None
    if found is None:
        return None
    host = found["ip6"] or found["name"]
    if found["ip6"] is not None and not (_is_ip(host) and ":" in host):
        return None
    port = int(found["port"]) if found["port"] is not None else None
    if port is not None and not 1 <= port <= 65535:
        return None
    return host, port


def _host_name(value: str) -> str:
    """The host part of a well-formed Host header or an origin's netloc ("[::1]:7860" -> "::1"); "" else."""
    parsed = parse_authority(value)
    return parsed[0] if parsed is not None else ""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass
class AccessPolicy:
    """Which hosts, origins and token the app accepts, and how large a request body may be."""

    bind_host: str = "127.0.0.1"
    max_body_bytes: int = 200 * 1024 * 1024
    body_limits: dict[str, int] = field(default_factory=dict)  # path -> smaller limit (e.g. the WebRTC offer)
    extra_hosts: tuple[str, ...] = ()
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def public(self) -> bool:
        """Bound beyond loopback: the page itself needs the token."""
        return not is_loopback(self.bind_host)

    def host_allowed(self, host_header: str) -> bool:
        host = _host_name(host_header)
        if not host:
            return False
        if is_loopback(host) or host == self.bind_host.lower() or host in self.extra_hosts:
            return True
        if self.bind_host in WILDCARD_HOSTS:  # reached over the LAN: by address or by this machine's name
            return _is_ip(host) or host in (socket.gethostname().lower(), socket.getfqdn().lower())
        return False

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        """The browser's Origin must be this app's own scheme://host:port, written as browsers write it."""
        found = _ORIGIN.match(origin.strip().lower())
        if found is None:
            return False
        own = parse_authority(host_header)
        return own is not None and parse_authority(found["authority"]) == own

    def token_ok(self, given: str | None) -> bool:
        return given is not None and secrets.compare_digest(given.encode(), self.token.encode())

    def body_limit(self, path: str) -> int:
        return min(self.body_limits.get(path, self.max_body_bytes), self.max_body_bytes)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, reason) when the request must be refused, else None."""
        raw = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        for name in SINGLE_HEADERS:  # two of them: which one a check reads and which one a proxy trusts may differ
            if (count := sum(key == name for key, _ in raw)) > 1:
                return 400, f"the request has {count} {name} headers; send one"
        headers = dict(raw)
        host = headers.get("host", "")
        if not host:
            return 400, "the request has no Host header"
        if parse_authority(host) is None:
            return 400, f"malformed Host header {host[:80]!r}: expected host or host:port"
        if not self.host_allowed(host):
            return 403, f"host {host[:80]!r} is not this app's (a DNS-rebinding guard); open the URL the app printed"
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, host):
            return 403, f"requests from {origin[:80]!r} are refused: only this app's own page may use it"
        path = scope.get("path", "")
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or (path in PAGES and not self.public):
            return None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = headers.get(TOKEN_HEADER) or (query.get(TOKEN_QUERY) or [None])[0]
        if not self.token_ok(given):
            return 403, "missing or wrong app token: use the page this app serves (the URL it printed)"
        return None


class Guard:
    """ASGI middleware applying an :class:`AccessPolicy` to every HTTP request and WebSocket handshake."""

    def __init__(self, app, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refused = self.policy.refusal(scope)
        if refused is not None:
            log.warning("refused %s %s: %s", scope["type"], scope.get("path"), refused[1])
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": refused[1][:120]})
            else:
                await _send_error(send, *refused)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        await self._bounded(scope, receive, send)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.policy.body_limit(scope.get("path", ""))
        headers = dict(scope.get("headers", []))
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            await _send_error(send, 400, "Content-Length is not a number")
            return
        if declared > limit:
            await _send_error(send, 413, f"request body larger than {_size(limit)}")
            return
        received = 0
        started = cut_off = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal received, started, cut_off
            if cut_off:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # answer now; the handler sees a disconnect (ClientDisconnect)
                    log.warning("refused %s: body past %d bytes", scope.get("path"), limit)
                    cut_off = True
                    if not started:
                        started = True
                        await _send_error(send, 413, f"request body larger than {_size(limit)}")
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            if cut_off:
                return  # the 413 has been sent; the handler's own reply is dropped
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), *FRAME_HEADERS]}
            await send(message)

        await self.app(scope, counted_receive, tracked_send)


# No page of the app may be framed by another site (a framed app takes the clicks meant for that site's page).
FRAME_HEADERS = ((b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"))


def _size(limit: int) -> str:
    """A body limit as people write it: 256 kB, 8 MB."""
    return f"{limit >> 20} MB" if limit >= 1 << 20 and limit % (1 << 20) == 0 else f"{limit >> 10} kB"


async def _send_error(send: Send, status: int, message: str) -> None:
    body = (json.dumps({"error": message}) + "\n").encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *FRAME_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- what a client sends: numbers and JSON, checked strictly -------------------------------------
def whole_number(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high]: a JSON or form number, or its text; anything else is one clear error."""
    if isinstance(value, str):
        try:
            value = float(value.strip()) if value.strip() else None
        except ValueError:
            raise PocketswapError(f"{name} must be a whole number, got {value!r:.40}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        raise PocketswapError(f"{name} must be a whole number, got {value!r:.40}")
    if not low <= int(value) <= high:
        raise PocketswapError(f"{name} must be in [{low}, {high}], got {int(value)}")
    return int(value)


def parse_json(text: str | bytes, what: str, max_bytes: int) -> Any:
    """Strict JSON from a client: bounded length and nesting, no NaN/Infinity/1e400; one clear error."""
    if len(text) > max_bytes:
        raise PocketswapError(f"{what} is over {max_bytes // 1024} kB")

    def finite(number: str) -> float:
        value = float(number)
        if not math.isfinite(value):
            raise ValueError(f"{number!r:.40} is not a finite number")
        return value

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(text, parse_float=finite, parse_constant=refuse)
    except RecursionError:
        raise PocketswapError(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PocketswapError(f"{what} is not valid JSON ({str(exc)[:80]})") from None
