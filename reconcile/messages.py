"""What to tell the customer, and what CX does, per ticket kind and current state: one table.

A ticket's customer message depends on two things: what kind of discrepancy it is and where
the payment stands *now* (a stuck payment waiting on 3-D Secure needs the customer to act; one
waiting on the bank needs them to wait).  When the ticket resolves, its message follows it
("your wallet has been credited").  ``recon customer`` uses the same table for payments that
are pending without a ticket (topic ``pending``), and ``customer.update`` messages carry it.

The README's CX guide is generated from :data:`KIND_GUIDE` and :data:`MESSAGES`
(``python -m tests.cx_guide --write``); tests/unit/test_messages.py fails when they drift.
No I/O here: amounts arrive as integers and are formatted with ledger.money.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ledger.money import Money
from reconcile.decide import failed_attempt
from reconcile.model import Payment, PaymentStatus, TicketKind

__all__ = [
    "KIND_GUIDE",
    "MESSAGES",
    "PENDING",
    "CustomerState",
    "KindGuide",
    "customer_message",
    "cx_guide_markdown",
    "money_text",
    "open_state",
    "resolved_state",
]

PENDING = "pending"  # the topic of a payment that has no ticket (yet)


class CustomerState(enum.StrEnum):
    """Where the payment stands, as far as the customer is concerned."""

    # While open: what Stripe says now.
    WAITING_ON_CUSTOMER = "waiting_on_customer"  # 3-D Secure, confirmation, no method yet
    WAITING_ON_BANK = "waiting_on_bank"  # processing, or authorised and not yet captured
    PAID = "paid"  # succeeded
    FAILED = "failed"  # a failed attempt, or canceled
    REFUNDED = "refunded"
    DISPUTED = "disputed"
    NOT_ON_STRIPE = "not_on_stripe"
    # What Stripe sent was incomplete or malformed: we are checking (absent is not zero).
    CHECKING = "checking"
    # Once resolved: what was done about it.
    CREDITED = "credited"
    REVERSED = "reversed"
    VOIDED = "voided"
    CLOSED = "closed"  # resolved with no ledger change


_OPEN_STATES = frozenset(
    {
        CustomerState.WAITING_ON_CUSTOMER,
        CustomerState.WAITING_ON_BANK,
        CustomerState.PAID,
        CustomerState.FAILED,
        CustomerState.REFUNDED,
        CustomerState.DISPUTED,
        CustomerState.NOT_ON_STRIPE,
        CustomerState.CHECKING,
    }
)

_WAITING_ON_CUSTOMER = frozenset(
    {
        PaymentStatus.REQUIRES_ACTION,
        PaymentStatus.REQUIRES_CONFIRMATION,
        PaymentStatus.REQUIRES_PAYMENT_METHOD,
    }
)


def open_state(payment: Payment | None) -> CustomerState:
    """The customer-facing state of a payment from what Stripe says about it."""
    if payment is None:
        return CustomerState.NOT_ON_STRIPE
    if payment.status is None or payment.problems:
        return CustomerState.CHECKING
    if payment.disputed:
        return CustomerState.DISPUTED
    if payment.amount_refunded:
        return CustomerState.REFUNDED
    if payment.status is PaymentStatus.SUCCEEDED:
        return CustomerState.PAID
    if failed_attempt(payment):
        return CustomerState.FAILED
    if payment.status in _WAITING_ON_CUSTOMER:
        return CustomerState.WAITING_ON_CUSTOMER
    return CustomerState.WAITING_ON_BANK


# What a resolution did, by fix action or by the action an automatic pass took.
_RESOLVED_BY = {
    "commit": CustomerState.CREDITED,
    "credit": CustomerState.CREDITED,
    "create": CustomerState.CREDITED,
    "create-record": CustomerState.CREDITED,
    "reverse": CustomerState.REVERSED,
    "void": CustomerState.VOIDED,
}


def resolved_state(action: str, payment: Payment | None = None) -> CustomerState:
    """The state a ticket resolved by ``action`` leaves the customer in.

    ``action`` is a fix (``credit``, ``reverse``, ``void``, ``none``...) or the action of the
    pass that found the payment reconciled (``commit``, ``void``, ``matched``...).  A pass
    that merely found the books agreeing reports what Stripe says: paid means credited.
    """
    if action in _RESOLVED_BY:
        return _RESOLVED_BY[action]
    if action == "matched" and payment is not None:
        if payment.status is PaymentStatus.SUCCEEDED:
            return CustomerState.CREDITED
        if failed_attempt(payment):
            return CustomerState.VOIDED
    return CustomerState.CLOSED


_S = CustomerState
_K = TicketKind

# {amount} is "your top-up of 2,000.00 USD" ("your top-up" when the amount is unknown);
# {money} is the bare "2,000.00 USD" ("the amount").
# Written to be pasted to the customer as is; no internal words (ledger, inflight, void).
MESSAGES: dict[tuple[str, CustomerState], str] = {
    # -- no ticket: a payment still pending -------------------------------------------------
    (PENDING, _S.WAITING_ON_CUSTOMER): (
        "The payment for {amount} is waiting for you to confirm it with your bank (for example "
        "in your banking app). Please complete that step; until then nothing will be taken."
    ),
    (PENDING, _S.WAITING_ON_BANK): (
        "The payment for {amount} is being confirmed by your bank. Your wallet will update as "
        "soon as it clears; there is no need to pay again."
    ),
    (PENDING, _S.PAID): (
        "We received {amount}. Your wallet will update within a few minutes; there is no need "
        "to pay again."
    ),
    (PENDING, _S.FAILED): (
        "The payment for {amount} did not go through, so nothing was taken. You can try again "
        "with the same or another card; any amount your bank is holding will be released."
    ),
    (PENDING, _S.NOT_ON_STRIPE): (
        "We cannot find a payment for {amount}, so nothing was taken. Please try the top-up again."
    ),
    (PENDING, _S.CHECKING): (
        "We are checking the payment for {amount} with our payment provider. Your wallet will "
        "update as soon as that is done; there is no need to pay again."
    ),
    (PENDING, _S.CREDITED): "Your wallet has been credited with {amount}.",
    (PENDING, _S.VOIDED): (
        "The payment for {amount} did not go through and nothing was taken; any amount your "
        "bank was holding has been released."
    ),
    # -- stuck_payment ----------------------------------------------------------------------
    (_K.STUCK_PAYMENT, _S.WAITING_ON_CUSTOMER): (
        "The payment for {amount} is still waiting for you to approve it with your bank (3-D "
        "Secure). It will not complete on its own: please approve it in your banking app, or "
        "start a new top-up. Nothing has been taken."
    ),
    (_K.STUCK_PAYMENT, _S.WAITING_ON_BANK): (
        "The payment for {amount} is taking longer than usual to be confirmed by your bank. "
        "Your wallet will update as soon as it clears; there is no need to pay again."
    ),
    (_K.STUCK_PAYMENT, _S.PAID): (
        "We received {amount}. Your wallet will update within a few minutes; there is no need "
        "to pay again."
    ),
    (_K.STUCK_PAYMENT, _S.FAILED): (
        "The payment for {amount} did not go through, so nothing was taken. You can try again."
    ),
    (
        _K.STUCK_PAYMENT,
        _S.CREDITED,
    ): "Your payment cleared: your wallet has been credited with {amount}.",
    (_K.STUCK_PAYMENT, _S.VOIDED): (
        "The payment for {amount} did not go through and nothing was taken; any amount your "
        "bank was holding has been released. You can try again."
    ),
    (_K.STUCK_PAYMENT, _S.CLOSED): "We have looked into the payment for {amount}; it is sorted.",
    # -- missing_record ---------------------------------------------------------------------
    (_K.MISSING_RECORD, _S.PAID): (
        "We received {amount} but your wallet has not been updated yet. We are crediting it "
        "now; there is no need to pay again."
    ),
    (_K.MISSING_RECORD, _S.CREDITED): (
        "Sorry for the delay: your wallet has been credited with {amount}."
    ),
    (_K.MISSING_RECORD, _S.CLOSED): (
        "We have looked into {amount}; it is sorted. Contact us if your wallet still looks wrong."
    ),
    # -- amount_mismatch --------------------------------------------------------------------
    (_K.AMOUNT_MISMATCH, _S.PAID): (
        "Your bank sent us less than {amount} (a partial payment). Your wallet has been "
        "credited with the amount we received; the rest was never taken."
    ),
    (_K.AMOUNT_MISMATCH, _S.CREDITED): (
        "Your wallet has been credited with the amount we received for {amount}."
    ),
    (_K.AMOUNT_MISMATCH, _S.CLOSED): (
        "We have checked the amount of {amount}; your wallet holds what we received."
    ),
    # -- unknown_payment --------------------------------------------------------------------
    (_K.UNKNOWN_PAYMENT, _S.NOT_ON_STRIPE): (
        "We cannot find a payment for {amount}; nothing was taken. Please try the top-up again."
    ),
    (_K.UNKNOWN_PAYMENT, _S.VOIDED): (
        "The payment for {amount} never reached us, so nothing was taken and it has been "
        "cancelled. Please try again."
    ),
    (_K.UNKNOWN_PAYMENT, _S.CLOSED): "We have looked into {amount}; it is sorted.",
    # -- credited_but_failed ----------------------------------------------------------------
    (_K.CREDITED_BUT_FAILED, _S.FAILED): (
        "The payment for {amount} did not go through, but your wallet was credited by mistake. "
        "We will take that credit back; please do not spend it. You can top up again."
    ),
    (_K.CREDITED_BUT_FAILED, _S.REVERSED): (
        "The payment for {amount} did not go through, so we have taken back the credit that "
        "was added to your wallet by mistake. You can top up again."
    ),
    (_K.CREDITED_BUT_FAILED, _S.CREDITED): (
        "Your payment went through after all: your wallet keeps the credit of {money}."
    ),
    (_K.CREDITED_BUT_FAILED, _S.CLOSED): "We have looked into {amount}; it is sorted.",
    # -- paid_but_voided --------------------------------------------------------------------
    (_K.PAID_BUT_VOIDED, _S.PAID): (
        "We received {amount} but your wallet was not credited. We are crediting it now; "
        "there is no need to pay again."
    ),
    (_K.PAID_BUT_VOIDED, _S.CREDITED): (
        "Sorry for the delay: your wallet has been credited with {amount}."
    ),
    (_K.PAID_BUT_VOIDED, _S.CLOSED): (
        "We have looked into {amount}. If it was refunded, it is on its way back to your card."
    ),
    # -- refund_after_credit ----------------------------------------------------------------
    (_K.REFUND_AFTER_CREDIT, _S.REFUNDED): (
        "{money} of your top-up was refunded to your card, so the same amount will be taken "
        "back from your wallet."
    ),
    (_K.REFUND_AFTER_CREDIT, _S.REVERSED): (
        "{money} of your top-up was refunded to your card, so the same amount has been taken "
        "back from your wallet."
    ),
    (_K.REFUND_AFTER_CREDIT, _S.CLOSED): (
        "{money} of your top-up was refunded to your card; your wallet balance stays as it is."
    ),
    # -- dispute_opened ---------------------------------------------------------------------
    (_K.DISPUTE_OPENED, _S.DISPUTED): (
        "Your bank told us you disputed {amount}. While the dispute is open that amount may be "
        "held in your wallet; we will let you know the outcome."
    ),
    (_K.DISPUTE_OPENED, _S.REVERSED): (
        "After your dispute of {amount}, the disputed amount has been taken back from your wallet."
    ),
    (_K.DISPUTE_OPENED, _S.CLOSED): "The dispute of {amount} is closed; your wallet is unchanged.",
    # -- fraud_warning ----------------------------------------------------------------------
    (_K.FRAUD_WARNING, _S.PAID): (
        "Your bank has asked us about the payment for {amount}. If you did not make it, please "
        "tell us now; if you did, there is nothing you need to do."
    ),
    (_K.FRAUD_WARNING, _S.REVERSED): (
        "The payment for {amount} was reported to us as not made by you, so it has been refunded "
        "and the same amount taken back from your wallet."
    ),
    (_K.FRAUD_WARNING, _S.CLOSED): "We have looked into the payment for {amount}; it is sorted.",
    # -- unverifiable_payment ---------------------------------------------------------------
    (_K.UNVERIFIABLE_PAYMENT, _S.CREDITED): (
        "Thank you for waiting: your wallet has been credited with {amount}."
    ),
    (_K.UNVERIFIABLE_PAYMENT, _S.CLOSED): "We have looked into {amount}; it is sorted.",
    # -- duplicate_entry --------------------------------------------------------------------
    (_K.DUPLICATE_ENTRY, _S.PAID): (
        "We received {amount} once, and your wallet is credited with it once. A second "
        "pending line for the same payment may show for a while; it will be removed and "
        "nothing more will be taken."
    ),
    (_K.DUPLICATE_ENTRY, _S.VOIDED): (
        "The second pending line for {amount} has been removed; the payment was counted once."
    ),
    (_K.DUPLICATE_ENTRY, _S.CLOSED): "We have looked into {amount}; it is sorted.",
}


@dataclass(frozen=True)
class KindGuide:
    """What a ticket kind means and what CX does about it (the README's CX guide)."""

    severity: str
    what_happened: str
    fix: str  # the one command that fixes it, or what to do
    actions: tuple[str, ...]  # the --action values that make sense

    @property
    def suggested_fix(self) -> str:
        """What a ticket says to do: what happened, then the fix."""
        return f"{self.what_happened} {self.fix}"


KIND_GUIDE: dict[TicketKind, KindGuide] = {
    _K.MISSING_RECORD: KindGuide(
        "high",
        "The customer paid; the wallet was never credited (no ledger record).",
        "`--action create-record`: an APPLIED record for what Stripe received (the balance "
        "comes from the ticket or the PaymentIntent metadata `ledger_destination`).",
        ("create-record", "none"),
    ),
    _K.STUCK_PAYMENT: KindGuide(
        "low-high",
        "Still processing, or waiting on the customer (3-D Secure), past the SLA.",
        "Nothing until Stripe settles: `recon customer EMAIL --refresh` or `recon payment "
        "PI_ID` re-checks it; `--action commit` once Stripe says succeeded, `--action void` "
        "once it failed.",
        ("commit", "void", "none"),
    ),
    _K.AMOUNT_MISMATCH: KindGuide(
        "low / high",
        "Low: partial capture, the received amount was credited and the rest released. "
        "High: Stripe received more than the hold, or another currency; nothing was changed.",
        "Low: tell the customer, then `--action none`. High: engineering corrects the entry by "
        "hand, then `--action none`.",
        ("none",),
    ),
    _K.UNKNOWN_PAYMENT: KindGuide(
        "high",
        "The ledger has a hold Stripe knows nothing about.",
        "Check the API key is the right account (live vs test); if the top-up never reached "
        "Stripe, `--action void`.",
        ("void", "none"),
    ),
    _K.CREDITED_BUT_FAILED: KindGuide(
        "critical",
        "The wallet was credited; the payment failed or was canceled.",
        "`--action reverse`: a reversing transaction for what was credited. Contact the "
        "customer before they spend it.",
        ("reverse", "none"),
    ),
    _K.PAID_BUT_VOIDED: KindGuide(
        "critical",
        "The customer paid; the hold was voided, so the wallet was never credited.",
        "`--action credit`: a new APPLIED transaction for what Stripe received (net of "
        "refunds), linked to the PaymentIntent.",
        ("credit", "none"),
    ),
    _K.REFUND_AFTER_CREDIT: KindGuide(
        "medium",
        "Refunded on Stripe after the wallet was credited.",
        "`--action reverse`: a reversing transaction for the refunded amount (never more than "
        "was credited), or `--action none` to let the customer keep it.",
        ("reverse", "none"),
    ),
    _K.DISPUTE_OPENED: KindGuide(
        "high",
        "The customer disputed a credited payment.",
        "Submit evidence in the Stripe dashboard before the deadline; `--action none` once "
        "handled.",
        ("none",),
    ),
    _K.FRAUD_WARNING: KindGuide(
        "high",
        "Stripe's Radar reported an early fraud warning on a credited payment (the card issuer "
        "says it was not the cardholder); a dispute usually follows.",
        "Refund it on Stripe before a dispute arrives (a refund avoids the dispute fee), then "
        "`--action reverse` once the refund shows; or `--action none` if the customer confirms "
        "the payment.",
        ("reverse", "none"),
    ),
    _K.UNVERIFIABLE_PAYMENT: KindGuide(
        "high",
        "Stripe's data for the payment lacks a field the decision needs (received amount, "
        "currency, status) or has a malformed one: nothing was changed.",
        "`recon payment PI_ID --dry-run` re-reads it; check the webhook endpoint's API "
        "version. It closes by itself once Stripe's data is complete.",
        ("commit", "void", "none"),
    ),
    _K.DUPLICATE_ENTRY: KindGuide(
        "high",
        "Two ledger entries are linked to one PaymentIntent: the payment settles its own entry "
        "once, and the other (the ticket's reference) would hold money forever.",
        "`--action void`: releases the duplicate hold (the ticket's reference, never the "
        "payment's own entry); `--action none` once engineering has removed it by hand.",
        ("void", "none"),
    ),
    _K.INCIDENT: KindGuide(
        "critical",
        "A run stopped itself (blast-radius guard): nothing was changed.",
        "Hand to on-call (see the runbook); `--action none` once the cause is fixed.",
        ("none",),
    ),
}


def money_text(amount: int | None, currency: str | None) -> str | None:
    """``2,000.00 USD``, or None when the amount or its currency is unknown."""
    if amount is None or not currency:
        return None
    try:
        return Money(amount, currency).format()
    except ValueError:
        return None


def _fill(text: str, money: str | None) -> str:
    out = text.format(
        amount=f"your top-up of {money}" if money else "your top-up",
        money=money or "the amount",
    )
    # Sentences start upper case; the amount phrase may open one.
    return out[:1].upper() + out[1:]


def customer_message(
    topic: str, state: CustomerState, amount: int | None, currency: str | None
) -> str | None:
    """The message for the customer, or None when there is nothing to tell them.

    A topic without a line for this state falls back to the ``pending`` line for it: a
    ticket whose payment moved on since (a stuck payment now paid) reads like any payment
    in that state.  Incidents concern no customer.
    """
    if topic == _K.INCIDENT.value:
        return None
    text = MESSAGES.get((topic, state)) or MESSAGES.get((PENDING, state))
    if text is None:
        return None
    return _fill(text, money_text(amount, currency))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def cx_guide_markdown() -> str:
    """The README's CX guide tables, from the two tables above."""
    lines = [
        "| kind | severity | what happened | what to do |",
        "|---|---|---|---|",
    ]
    for kind, g in KIND_GUIDE.items():
        lines.append(
            f"| `{kind.value}` | {g.severity} | {_cell(g.what_happened)} | {_cell(g.fix)} |"
        )
    lines += [
        "",
        "What to tell the customer, by ticket kind and where the payment stands "
        "(`pending`: a payment with no ticket, as `recon customer` shows it):",
        "",
        "| kind | state | message |",
        "|---|---|---|",
    ]
    for (topic, state), text in MESSAGES.items():
        shown = _fill(text, "2,000.00 USD")
        lines.append(f"| `{topic}` | {state.value} | {_cell(shown)} |")
    return "\n".join(lines) + "\n"
