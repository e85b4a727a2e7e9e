"""Properties every effect must have, as reusable assertions.

Each family's test file builds its effects and calls these inside the dtype x device
matrix from conftest.py:

- :func:`assert_gradcheck`: float64 gradcheck through every differentiable parameter
  (through its unconstrained ``raw`` tensor, so the range mapping is checked too) and x;
- :func:`assert_batch_consistent`: items run alone equal the batched run, with per-item
  parameter values;
- :func:`assert_not_in_place`: the input is never modified;
- :func:`assert_finite_at_extremes`: finite outputs and gradients at every parameter's
  min and max, on noise and on digital silence.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from diffmix.config import load_preset


def noise(batch: int, channels: int, n: int, *, dtype=torch.float64, device="cpu", seed=0) -> Tensor:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    return (0.25 * torch.randn(batch, channels, n, generator=g, dtype=torch.float64)).to(
        dtype=dtype, device=device
    )


def _raw_params(effect: nn.Module) -> dict[str, Tensor]:
    return {
        name: p for name, p in effect.named_parameters() if name.endswith(".raw") and p.requires_grad
    }


def assert_gradcheck(
    effect: nn.Module, x: Tensor, *, params: bool = True, wrt_input: bool = True, **kw
) -> None:
    """gradcheck in float64 w.r.t. the input and every differentiable raw parameter."""
    effect = copy.deepcopy(effect).double()
    x = x.double().detach().requires_grad_(wrt_input)
    raws = {k: v.detach().clone().requires_grad_(True) for k, v in _raw_params(effect).items()}
    if not params:
        raws = {}
    names = list(raws)

    def run(inp: Tensor, *values: Tensor) -> Tensor:
        return functional_call(effect, dict(zip(names, values, strict=True)), (inp,))

    inputs = (x, *raws.values())
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, **kw)


def assert_batch_consistent(
    make: Callable[[dict], nn.Module], values: list[dict], x: Tensor, *, atol: float = 1e-6
) -> None:
    """``make(values_i)`` on item i alone equals a batched effect with stacked values.

    Args:
        make: builds an effect from a dict of physical parameter values.
        values: one dict per batch item (same keys).
        x: ``(len(values), C, T)`` audio.
    """
    stacked = {
        k: torch.stack([torch.as_tensor(v[k], dtype=torch.float64) for v in values])
        for k in values[0]
    }
    batched = make(stacked).to(dtype=x.dtype, device=x.device)
    with torch.no_grad():
        y = batched(x)
        for i, item_values in enumerate(values):
            alone = make(item_values).to(dtype=x.dtype, device=x.device)(x[i : i + 1])
            scale = alone.abs().max().clamp_min(1e-3)
            err = (y[i : i + 1] - alone).abs().max() / scale
            assert err <= atol, f"item {i} differs from the batched run by {err:.3g} (relative)"


def assert_not_in_place(effect: nn.Module, x: Tensor) -> None:
    before = x.clone()
    effect(x)
    assert torch.equal(x, before), "the effect modified its input in place"


def assert_finite_at_extremes(effect: nn.Module, x: Tensor) -> None:
    """Every differentiable parameter at its min and at its max: finite output and grads."""
    specs = {n: m for n, m in effect.named_modules() if hasattr(m, "spec") and hasattr(m, "raw")}
    assert specs, "effect has no parameters to test"
    for signal in (x, torch.zeros_like(x)):
        for path, bp in specs.items():
            for bound in (bp.spec.min, bp.spec.max):
                e = copy.deepcopy(effect)
                target = e.get_submodule(path)
                target.set(torch.full_like(target.anchor, bound))
                inp = signal.detach().clone().requires_grad_(True)
                y = e(inp)
                assert torch.isfinite(y).all(), f"{path}={bound}: non-finite output"
                y.square().sum().backward()
                assert torch.isfinite(inp.grad).all(), f"{path}={bound}: non-finite input grad"
                for name, p in e.named_parameters():
                    if p.grad is not None:
                        assert torch.isfinite(p.grad).all(), f"{path}={bound}: {name} grad"


def assert_preset_round_trip(effect: nn.Module, x: Tensor, tmp_path) -> None:  # noqa: ANN001
    """save -> load -> identical audio."""
    from diffmix.config import save_preset

    path = tmp_path / "preset.yaml"
    save_preset(effect, path)
    loaded = load_preset(path).to(dtype=x.dtype, device=x.device)
    with torch.no_grad():
        assert torch.equal(effect(x), loaded(x)), "preset round trip changed the audio"
