"""A local Stripe-compatible server (PaymentIntents, Events) for tests, the demo and benchmarks.

In-process::

    with run_server(rate_limit=25) as srv:
        srv.state.create_payment_intent(id="pi_1", amount=500, status="succeeded")
        client = srv.client()  # stripe.StripeClient aimed at srv.url
        client.v1.payment_intents.retrieve("pi_1")
        srv.calls("payment_intents.retrieve")

Variants of real Stripe, chosen per test (FACTS.md lists each fact and its source)::

    run_server(api_version="2025-02-24.acacia")          # before basil: partial captures
                                                         # and released auths refund [V3]
    run_server(omit_fields=["payment_intent.amount_received"])   # emulator-shaped [E1]
    run_server(companion_events=True, thin_events=True)  # charge.* beside payment_intent.*,
                                                         # v1.* thin twins [C1][T1]
    run_server(rate_limit=25, endpoint_rate_limit=25)    # Stripe's test-mode limits [L1][L2]
    srv.state.refund(...), .update_refund(...), .open_dispute(...), .update_dispute(...),
    .add_early_fraud_warning(...), .capture(...), .cancel(...), .touch_payment_intent(...)

Standalone: ``python -m tests.stripe_server --port 12111``; other processes drive it through
the control endpoints under ``/_test/``.
"""

from .app import FakeStripe, ServerConfig, Stats, create_app
from .runner import DEFAULT_API_KEY, RunningServer, run_server, start_server
from .state import AccountSettings, Change, StripeState, random_payment_intents
from .templates import Templates, embedded_templates, load_templates
from .webhook import signed_webhook

__all__ = [
    "DEFAULT_API_KEY",
    "AccountSettings",
    "Change",
    "FakeStripe",
    "RunningServer",
    "ServerConfig",
    "Stats",
    "StripeState",
    "Templates",
    "create_app",
    "embedded_templates",
    "load_templates",
    "random_payment_intents",
    "run_server",
    "signed_webhook",
    "start_server",
]
