"""The cyclic collector while sweeps run (reconcile/usecases/jobs.py ``_Collections``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from reconcile.usecases import jobs


@pytest.fixture(autouse=True)
def _collector_as_found() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_the_collector_is_off_while_sweeps_run_and_back_after_the_last_of_them() -> None:
    gc.enable()
    with jobs._Collections():
        assert not gc.isenabled()
        with jobs._Collections():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer sweep still runs
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with jobs._Collections():
        pass
    assert not gc.isenabled()


def test_cycles_are_collected_every_few_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    collected: list[int] = []
    monkeypatch.setattr(jobs.gc, "collect", lambda generation=2: collected.append(generation))
    with jobs._Collections() as collections:
        for _ in range(2 * jobs.SWEEP_GC_EVERY + 1):
            collections.tick()
    assert collected == [1, 1]
