"""`make demo` and `make demo BLNK=1` run from start to end (in a scratch directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("flags", [[], ["--blnk"]], ids=["sql", "blnk"])
def test_the_demo_runs_end_to_end_and_the_books_balance(tmp_path, flags):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECON_", "BLNK_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "tests.demo", *flags],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "ledger invariants: hold" in out
    assert out.count("succeeded {") == 3  # sweep, catch-up, scan
    if flags:
        assert "the books are in Blnk" in out
        assert "every call carried X-Blnk-Key: True; float amounts sent: 0" in out
        assert "PUT /transactions/inflight" in out
    assert "@stripe" in out and "JPY" in out
