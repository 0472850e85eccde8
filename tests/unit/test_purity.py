"""The decision core imports only the standard library and reads no clock (DESIGN.md)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import reconcile.checks
import reconcile.decide
import reconcile.model

PURE_MODULES = {
    "reconcile.checks": Path(reconcile.checks.__file__),
    "reconcile.decide": Path(reconcile.decide.__file__),
    "reconcile.model": Path(reconcile.model.__file__),
}
# Of the project's own modules, the core may import only its own pure modules.
ALLOWED_FIRST_PARTY = {"reconcile.model", "reconcile.decide"}
CLOCK_ATTRIBUTES = {"now", "utcnow", "today", "time", "time_ns", "monotonic", "perf_counter"}


def imported_modules(source: str, package: str) -> set[str]:
    """Absolute names of everything ``source`` imports, relative imports resolved."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                names.add(node.module or "")
    return names


def impure_imports(source: str, package: str = "reconcile") -> set[str]:
    return {
        name
        for name in imported_modules(source, package)
        if name.split(".")[0] not in sys.stdlib_module_names and name not in ALLOWED_FIRST_PARTY
    }


def clock_reads(source: str) -> set[str]:
    return {
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and node.attr in CLOCK_ATTRIBUTES
    } | {
        alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name in CLOCK_ATTRIBUTES
    }


@pytest.mark.parametrize("module", sorted(PURE_MODULES))
def test_the_decision_core_imports_only_the_standard_library(module: str) -> None:
    assert impure_imports(PURE_MODULES[module].read_text()) == set()


@pytest.mark.parametrize("module", sorted(PURE_MODULES))
def test_the_decision_core_reads_no_clock(module: str) -> None:
    assert clock_reads(PURE_MODULES[module].read_text()) == set()


def test_decide_neither_logs_nor_prints() -> None:
    source = PURE_MODULES["reconcile.decide"].read_text()
    calls = {
        node.func.id
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not calls & {"print", "open", "input"}
    assert not {"logging", "structlog"} & {
        name.split(".")[0] for name in imported_modules(source, "reconcile")
    }


def test_the_import_check_catches_third_party_and_other_first_party_imports() -> None:
    source = "import requests\nfrom ledger.sql import SqlLedger\nfrom . import tasks\n"
    assert impure_imports(source) == {"requests", "ledger.sql", "reconcile"}
    assert impure_imports("from reconcile.engine import act\n") == {"reconcile.engine"}


def test_the_import_check_accepts_the_standard_library_and_the_value_types() -> None:
    source = "from __future__ import annotations\nimport enum\nfrom .model import Entry\n"
    assert impure_imports(source) == set()


def test_the_clock_check_catches_every_way_of_reading_the_time() -> None:
    source = (
        "import time\nfrom datetime import datetime, date\nfrom time import monotonic\n"
        "a = datetime.now()\nb = datetime.utcnow()\nc = time.time()\nd = date.today()\n"
    )
    assert clock_reads(source) == {"now", "utcnow", "time", "today", "monotonic"}
