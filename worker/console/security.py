"""Who is asking: session cookies, the authenticating proxy's header, client addresses,
CSRF tokens, and the headers every answer carries."""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from itsdangerous import BadSignature, Signer, TimestampSigner
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SESSION_COOKIE = "recon_console"
# Browsers accept a "__Host-" cookie only when it is Secure, host-only and Path=/: nothing
# on a sibling subdomain can then plant or overwrite it.  Plain http on localhost cannot
# carry Secure cookies, so there the plain name is used.
SECURE_SESSION_COOKIE = "__Host-recon_console"
LOGIN_COOKIE = "recon_console_login"
SECURE_LOGIN_COOKIE = "__Host-recon_console_login"
LOGIN_FORM_TTL = timedelta(hours=1)

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,100}")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
)
NO_STORE = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"))


class ConsoleConfigError(RuntimeError):
    """The console's configuration cannot work: a one-line message for whoever starts it."""


def parse_networks(text: str) -> list[Network]:
    out: list[Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConsoleConfigError(
                f"RECON_CONSOLE_TRUSTED_PROXIES: {item!r} is not an IP address or CIDR"
            ) from None
    return out


def check_header_name(name: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise ConsoleConfigError(f"RECON_CONSOLE_AUTH_HEADER: {name!r} is not a header name")
    return name.lower()


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


@dataclass(frozen=True)
class Trust:
    """Which peers are the authenticating proxy, and which header of theirs names the
    operator.  Only the TCP peer's address is believed (uvicorn runs with proxy headers
    off), never a forwarded-for header, which any client can write."""

    header: str | None
    proxies: Sequence[Network]

    def trusted(self, request: Request) -> bool:
        peer = _ip(request.client.host if request.client else None)
        return peer is not None and any(peer in net for net in self.proxies)

    def proxy_email(self, request: Request) -> str | None:
        if not self.header or not self.trusted(request):
            return None
        value = request.headers.get(self.header, "").strip()
        return value or None

    def untrusted_claim(self, request: Request) -> bool:
        return bool(self.header and request.headers.get(self.header) and not self.trusted(request))

    def client_address(self, request: Request) -> str:
        """The client's address, for rate limits and the session record: the peer, or
        behind a trusted proxy the last address it appended to X-Forwarded-For."""
        peer = request.client.host if request.client else "unknown"
        if self.trusted(request):
            hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",")]
            for hop in reversed(hops):
                ip = _ip(hop)
                if ip is not None and not any(ip in net for net in self.proxies):
                    return str(ip)
        return peer[:64]


def is_local(request: Request) -> bool:
    """Plain http to the loopback name the operator typed: the one place a cookie may go
    without Secure (a browser drops Secure cookies on plain http)."""
    return request.url.scheme == "http" and (request.url.hostname or "") in _LOOPBACK_NAMES


class Cookies:
    def __init__(self, secret: str, session_lifetime: timedelta) -> None:
        self._session = Signer(secret, salt="recon-console-session")
        self._login = TimestampSigner(secret, salt="recon-console-login-form")
        self.lifetime = session_lifetime

    @staticmethod
    def _names(request: Request) -> tuple[str, str]:
        if is_local(request):
            return SESSION_COOKIE, LOGIN_COOKIE
        return SECURE_SESSION_COOKIE, SECURE_LOGIN_COOKIE

    def session_token(self, request: Request) -> str | None:
        raw = request.cookies.get(self._names(request)[0])
        if not raw or len(raw) > 200:
            return None
        try:
            return self._session.unsign(raw).decode()
        except (BadSignature, UnicodeDecodeError):
            return None

    def _set(self, request: Request, response: Response, name: str, value: str, age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=age,
            path="/",
            secure=not is_local(request),
            httponly=True,
            samesite="strict",
        )

    def session_value(self, token: str) -> str:
        return self._session.sign(token).decode()

    def set_session(self, request: Request, response: Response, token: str) -> None:
        name = self._names(request)[0]
        value = self.session_value(token)
        self._set(request, response, name, value, int(self.lifetime.total_seconds()))

    def clear_session(self, request: Request, response: Response) -> None:
        self._set(request, response, self._names(request)[0], "", 0)

    def login_nonce(self, request: Request) -> str:
        """The sign-in form's token: the one already in this browser's cookie while it is
        valid (two tabs, or a favicon request bounced to the sign-in page, must not
        invalidate each other's form), else a new one."""
        return self._current_nonce(request) or secrets.token_hex(16)

    def _current_nonce(self, request: Request) -> str | None:
        raw = request.cookies.get(self._names(request)[1], "")
        if not raw or len(raw) > 200:
            return None
        try:
            age = int(LOGIN_FORM_TTL.total_seconds())
            return self._login.unsign(raw, max_age=age).decode()
        except (BadSignature, UnicodeDecodeError):
            return None

    def set_login_nonce(self, request: Request, response: Response, nonce: str) -> None:
        """The sign-in form's token, also in a cookie: a form posted from another site
        cannot know it (login CSRF)."""
        value = self._login.sign(nonce).decode()
        age = int(LOGIN_FORM_TTL.total_seconds())
        self._set(request, response, self._names(request)[1], value, age)

    def login_nonce_ok(self, request: Request, submitted: str) -> bool:
        nonce = self._current_nonce(request)
        return nonce is not None and bool(submitted) and hmac.compare_digest(nonce, submitted)


def same_token(expected: str, submitted: object) -> bool:
    return (
        isinstance(submitted, str)
        and bool(submitted)
        and hmac.compare_digest(expected.encode(), submitted.encode())
    )


def cross_site(request: Request) -> bool:
    """A browser that says the request comes from another site (Fetch Metadata)."""
    return request.headers.get("sec-fetch-site", "") in ("cross-site", "same-site")


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only, never another origin."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or any(c in target for c in "\\\r\n\t")
        or len(target) > 2000
    ):
        return "/tickets"
    return target


class SecurityHeaders:
    """Adds the security headers to every answer, and ``no-store`` to every answer but the
    static files (pages carry customer data; a shared or back-button cache must not)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in (b"cache-control", b"pragma", b"server")
                ]
                headers.extend(HEADERS)
                if static:
                    headers.append((b"cache-control", b"private, max-age=300"))
                else:
                    headers.extend(NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
