"""Settings from the environment (names are a contract: see DESIGN.md, "Contracts")."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import AliasChoices, BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from reconcile.model import Policy
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
    stripe_rate_limit: float = Field(20.0, validation_alias=_env("RECON_STRIPE_RATE_LIMIT"), gt=0)
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
    # Webhooks grouped into one commit by the intake (1 = one commit per webhook).
    intake_batch: int = Field(100, validation_alias=_env("RECON_INTAKE_BATCH"), ge=0, le=1000)
    # Writer threads (each with its own connection) committing those groups concurrently.
    intake_writers: int = Field(2, validation_alias=_env("RECON_INTAKE_WRITERS"), ge=1, le=32)
    sweep_batch: int = Field(100, validation_alias=_env("RECON_SWEEP_BATCH"), gt=0, le=1000)

    dashboard_base: str = Field(
        "https://dashboard.stripe.com", validation_alias=_env("RECON_STRIPE_DASHBOARD")
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
            create_missing=self.create_missing,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
