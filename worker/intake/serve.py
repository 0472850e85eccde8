"""Serving the intake with uvicorn (``recon serve``, ``python -m worker.intake``)."""

from __future__ import annotations

import importlib.util
import os
import socket
import tempfile
from typing import Any

from worker import metrics
from worker.logs import get_logger

__all__ = ["compiled_stack", "listening_socket", "main", "serve"]

log = get_logger(__name__)


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio only sets TCP_NODELAY on accepted connections
    # whose socket says it is TCP, and proto=0 (uvicorn's own bind) does not.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def compiled_stack() -> tuple[str, str]:
    """uvicorn's event loop and HTTP parser: uvloop and httptools (both C), which halve
    the intake's CPU per webhook against asyncio's loop and the pure-Python h11.  They are
    dependencies; a platform without them (uvloop has no Windows build) still serves, on
    the pure-Python pair, and says so."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    if (loop, http) != ("uvloop", "httptools"):
        log.warning("intake on the pure-Python HTTP stack", loop=loop, http=http)
    return loop, http


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    app: str = "worker.intake:create_app",
    log_level: str = "info",
) -> None:
    """Run the intake (``app`` is a factory import string) until interrupted."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if workers > 1 and not metrics.multiprocess_dir():
        # Set before the workers start: each reads it when it imports prometheus_client.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="recon-metrics-")
    from worker.settings import get_settings

    settings = get_settings()
    loop, http = compiled_stack()
    protocol: Any = http
    if http == "httptools":
        from worker.intake.guard import GuardedHttpToolsProtocol

        protocol = GuardedHttpToolsProtocol
    config = uvicorn.Config(
        app,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=10,
        loop=loop,
        http=protocol,
        # Slow and greedy clients (RECON_INTAKE_*, worker/settings.py): past the cap a
        # request is answered 503, which Stripe retries; headers have a deadline and a
        # size limit (guard.py; h11's own limit when httptools is missing).
        limit_concurrency=settings.intake_max_connections,
        timeout_keep_alive=max(1, int(settings.intake_keep_alive.total_seconds())),
        h11_max_incomplete_event_size=settings.intake_max_header_bytes,
        # Nothing here reads the client address, and the middleware that would rewrite
        # it from X-Forwarded-For runs on every request.
        proxy_headers=False,
        # No "server: uvicorn" on every answer: it tells a prober what runs here.
        server_header=False,
    )
    sock = listening_socket(host, port)
    try:
        if workers > 1:
            Multiprocess(config, sockets=[sock]).run()
        else:
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m worker.intake", description="webhook intake")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--app", default="worker.intake:create_app", help="factory import path")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    serve(
        host=args.host,
        port=args.port,
        workers=args.workers,
        app=args.app,
        log_level=args.log_level,
    )
