"""Tables of the reconciliation side: inbox, runs, audit, tickets, deliveries, cursors, locks."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from ledger.types import UtcDateTime

metadata = MetaData()

# Stripe events, stored before anything else happens to them.  The event id is the key so
# a redelivered event is a no-op insert (ON CONFLICT DO NOTHING), never a second row.
inbox = Table(
    "recon_inbox",
    metadata,
    Column("event_id", String(255), primary_key=True),
    Column("type", String(100), nullable=False),
    Column("payment_id", String(255), nullable=True),
    Column("livemode", Boolean, nullable=False, default=False),
    Column("event_created", BigInteger, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("source", String(20), nullable=False),  # webhook | catch_up | replay
    Column("status", String(20), nullable=False),  # pending | processed | ignored | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("enqueued_at", UtcDateTime(), nullable=True),
    Column("processed_at", UtcDateTime(), nullable=True),
    Index("ix_recon_inbox_status_received", "status", "received_at"),
    Index("ix_recon_inbox_payment", "payment_id"),
)

runs = Table(
    "recon_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job", String(40), nullable=False),
    Column("trigger", String(20), nullable=False),  # beat | cli | rerun | task | webhook
    Column("actor", String(100), nullable=False),
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("window_start", UtcDateTime(), nullable=True),
    Column("window_end", UtcDateTime(), nullable=True),
    Column("params", JSON, nullable=False, default=dict),
    Column("status", String(20), nullable=False),  # running | succeeded | partial | failed
    Column("counts", JSON, nullable=False, default=dict),
    Column("stripe_calls", Integer, nullable=False, default=0),
    Column("stripe_rate_limited", Integer, nullable=False, default=0),
    Column("errors", JSON, nullable=False, default=list),
    Column("resume", JSON, nullable=True),  # where the next run picks up after a partial one
    Column("rerun_of", Integer, ForeignKey("recon_runs.id"), nullable=True),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("finished_at", UtcDateTime(), nullable=True),
    # Liveness of a running run: its process writes heartbeat_at every few seconds, holder
    # names the process (host:pid), claimed lists the ledger references it holds claims
    # on.  A run whose heartbeat stopped is presumed dead, marked partial and its claims
    # given back (reconcile/usecases/lifecycle.py).
    Column("heartbeat_at", UtcDateTime(), nullable=True),
    Column("holder", String(200), nullable=True),
    Column("claimed", JSON, nullable=True),
    Index("ix_recon_runs_job_started", "job", "started_at"),
    Index("ix_recon_runs_status", "status"),
)

audit = Table(
    "recon_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("recon_runs.id"), nullable=True),
    Column("payment_id", String(255), nullable=True),
    Column("reference", String(255), nullable=True),
    Column("action", String(40), nullable=False),
    Column("amount", BigInteger, nullable=True),
    Column("currency", String(3), nullable=True),
    Column("reason", String(100), nullable=False),
    Column("evidence", JSON, nullable=False, default=dict),
    Column("actor", String(100), nullable=False),
    Column("ticket_id", Integer, nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_recon_audit_payment", "payment_id"),
    Index("ix_recon_audit_run", "run_id"),
    Index("ix_recon_audit_created", "created_at"),
)

tickets = Table(
    "recon_tickets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(40), nullable=False),
    Column("severity", Integer, nullable=False),
    Column("status", String(20), nullable=False),  # open | resolved
    Column("payment_id", String(255), nullable=False),
    Column("reference", String(255), nullable=True),
    Column("customer", String(255), nullable=True),
    Column("customer_email", String(320), nullable=True),
    Column("balance", String(200), nullable=True),
    Column("amount", BigInteger, nullable=True),
    Column("currency", String(3), nullable=True),
    Column("stripe_state", JSON, nullable=True),
    Column("ledger_state", JSON, nullable=True),
    Column("reason", String(100), nullable=False),
    Column("summary", Text, nullable=False),
    Column("suggested_fix", Text, nullable=False),
    Column("customer_message", Text, nullable=True),
    Column("dashboard_url", String(500), nullable=True),
    Column("occurrences", Integer, nullable=False, default=1),
    Column("run_id", Integer, ForeignKey("recon_runs.id"), nullable=True),
    Column("opened_at", UtcDateTime(), nullable=False),
    Column("last_seen_at", UtcDateTime(), nullable=False),
    Column("resolved_at", UtcDateTime(), nullable=True),
    Column("resolved_by", String(100), nullable=True),
    Column("resolution", Text, nullable=True),
    # One open ticket per discrepancy: repeats bump ``occurrences`` on this row instead.
    Index(
        "uq_recon_tickets_open",
        "kind",
        "payment_id",
        unique=True,
        postgresql_where=text("status = 'open'"),
        sqlite_where=text("status = 'open'"),
    ),
    Index("ix_recon_tickets_payment", "payment_id"),
    Index("ix_recon_tickets_status_opened", "status", "opened_at"),
)

deliveries = Table(
    "recon_ticket_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ticket_id", Integer, ForeignKey("recon_tickets.id"), nullable=False),
    Column("sink", String(40), nullable=False),  # webhook | slack
    Column("severity", Integer, nullable=False),
    Column("status", String(20), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("delivered_at", UtcDateTime(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("ticket_id", "sink", "severity", name="uq_recon_deliveries_once"),
    Index("ix_recon_deliveries_due", "status", "next_attempt_at"),
)

cursors = Table(
    "recon_cursors",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", String(255), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

# Keeps two runs of one job from overlapping; a holder that dies lets it lapse.
locks = Table(
    "recon_locks",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
)

# -- the customer index (owner: reconcile/customers.py) -------------------------------------
# Who a payment belongs to, learnt from what the service already sees (ledger metadata,
# PaymentIntents, tickets), so that CX can start from a person instead of a PaymentIntent id.

customers = Table(
    "recon_customers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # The identity a customer was first known by: the Stripe customer id, else
    # "email:<lower-case email>", else "balance:<ledger balance>".
    Column("key", String(400), nullable=False, unique=True),
    Column("name", String(200), nullable=True),
    Column("email", String(320), nullable=True),
    Column("stripe_customer", String(255), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

# Everything a customer can be looked up by.  email, stripe_customer and balance belong to
# one customer each; name tokens (each word of the lower-cased name, and the whole name)
# are shared, and searched by prefix.
customer_keys = Table(
    "recon_customer_keys",
    metadata,
    Column("kind", String(20), primary_key=True),  # email | stripe_customer | balance | name
    Column("value", String(400), primary_key=True),
    Column("customer_id", Integer, ForeignKey("recon_customers.id"), primary_key=True),
    Index(
        "uq_recon_customer_keys_identity",
        "kind",
        "value",
        unique=True,
        postgresql_where=text("kind <> 'name'"),
        sqlite_where=text("kind <> 'name'"),
    ),
    # LIKE 'pra%' uses this on PostgreSQL whatever the database collation.
    Index(
        "ix_recon_customer_keys_name_prefix",
        "value",
        postgresql_ops={"value": "varchar_pattern_ops"},
        postgresql_where=text("kind = 'name'"),
        sqlite_where=text("kind = 'name'"),
    ),
    Index("ix_recon_customer_keys_customer", "customer_id"),
)

# One row per payment seen: whose it is, and the last thing Stripe said about it (what
# `recon customer` shows without calling Stripe).
customer_payments = Table(
    "recon_customer_payments",
    metadata,
    Column("payment_id", String(255), primary_key=True),
    Column("customer_id", Integer, ForeignKey("recon_customers.id"), nullable=False),
    Column("balance", String(200), nullable=True),
    Column("amount", BigInteger, nullable=True),
    Column("currency", String(3), nullable=True),
    Column("status", String(30), nullable=True),  # last known Stripe status; NULL: not read
    Column("amount_received", BigInteger, nullable=True),
    Column("amount_refunded", BigInteger, nullable=True),
    Column("disputed", Boolean, nullable=True),
    Column("last_payment_error", String(200), nullable=True),
    Column("livemode", Boolean, nullable=True),
    Column("created", UtcDateTime(), nullable=True),  # the PaymentIntent's (or entry's) time
    Column("stripe_seen_at", UtcDateTime(), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("ix_recon_customer_payments_customer", "customer_id", "created"),
)

# customer.update messages (owner: reconcile/tickets.py, which owns the outbox): one row per
# change a customer may be waiting to hear about, queued in the transaction that made the
# change and sent by worker/sinks.py to the webhook sink.  ``change_key`` (payment + change)
# is unique: a change is never queued, so never sent, twice.
customer_updates = Table(
    "recon_customer_updates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("change_key", String(300), nullable=False, unique=True),
    Column("change", String(40), nullable=False),  # credited | voided | reversed | ...
    Column("payment_id", String(255), nullable=False),
    Column("ticket_id", Integer, nullable=True),
    Column("customer", String(255), nullable=True),
    Column("customer_email", String(320), nullable=True),
    Column("customer_name", String(200), nullable=True),
    Column("balance", String(200), nullable=True),
    Column("amount", BigInteger, nullable=True),
    Column("currency", String(3), nullable=True),
    Column("message", Text, nullable=True),
    Column("status", String(20), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("delivered_at", UtcDateTime(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_recon_customer_updates_due", "status", "next_attempt_at"),
)
