"""One real intake for the whole hostile suite (see harness.py), and after every test the
checks that hold for every kind: the process is still up and its memory bounded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile.harness import MEMORY_BUDGET_KB, Intake

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def intake(pg_admin: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Intake]:
    service = Intake(tmp_path_factory.mktemp("hostile")).start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(autouse=True)
def _stays_up_and_bounded(intake: Intake) -> Iterator[None]:
    yield
    assert intake.alive(), "the intake died:\n" + (intake.service.tail() if intake.service else "")
    grown = intake.rss_kb() - intake.rss_start_kb
    assert grown < MEMORY_BUDGET_KB, f"the intake's memory grew by {grown} KiB"
