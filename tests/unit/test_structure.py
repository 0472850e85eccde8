"""The shape of the code: imports point one way, each table family has one owner, no circles.

DESIGN.md: ``worker -> reconcile -> ledger``; every ``recon_*`` table family has one owner
module holding all of its SQL; listings and reports read through ``reconcile/views.py``,
which only reads.  These tests read the source (ast), they import nothing they check.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ledger", "reconcile", "worker")

# Table name in reconcile/tables.py (or ledger/sql.py) -> the one module that may use it.
OWNERS = {
    "reconcile.tables": {
        "inbox": "reconcile.inbox",
        "runs": "reconcile.runs",
        "audit": "reconcile.runs",
        "cursors": "reconcile.runs",
        "tickets": "reconcile.tickets",
        "deliveries": "reconcile.tickets",
        "customer_updates": "reconcile.tickets",
        "locks": "worker.locks",
        "customers": "reconcile.customers",
        "customer_keys": "reconcile.customers",
        "customer_payments": "reconcile.customers",
    },
}
# Besides its owner, who may import a table module at all, and what from it.
READERS = {
    "reconcile.views": {"inbox", "runs", "audit", "tickets", "deliveries", "customer_updates"}
}
REGISTRY = {"worker.schema": {"metadata"}}
# Importing the names of a table module's MetaData is how the schema is assembled.
SCHEMA_NAMES = {"metadata"}


# Marks an entry that stands for "the name imported may be a module of its own".
SUBMODULE = "<submodule>"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def production_modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            yield module_name(path), path


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def imports_of(
    source: str, module: str, *, is_package: bool = False, top_level_only: bool = False
) -> list[tuple[str, set[str]]]:
    """(imported module, names taken from it) for every import in ``source``."""
    tree = ast.parse(source)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: list[tuple[str, set[str]]] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found.extend((alias.name, set()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            names = {alias.name for alias in node.names}
            found.append((target, names))
            # ``from reconcile import tables`` imports the module itself (``SUBMODULE``).
            found.extend((f"{target}.{n}", {SUBMODULE}) for n in names)
        elif top_level_only and isinstance(node, ast.If):
            # ``if TYPE_CHECKING:`` imports never run; anything else at top level does.
            test = node.test
            if not (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"):
                for child in node.body:
                    found.extend(imports_of(ast.unparse(child), module, is_package=is_package))
    return found


def table_violations(module: str, source: str) -> list[str]:
    out = []
    for target, names in imports_of(source, module):
        if target not in OWNERS:
            continue
        owners = OWNERS[target]
        allowed = set(SCHEMA_NAMES) if module in REGISTRY else set()
        allowed |= READERS.get(module, set())
        allowed |= {table for table, owner in owners.items() if owner == module}
        if not names or names == {SUBMODULE}:
            out.append(f"{module} imports the table module {target} whole")
            continue
        for name in sorted(names - allowed):
            out.append(f"{module} uses {target}.{name} (owner: {owners.get(name, '?')})")
    return out


def direction_violations(module: str, source: str) -> list[str]:
    layer = module.split(".")[0]
    forbidden = {"ledger": ("reconcile", "worker"), "reconcile": ("worker",), "worker": ()}
    return [
        f"{module} imports {target}"
        for target, names in imports_of(source, module)
        if target.split(".")[0] in forbidden[layer] and names != {SUBMODULE}
    ]


# -- the rules, on the tree -----------------------------------------------------------------


def test_each_table_family_is_used_only_by_its_owner_module_and_the_views() -> None:
    problems = [
        problem
        for module, path in production_modules()
        for problem in table_violations(module, path.read_text())
    ]
    assert problems == []


def test_imports_point_from_worker_to_reconcile_to_ledger_only() -> None:
    problems = [
        problem
        for module, path in production_modules()
        for problem in direction_violations(module, path.read_text())
    ]
    assert problems == []


def writes_in(source: str, tables: set[str]) -> set[str]:
    """SQL writes: ``insert(t)``/``update(t)``/``delete(t)`` and ``t.insert()``... on tables."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in {"insert", "update", "delete"}:
            found.add(func.id)
        elif (
            isinstance(func, ast.Attribute)
            and func.attr in {"insert", "update", "delete"}
            and isinstance(func.value, ast.Name)
            and func.value.id in tables
        ):
            found.add(f"{func.value.id}.{func.attr}")
        elif isinstance(func, ast.Attribute) and func.attr == "exec_driver_sql":
            found.add("exec_driver_sql")
    return found


def test_the_views_only_read() -> None:
    source = (ROOT / "reconcile" / "views.py").read_text()
    assert writes_in(source, set(OWNERS["reconcile.tables"])) == set()


def test_the_write_check_catches_writes_and_leaves_dicts_alone() -> None:
    source = "tickets.update().values()\nupdate(runs)\nd.update(x)\nc.exec_driver_sql('x')\n"
    assert writes_in(source, {"tickets", "runs"}) == {"tickets.update", "update", "exec_driver_sql"}


def module_graph() -> dict[str, set[str]]:
    """First-party module -> first-party modules it imports when it is itself imported."""
    paths = dict(production_modules())
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        deps = set()
        found = imports_of(
            path.read_text(), module, is_package=path.name == "__init__.py", top_level_only=True
        )
        for target, names in found:
            # ``from pkg import submodule`` needs the submodule, not a finished package.
            submodules = names and all(f"{target}.{n}" in paths for n in names)
            if target in paths and target != module and not submodules:
                deps.add(target)
        graph[module] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_module_imports_itself_round_a_circle() -> None:
    assert find_cycle(module_graph()) is None


@pytest.mark.parametrize("module", ["worker.celery_app", "worker.queue", "worker.intake"])
def test_sending_a_message_does_not_load_the_task_code(module: str) -> None:
    probe = f"import sys, {module}; print('worker.tasks' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "False"


# -- the checks catch what they are for ----------------------------------------------------


def test_the_table_check_catches_sql_outside_the_owner() -> None:
    source = "from reconcile.tables import audit, tickets\n"
    assert table_violations("worker.cli.tickets_cmds", source) == [
        "worker.cli.tickets_cmds uses reconcile.tables.audit (owner: reconcile.runs)",
        "worker.cli.tickets_cmds uses reconcile.tables.tickets (owner: reconcile.tickets)",
    ]
    assert table_violations("reconcile.resolve", "from reconcile import tables\n") == [
        "reconcile.resolve imports the table module reconcile.tables whole"
    ]


def test_the_table_check_lets_owners_and_the_views_through() -> None:
    assert table_violations("reconcile.tickets", "from reconcile.tables import tickets\n") == []
    assert table_violations("reconcile.views", "from reconcile.tables import runs, audit\n") == []


def test_the_direction_check_catches_imports_pointing_back() -> None:
    source = "from worker.settings import Settings\nimport reconcile.model\n"
    assert direction_violations("ledger.sql", source) == [
        "ledger.sql imports worker.settings",
        "ledger.sql imports reconcile.model",
    ]
    assert direction_violations("reconcile.engine", "from worker import metrics\n") == [
        "reconcile.engine imports worker"
    ]


def test_the_cycle_check_finds_the_circle_there_was() -> None:
    # worker/celery_app.py -> worker/tasks.py (beat_schedule) -> worker/queue.py -> back.
    graph = {
        "worker.celery_app": {"worker.tasks"},
        "worker.tasks": {"worker.queue"},
        "worker.queue": {"worker.celery_app"},
    }
    assert find_cycle(graph) == [
        "worker.celery_app",
        "worker.tasks",
        "worker.queue",
        "worker.celery_app",
    ]
