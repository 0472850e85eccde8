"""Starting and ending the run that records one job execution (shared by every use case).

A run is alive while its process beats: :func:`begin` starts a heartbeat thread that writes
``recon_runs.heartbeat_at`` every ``svc.run_heartbeat``, :func:`end` and :func:`fail` stop
it.  A SIGKILLed worker (OOM killer, a lost node, a rollout past its grace period) never
reaches ``end`` or ``fail``: its run would stay ``running`` for ever and its claimed entries
wait out their lease.  Every run therefore begins by reaping the runs whose process is
gone (:func:`reap_dead_runs`): silent for ``svc.run_stale_after``, or held by a process of
this host that no longer exists.  A reaped run is recorded ``partial`` with the reason, its
claims are given back at once, and the run that found it lists it (``recovered_runs``).
"""

from __future__ import annotations

import os
import socket
import threading
from datetime import datetime
from typing import Any

from ledger.errors import TransientError
from reconcile import runs
from reconcile.engine import Pass
from reconcile.guard import GuardTripped
from reconcile.ports import Services
from reconcile.redact import describe
from reconcile.runs import FAILED, Deferred, RunResult, RunState, finish_run, start_run
from reconcile.stripe_gateway import StripeGateway


def this_holder() -> str:
    """The process a run belongs to: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_gone(holder: str | None) -> bool:
    """True only when ``holder`` is a process of this host that no longer exists.

    Another host's process cannot be looked at from here: only its heartbeat tells."""
    if not holder:
        return False
    host, _, pid_text = holder.partition(":")
    pid_text = pid_text.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """Dead but not yet reaped (its parent died too, and PID 1 has not collected it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:  # no /proc (not Linux): kill(0) succeeded, take it as alive
        return False
    # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last ")".
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def holder_is_dead(svc: Services, holder: str) -> bool:
    """Whether the process named by ``holder`` (``host:pid``, anything after is ignored) is
    gone: a process of this host that no longer exists, or one whose runs all stopped
    beating.  A holder with no running run is not presumed dead: it may be about to start
    one."""
    if process_gone(holder):
        return True
    host, _, rest = holder.partition(":")
    who = f"{host}:{rest.partition(':')[0]}"
    with svc.engine.connect() as conn:
        theirs = [r for r in runs.running_runs(conn) if r.holder == who]
    stale_before = svc.clock() - svc.run_stale_after
    return bool(theirs) and all(r.last_beat < stale_before for r in theirs)


class _Heartbeat(threading.Thread):
    def __init__(self, svc: Services, run_id: int) -> None:
        super().__init__(name=f"run-heartbeat-{run_id}", daemon=True)
        self.svc, self.run_id = svc, run_id
        self.halt = threading.Event()

    def run(self) -> None:
        every = max(0.05, self.svc.run_heartbeat.total_seconds())
        while not self.halt.wait(every):
            try:
                if not runs.beat(self.svc.engine, self.run_id, self.svc.clock()):
                    return  # ended (or reaped) elsewhere: nothing left to keep alive
            except Exception:  # noqa: S112 - the database is away; the next beat retries
                continue


_beating: dict[int, _Heartbeat] = {}
_beating_lock = threading.Lock()


def _stop_beating(run_id: int) -> None:
    with _beating_lock:
        beat = _beating.pop(run_id, None)
    if beat is not None:
        beat.halt.set()


def reap_dead_runs(svc: Services, *, now: datetime | None = None) -> list[int]:
    """Mark every run whose process is gone ``partial``, give back its claims; their ids."""
    now = now or svc.clock()
    stale_before = now - svc.run_stale_after
    with svc.engine.connect() as conn:
        running = runs.running_runs(conn)
    reaped: list[int] = []
    for run in running:
        if run.last_beat < stale_before:
            why = (
                f"worker presumed dead: no heartbeat since {run.last_beat.isoformat()} "
                f"(holder {run.holder or 'unknown'})"
            )
        elif process_gone(run.holder):
            why = f"worker died: process {run.holder} no longer exists"
        else:
            continue
        with svc.engine.begin() as conn:
            if not runs.mark_dead(conn, run.id, why, now):
                continue
            if run.claimed:
                # Only the claims, never the entries' state: what the dead run did commit
                # is committed, what it did not is left for the next pass.
                svc.ledger_for(conn).release(list(run.claimed))
        reaped.append(run.id)
        svc.hooks.run(run.job, runs.PARTIAL)
    return reaped


def begin(svc: Services, job: str, trigger: str, actor: str, dry_run: bool, **kw: Any) -> RunState:
    recovered = reap_dead_runs(svc)
    state = start_run(
        svc.engine,
        job=job,
        trigger=trigger,
        actor=actor,
        dry_run=dry_run,
        now=svc.clock(),
        holder=this_holder(),
        **kw,
    )
    if recovered:
        state.recovered = recovered
        state.counts["recovered_runs"] = len(recovered)
    beat = _Heartbeat(svc, state.id)
    with _beating_lock:
        _beating[state.id] = beat
    beat.start()
    return state


def finish(
    svc: Services, state: RunState, gateway: StripeGateway | None, *, status: str | None = None
) -> str:
    """Write the run's end and stop its heartbeat."""
    try:
        return finish_run(
            svc.engine,
            state,
            now=svc.clock(),
            stripe=gateway.snapshot() if gateway else None,
            status=status,
        )
    finally:
        _stop_beating(state.id)


def end(svc: Services, state: RunState, gateway: StripeGateway | None, p: Pass | None) -> RunResult:
    status = finish(svc, state, gateway)
    svc.hooks.run(state.job, status)
    return RunResult(
        run_id=state.id,
        status=status,
        counts=dict(state.counts),
        errors=list(state.errors),
        planned=Deferred(p.plan) if p else [],
        dry_run=state.dry_run,
        cut_short=state.cut_short,
        guard=state.guard,
        notes=list(state.notes),
    )


def fail(svc: Services, state: RunState, gateway: StripeGateway | None, exc: BaseException) -> None:
    state.errors.append(describe(exc))
    try:
        with svc.engine.begin() as conn:
            claimed = runs.claimed_by(conn, state.id)
            if claimed:
                svc.ledger_for(conn).release(claimed)
    except Exception:  # noqa: S110 - the claims lapse with their lease; the failure matters more
        pass
    finish(svc, state, gateway, status=FAILED)
    svc.hooks.run(state.job, FAILED)


def cut_short(state: RunState, p: Pass, job: str, exc: Exception) -> None:
    """Record why a run stopped early; the guard's reason also becomes an incident ticket."""
    if isinstance(exc, GuardTripped):
        state.cut_short = f"blast-radius guard: {exc.why}"
        state.guard = exc.why
        p.open_incident(job, exc.why)
    else:
        source = "ledger" if isinstance(exc, TransientError) else "stripe"
        state.cut_short = f"{source}: {exc}"
        state.errors.append(describe(exc))
