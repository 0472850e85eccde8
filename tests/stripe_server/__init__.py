"""A local Stripe-compatible server (PaymentIntents, Events) for tests, the demo and benchmarks.

In-process::

    with run_server(rate_limit=25) as srv:
        srv.state.create_payment_intent(id="pi_1", amount=500, status="succeeded")
        client = srv.client()  # stripe.StripeClient aimed at srv.url
        client.v1.payment_intents.retrieve("pi_1")
        srv.calls("payment_intents.retrieve")

Standalone: ``python -m tests.stripe_server --port 12111``; other processes drive it through
the control endpoints under ``/_test/``.
"""

from .app import FakeStripe, ServerConfig, Stats, create_app
from .runner import DEFAULT_API_KEY, RunningServer, run_server, start_server
from .state import Change, StripeState, random_payment_intents
from .templates import Templates, embedded_templates, load_templates
from .webhook import signed_webhook

__all__ = [
    "DEFAULT_API_KEY",
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
