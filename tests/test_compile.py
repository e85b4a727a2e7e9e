"""torch.compile traces the default console (configs/console/default.yaml) as one graph on
the CPU: the hand-written kernels are custom ops with fake and autograd registrations
(diffmix.kernels.ops), so ``fullgraph=True`` holds, forward and backward.

The ``aot_eager`` backend traces both graphs through AOT autograd (fake tensors, the ops'
backward registrations) without Inductor's code generation, which would take minutes here
and adds nothing to what this checks. About 30 s on 2 cores.
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from test_configs import compose_job

from diffmix.checks import input_checks
from diffmix.config import instantiate


def test_default_console_compiles_as_one_graph_forward_and_backward():
    node = OmegaConf.to_container(compose_job("mix").console, resolve=True)
    node.update(tracks=3, track_names=["a", "b", "c"], mono=[False, True, False])
    console = instantiate(OmegaConf.create(node), _convert_="all")
    console.select(["*"])
    x = 0.1 * torch.randn(1, 3, 2, 4410, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(console, fullgraph=True, backend="aot_eager")
    grads = {}
    with input_checks(False):  # a compiled graph holds no NaN scan (a host sync)
        for name, model in [("eager", console), ("compiled", compiled)]:
            console.zero_grad(set_to_none=True)
            y = model(x)
            y.square().sum().backward()
            grads[name] = (y.detach(), {n: p.grad.clone() for n, p in console.named_parameters()
                                        if p.grad is not None})
    (y_eager, g_eager), (y_comp, g_comp) = grads["eager"], grads["compiled"]
    assert (y_comp - y_eager).abs().max() <= 1e-5 * y_eager.abs().max()
    assert g_comp.keys() == g_eager.keys() and len(g_eager) > 30
    # The compiled reverb sizes its tail for the longest RT60 its ranges allow (the eager
    # one for the current RT60), which moves the send/return gradients by ~1e-3 of their
    # size; everything else agrees to float32 rounding of each gradient's scale.
    scale = max(float(g.abs().max()) for g in g_eager.values())
    for name, g in g_eager.items():
        tol = 5e-3 * float(g.abs().max()) + 1e-6 * scale
        assert float((g_comp[name] - g).abs().max()) <= tol, name


def test_mastering_limiter_compiles_as_one_graph_forward_and_backward():
    # The limiter's envelope and ramp are custom ops too: the smooth limiter (what a fit
    # differentiates; the exact step is a host-side render correction) traces whole, and
    # its output and every gradient (input, ceiling, release, drive) equal eager mode.
    from diffmix.effects.dynamics import Limiter

    limiter = Limiter(44100, exact=False).double()
    x = 2.0 * torch.randn(2, 2, 2205, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    compiled = torch.compile(limiter, fullgraph=True, backend="aot_eager")
    outs = {}
    with input_checks(False):
        for name, model in [("eager", limiter), ("compiled", compiled)]:
            leaf = x.clone().requires_grad_()
            params = [p for p in limiter.parameters() if p.requires_grad]
            y = model(leaf)
            grads = torch.autograd.grad(y.square().sum(), [leaf, *params])
            outs[name] = (y.detach(), *grads)
    assert len(outs["eager"]) >= 3
    # AOT autograd reorders the parameter mappings' arithmetic: agreement to ~1e-9 (float64).
    for a, b in zip(outs["compiled"], outs["eager"], strict=True):
        assert float((a - b).abs().max()) <= 1e-7 * max(1.0, float(b.abs().max()))
