"""The HTTP face of the Blnk stand-in: Blnk Core's routes and wire format, plus /_test.

Routes are those of api/api.go Router (Blnk at commit cba0072) that stripe-recon uses or a
test needs to set books up.  Every Blnk route passes one gate, in the order a real client
meets the failures: latency, authentication (api/middleware/auth.go: the ``X-Blnk-Key``
header, the master key or an API key whose scopes cover ``<resource>:<action>``,
api/middleware/scope.go), injected 409 GEN_CONFLICT on inflight updates, injected 5xx
(before the work, or after it so that the work is done and the answer lost), then the
handler.  Error bodies carry both payloads Blnk sends during its transition (api/errors.go
writeError): the legacy flat ``error`` string and ``error_detail`` {code, message}.

Every request to a Blnk route is logged (method, path, query, headers, parsed body, status)
for tests to assert on.  The control plane under /_test skips the gate and the log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .state import BlnkError, BlnkState, rfc3339

MASTER_KEY = "blnk_master_key_local"
# internal/apierror/codes.go ErrGenInternal with the sanitised message of api/errors.go.
_INTERNAL = BlnkError(500, "GEN_INTERNAL", "internal server error")
# api/middleware/auth.go pathToResource (plus its special cases).
_RESOURCES = {
    "ledgers": "ledgers",
    "balances": "balances",
    "accounts": "accounts",
    "identities": "identities",
    "transactions": "transactions",
    "balance-monitors": "balance-monitors",
    "hooks": "hooks",
    "api-keys": "api-keys",
    "search": "search",
    "reconciliation": "reconciliation",
    "metadata": "metadata",
    "backup": "backup",
    "refund-transaction": "transactions",
    "multi-search": "search",
    "mocked-account": "accounts",
}
_RESERVED_QUERY = frozenset(
    {"limit", "offset", "sort_by", "sort_order", "include_count", "logical_operator"}
)
_QUERY_OPERATORS = frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "in"})
_ACTIONS = {"GET": "read", "HEAD": "read", "POST": "write", "PUT": "write", "PATCH": "write"}


@dataclass(frozen=True)
class ServerConfig:
    """Knobs, all changeable at runtime (``configure``).

    secure: authenticate (Blnk's ``server.secure``); master_key: the all-powerful key;
    api_keys: key -> scopes such as ``transactions:write`` or ``*:*``.  error_rate /
    fail_next / error_status: injected 5xx; error_phase: "before" (nothing done), "after"
    (the work is done, the answer lost) or "either" (a coin toss per failure).
    conflict_next: the next N inflight updates answer 409 GEN_CONFLICT, as when another
    client has queued a commit or void.  latency_ms (+ jitter) delays every answer;
    queue_delay_ms: how long queued creates and inflight actions wait for the worker.
    """

    secure: bool = True
    master_key: str = MASTER_KEY
    api_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    error_rate: float = 0.0
    error_status: int = 500
    error_phase: str = "before"
    fail_next: int = 0
    conflict_next: int = 0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    queue_delay_ms: float = 0.0
    random_seed: int | None = None

    def with_changes(self, changes: Mapping[str, Any]) -> ServerConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        values = dict(changes)
        if "api_keys" in values:
            values["api_keys"] = {k: tuple(v) for k, v in dict(values["api_keys"]).items()}
        if "error_rate" in values and not 0 <= float(values["error_rate"]) <= 1:
            raise ValueError("error_rate is a probability between 0 and 1")
        if "error_status" in values and not 500 <= int(values["error_status"]) <= 599:
            raise ValueError("error_status must be a 5xx code")
        if "error_phase" in values and values["error_phase"] not in ("before", "after", "either"):
            raise ValueError("error_phase is before, after or either")
        for key in ("fail_next", "conflict_next"):
            if key in values and (not isinstance(values[key], int) or values[key] < 0):
                raise ValueError(f"{key} must be a non-negative integer")
        return dataclasses.replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["api_keys"] = {k: list(v) for k, v in self.api_keys.items()}
        return out


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: Any
    status: int
    injected: str | None  # "5xx-before", "5xx-after", "409" when the gate answered

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class RequestLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[LoggedRequest] = []

    def add(self, item: LoggedRequest) -> None:
        with self._lock:
            self._items.append(item)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __call__(self, method: str | None = None, path: str | None = None) -> list[LoggedRequest]:
        """Requests so far, optionally one method and a path prefix."""
        with self._lock:
            return [
                r
                for r in self._items
                if (method is None or r.method == method)
                and (path is None or r.path.startswith(path))
            ]


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json"
    )


def _error(exc: BlnkError) -> Response:
    return _json(exc.body(), exc.status)


def _scope_allows(scopes: Iterable[str], resource: str, action: str) -> bool:
    """api/middleware/scope.go HasPermission."""
    for scope in scopes:
        res, _, act = scope.partition(":")
        if res in ("*", resource) and act in ("*", action):
            return True
    return False


class FakeBlnk:
    """State + faults + request log, and the Starlette app (``.app``) that serves them."""

    def __init__(self, state: BlnkState | None = None, **config: Any) -> None:
        self.state = state if state is not None else BlnkState()
        self.initial_config = ServerConfig().with_changes(config)
        self.log = RequestLog()
        self._gate = threading.Lock()
        self._set_config(self.initial_config, None)
        self.app = self._build_app()
        self.app.state.fake = self

    # -- runtime control -----------------------------------------------------------------

    def configure(self, **changes: Any) -> ServerConfig:
        with self._gate:
            self._set_config(self.config.with_changes(changes), changes)
            return self.config

    def reset(self, *, state: bool = True, log: bool = True, config: bool = True) -> None:
        if state:
            self.state.reset()
        if log:
            self.log.clear()
        if config:
            with self._gate:
                self._set_config(self.initial_config, None)

    def _set_config(self, config: ServerConfig, changes: Mapping[str, Any] | None) -> None:
        self.config = config
        self.state.queue_delay_s = config.queue_delay_ms / 1000
        if changes is None or "random_seed" in changes:
            self._rng = random.Random(config.random_seed)

    # -- the gate ------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> str | None:
        """The API key id when an API key (not the master key) was used."""
        config = self.config
        if not config.secure:
            return None
        key = request.headers.get("x-blnk-key", "")
        if not key:
            raise BlnkError(
                401, "AUTH_MISSING_API_KEY", "Authentication required. Use X-Blnk-Key header"
            )
        if key == config.master_key:
            return None
        scopes = config.api_keys.get(key)
        if scopes is None:
            raise BlnkError(401, "AUTH_INVALID_API_KEY", "Invalid API key")
        first = request.url.path.strip("/").split("/")[0]
        resource = _RESOURCES.get(first)
        if resource is None:
            raise BlnkError(403, "AUTH_UNKNOWN_RESOURCE", "Unknown resource type")
        action = _ACTIONS.get(request.method, "delete")
        if not _scope_allows(scopes, resource, action):
            raise BlnkError(
                403,
                "AUTH_INSUFFICIENT_PERMISSIONS",
                f"Insufficient permissions for {resource}:{action}",
            )
        return "api_key_" + str(abs(hash(key)) % 10**12)

    def _draw_failure(self, request: Request) -> str | None:
        with self._gate:
            config = self.config
            if (
                config.conflict_next
                and request.method == "PUT"
                and request.url.path.startswith("/transactions/inflight/")
            ):
                self.config = dataclasses.replace(config, conflict_next=config.conflict_next - 1)
                return "409"
            fail = False
            if config.fail_next > 0:
                self.config = dataclasses.replace(config, fail_next=config.fail_next - 1)
                fail = True
            elif config.error_rate > 0:
                fail = self._rng.random() < config.error_rate
            if not fail:
                return None
            phase = config.error_phase
            if phase == "either":
                phase = "before" if self._rng.random() < 0.5 else "after"
            return f"5xx-{phase}"

    def _failure_response(self) -> Response:
        status = self.config.error_status
        if status == 500:
            return _error(_INTERNAL)
        # What a proxy in front of Blnk says when Blnk is down or slow.
        return Response(
            f"<html><body><h1>{status}</h1>upstream unavailable</body></html>",
            status_code=status,
            media_type="text/html",
        )

    async def _serve(
        self, request: Request, handler: Callable[[Request, Any, str | None], Response]
    ) -> Response:
        config = self.config
        delay = config.latency_ms
        if config.latency_jitter_ms:
            delay += self._rng.uniform(0, config.latency_jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        raw = await request.body()
        body: Any = None
        malformed = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body, malformed = raw.decode("utf-8", "replace"), True
        injected: str | None = None
        try:
            key_id = self._authenticate(request)
            injected = self._draw_failure(request)
            if injected == "409":
                raise BlnkError(
                    409, "GEN_CONFLICT", "a commit or void is already queued for this transaction"
                )
            if injected == "5xx-before":
                response = self._failure_response()
            else:
                if malformed:
                    raise BlnkError(400, "GEN_MALFORMED_REQUEST", "Invalid input")
                response = handler(request, body, key_id)
                if injected == "5xx-after":
                    response = self._failure_response()
        except BlnkError as exc:
            response = _error(exc)
        self.log.add(
            LoggedRequest(
                method=request.method,
                path=request.url.path,
                query=request.url.query,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                status=response.status_code,
                injected=injected,
            )
        )
        return response

    def _route(
        self,
        path: str,
        method: str,
        handler: Callable[[Request, Any, str | None], Response],
    ) -> Route:
        async def serve(request: Request) -> Response:
            return await self._serve(request, handler)

        return Route(path, serve, methods=[method])

    # -- handlers ------------------------------------------------------------------------

    @staticmethod
    def _inject_key(body: Any, key_id: str | None) -> Any:
        """api/middleware/auth.go injectAPIKeyToMetadata: POSTs made with an API key get
        meta_data.BLNK_GENERATED_BY."""
        if key_id is None or not isinstance(body, dict):
            return body
        meta = body.get("meta_data")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta["BLNK_GENERATED_BY"] = key_id
        return {**body, "meta_data": meta}

    def _create_transaction(self, request: Request, body: Any, key_id: str | None) -> Response:
        body = self._inject_key(body, key_id)
        if isinstance(body, dict) and body.get("dry_run"):
            raise BlnkError(400, "GEN_BAD_REQUEST", "dry_run is not modelled by this stand-in")
        status, answer = self.state.create_transaction(body if isinstance(body, dict) else {})
        return _json(answer, status)

    def _get_transaction(self, request: Request, body: Any, key_id: str | None) -> Response:
        return _json(self.state.get_transaction(request.path_params["id"]).render())

    def _get_by_reference(self, request: Request, body: Any, key_id: str | None) -> Response:
        return _json(self.state.get_by_reference(request.path_params["reference"]).render())

    def _update_inflight(self, request: Request, body: Any, key_id: str | None) -> Response:
        if not isinstance(body, dict):
            raise BlnkError(400, "GEN_MALFORMED_REQUEST", "invalid request body")
        if body.get("dry_run"):
            raise BlnkError(400, "GEN_BAD_REQUEST", "dry_run is not modelled by this stand-in")
        for name, ok in (
            ("precise_amount", lambda v: isinstance(v, int) and not isinstance(v, bool)),
            ("amount", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
            ("skip_queue", lambda v: isinstance(v, bool)),
            ("status", lambda v: isinstance(v, str)),
        ):
            if body.get(name) is not None and not ok(body[name]):
                raise BlnkError(400, "GEN_MALFORMED_REQUEST", f"json: cannot unmarshal {name}")
        tid = request.path_params["id"]
        status = body.get("status") or ""
        if status not in ("commit", "void"):
            raise BlnkError(
                400, "TXN_INVALID_STATUS_ACTION", "status not supported. use either commit or void"
            )
        amount = self.state.resolve_amount(tid, body.get("amount"), body.get("precise_amount"))
        answer = self.state.update_inflight(
            tid, status, amount, skip_queue=bool(body.get("skip_queue"))
        )
        return _json(answer)

    def _bulk(self, action: str) -> Callable[[Request, Any, str | None], Response]:
        def handle(request: Request, body: Any, key_id: str | None) -> Response:
            if not isinstance(body, dict):
                raise BlnkError(400, "GEN_MALFORMED_REQUEST", "invalid request body")
            items: list[tuple[str, int | None]] = []
            if action == "commit":
                for item in body.get("transactions") or []:
                    if not isinstance(item, dict) or not isinstance(
                        item.get("transaction_id"), str
                    ):
                        raise BlnkError(400, "GEN_MALFORMED_REQUEST", "invalid transactions item")
                    tid = item["transaction_id"]
                    items.append(
                        (
                            tid,
                            self.state.resolve_amount(
                                tid, item.get("amount"), item.get("precise_amount")
                            ),
                        )
                    )
            else:
                for tid in body.get("transaction_ids") or []:
                    if not isinstance(tid, str):
                        raise BlnkError(400, "GEN_MALFORMED_REQUEST", "invalid transaction_ids")
                    items.append((tid, None))
            return _json(
                self.state.bulk_inflight(action, items, skip_queue=bool(body.get("skip_queue")))
            )

        return handle

    def _filter_transactions(self, request: Request, body: Any, key_id: str | None) -> Response:
        return _json(self.state.filter_transactions(body if isinstance(body, dict) else {}))

    def _create_balance(self, request: Request, body: Any, key_id: str | None) -> Response:
        body = self._inject_key(body, key_id)
        if not isinstance(body, dict):
            raise BlnkError(400, "GEN_MALFORMED_REQUEST", "invalid request body")
        bal = self.state.create_balance(
            str(body.get("currency") or ""),
            str(body.get("ledger_id") or ""),
            indicator=body.get("indicator") or None,
            meta_data=body.get("meta_data"),
        )
        return _json(bal.render(), 201)

    def _get_balance(self, request: Request, body: Any, key_id: str | None) -> Response:
        return _json(self.state.get_balance(request.path_params["id"]).render())

    def _balance_by_indicator(self, request: Request, body: Any, key_id: str | None) -> Response:
        bal = self.state.balance_by_indicator(
            request.path_params["indicator"], request.path_params["currency"]
        )
        return _json(bal.render())

    def _list_balances(self, request: Request, body: Any, key_id: str | None) -> Response:
        """api/balance.go GetBalances: limit (default 10) and offset from the query, and the
        query-string filters ``<field>_<operator>=value`` (internal/filter/parser.go
        ParseFromQuery: ``in`` takes comma-separated values, at most 100)."""
        params = request.query_params
        try:
            limit = int(params.get("limit", "10"))
            offset = int(params.get("offset", "0"))
        except ValueError:
            raise BlnkError(400, "GEN_VALIDATION_ERROR", "invalid limit value") from None
        if limit <= 0:
            raise BlnkError(400, "GEN_VALIDATION_ERROR", "invalid limit value")
        if offset < 0:
            raise BlnkError(400, "GEN_VALIDATION_ERROR", "invalid offset value")
        filters = []
        for key, value in params.items():
            if key in _RESERVED_QUERY or "_" not in key:
                continue
            name, _, op = key.rpartition("_")
            if op not in _QUERY_OPERATORS:
                continue
            if op == "in":
                values = [v.strip() for v in value.split(",")]
                if len(values) > 100:
                    raise BlnkError(
                        400, "GEN_VALIDATION_ERROR", "IN operator exceeds maximum values (100)"
                    )
                filters.append({"field": name, "operator": "in", "values": values})
            else:
                filters.append({"field": name, "operator": op, "value": value})
        if not filters:
            rows = self.state.list_balances()[offset : offset + limit]
            return _json([b.render() for b in rows])
        page = self.state.filter_balances(
            {
                "filters": filters,
                "limit": limit if limit <= 100 else 100,
                "offset": offset,
                "sort_order": "asc",
            }
        )
        return _json(page)

    def _filter_balances(self, request: Request, body: Any, key_id: str | None) -> Response:
        return _json(self.state.filter_balances(body if isinstance(body, dict) else {}))

    def _create_ledger(self, request: Request, body: Any, key_id: str | None) -> Response:
        body = self._inject_key(body, key_id)
        if not isinstance(body, dict) or not body.get("name"):
            raise BlnkError(400, "GEN_VALIDATION_ERROR", "name: cannot be blank.", "errors")
        return _json(self.state.create_ledger(str(body["name"]), body.get("meta_data")), 201)

    def _list_ledgers(self, request: Request, body: Any, key_id: str | None) -> Response:
        return _json(list(self.state.ledgers.values()))

    def _get_ledger(self, request: Request, body: Any, key_id: str | None) -> Response:
        ledger = self.state.ledgers.get(request.path_params["id"])
        if ledger is None:
            raise BlnkError(
                404, "LGR_NOT_FOUND", f"Ledger with ID '{request.path_params['id']}' not found"
            )
        return _json(ledger)

    # -- /_test control plane ------------------------------------------------------------

    async def _control_config(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.configure(**json.loads(await request.body() or b"{}"))
            except (ValueError, TypeError) as exc:
                return _json({"error": str(exc)}, 400)
        return _json(self.config.to_dict())

    async def _control_requests(self, request: Request) -> Response:
        return _json([dataclasses.asdict(r) for r in self.log()])

    async def _control_reset(self, request: Request) -> Response:
        self.reset()
        return _json({"reset": True, "at": rfc3339(self.state.clock())})

    async def _control_drain(self, request: Request) -> Response:
        self.state.drain()
        return _json({"drained": True})

    async def _root(self, request: Request) -> Response:
        return _json("server running...")

    def _build_app(self) -> Starlette:
        r = self._route
        routes = [
            Route("/", self._root, methods=["GET"]),
            r("/ledgers", "POST", self._create_ledger),
            r("/ledgers", "GET", self._list_ledgers),
            r("/ledgers/{id}", "GET", self._get_ledger),
            r("/balances", "POST", self._create_balance),
            r("/balances", "GET", self._list_balances),
            r("/balances/filter", "POST", self._filter_balances),
            r(
                "/balances/indicator/{indicator}/currency/{currency}",
                "GET",
                self._balance_by_indicator,
            ),
            r("/balances/{id}", "GET", self._get_balance),
            r("/transactions", "POST", self._create_transaction),
            r("/transactions/filter", "POST", self._filter_transactions),
            r("/transactions/inflight/bulk/commit", "POST", self._bulk("commit")),
            r("/transactions/inflight/bulk/void", "POST", self._bulk("void")),
            r("/transactions/inflight/{id}", "PUT", self._update_inflight),
            r("/transactions/reference/{reference}", "GET", self._get_by_reference),
            r("/transactions/{id}", "GET", self._get_transaction),
            Route("/_test/config", self._control_config, methods=["GET", "POST"]),
            Route("/_test/requests", self._control_requests, methods=["GET"]),
            Route("/_test/reset", self._control_reset, methods=["POST"]),
            Route("/_test/drain", self._control_drain, methods=["POST"]),
        ]
        return Starlette(routes=routes)


def create_app(state: BlnkState | None = None, **config: Any) -> Starlette:
    return FakeBlnk(state, **config).app
