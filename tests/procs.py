"""Real processes for fault tests: a Redis server of the test's own, a Celery worker, the
webhook intake.  Each can be SIGKILLed and started again; ``stop()`` ends only what it
started.

Tests that restart Redis never touch the shared one (127.0.0.1:6379): they start
``redis-server`` on a free port.  Under CI=true a missing ``redis-server`` binary fails the
test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The worker command of deploy/compose.yaml and deploy/k8s/worker-deployment.yaml.
WORKER_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 30, every: float = 0.05, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(every)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        msg = "redis-server is not installed (apt-get install redis-server)"
        if IN_CI:
            pytest.fail(f"{msg}; CI=true: fault tests must run, not skip", pytrace=False)
        pytest.skip(msg)
    return found


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL is not ignored
        proc.wait(10)


class RedisServer:
    """redis-server on a port of its own, append-only as in deploy/compose.yaml."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.binary = redis_server_binary()
        self.port = port or free_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(self.ping, timeout=15, what=f"redis-server on {self.port}")
        return self

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except Exception:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown save, clients see their connections reset."""
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None

    def restart(self, down_for: float = 1.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        self.kill()


class Service:
    """A Python process of this project (a Celery worker, the intake), in its own process
    group so that a SIGKILL takes its children too, as when a container is killed."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], logdir: Path) -> None:
        self.name, self.argv = name, argv
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.logdir / f"{self.name}.log"

    def start(self) -> Service:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in kill()
        self._log.write(f"\n===== start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[int]:
        if not self.alive():
            return []
        assert self.proc is not None
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def kill(self) -> None:
        """SIGKILL the whole process group (the main process and its children)."""
        if self.proc is not None:
            _kill_group(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def terminate(self, timeout: float = 30) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL if it does not end in time."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])


def celery_worker(
    env: Mapping[str, str], logdir: Path, *, concurrency: int = 2, name: str = "worker"
) -> Service:
    """``celery -A worker.celery_app worker`` as deployed (prefork, the deploy flags)."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--loglevel=INFO",
        f"--concurrency={concurrency}",
        "-n",
        f"{name}@%h",
        *WORKER_FLAGS,
    ]
    return Service(name, argv, env, logdir)


def intake(env: Mapping[str, str], logdir: Path, port: int) -> Service:
    argv = [
        sys.executable,
        "-m",
        "worker.intake",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return Service("intake", argv, env, logdir)
