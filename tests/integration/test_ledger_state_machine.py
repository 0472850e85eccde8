"""Random sequences of ledger operations; the invariants must hold after every step."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ledger.errors import LedgerError, StateError
from ledger.model import NewTransaction, TxnStatus
from ledger.sql import SqlLedger

pytestmark = pytest.mark.integration

REFS = [f"pi_{i}" for i in range(6)]
WALLETS = ["wallet:a", "wallet:b", "wallet:c"]


def make_machine(engine):
    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            # One transaction per example, rolled back at the end: isolation without a
            # schema per example.
            self.conn = engine.connect()
            self.outer = self.conn.begin()
            self.ledger = SqlLedger(self.conn)
            self.model: dict[str, dict[str, int]] = {}

        def teardown(self) -> None:
            self.outer.rollback()
            self.conn.close()

        def _step(self, fn):
            sp = self.conn.begin_nested()
            try:
                out = fn()
            except LedgerError:
                sp.rollback()
                raise
            sp.commit()
            return out

        @rule(
            ref=st.sampled_from(REFS),
            amount=st.integers(1, 10_000),
            dest=st.sampled_from(WALLETS),
            inflight=st.booleans(),
        )
        def create(self, ref, amount, dest, inflight):
            new = NewTransaction(ref, "@stripe", dest, amount, "USD", inflight=inflight)
            try:
                txn = self._step(lambda: self.ledger.create(new))
            except LedgerError:
                assert ref in self.model
                return
            if ref not in self.model:
                self.model[ref] = {
                    "amount": amount,
                    "committed": 0 if inflight else amount,
                    "voided": 0,
                }
            assert txn.amount == self.model[ref]["amount"]

        @precondition(lambda self: self.model)
        @rule(data=st.data(), part=st.one_of(st.none(), st.integers(1, 12_000)))
        def commit(self, data, part):
            ref = data.draw(st.sampled_from(sorted(self.model)))
            m = self.model[ref]
            left = m["amount"] - m["committed"] - m["voided"]
            try:
                txn = self._step(lambda: self.ledger.commit(ref, part))
            except StateError:
                assert left == 0 or (part is not None and part > left) or m["voided"]
                return
            take = left if part is None else part
            assert take <= left
            m["committed"] += take
            assert txn.committed_amount == m["committed"]

        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def void(self, data):
            ref = data.draw(st.sampled_from(sorted(self.model)))
            m = self.model[ref]
            left = m["amount"] - m["committed"] - m["voided"]
            try:
                txn = self._step(lambda: self.ledger.void(ref))
            except StateError:
                assert left == 0 and m["voided"] == 0
                return
            m["voided"] += left
            assert txn.voided_amount == m["voided"]
            if m["committed"] == 0:
                assert txn.status is TxnStatus.VOID

        @invariant()
        def invariants_hold(self):
            assert self.ledger.check_invariants() == []

        @invariant()
        def balances_match_the_model(self):
            wallets = {b.name: b for b in self.ledger.balances()}
            for wallet in WALLETS:
                expected = sum(
                    m["committed"]
                    for ref, m in self.model.items()
                    if self.ledger.get(ref).destination == wallet
                )
                assert (wallets[wallet].balance if wallet in wallets else 0) == expected

    return LedgerMachine


@pytest.mark.slow
def test_random_operation_sequences_keep_the_invariants_on_postgresql(pg_engine):
    machine = make_machine(pg_engine)
    machine.TestCase.settings = settings(
        max_examples=40,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    machine.TestCase().runTest()


def test_random_operation_sequences_keep_the_invariants_on_sqlite(sqlite_engine):
    machine = make_machine(sqlite_engine)
    machine.TestCase.settings = settings(
        max_examples=25,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    machine.TestCase().runTest()
