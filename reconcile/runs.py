"""Runs (every job execution), the audit trail (every ledger action) and job cursors:
every statement on ``recon_runs``, ``recon_audit`` and ``recon_cursors``.

A run's status is derived from what it accumulated (:class:`RunState`): cut short by Stripe
or the blast-radius guard, or with errors, it is ``partial``, never ``succeeded``.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, desc, func, select, update

from ledger.pgsets import recordset, rows_json
from reconcile.tables import audit, cursors, runs

SUCCEEDED = "succeeded"
PARTIAL = "partial"
FAILED = "failed"
RUNNING = "running"


@dataclass
class RunState:
    """What a run accumulates while it works; written to ``recon_runs`` when it ends."""

    id: int
    job: str
    dry_run: bool
    actor: str
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    cut_short: str | None = None  # why the run stopped early (rate limit, guard, errors)
    resume: dict[str, Any] | None = None
    # Runs found dead (their worker stopped beating) and marked partial when this one began.
    recovered: list[int] = field(default_factory=list)
    # Things the operator should know about how the run was read (a window clamped...).
    notes: list[str] = field(default_factory=list)
    guard: str | None = None  # the blast-radius guard's verdict when it stopped the run

    @property
    def status(self) -> str:
        return PARTIAL if (self.cut_short or self.errors) else SUCCEEDED


class Deferred:
    """A list written out the first time it is used; copied and pickled as that list."""

    def __init__(self, make: Callable[[], list[dict[str, Any]]]) -> None:
        self._make: Callable[[], list[dict[str, Any]]] | None = make
        self._value: list[dict[str, Any]] = []

    def get(self) -> list[dict[str, Any]]:
        if self._make is not None:
            self._value, self._make = self._make(), None
        return self._value

    def __deepcopy__(self, memo: dict[int, Any]) -> list[dict[str, Any]]:
        return copy.deepcopy(self.get(), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (self.get(),))


@dataclass(frozen=True)
class RunResult:
    run_id: int
    status: str
    counts: dict[str, int]
    errors: list[str]
    # What each payment got (or would get): a list, or what writes it out once asked for.
    # A backlog sweep's 100,000 outcomes took 2 s to write out, and a scheduled run's
    # result is never asked for them (a Celery task keeps only the summary).
    planned: list[dict[str, Any]] | Deferred = field(
        default_factory=list, repr=False, compare=False
    )
    dry_run: bool = False
    cut_short: str | None = None
    guard: str | None = None  # why the blast-radius guard stopped (or would stop) the run
    notes: list[str] = field(default_factory=list)

    @property
    def plan(self) -> list[dict[str, Any]]:
        return self.planned.get() if isinstance(self.planned, Deferred) else self.planned

    @property
    def attention(self) -> bool:
        """True when a person should look: discrepancies remain or the run was not clean."""
        return (
            self.status != SUCCEEDED
            or self.guard is not None
            or any(self.counts.get(k, 0) for k in ("ticket_opened", "ticket_bumped", "incident"))
        )


def start_run(
    engine: Engine,
    *,
    job: str,
    trigger: str,
    actor: str,
    dry_run: bool,
    now: datetime,
    window: tuple[datetime | None, datetime | None] = (None, None),
    params: Mapping[str, Any] | None = None,
    rerun_of: int | None = None,
    holder: str | None = None,
) -> RunState:
    # Its own committed transaction: a run that crashes still leaves its "running" row,
    # which is how on-call finds it, and its heartbeat stops, which is how the next run
    # finds it (dead_runs).
    with engine.begin() as conn:
        run_id = conn.execute(
            runs.insert()
            .values(
                job=job,
                trigger=trigger,
                actor=actor,
                dry_run=dry_run,
                window_start=window[0],
                window_end=window[1],
                params=dict(params or {}),
                status=RUNNING,
                counts={},
                errors=[],
                rerun_of=rerun_of,
                started_at=now,
                heartbeat_at=now,
                holder=holder,
            )
            .returning(runs.c.id)
        ).scalar_one()
    return RunState(id=int(run_id), job=job, dry_run=dry_run, actor=actor)


def finish_run(
    engine: Engine,
    state: RunState,
    *,
    now: datetime,
    stripe: Mapping[str, int] | None = None,
    status: str | None = None,
) -> str:
    final = status or state.status
    with engine.begin() as conn:
        conn.execute(
            update(runs)
            .where(runs.c.id == state.id)
            .values(
                status=final,
                counts=dict(state.counts),
                errors=state.errors[:200],
                resume=state.resume,
                stripe_calls=int((stripe or {}).get("calls", 0)),
                stripe_rate_limited=int((stripe or {}).get("rate_limited", 0)),
                finished_at=now,
                claimed=None,
                params=_merge_params(conn, state),
            )
        )
    return final


def _merge_params(conn: Connection, state: RunState) -> dict[str, Any]:
    params = dict(
        conn.execute(select(runs.c.params).where(runs.c.id == state.id)).scalar_one() or {}
    )
    if state.cut_short:
        params["cut_short"] = state.cut_short
    elif "presumed_dead" in params:
        # It was only slow (its heartbeat could not reach the database), and finished: the
        # reaper's verdict is kept as a note, not as the reason the run stopped.
        params.pop("cut_short", None)
    if state.notes:
        params["notes"] = list(state.notes)
    if state.recovered:
        params["recovered_runs"] = list(state.recovered)
    return params


# -- liveness -------------------------------------------------------------------------------


def beat(engine: Engine, run_id: int, now: datetime) -> bool:
    """The run's process is alive: push its heartbeat.  False once the run has ended."""
    with engine.begin() as conn:
        return bool(
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status == RUNNING)
                .values(heartbeat_at=now)
            ).rowcount
        )


def note_claims(conn: Connection, run_id: int, references: Sequence[str]) -> None:
    """The ledger references this run now holds claims on (written with the claim itself,
    so a run that dies holding claims always says which)."""
    conn.execute(update(runs).where(runs.c.id == run_id).values(claimed=list(references) or None))


def claimed_by(conn: Connection, run_id: int) -> list[str]:
    value = conn.execute(select(runs.c.claimed).where(runs.c.id == run_id)).scalar()
    return [str(v) for v in value or ()]


@dataclass(frozen=True)
class RunningRun:
    id: int
    job: str
    holder: str | None
    last_beat: datetime
    claimed: tuple[str, ...]


def running_runs(conn: Connection) -> list[RunningRun]:
    rows = conn.execute(
        select(
            runs.c.id,
            runs.c.job,
            runs.c.holder,
            func.coalesce(runs.c.heartbeat_at, runs.c.started_at),
            runs.c.claimed,
        ).where(runs.c.status == RUNNING)
    ).all()
    return [RunningRun(int(r[0]), str(r[1]), r[2], _aware(r[3]), tuple(r[4] or ())) for r in rows]


def _aware(value: Any) -> datetime:
    # COALESCE hides the column type from the UtcDateTime decorator: SQLite hands back text.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def mark_dead(conn: Connection, run_id: int, why: str, now: datetime) -> bool:
    """Record a run whose worker died as partial, with why.  False when it had ended in the
    meantime (or another run got there first): only one reaper records it."""
    row = conn.execute(
        select(runs.c.params, runs.c.errors)
        .where(runs.c.id == run_id, runs.c.status == RUNNING)
        .with_for_update()
    ).first()
    if row is None:
        return False
    params = {**dict(row[0] or {}), "cut_short": why, "presumed_dead": why}
    errors = [*list(row[1] or []), why][-200:]
    return bool(
        conn.execute(
            update(runs)
            .where(runs.c.id == run_id, runs.c.status == RUNNING)
            .values(status=PARTIAL, finished_at=now, params=params, errors=errors, claimed=None)
        ).rowcount
    )


def record_audit(
    conn: Connection,
    *,
    run_id: int | None,
    payment_id: str | None,
    reference: str | None,
    action: str,
    reason: str,
    actor: str,
    now: datetime,
    amount: int | None = None,
    currency: str | None = None,
    evidence: Mapping[str, Any] | None = None,
    ticket_id: int | None = None,
) -> None:
    conn.execute(
        audit.insert().values(
            run_id=run_id,
            payment_id=payment_id,
            reference=reference,
            action=action,
            reason=reason,
            actor=actor,
            amount=amount,
            currency=currency,
            evidence=dict(evidence or {}),
            ticket_id=ticket_id,
            created_at=now,
        )
    )


def record_audits(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Many audit rows (the keyword arguments of :func:`record_audit`) in one statement."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        _record_audits_pg(conn, rows)
        return
    conn.execute(
        audit.insert(),
        [
            {
                "run_id": r.get("run_id"),
                "payment_id": r.get("payment_id"),
                "reference": r.get("reference"),
                "action": r["action"],
                "reason": r["reason"],
                "actor": r["actor"],
                "amount": r.get("amount"),
                "currency": r.get("currency"),
                "evidence": dict(r.get("evidence") or {}),
                "ticket_id": r.get("ticket_id"),
                "created_at": r["now"],
            }
            for r in rows
        ],
    )


# A sweep writes an audit row per settled payment: arrays bound once and unnested by the
# server cost a fraction of a compiled row each.  The evidence is serialised as the JSON
# column would (json.dumps), so a row reads back the same whichever path wrote it.
_AUDIT_COLS = (
    ("run_id", "int"),
    ("payment_id", "text"),
    ("reference", "text"),
    ("action", "text"),
    ("reason", "text"),
    ("actor", "text"),
    ("amount", "bigint"),
    ("currency", "text"),
    ("evidence", "text"),
    ("ticket_id", "int"),
    ("created_at", "timestamptz"),
)
_PG_AUDITS = (
    "INSERT INTO recon_audit (run_id, payment_id, reference, action, reason, actor, amount,"
    " currency, evidence, ticket_id, created_at)"
    " SELECT u.run_id, u.payment_id, u.reference, u.action, u.reason, u.actor, u.amount,"
    f" u.currency, u.evidence::json, u.ticket_id, u.created_at FROM {recordset(_AUDIT_COLS)}"
)


def _record_audits_pg(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    cols = {
        "run_id": [r.get("run_id") for r in rows],
        "payment_id": [r.get("payment_id") for r in rows],
        "reference": [r.get("reference") for r in rows],
        "action": [r["action"] for r in rows],
        "reason": [r["reason"] for r in rows],
        "actor": [r["actor"] for r in rows],
        "amount": [r.get("amount") for r in rows],
        "currency": [r.get("currency") for r in rows],
        "evidence": [json.dumps(dict(r.get("evidence") or {})) for r in rows],
        "ticket_id": [r.get("ticket_id") for r in rows],
        "created_at": [r["now"] for r in rows],
    }
    conn.exec_driver_sql(_PG_AUDITS, {"rows": rows_json(_AUDIT_COLS, cols)})


def last_run(conn: Connection, job: str) -> Mapping[str, Any] | None:
    row = (
        conn.execute(
            select(runs)
            .where(runs.c.job == job, runs.c.dry_run.is_(False), runs.c.status != RUNNING)
            .order_by(desc(runs.c.id))
            .limit(1)
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def get_run(conn: Connection, run_id: int) -> Mapping[str, Any] | None:
    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    return dict(row) if row else None


def get_cursor(conn: Connection, name: str) -> str | None:
    value = conn.execute(select(cursors.c.value).where(cursors.c.name == name)).scalar()
    return str(value) if value is not None else None


def set_cursor(conn: Connection, name: str, value: str, *, now: datetime) -> None:
    """Store where a job (the Events API catch-up) got to; the next run resumes there."""
    changed = conn.execute(
        update(cursors).where(cursors.c.name == name).values(value=value, updated_at=now)
    ).rowcount
    if not changed:
        conn.execute(cursors.insert().values(name=name, value=value, updated_at=now))
