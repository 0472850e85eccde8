"""Settings from the environment (names are a contract: see DESIGN.md, "Contracts")."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from reconcile.model import DEFAULT_SLA_BY_METHOD, Policy
from reconcile.stripe_gateway import STRIPE_API_VERSION
from worker.durations import parse_duration

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

DEFAULT_DATABASE_URL = "sqlite:///recon.db"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str = Field(DEFAULT_DATABASE_URL, validation_alias=_env("RECON_DATABASE_URL"))
    broker_url: str | None = Field(None, validation_alias=_env("RECON_BROKER_URL"))
    redis_url: str | None = Field(None, validation_alias=_env("RECON_REDIS_URL"))

    stripe_api_key: SecretStr = Field(SecretStr(""), validation_alias=_env("STRIPE_API_KEY"))
    stripe_webhook_secret: SecretStr = Field(
        SecretStr(""), validation_alias=_env("STRIPE_WEBHOOK_SECRET")
    )
    stripe_api_base: str | None = Field(None, validation_alias=_env("RECON_STRIPE_API_BASE"))
    # None: 80% of Stripe's global limit for the key's mode (live 100/s, test 25/s).
    stripe_rate_limit: float | None = Field(
        None, validation_alias=_env("RECON_STRIPE_RATE_LIMIT"), gt=0
    )
    stripe_endpoint_rate_limit: float = Field(
        20.0, validation_alias=_env("RECON_STRIPE_ENDPOINT_RATE_LIMIT"), gt=0
    )
    # Requests one burst may take at once (None: a tenth of a second's worth).  1 spaces
    # every request evenly: then no clock second holds more than the rate, rounded up.
    stripe_rate_burst: int | None = Field(
        None, validation_alias=_env("RECON_STRIPE_RATE_BURST"), ge=1, le=100
    )
    stripe_api_version: str = Field(
        STRIPE_API_VERSION, validation_alias=_env("RECON_STRIPE_API_VERSION"), min_length=10
    )
    # Connect accounts whose events this service acts on (comma-separated acct_ ids).
    stripe_accounts: str = Field("", validation_alias=_env("RECON_STRIPE_ACCOUNTS"))
    webhook_tolerance: Duration = Field(
        timedelta(seconds=300), validation_alias=_env("RECON_WEBHOOK_TOLERANCE")
    )
    webhook_max_bytes: int = Field(
        512 * 1024, validation_alias=_env("RECON_WEBHOOK_MAX_BYTES"), gt=0
    )

    ledger: Literal["sql", "blnk"] = Field("sql", validation_alias=_env("RECON_LEDGER"))
    blnk_url: str | None = Field(None, validation_alias=_env("BLNK_URL"))
    blnk_api_key: SecretStr = Field(SecretStr(""), validation_alias=_env("BLNK_API_KEY"))

    sweep_min_age: Duration = Field(
        timedelta(minutes=10), validation_alias=_env("RECON_SWEEP_MIN_AGE")
    )
    failed_grace: Duration = Field(timedelta(hours=1), validation_alias=_env("RECON_FAILED_GRACE"))
    processing_sla: Duration = Field(
        timedelta(hours=24), validation_alias=_env("RECON_PROCESSING_SLA")
    )
    # Per payment method: "us_bank_account=7d,sepa_debit=15d" (over the built-in defaults).
    processing_sla_by_method: str = Field(
        "", validation_alias=_env("RECON_PROCESSING_SLA_BY_METHOD")
    )
    capture_warning: Duration = Field(
        timedelta(days=2), validation_alias=_env("RECON_CAPTURE_WARNING")
    )
    catch_up_first_window: Duration = Field(
        timedelta(days=3), validation_alias=_env("RECON_CATCH_UP_FIRST_WINDOW")
    )
    create_missing: bool = Field(False, validation_alias=_env("RECON_CREATE_MISSING"))

    # Blast-radius guard: a pass stops acting past either cap (absolute or share of the
    # entries it examined), whichever is larger, so small runs are not tripped by one void.
    max_voids: int = Field(50, validation_alias=_env("RECON_MAX_VOIDS"), ge=0)
    max_void_share: float = Field(0.5, validation_alias=_env("RECON_MAX_VOID_SHARE"), ge=0, le=1)
    max_new_tickets: int = Field(25, validation_alias=_env("RECON_MAX_NEW_TICKETS"), ge=0)
    max_ticket_share: float = Field(
        0.3, validation_alias=_env("RECON_MAX_TICKET_SHARE"), ge=0, le=1
    )

    ticket_webhook_url: str | None = Field(None, validation_alias=_env("RECON_TICKET_WEBHOOK_URL"))
    ticket_webhook_secret: SecretStr = Field(
        SecretStr(""), validation_alias=_env("RECON_TICKET_WEBHOOK_SECRET")
    )
    slack_webhook_url: str | None = Field(None, validation_alias=_env("RECON_SLACK_WEBHOOK_URL"))
    # Signed customer.update messages to the ticket webhook sink, so the application can
    # tell a customer their top-up went through (or did not) before they ask.
    customer_updates: bool = Field(False, validation_alias=_env("RECON_CUSTOMER_UPDATES"))

    sweep_interval: Duration = Field(
        timedelta(minutes=5), validation_alias=_env("RECON_SWEEP_INTERVAL")
    )
    catch_up_interval: Duration = Field(
        timedelta(minutes=15), validation_alias=_env("RECON_CATCH_UP_INTERVAL")
    )
    scan_interval: Duration = Field(
        timedelta(hours=1), validation_alias=_env("RECON_SCAN_INTERVAL")
    )
    scan_window: Duration = Field(timedelta(hours=26), validation_alias=_env("RECON_SCAN_WINDOW"))
    redrive_interval: Duration = Field(
        timedelta(minutes=1), validation_alias=_env("RECON_REDRIVE_INTERVAL")
    )
    redrive_age: Duration = Field(timedelta(minutes=2), validation_alias=_env("RECON_REDRIVE_AGE"))
    deliver_interval: Duration = Field(
        timedelta(seconds=30), validation_alias=_env("RECON_DELIVER_INTERVAL")
    )
    # A running job writes a heartbeat this often; one silent for RECON_RUN_STALE_AFTER is
    # presumed dead (its worker was killed): recorded partial, its claims given back.
    run_heartbeat: Duration = Field(
        timedelta(seconds=10), validation_alias=_env("RECON_RUN_HEARTBEAT")
    )
    run_stale_after: Duration = Field(
        timedelta(seconds=60), validation_alias=_env("RECON_RUN_STALE_AFTER")
    )
    # Webhooks grouped into one commit by the intake (1 = one commit per webhook).
    intake_batch: int = Field(100, validation_alias=_env("RECON_INTAKE_BATCH"), ge=0, le=1000)
    # Writer threads (each with its own connection) committing those groups concurrently.
    intake_writers: int = Field(2, validation_alias=_env("RECON_INTAKE_WRITERS"), ge=1, le=32)
    sweep_batch: int = Field(500, validation_alias=_env("RECON_SWEEP_BATCH"), gt=0, le=1000)
    # The intake against slow and greedy clients (worker/intake/serve.py).  A request's
    # headers must arrive within RECON_INTAKE_HEADER_TIMEOUT of its first byte (or of the
    # connection, for one that sends nothing) and be at most RECON_INTAKE_MAX_HEADER_BYTES
    # (431 past that); its body within RECON_INTAKE_BODY_TIMEOUT (408); an idle kept-alive
    # connection is closed after RECON_INTAKE_KEEP_ALIVE.  Past RECON_INTAKE_MAX_CONNECTIONS
    # open connections a request is answered 503 (Stripe retries it) instead of queueing.
    intake_header_timeout: Duration = Field(
        timedelta(seconds=10), validation_alias=_env("RECON_INTAKE_HEADER_TIMEOUT")
    )
    intake_body_timeout: Duration = Field(
        timedelta(seconds=30), validation_alias=_env("RECON_INTAKE_BODY_TIMEOUT")
    )
    intake_keep_alive: Duration = Field(
        timedelta(seconds=5), validation_alias=_env("RECON_INTAKE_KEEP_ALIVE")
    )
    intake_max_connections: int = Field(
        1000, validation_alias=_env("RECON_INTAKE_MAX_CONNECTIONS"), ge=1
    )
    intake_max_header_bytes: int = Field(
        32 * 1024, validation_alias=_env("RECON_INTAKE_MAX_HEADER_BYTES"), ge=1024
    )
    sweep_read_ahead: int = Field(
        2000, validation_alias=_env("RECON_SWEEP_READ_AHEAD"), gt=0, le=20_000
    )

    dashboard_base: str = Field(
        "https://dashboard.stripe.com", validation_alias=_env("RECON_STRIPE_DASHBOARD")
    )

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        # Refused at start-up, without quoting it (it holds the password): a URL that cannot
        # be parsed, or names a driver that is not installed.
        from sqlalchemy.engine import make_url

        from worker.db import normalize_url

        try:
            make_url(normalize_url(value)).get_dialect()
        except Exception as exc:
            raise ValueError(f"not a usable database URL ({type(exc).__name__})") from None
        return value

    @field_validator("stripe_api_base", "ticket_webhook_url", "slack_webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018  (raises ValueError on a bad port)
        except ValueError:
            ok = False
        if not ok:
            # Not quoted: a sink URL may carry a token.
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("processing_sla_by_method")
    @classmethod
    def _sla_map(cls, value: str) -> str:
        parse_sla_map(value)  # refuses a bad map at start-up, with what is wrong
        return value

    @model_validator(mode="after")
    def _heartbeat_fits(self) -> Settings:
        if self.run_heartbeat <= timedelta(0):
            raise ValueError("RECON_RUN_HEARTBEAT must be positive")
        if self.run_stale_after < 3 * self.run_heartbeat:
            raise ValueError(
                "RECON_RUN_STALE_AFTER must be at least three RECON_RUN_HEARTBEAT intervals: "
                "a live run that misses one beat must not be presumed dead"
            )
        return self

    @field_validator("catch_up_first_window")
    @classmethod
    def _within_retention(cls, value: timedelta) -> timedelta:
        if value > timedelta(days=30):
            raise ValueError("Stripe keeps 30 days of events; use 30d or less")
        return value

    @property
    def stripe_livemode(self) -> bool | None:
        """The API key's mode: live, test, or None when the key says neither."""
        key = self.stripe_api_key.get_secret_value()
        if key.startswith(("sk_live_", "rk_live_")):
            return True
        if key.startswith(("sk_test_", "rk_test_")):
            return False
        return None

    @property
    def stripe_global_rate(self) -> float:
        if self.stripe_rate_limit is not None:
            return self.stripe_rate_limit
        return 80.0 if self.stripe_livemode else 20.0

    @property
    def connect_accounts(self) -> frozenset[str]:
        return frozenset(a.strip() for a in self.stripe_accounts.split(",") if a.strip())

    # The CX console (worker.console): its own app and port, see README "CX console".
    console_secret: SecretStr = Field(SecretStr(""), validation_alias=_env("RECON_CONSOLE_SECRET"))
    # Sign-in through an authenticating reverse proxy: the header naming the operator's
    # email, believed only from these peer addresses/CIDRs (comma-separated).
    console_auth_header: str | None = Field(
        None, validation_alias=_env("RECON_CONSOLE_AUTH_HEADER")
    )
    console_trusted_proxies: str = Field("", validation_alias=_env("RECON_CONSOLE_TRUSTED_PROXIES"))
    console_session_idle: Duration = Field(
        timedelta(minutes=30), validation_alias=_env("RECON_CONSOLE_SESSION_IDLE")
    )
    console_session_max: Duration = Field(
        timedelta(hours=12), validation_alias=_env("RECON_CONSOLE_SESSION_MAX")
    )
    console_login_window: Duration = Field(
        timedelta(minutes=15), validation_alias=_env("RECON_CONSOLE_LOGIN_WINDOW")
    )
    console_login_max_failures: int = Field(
        5, validation_alias=_env("RECON_CONSOLE_LOGIN_MAX_FAILURES"), ge=1
    )
    console_login_max_failures_per_address: int = Field(
        20, validation_alias=_env("RECON_CONSOLE_LOGIN_MAX_FAILURES_PER_ADDRESS"), ge=1
    )

    @property
    def webhook_secrets(self) -> list[str]:
        return [
            s.strip() for s in self.stripe_webhook_secret.get_secret_value().split(",") if s.strip()
        ]

    def policy(self) -> Policy:
        return Policy(
            failed_grace=self.failed_grace,
            processing_sla=self.processing_sla,
            processing_sla_by_method={
                **DEFAULT_SLA_BY_METHOD,
                **parse_sla_map(self.processing_sla_by_method),
            },
            capture_warning=self.capture_warning,
            create_missing=self.create_missing,
        )


def parse_sla_map(text: str) -> dict[str, timedelta]:
    """``"us_bank_account=7d,sepa_debit=15d"`` -> {method: duration}; ValueError saying why."""
    out: dict[str, timedelta] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        method, sep, duration = item.partition("=")
        if not sep or not method.strip().isidentifier():
            raise ValueError(f"expected METHOD=DURATION (e.g. sepa_debit=15d), got {item!r}")
        out[method.strip()] = parse_duration(duration.strip())
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
