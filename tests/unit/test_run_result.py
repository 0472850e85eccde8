"""A run's result: its plan is written out only when asked for (reconcile/runs.py)."""

from __future__ import annotations

import copy
import pickle
from dataclasses import asdict
from typing import Any

from reconcile.runs import Deferred, RunResult


def _result(calls: list[int]) -> RunResult:
    def make() -> list[dict[str, Any]]:
        calls.append(1)
        return [{"payment_id": "pi_1", "action": "commit"}]

    return RunResult(1, "succeeded", {"commit": 1}, [], Deferred(make))


def test_the_plan_is_written_out_once_and_only_when_asked_for() -> None:
    calls: list[int] = []
    result = _result(calls)
    assert calls == []
    assert result.plan == [{"payment_id": "pi_1", "action": "commit"}]
    assert result.plan is result.plan
    assert calls == [1]


def test_a_result_copies_and_pickles_with_its_plan_written_out() -> None:
    result = _result([])
    assert asdict(result)["planned"] == [{"payment_id": "pi_1", "action": "commit"}]
    assert copy.deepcopy(result).plan == result.plan
    assert pickle.loads(pickle.dumps(result)).plan == result.plan


def test_a_plan_given_as_a_list_is_that_list() -> None:
    plan = [{"payment_id": "pi_2"}]
    assert RunResult(2, "succeeded", {}, [], plan).plan is plan
