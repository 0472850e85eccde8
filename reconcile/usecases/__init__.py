"""The use cases: one home for everything the CLI, the Celery tasks and the console ask for.

- ``payments``: reconcile one payment (``recon payment``).
- ``events``: process one stored Stripe event (webhooks, catch-up), replay one (``recon replay``).
- ``jobs``: the sweep, the Events API catch-up, the missing-record scan, and reruns.
- ``fixes``: a person resolves a ticket, fixing the ledger as Stripe allows.
- ``customers``: from a person (email, name, ids) to their balances, payments and tickets.

Callers only parse, call one of these and present the value it returns.  Business outcomes
are values; :class:`UseCaseError` and its leaves are requests that cannot be carried out.
"""

from reconcile.usecases.customers import CustomerLookup, lookup_customer
from reconcile.usecases.errors import BadRequest, NotFound, UseCaseError
from reconcile.usecases.events import ProcessOutcome, ReplayResult, process_event, replay_event
from reconcile.usecases.fixes import Resolution, fix_payment, resolve_ticket
from reconcile.usecases.jobs import (
    CATCH_UP_TYPES,
    RerunSpec,
    plan_rerun,
    rerun,
    run_catch_up,
    run_scan,
    run_sweep,
    split_sweep,
)
from reconcile.usecases.payments import reconcile_payment

__all__ = [
    "CATCH_UP_TYPES",
    "BadRequest",
    "CustomerLookup",
    "NotFound",
    "ProcessOutcome",
    "ReplayResult",
    "RerunSpec",
    "Resolution",
    "UseCaseError",
    "fix_payment",
    "lookup_customer",
    "plan_rerun",
    "process_event",
    "reconcile_payment",
    "replay_event",
    "rerun",
    "resolve_ticket",
    "run_catch_up",
    "run_scan",
    "run_sweep",
    "split_sweep",
]
