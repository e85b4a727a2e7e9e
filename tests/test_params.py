"""The parameter system: bounded mapping, exact presets, validation."""

from __future__ import annotations

import pytest
import torch

from diffmix.params import BoundedParam, ParamSpec

SPECS = [
    ParamSpec("gain_db", -80.0, 24.0, 0.0),
    ParamSpec("freq_hz", 20.0, 20000.0, 1000.0, scale="log"),
    ParamSpec("ratio", 1.0, 20.0, 4.0, scale="log"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_no_optimiser_step_leaves_the_range(spec):
    bp = BoundedParam(spec, spec.default, "Test")
    opt = torch.optim.SGD(bp.parameters(), lr=1e6)
    for direction in (1.0, -1.0):
        for _ in range(3):
            opt.zero_grad()
            (direction * bp()).sum().backward()
            opt.step()
            value = float(bp().detach())
            assert spec.min <= value <= spec.max
        if direction > 0:
            # The steps really moved it: pushed down this hard, it sits on the bound (a
            # value stuck at the default would pass the range check above).
            assert value == pytest.approx(spec.min, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_value_is_exact_until_the_raw_tensor_changes(spec):
    for value in (spec.min, spec.default, spec.max, 0.1 * spec.min + 0.9 * spec.max):
        bp = BoundedParam(spec, value, "Test")
        assert float(bp().detach()) == float(torch.tensor(value, dtype=torch.float32))
        bp.double()
        assert float(bp().detach()) == value
        # An optimiser step changes raw in place; from then on the value is the mapping's,
        # not the stored anchor.
        with torch.no_grad():
            bp.raw.sub_(0.5)
        moved = float(bp().detach())
        assert moved == pytest.approx(float(spec.from_raw(bp.raw.detach())), rel=1e-12)
        assert moved != value


def test_gradient_flows_and_is_finite_at_bounds():
    spec = SPECS[1]
    for value in (spec.min, spec.max):
        bp = BoundedParam(spec, value, "Test")
        bp().backward()
        assert bp.raw.grad is not None and torch.isfinite(bp.raw.grad).all()
        assert float(bp.raw.grad) != 0.0


def test_log_scale_is_geometric():
    spec = SPECS[1]
    mid = spec.from_raw(torch.zeros((), dtype=torch.float64))
    assert float(mid) == pytest.approx((20.0 * 20000.0) ** 0.5)


def test_out_of_range_and_nan_values_are_refused():
    with pytest.raises(ValueError, match=r"Comp: ratio=0.5 is outside its range \[1, 20\]"):
        BoundedParam(SPECS[2], 0.5, "Comp")
    with pytest.raises(ValueError, match="Comp: ratio=nan is outside"):
        BoundedParam(SPECS[2], float("nan"), "Comp")


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="log scale needs min > 0"):
        ParamSpec("freq_hz", 0.0, 10.0, 1.0, scale="log")
    with pytest.raises(ValueError, match="default outside"):
        ParamSpec("gain_db", 0.0, 10.0, 11.0)
