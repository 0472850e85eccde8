"""The CX console: a Starlette app of server-rendered pages for CX agents.

Its own ASGI app on its own port (``recon console``), never mounted on the public webhook
intake.  Pages: sign-in, the ticket queue (with a chart of tickets opened per day), one
ticket with its fixes (dry-run plan, then a note and a confirmation, then the real fix,
re-checked against Stripe), and search.  It works without JavaScript; the one script only
adds a copy button.

Handlers parse the request, call a view (``reconcile.views``) or a use case
(``reconcile.usecases``) in the thread pool, and render the result; they hold no SQL.  Every
page but the sign-in page needs a live session (``_who``); every POST needs its session's
CSRF token; fixing needs a role that may act.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from reconcile import views
from reconcile.checks import FixAction
from reconcile.ports import Services
from reconcile.redact import redact
from reconcile.stripe_gateway import StripeGatewayError
from reconcile.usecases import BadRequest, NotFound, Resolution, resolve_ticket
from worker import operators as ops
from worker.console import chart, text
from worker.console.security import (
    ConsoleConfigError,
    Cookies,
    SecurityHeaders,
    Trust,
    check_header_name,
    cross_site,
    is_local,
    parse_networks,
    safe_next,
    same_token,
)
from worker.db import engine_for
from worker.logs import get_logger
from worker.settings import Settings, get_settings

log = get_logger(__name__)

HERE = Path(__file__).parent
SECRET_MIN = 32
NOTE_MAX = 2000
FORM_MAX_BYTES = 64 * 1024
SEARCH_MAX = views.SEARCH_MAX
QUEUE_LIMIT = 200
AGES: Mapping[str, timedelta] = {
    "1h": timedelta(hours=1),
    "4h": timedelta(hours=4),
    "24h": timedelta(hours=24),
    "3d": timedelta(days=3),
    "7d": timedelta(days=7),
}
ACTIONS: Mapping[str, tuple[str, str]] = {
    "commit": (
        "Commit the held amount",
        "Credits the customer's wallet with what Stripe received, if Stripe says the payment "
        "succeeded.",
    ),
    "void": (
        "Void the hold",
        "Releases the held amount without crediting the wallet, if Stripe says the payment "
        "failed, was canceled or does not exist.",
    ),
    "create-record": (
        "Create the missing record",
        "Credits the wallet with what Stripe received as a new entry, if Stripe says the "
        "payment succeeded and the ledger has nothing for it.",
    ),
    "credit": (
        "Credit the customer",
        "Posts a new credit to the wallet for what Stripe kept (received less refunds), if "
        "Stripe says the payment succeeded and the hold was voided.",
    ),
    "reverse": (
        "Reverse the credit",
        "Takes back from the wallet what was credited for a payment that failed, or the "
        "refunded part of one that was refunded; never more than was credited.",
    ),
    "none": (
        "Close without a ledger change",
        "Closes the ticket with your note. The ledger is not changed.",
    ),
}
PLAN_NOTE = "dry run from the console"


class _Deny(Exception):
    """Stop handling the request and answer this instead."""

    def __init__(self, response: Response) -> None:
        self.response = response


@dataclass(frozen=True)
class Who:
    session: ops.Session
    new_token: str | None  # a session just made from the proxy's header: set its cookie
    form: FormData | None

    @property
    def operator(self) -> ops.Operator:
        return self.session.operator

    @property
    def can_act(self) -> bool:
        return self.operator.role.can_act


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name
        finalize=text.finalize,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["safe_url"] = text.safe_url
    env.filters["q"] = lambda value: quote(str(value), safe="")
    return env


class Console:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine,
        services: Callable[[], Services],
        clock: Callable[[], datetime],
    ) -> None:
        secret = settings.console_secret.get_secret_value()
        if len(secret) < SECRET_MIN:
            raise ConsoleConfigError(
                f"RECON_CONSOLE_SECRET must be set to at least {SECRET_MIN} random characters "
                "(it signs the session cookies); make one with: "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        header = (settings.console_auth_header or "").strip() or None
        proxies = parse_networks(settings.console_trusted_proxies)
        if header and not proxies:
            raise ConsoleConfigError(
                "RECON_CONSOLE_AUTH_HEADER is set but RECON_CONSOLE_TRUSTED_PROXIES is empty: "
                "the header would be believed from nobody; name the proxy's addresses"
            )
        if settings.console_session_idle <= timedelta(0) or (
            settings.console_session_max < settings.console_session_idle
        ):
            raise ConsoleConfigError(
                "RECON_CONSOLE_SESSION_IDLE must be positive and at most RECON_CONSOLE_SESSION_MAX"
            )
        self.settings = settings
        self.engine = engine
        self.services = services
        self.clock = clock
        self.trust = Trust(check_header_name(header) if header else None, proxies)
        self.cookies = Cookies(secret, settings.console_session_max)
        self.templates = Jinja2Templates(env=_environment())

    # -- rendering -------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        name: str,
        context: dict[str, Any],
        *,
        who: Who | None = None,
        status: int = 200,
    ) -> Response:
        ctx = {
            "me": who.operator if who else None,
            "can_act": who.can_act if who else False,
            "csrf": who.session.csrf if who else "",
            "proxy_sign_in": self.trust.header is not None,
            "search_query": "",
            **context,
        }
        response = self.templates.TemplateResponse(request, name, ctx, status_code=status)
        self._keep(request, response, who)
        return response

    def _keep(self, request: Request, response: Response, who: Who | None) -> None:
        if who is not None and who.new_token:
            self.cookies.set_session(request, response, who.new_token)

    def error(
        self, request: Request, status: int, message: str, *, who: Who | None = None
    ) -> Response:
        return self.render(
            request, "error.html", {"status": status, "message": message}, who=who, status=status
        )

    def redirect(self, request: Request, url: str, *, who: Who | None = None) -> Response:
        response = RedirectResponse(url, status_code=303)
        self._keep(request, response, who)
        return response

    # -- who is asking ---------------------------------------------------------------------

    def _load(
        self, token: str | None, email: str | None, address: str
    ) -> tuple[ops.Session | None, str | None, bool]:
        """(live session, token of a session just made from the proxy header, whether the
        proxy named someone who may not sign in)."""
        settings = self.settings
        with self.engine.begin() as conn:
            now = self.clock()

            def load(tok: str) -> ops.Session | None:
                return ops.load_session(
                    conn,
                    tok,
                    now=now,
                    idle=settings.console_session_idle,
                    lifetime=settings.console_session_max,
                )

            session = load(token) if token else None
            if email is None:
                return session, None, False
            op = ops.find_operator(conn, email) if "@" in email else None
            if op is None or op.disabled:
                if token:
                    ops.end_session(conn, token)
                return None, None, True
            if session is not None and session.operator.id == op.id:
                return session, None, False
            if token:
                ops.end_session(conn, token)
            new = ops.create_session(conn, op, via="proxy", address=address, now=now)
            log.info("console sign-in", operator=op.name, via="proxy", address=address)
            return load(new), new, False

    async def _who(self, request: Request, *, act: bool = False, check_csrf: bool = True) -> Who:
        token = self.cookies.session_token(request)
        email = self.trust.proxy_email(request)
        if self.trust.untrusted_claim(request):
            peer = request.client.host if request.client else "unknown"
            log.warning("console: ignored the sign-in header from an untrusted peer", peer=peer)
        address = self.trust.client_address(request)
        session, new_token, refused = await run_in_threadpool(self._load, token, email, address)
        if refused:
            response = self.error(
                request,
                403,
                "Your sign-in is not an operator of this console, or the account is "
                "disabled. An admin can add you with `recon operators add`.",
            )
            self.cookies.clear_session(request, response)
            raise _Deny(response)
        if session is None:
            raise _Deny(self._signed_out(request, had_cookie=token is not None))
        who = Who(session, new_token, None)
        if request.method not in ("GET", "HEAD"):
            if cross_site(request):
                raise _Deny(self.error(request, 403, "Cross-site form refused.", who=who))
            if check_csrf:
                form = await _form(request, max_fields=20)
                if not same_token(session.csrf, form.get("csrf")):
                    raise _Deny(
                        self.error(
                            request,
                            403,
                            "This form is out of date or did not come from the console "
                            "(missing or wrong CSRF token). Reload the page and try again.",
                            who=who,
                        )
                    )
                who = Who(session, new_token, form)
        if act and not who.can_act:
            raise _Deny(
                self.error(
                    request,
                    403,
                    "Viewers can look but not act: ask an admin for the operator role.",
                    who=who,
                )
            )
        return who

    def _signed_out(self, request: Request, *, had_cookie: bool) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response: Response
        if request.method in ("GET", "HEAD"):
            if not had_cookie and cross_site(request):
                # A link followed from another site (chat, email) arrives without the
                # SameSite=Strict cookie; one same-site hop brings it along.
                response = self.templates.TemplateResponse(
                    request, "bounce.html", {"target": safe_next(target)}
                )
            else:
                response = RedirectResponse(
                    "/login?" + urlencode({"next": safe_next(target)}), status_code=303
                )
        else:
            response = self.render(
                request,
                "error.html",
                {"status": 401, "message": "You are signed out. Sign in and try again."},
                status=401,
            )
        if had_cookie:
            self.cookies.clear_session(request, response)
        return response

    # -- sign-in ---------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        target = safe_next(request.query_params.get("next"))
        try:
            who = await self._who(request)
        except _Deny as deny:
            if deny.response.status_code == 403:
                return deny.response
            return self._login_form(request, target=target)
        return self.redirect(request, target, who=who)

    def _login_form(
        self,
        request: Request,
        *,
        target: str,
        message: str | None = None,
        login: str = "",
        status: int = 200,
    ) -> Response:
        nonce = self.cookies.login_nonce(request)
        response = self.render(
            request,
            "login.html",
            {
                "next": target,
                "message": message,
                "login": login,
                "nonce": nonce,
                # Secure cookies are dropped on plain http away from localhost: say why
                # signing in seems to do nothing, rather than let it.
                "needs_https": request.url.scheme == "http"
                and not is_local(request)
                and not self.trust.trusted(request),
            },
            status=status,
        )
        self.cookies.set_login_nonce(request, response, nonce)
        return response

    async def login(self, request: Request) -> Response:
        if cross_site(request):
            return self.error(request, 403, "Cross-site sign-in refused.")
        form = await _form(request, max_fields=10)
        target = safe_next(str(form.get("next") or ""))
        login = str(form.get("login") or "").strip()[: ops.EMAIL_MAX]
        password = str(form.get("password") or "")
        if not self.cookies.login_nonce_ok(request, str(form.get("nonce") or "")):
            return self._login_form(
                request,
                target=target,
                login=login,
                status=400,
                message="The sign-in form had expired. Please try again.",
            )
        if not login or not password:
            return self._login_form(
                request,
                target=target,
                login=login,
                status=400,
                message="Enter your name or email and your password.",
            )
        address = self.trust.client_address(request)
        old = self.cookies.session_token(request)
        outcome, token, until = await run_in_threadpool(
            self._sign_in, login, password, address, old
        )
        if outcome == "locked":
            assert until is not None
            minutes = max(1, -(-int((until - self.clock()).total_seconds()) // 60))
            return self._login_form(
                request,
                target=target,
                login=login,
                status=429,
                message=f"Too many failed sign-ins for this name or from this address. "
                f"Try again in {minutes} min (after {text.when(until)}).",
            )
        if outcome == "bad":
            return self._login_form(
                request,
                target=target,
                login=login,
                status=401,
                message="Wrong name or password (or this account may not sign in with a password).",
            )
        assert token is not None
        response = RedirectResponse(target, status_code=303)
        self.cookies.set_session(request, response, token)
        return response

    def _sign_in(
        self, login: str, password: str, address: str, old_token: str | None
    ) -> tuple[str, str | None, datetime | None]:
        s = self.settings
        now = self.clock()
        with self.engine.begin() as conn:
            until = ops.begin_attempt(
                conn,
                login,
                address,
                now=now,
                window=s.console_login_window,
                max_per_login=s.console_login_max_failures,
                max_per_address=s.console_login_max_failures_per_address,
            )
        if until is not None:
            log.warning("console sign-in refused: rate limit", login=login, address=address)
            return "locked", None, until
        with self.engine.connect() as conn:
            op = ops.authenticate(conn, login, password)
        if op is None:
            log.warning("console sign-in failed", login=login, address=address)
            return "bad", None, None
        with self.engine.begin() as conn:
            ops.forgive(conn, login, address, now=now)
            if old_token:
                ops.end_session(conn, old_token)
            ops.prune_sessions(
                conn, now=now, idle=s.console_session_idle, lifetime=s.console_session_max
            )
            token = ops.create_session(conn, op, via="password", address=address, now=now)
        log.info("console sign-in", operator=op.name, via="password", address=address)
        return "ok", token, None

    async def logout(self, request: Request) -> Response:
        who = await self._who(request)
        token = self.cookies.session_token(request) or who.new_token
        if token:
            await run_in_threadpool(self._end, token)
        response = RedirectResponse("/login", status_code=303)
        self.cookies.clear_session(request, response)
        return response

    def _end(self, token: str) -> None:
        with self.engine.begin() as conn:
            ops.end_session(conn, token)

    # -- pages -----------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        who = await self._who(request)
        return self.redirect(request, "/tickets", who=who)

    async def queue(self, request: Request) -> Response:
        who = await self._who(request)
        params = request.query_params
        kind = params.get("kind", "")
        severity = params.get("severity", "")
        age = params.get("age", "")
        problems = []
        if kind and kind not in views.KINDS:
            problems.append(f"unknown kind {kind!r}")
        if severity and severity not in views.SEVERITIES:
            problems.append(f"unknown severity {severity!r}")
        if age and age not in AGES:
            problems.append(f"unknown age {age!r}")
        filters = {"kind": kind, "severity": severity, "age": age}
        if problems:
            return self.render(
                request,
                "queue.html",
                {
                    "filters": filters,
                    "problem": "; ".join(problems),
                    "rows": [],
                    "total": 0,
                    "chart": None,
                    **self._choices(),
                },
                who=who,
                status=400,
            )
        rows, total, daily = await run_in_threadpool(
            self._queue_data, kind or None, severity or None, AGES.get(age)
        )
        return self.render(
            request,
            "queue.html",
            {
                "filters": filters,
                "problem": None,
                "rows": rows,
                "total": total,
                "chart": chart.build(daily),
                **self._choices(),
            },
            who=who,
        )

    @staticmethod
    def _choices() -> dict[str, Any]:
        return {"kinds": views.KINDS, "severities": views.SEVERITIES, "ages": list(AGES)}

    def _queue_data(
        self, kind: str | None, severity: str | None, min_age: timedelta | None
    ) -> tuple[list[views.TicketRow], int, views.DailyCounts]:
        now = self.clock()
        with self.engine.connect() as conn:
            rows, total = views.ticket_queue(
                conn, now=now, kind=kind, severity=severity, min_age=min_age, limit=QUEUE_LIMIT
            )
            daily = views.tickets_opened_per_day(conn, now=now, days=14)
        return rows, total, daily

    def _detail(self, ticket_id: int) -> views.TicketDetail | None:
        with self.engine.connect() as conn:
            return views.ticket_detail(conn, ticket_id, now=self.clock())

    async def ticket(self, request: Request) -> Response:
        who = await self._who(request)
        ticket_id = int(request.path_params["ticket_id"])
        detail = await run_in_threadpool(self._detail, ticket_id)
        if detail is None:
            return self.error(request, 404, f"There is no ticket #{ticket_id}.", who=who)
        return self.render(
            request,
            "ticket.html",
            {
                "d": detail,
                "t": detail.ticket,
                "actions": [(a, *ACTIONS.get(a, (a, ""))) for a in detail.actions],
                "just_resolved": request.query_params.get("resolved") == "1",
            },
            who=who,
        )

    async def _action(self, request: Request) -> tuple[Who, views.TicketDetail, FixAction]:
        who = await self._who(request, act=True)
        assert who.form is not None
        ticket_id = int(request.path_params["ticket_id"])
        detail = await run_in_threadpool(self._detail, ticket_id)
        if detail is None:
            raise _Deny(self.error(request, 404, f"There is no ticket #{ticket_id}.", who=who))
        action = str(who.form.get("action") or "")
        if detail.ticket.status != "open":
            raise _Deny(self.redirect(request, f"/tickets/{ticket_id}", who=who))
        if action not in detail.actions:
            raise _Deny(
                self.error(
                    request,
                    400,
                    f"{action!r} is not a fix for a {detail.ticket.kind} ticket; "
                    f"the fixes are: {', '.join(detail.actions)}.",
                    who=who,
                )
            )
        return who, detail, FixAction(action)

    def _resolve(
        self, ticket_id: int, action: FixAction, note: str, actor: str, dry_run: bool
    ) -> Resolution:
        svc = self.services()
        return resolve_ticket(
            svc, ticket_id, action, note, actor, dry_run=dry_run, gateway=svc.new_gateway()
        )

    async def _run(
        self,
        request: Request,
        who: Who,
        detail: views.TicketDetail,
        action: FixAction,
        note: str,
        dry_run: bool,
    ) -> Resolution:
        from worker.wiring import ConfigError

        try:
            return await run_in_threadpool(
                self._resolve, detail.ticket.id, action, note, who.operator.name, dry_run
            )
        except NotFound:
            raise _Deny(self.error(request, 404, "The ticket is gone.", who=who)) from None
        except BadRequest as exc:
            raise _Deny(self.error(request, 400, str(exc), who=who)) from None
        except ConfigError as exc:
            raise _Deny(self.error(request, 503, str(exc), who=who)) from None
        except StripeGatewayError as exc:
            raise _Deny(
                self.error(
                    request,
                    502,
                    f"Stripe could not be read, so nothing was changed: {redact(str(exc))}",
                    who=who,
                )
            ) from None

    def _plan_page(
        self,
        request: Request,
        who: Who,
        detail: views.TicketDetail,
        action: FixAction,
        res: Resolution,
        *,
        note: str = "",
        problem: str | None = None,
        status: int = 200,
    ) -> Response:
        currency = (
            (res.ledger_before or {}).get("currency") or (res.stripe or {}).get("currency") or None
        )
        return self.render(
            request,
            "plan.html",
            {
                "d": detail,
                "t": detail.ticket,
                "action": action.value,
                "label": ACTIONS.get(action.value, (action.value, ""))[0],
                "explain": ACTIONS.get(action.value, ("", ""))[1],
                "res": res,
                "amount": views.money_text(res.amount, currency),
                "stripe_now": views.state_pairs(res.stripe),
                "ledger_before": views.state_pairs(res.ledger_before),
                "ledger_after": views.state_pairs(res.ledger_after),
                "note": note,
                "problem": problem,
                "note_max": NOTE_MAX,
            },
            who=who,
            status=status,
        )

    async def plan(self, request: Request) -> Response:
        who, detail, action = await self._action(request)
        res = await self._run(request, who, detail, action, PLAN_NOTE, dry_run=True)
        return self._plan_page(request, who, detail, action, res, status=200 if res.done else 409)

    async def resolve(self, request: Request) -> Response:
        who, detail, action = await self._action(request)
        assert who.form is not None
        note = str(who.form.get("note") or "").strip()
        problem = None
        if not note:
            problem = "Write a note saying why: it becomes the ticket's resolution."
        elif len(note) > NOTE_MAX:
            problem = f"The note is longer than {NOTE_MAX} characters."
        elif who.form.get("confirm") != "yes":
            problem = "Tick the confirmation box to go ahead."
        if problem:
            res = await self._run(request, who, detail, action, PLAN_NOTE, dry_run=True)
            return self._plan_page(
                request, who, detail, action, res, note=note, problem=problem, status=400
            )
        res = await self._run(request, who, detail, action, note, dry_run=False)
        log.info(
            "console fix",
            operator=who.operator.name,
            ticket_id=detail.ticket.id,
            action=action.value,
            done=res.done,
        )
        if not res.done:
            return self._plan_page(request, who, detail, action, res, note=note, status=409)
        return self.redirect(request, f"/tickets/{detail.ticket.id}?resolved=1", who=who)

    async def search(self, request: Request) -> Response:
        who = await self._who(request)
        query = request.query_params.get("q", "")
        if len(query) > SEARCH_MAX:
            return self.render(
                request,
                "search.html",
                {
                    "result": None,
                    "search_query": query[:SEARCH_MAX],
                    "problem": f"A search is at most {SEARCH_MAX} characters.",
                },
                who=who,
                status=400,
            )
        result = await run_in_threadpool(self._search, query)
        if result.ticket_id is not None and result.looks_like == "ticket":
            return self.redirect(request, f"/tickets/{result.ticket_id}", who=who)
        return self.render(
            request,
            "search.html",
            {"result": result, "search_query": result.query, "problem": None},
            who=who,
        )

    def _search(self, query: str) -> views.SearchResult:
        with self.engine.connect() as conn:
            return views.search_tickets(conn, query, now=self.clock())

    # -- errors ----------------------------------------------------------------------------

    async def not_found(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        try:
            who = await self._who(request, check_csrf=False)
        except _Deny as deny:
            return deny.response
        message = "There is no such page." if status == 404 else "That cannot be done here."
        return self.error(request, status, message, who=who)

    async def db_down(self, request: Request, exc: Exception) -> Response:
        detail = getattr(exc, "orig", None) or exc
        log.error("console: database error", error=redact(str(detail).splitlines()[0]))
        return self.render(
            request,
            "error.html",
            {
                "status": 503,
                "message": "The database is unavailable or not migrated "
                "(`recon db upgrade`). Try again in a moment.",
            },
            status=503,
        )


async def _form(request: Request, *, max_fields: int) -> FormData:
    """The posted form, refused unread when it is larger than any form of ours can be: a
    sign-in form is open to anyone, and an unbounded body would be read into memory."""
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > FORM_MAX_BYTES:
        raise _Deny(Response("form too large or without a length", status_code=413))
    return await request.form(max_files=0, max_fields=max_fields)


async def _deny(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Deny)
    return exc.response


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | Callable[[], Services] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Starlette:
    """The console app.  ``settings`` default to the environment; ``services`` (or a
    function making them) default to the ones built from the settings, on first use."""
    s = settings or get_settings()
    engine = engine_for(s.database_url)
    made: list[Services] = []

    def get_services() -> Services:
        if isinstance(services, Services):
            return services
        if services is not None:
            return services()
        if not made:
            from worker.wiring import build_services

            made.append(build_services(s))
        return made[0]

    console = Console(
        s, engine=engine, services=get_services, clock=clock or (lambda: datetime.now(UTC))
    )
    c = console
    routes = [
        Route("/", c.home, methods=["GET"]),
        Route("/login", c.login_page, methods=["GET"]),
        Route("/login", c.login, methods=["POST"]),
        Route("/logout", c.logout, methods=["POST"]),
        Route("/tickets", c.queue, methods=["GET"]),
        Route("/tickets/{ticket_id:int}", c.ticket, methods=["GET"]),
        Route("/tickets/{ticket_id:int}/plan", c.plan, methods=["POST"]),
        Route("/tickets/{ticket_id:int}/resolve", c.resolve, methods=["POST"]),
        Route("/search", c.search, methods=["GET"]),
        # Browsers ask for it on every page; a sign-in redirect for it would be noise.
        Route("/favicon.ico", lambda _: Response(status_code=204), methods=["GET"]),
        # Only the stylesheet and the copy-button script: no data, so no sign-in needed.
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            _Deny: _deny,
            404: c.not_found,
            405: c.not_found,
            OperationalError: c.db_down,
            ProgrammingError: c.db_down,
        },
    )
    app.add_middleware(SecurityHeaders)
    app.state.console = console
    return app


def check_database(app: Starlette) -> int:
    """How many active operators there are; ConsoleConfigError when the schema is missing."""
    console: Console = app.state.console
    try:
        with console.engine.connect() as conn:
            return sum(1 for o in ops.list_operators(conn) if not o.disabled)
    except (OperationalError, ProgrammingError) as exc:
        first = str(getattr(exc, "orig", exc) or exc).splitlines()[0]
        raise ConsoleConfigError(
            f"the database is not ready ({redact(first)}); run `recon db upgrade`"
        ) from None


def serve(app: Starlette, *, host: str, port: int) -> None:
    import uvicorn

    # proxy_headers off: the peer address is what the trusted-proxy check believes, and
    # uvicorn would otherwise replace it with X-Forwarded-For from any client it trusts.
    uvicorn.run(
        app,
        host=host,
        port=port,
        proxy_headers=False,
        server_header=False,
        log_level="warning",
        access_log=False,
    )


def new_secret() -> str:
    return secrets.token_urlsafe(32)
