"""The real intake under hostile input: one process as deployed, every answer kept.

:class:`Intake` starts, once for the whole hostile suite, what ``recon serve`` runs
(``python -m worker.intake``: uvicorn on uvloop and httptools) against a throwaway
PostgreSQL schema owned by a role of its own *with a password in the DSN*, and the local
Stripe server with a distinctive API key.  No broker is configured, so accepted events are
processed in the intake's own process (the single-process deployment): a signed hostile
payload goes all the way from the socket to the ledger and the tickets.

Every secret is distinctive (:data:`SECRETS`) so that the last test of the suite can look
for each in everything the service showed: answers, logs, ticket rows, inbox errors,
``/metrics``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets as secrets_mod
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import stripe
from sqlalchemy import Engine, create_engine, text

from ledger.sql import SqlLedger
from tests.procs import Service, free_port, intake, wait_until
from tests.stripe_server.runner import RunningServer, start_server
from tests.support import PG_URL
from worker.db import make_engine, normalize_url, upgrade

_TAG = secrets_mod.token_hex(6)
API_KEY = f"sk_test_HOSTILEkey{_TAG}Zq9"
SECRET = f"whsec_HOSTILEcurrent{_TAG}Xy7"
OLD_SECRET = f"whsec_HOSTILEprevious{_TAG}Wv3"
DB_PASSWORD = f"HOSTILEpw{_TAG}Tu1"
SECRETS: Mapping[str, str] = {
    "Stripe API key": API_KEY,
    "webhook secret": SECRET,
    "previous webhook secret": OLD_SECRET,
    "database password": DB_PASSWORD,
}

# Tight deadlines so that the slow-client tests take seconds, not the production minutes.
HEADER_TIMEOUT = 1
BODY_TIMEOUT = 2
MAX_CONNECTIONS = 40
MAX_HEADER_BYTES = 16 * 1024
MAX_BYTES = 256 * 1024
# Resident memory the intake may gain over the whole suite: every kind at once, huge
# bodies, bombs and floods included.
MEMORY_BUDGET_KB = 120 * 1024

WEBHOOK = "/webhooks/stripe"


def sign(body: bytes | str, secret: str = SECRET, timestamp: float | None = None) -> str:
    payload = body.decode("utf-8") if isinstance(body, bytes) else body
    t = int(time.time() if timestamp is None else timestamp)
    return str(stripe.WebhookSignature.generate_signature_header(payload, secret, t))


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def pi_object(pi: str | None = None, **fields: Any) -> dict[str, Any]:
    now = int(time.time())
    obj: dict[str, Any] = {
        "id": pi or new_id("pi"),
        "object": "payment_intent",
        "amount": 5000,
        "amount_received": 5000,
        "currency": "usd",
        "status": "succeeded",
        "created": now - 3600,
        "livemode": False,
        "latest_charge": new_id("ch"),
        "metadata": {},
    }
    obj.update(fields)
    return obj


def event(obj: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    obj = obj if obj is not None else pi_object()
    status = obj.get("status", "succeeded")
    evt: dict[str, Any] = {
        "id": new_id("evt"),
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": f"payment_intent.{status}",
        "data": {"object": dict(obj)},
    }
    evt.update(fields)
    return evt


def body_of(evt: Any) -> bytes:
    return json.dumps(evt).encode()


class Intake:
    """The intake process, its database (role with a password) and the Stripe stand-in."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.schema = "hostile_" + uuid.uuid4().hex[:10]
        self.role = self.schema + "_role"
        self.admin = create_engine(normalize_url(PG_URL))
        self.dsn = _with_password(PG_URL, self.role, DB_PASSWORD, self.schema)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stripe: RunningServer | None = None
        self.service: Service | None = None
        self.engine: Engine | None = None
        # Every answer's status line, headers and body, for the secret check at the end.
        self.seen: list[str] = []
        # Every event id answered 2xx: the end of the suite checks each was kept and done.
        self.acknowledged: set[str] = set()
        self.rss_start_kb = 0

    # ------------------------------------------------------------------ life

    def start(self) -> Intake:
        with self.admin.begin() as conn:
            conn.execute(text(f"CREATE ROLE {self.role} LOGIN PASSWORD '{DB_PASSWORD}'"))
            conn.execute(text(f"CREATE SCHEMA {self.schema} AUTHORIZATION {self.role}"))
        upgrade(self.dsn)
        self.engine = make_engine(self.dsn)
        self.stripe = start_server(api_key=API_KEY)
        env = {
            "RECON_DATABASE_URL": self.dsn,
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_WEBHOOK_SECRET": f"{SECRET},{OLD_SECRET}",
            "RECON_STRIPE_API_BASE": self.stripe.url,
            "RECON_WEBHOOK_MAX_BYTES": str(MAX_BYTES),
            "RECON_INTAKE_HEADER_TIMEOUT": f"{HEADER_TIMEOUT}s",
            "RECON_INTAKE_BODY_TIMEOUT": f"{BODY_TIMEOUT}s",
            "RECON_INTAKE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "RECON_INTAKE_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
            "RECON_FAILED_GRACE": "1m",
            "RECON_SWEEP_MIN_AGE": "0s",
        }
        for name in ("RECON_BROKER_URL", "RECON_REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"):
            env[name] = ""
        self.service = intake(env, self.workdir, self.port)
        self.service.env.pop("RECON_BROKER_URL", None)
        self.service.env.pop("RECON_REDIS_URL", None)
        self.service.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.service.start()
        wait_until(self._healthy, timeout=30, what="the intake to answer /healthz")
        self.rss_start_kb = self.rss_kb()
        return self

    def _healthy(self) -> bool:
        assert self.service is not None
        if not self.service.alive():
            raise AssertionError("the intake exited at start:\n" + self.service.tail())
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.service is not None:
            self.service.terminate(timeout=10)
        if self.stripe is not None:
            self.stripe.stop()
        if self.engine is not None:
            self.engine.dispose()
        with self.admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))
            conn.execute(text(f"DROP ROLE IF EXISTS {self.role}"))
        self.admin.dispose()

    # ------------------------------------------------------------------ the process

    @property
    def pid(self) -> int:
        assert self.service is not None and self.service.proc is not None
        return self.service.proc.pid

    def alive(self) -> bool:
        return self.service is not None and self.service.alive()

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS for the intake")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log_text(self) -> str:
        assert self.service is not None
        return self.service.log_text()

    # ------------------------------------------------------------------ HTTP

    def request(
        self,
        method: str,
        path: str = WEBHOOK,
        *,
        content: bytes | Any = b"",
        headers: Mapping[str, str] | None = None,
        timeout: float = 15,
    ) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=timeout) as client:
            response = client.request(method, path, content=content, headers=dict(headers or {}))
        self.seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")
        return response

    def post(
        self,
        body: bytes,
        signature: str | None = "sign",
        *,
        headers: Mapping[str, str] | None = None,
        path: str = WEBHOOK,
    ) -> httpx.Response:
        """POST ``body``; ``signature="sign"`` signs it with the current secret."""
        all_headers = {"Content-Type": "application/json; charset=utf-8"}
        if signature == "sign":
            signature = sign(body)
        if signature is not None:
            all_headers["Stripe-Signature"] = signature
        all_headers.update(headers or {})
        response = self.request("POST", path, content=body, headers=all_headers)
        if response.status_code == 200 and isinstance(body, bytes):
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                self.acknowledged.add(json.loads(body)["id"])
        return response

    def send_event(self, evt: Any, **kw: Any) -> httpx.Response:
        return self.post(body_of(evt), **kw)

    def raw(self, data: bytes, *, wait: float = 5.0) -> bytes:
        """Write ``data`` on a fresh connection and read until the server closes it or
        ``wait`` seconds pass; the bytes answered."""
        with self.connect() as sock:
            sock.sendall(data)
            out = read_until_closed(sock, wait)
        self.seen.append(out.decode("latin-1"))
        return out

    @contextlib.contextmanager
    def connect(self) -> Iterator[socket.socket]:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            yield sock
        finally:
            sock.close()

    def metrics(self) -> str:
        response = self.request("GET", "/metrics")
        assert response.status_code == 200
        return response.text

    def rejections(self, reason: str) -> float:
        return sample(self.metrics(), "recon_webhooks_rejected_total", {"reason": reason})

    # ------------------------------------------------------------------ the database

    def db(self) -> Engine:
        assert self.engine is not None
        return self.engine

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.db().connect() as conn:
            return [dict(r) for r in conn.execute(text(sql), params).mappings()]

    def inbox_row(self, event_id: str) -> dict[str, Any] | None:
        found = self.rows("SELECT * FROM recon_inbox WHERE event_id = :id", id=event_id)
        return found[0] if found else None

    def inbox_count(self) -> int:
        return int(self.rows("SELECT count(*) AS n FROM recon_inbox")[0]["n"])

    def settled(self, event_id: str, timeout: float = 20) -> dict[str, Any]:
        """The inbox row once the in-process worker has finished with it."""

        def done() -> dict[str, Any] | None:
            row = self.inbox_row(event_id)
            return row if row and row["status"] in ("processed", "ignored", "failed") else None

        return dict(wait_until(done, timeout=timeout, what=f"{event_id} to be processed"))

    def tickets_for(self, payment_id: str) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT * FROM recon_tickets WHERE payment_id = :p ORDER BY id", p=payment_id
        )

    def seed_inflight(self, reference: str, amount: int = 5000, currency: str = "USD") -> None:
        from ledger.model import NewTransaction

        with self.db().begin() as conn:
            SqlLedger(conn).create(
                NewTransaction(
                    reference, "@stripe", "wallet:cus_hostile", amount, currency, inflight=True
                )
            )

    def entry(self, reference: str) -> Any:
        with self.db().connect() as conn:
            return SqlLedger(conn).get(reference)


def _with_password(base: str, role: str, password: str, schema: str) -> str:
    """``base`` (no credentials of its own but a user) with ``role:password`` and the
    schema as every connection's search_path."""
    scheme, rest = base.split("://", 1)
    hostpart = rest.split("@", 1)[1] if "@" in rest else rest
    sep = "&" if "?" in hostpart else "?"
    return f"{scheme}://{role}:{password}@{hostpart}{sep}options=-csearch_path%3D{schema}"


def read_until_closed(sock: socket.socket, wait: float) -> bytes:
    sock.settimeout(0.2)
    deadline = time.monotonic() + wait
    chunks: list[bytes] = []
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``sock`` within ``seconds``, and what it sent first."""
    sock.settimeout(0.1)
    deadline = time.monotonic() + seconds
    got: list[bytes] = []
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return True, b"".join(got)
        if not chunk:
            return True, b"".join(got)
        got.append(chunk)
    return False, b"".join(got)


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer.split(b" ", 2)[1])


def sample(metrics_text: str, name: str, labels: Mapping[str, str]) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
