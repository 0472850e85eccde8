"""Serving the intake with uvicorn (``recon serve``, ``python -m worker.intake``)."""

from __future__ import annotations

import os
import socket
import tempfile

from worker import metrics

__all__ = ["listening_socket", "main", "serve"]


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio only sets TCP_NODELAY on accepted connections
    # whose socket says it is TCP, and proto=0 (uvicorn's own bind) does not.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


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
