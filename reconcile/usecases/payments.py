"""Reconcile one payment on demand (``recon payment PI_ID``)."""

from __future__ import annotations

from reconcile.engine import Pass, PaymentOutcome
from reconcile.ports import Services
from reconcile.runs import RunResult
from reconcile.stripe_gateway import StripeGateway
from reconcile.usecases.errors import NotFound
from reconcile.usecases.lifecycle import begin, end, fail


def reconcile_payment(
    svc: Services,
    payment_id: str,
    *,
    actor: str = "system",
    dry_run: bool = False,
    trigger: str = "cli",
    gateway: StripeGateway | None = None,
    rerun_of: int | None = None,
) -> tuple[RunResult, PaymentOutcome]:
    """Re-read one payment on Stripe and reconcile it.

    NotFound (and no run recorded) when neither Stripe nor the ledger knows the id: a typo
    is bad input, not a reconciliation that found nothing to do.
    """
    gw = gateway or svc.new_gateway()
    payment = gw.retrieve(payment_id)
    if payment is None:
        with svc.engine.connect() as conn:
            known = svc.ledger_for(conn).find_linked(payment_id)
        if known is None:
            raise NotFound(f"{payment_id} is neither on Stripe nor in the ledger")
    state = begin(
        svc,
        "payment",
        trigger,
        actor,
        dry_run,
        params={"payment_id": payment_id},
        rerun_of=rerun_of,
    )
    p = Pass(svc, run=state, actor=actor, dry_run=dry_run, guarded=False)
    try:
        outcome = p.apply(payment_id, payment)
    except BaseException as exc:
        fail(svc, state, gw, exc)
        raise
    return end(svc, state, gw, p), outcome
