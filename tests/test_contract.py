"""The effect contract over every exported effect (the checks and cases: ``contract.py``).

The registry is driven by ``diffmix.effects.__all__``: an effect exported without a case
fails :func:`test_every_exported_effect_has_a_case`.
"""

from __future__ import annotations

import pytest
import torch
from contract import CASES, NOT_EFFECTS, Case, Contract, uncovered

import diffmix.effects
from diffmix.effects import Effect, Gain

pytestmark = pytest.mark.usefixtures("_single_thread")


@pytest.mark.parametrize("case", sorted(CASES))
class TestContract(Contract):
    pass


def test_every_exported_effect_has_a_case():
    exported = set(diffmix.effects.__all__)
    missing = uncovered(diffmix.effects.__all__)
    assert not missing, f"exported effects without a contract case in tests/contract.py: {sorted(missing)}"
    built = {c.effect_class().__name__ for c in CASES.values()}
    stray = built - exported
    assert built | set(NOT_EFFECTS) == exported, f"cases for effects that are not exported: {stray}"
    assert set(NOT_EFFECTS) <= exported


def test_an_effect_exported_without_a_case_is_caught(monkeypatch):
    class Doubler(Effect):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    monkeypatch.setattr(diffmix.effects, "Doubler", Doubler, raising=False)
    monkeypatch.setattr(diffmix.effects, "__all__", [*diffmix.effects.__all__, "Doubler"])
    assert uncovered(diffmix.effects.__all__) == {"Doubler"}
    # ...and a case for it closes the gap.
    cases = {**CASES, "doubler": Case(lambda v: Doubler(44100), ({}, {}), params=False)}
    assert uncovered(diffmix.effects.__all__, cases) == set()


def test_each_case_builds_the_effect_its_values_describe():
    """Both settings of a case build, with the same keys (the batch check stacks them)."""
    for name, c in CASES.items():
        assert set(c.values[0]) == set(c.values[1]), name
        assert isinstance(c.make(dict(c.values[1])), type(c.make(dict(c.values[0])))), name
    assert isinstance(CASES["gain"].make({}), Gain)
