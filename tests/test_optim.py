"""diffmix.optim.Adam: torch's Adam step for step, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from diffmix.optim import Adam


def _run(make, steps: int = 40) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 29)), torch.nn.Parameter(torch.randn(6, dtype=torch.float64))]
    opt = make(params)
    for k in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = sum(((p.sin() - 0.3) * (k % 5 + 1)).square().sum() for p in params[:1 + k % 2])
        loss.backward()  # the second tensor has no gradient on even steps: skipped, as torch skips it
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("options", [{"lr": 0.05}, {"lr": 0.2, "betas": (0.8, 0.99), "eps": 1e-6}])
def test_adam_steps_equal_torch_adam_bit_for_bit(options):
    ours = _run(lambda p: Adam(p, **options))
    theirs = _run(lambda p: torch.optim.Adam(p, **options))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_adam_other_options_step_through_torch():
    options = {"lr": 0.05, "weight_decay": 0.01, "amsgrad": True}
    ours = _run(lambda p: Adam(p, **options))
    theirs = _run(lambda p: torch.optim.Adam(p, **options))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_adam_state_dict_round_trips_and_schedulers_accept_it():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Adam([p], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    p.sum().backward()
    opt.step()
    sched.step()
    again = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    again.load_state_dict(opt.state_dict())
    assert torch.equal(again.state_dict()["state"][0]["exp_avg"], opt.state[p]["exp_avg"])


def test_adam_does_not_import_dynamo():
    # Why it exists: torch's optimisers import torch._dynamo (and sympy), ~0.6-0.9 s of CPU
    # in every reference master; torch.optim.Adam does, in the same script.
    script = (
        "import sys, torch\n"
        "from diffmix.optim import Adam\n"
        "p = torch.nn.Parameter(torch.ones(3))\n"
        "opt = {cls}([p], lr=0.1)\n"
        "for _ in range(3):\n"
        "    opt.zero_grad(); p.square().sum().backward(); opt.step()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = {cls: subprocess.run([sys.executable, "-c", script.format(cls=cls)], capture_output=True, text=True,
                               check=True).stdout.strip()
           for cls in ("Adam", "torch.optim.Adam")}
    assert out == {"Adam": "False", "torch.optim.Adam": "True"}
