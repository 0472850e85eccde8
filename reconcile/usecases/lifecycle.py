"""Starting and ending the run that records one job execution (shared by every use case)."""

from __future__ import annotations

from typing import Any

from ledger.errors import TransientError
from reconcile.engine import Pass
from reconcile.guard import GuardTripped
from reconcile.ports import Services
from reconcile.runs import FAILED, RunResult, RunState, finish_run, start_run
from reconcile.stripe_gateway import StripeGateway


def begin(svc: Services, job: str, trigger: str, actor: str, dry_run: bool, **kw: Any) -> RunState:
    return start_run(
        svc.engine, job=job, trigger=trigger, actor=actor, dry_run=dry_run, now=svc.clock(), **kw
    )


def end(svc: Services, state: RunState, gateway: StripeGateway | None, p: Pass | None) -> RunResult:
    status = finish_run(
        svc.engine, state, now=svc.clock(), stripe=gateway.snapshot() if gateway else None
    )
    svc.hooks.run(state.job, status)
    return RunResult(
        run_id=state.id,
        status=status,
        counts=dict(state.counts),
        errors=list(state.errors),
        plan=p.plan() if p else [],
    )


def fail(svc: Services, state: RunState, gateway: StripeGateway | None, exc: BaseException) -> None:
    state.errors.append(f"{type(exc).__name__}: {exc}")
    finish_run(
        svc.engine,
        state,
        now=svc.clock(),
        stripe=gateway.snapshot() if gateway else None,
        status=FAILED,
    )
    svc.hooks.run(state.job, FAILED)


def cut_short(state: RunState, p: Pass, job: str, exc: Exception) -> None:
    """Record why a run stopped early; the guard's reason also becomes an incident ticket."""
    if isinstance(exc, GuardTripped):
        state.cut_short = f"blast-radius guard: {exc.why}"
        p.open_incident(job, exc.why)
    else:
        source = "ledger" if isinstance(exc, TransientError) else "stripe"
        state.cut_short = f"{source}: {exc}"
        state.errors.append(f"{type(exc).__name__}: {exc}")
