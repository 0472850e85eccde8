"""Webhook intake: the ASGI app behind ``POST /webhooks/stripe`` (and the health, readiness
and metrics endpoints).

The package: ``app`` (routes and the order of work), ``signature``, ``store`` (the
grouped-commit writers), ``publisher`` (the queue hand-off thread), ``serve`` (uvicorn),
``guard`` (uvicorn's HTTP protocol with header deadlines and limits).

Per webhook the work is kept to what the promise needs: uvicorn on uvloop and httptools
(C), the route a plain ASGI callable in front of Starlette (which keeps the probes and
/metrics), one HMAC by the official library, one JSON parse (orjson), and the body stored
as received (never re-encoded).  ``python -m tests.bench.intake_phases`` shows the CPU of
each step; ``python -m tests.bench --only intake`` the rate beside the raw insert ceiling.

Served by uvicorn through :func:`serve` (``python -m worker.intake``, or ``recon serve``).
Prefer it to ``uvicorn --workers N``: uvicorn binds that shared socket without naming
the TCP protocol, so asyncio never sets TCP_NODELAY on the connections, and Nagle plus
delayed ACKs then add ~40 ms to every response (the headers and the body go out as two
writes): measured here, 2 workers served 20x fewer webhooks than 1.  :func:`serve` binds
the socket itself and, with several workers, points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory unless one is set, so /metrics adds up every process.

The one promise: an event answered 2xx is committed in the inbox.  So the order is
verify -> store and COMMIT -> answer, and only after the commit is the id (of a new,
pending row only) handed to the queue, by a publisher thread (:class:`Publisher`).  A
broker that fails after the commit changes nothing in the answer (the row is there;
``inbox.redrive`` re-sends it); a database that fails gets a 503 so that Stripe retries.
4xx only for what can never become valid (bad signature, stale or future timestamp, not an
event or not one that could be stored, too large, too slow), each counted by why in
``recon_webhooks_rejected_total{reason}`` (a fixed set, worker/metrics.py).  Slow and
greedy clients meet deadlines and limits (``RECON_INTAKE_*``, worker/intake/guard.py):
tested with the rest of the hostile input in tests/hostile/.

SQLAlchemy is synchronous here, so database work runs off the event loop.  By default
(``RECON_INTAKE_BATCH``, 100; 0 or 1 turns it off) concurrent webhooks are grouped: each
request hands its event to a writer thread (``RECON_INTAKE_WRITERS``, 2, each keeping its
connection while busy) and waits; a writer drains up to that many waiting events, inserts
them in one statement, commits, and only then answers each of them.  One commit then
serves many webhooks, and the per-statement overhead is paid once per batch.  A lone
webhook never waits for company: batches form only from requests that arrived during the
previous commit.  With batching off, each webhook is one INSERT in its own transaction,
by one of 16 writers.
"""

from worker.intake.app import create_app
from worker.intake.serve import listening_socket, main, serve

__all__ = ["create_app", "listening_socket", "main", "serve"]
