"""The hand-written kernels as ``torch.library`` custom ops.

Each op takes the resolved backend (``"numba"`` or ``"triton"``, from
:func:`diffmix.kernels.backend.resolve`) as a string argument and has

- a fake implementation (shapes only), so ``torch.compile`` traces through it without a
  graph break and without running it;
- an autograd registration whose backward is itself an op (so the backward graph is
  traceable too), replaying what the forward recorded.

Ops:

- ``diffmix::smooth`` / ``diffmix::smooth_backward``: the branching smoother
  (:mod:`diffmix.functional._dynamics_kernels`);
- ``diffmix::dynamics`` / ``diffmix::dynamics_backward``: the fused compressor/expander
  (:mod:`diffmix.functional._dynamics_fused`, :mod:`diffmix.kernels._triton_dynamics`).

The ``"torch"`` backend is composite PyTorch code and needs no op.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _kernels(backend: str):  # noqa: ANN202
    """The module implementing ``backend``, imported on first use."""
    if backend == "triton":
        from diffmix.kernels import triton_ops

        return triton_ops
    if backend != "numba":
        raise ValueError(f"diffmix ops: no kernel for backend {backend!r}")
    return None


def _no_store(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.new_empty((1, 1), dtype=dtype)


# --------------------------------------------------------------------------- smoother
@torch.library.custom_op("diffmix::smooth", mutates_args=())
def smooth(g: Tensor, a_down: Tensor, a_up: Tensor, hold: Tensor, init: Tensor, holds: bool,
           store: bool, backend: str) -> tuple[Tensor, Tensor]:
    """Branching smoother over ``(rows, T)``: ``(y, mode)``; ``mode`` (the branch taken per
    sample, for the backward) is ``(1, 1)`` unless ``store``."""
    triton_ops = _kernels(backend)
    if triton_ops is not None:
        return triton_ops.smooth_forward(g, a_down, a_up, hold, init, store, holds)
    from diffmix.functional._dynamics_kernels import smooth_forward_numba

    return smooth_forward_numba(g, a_down, a_up, hold, init, store)


@smooth.register_fake
def _(g, a_down, a_up, hold, init, holds, store, backend):  # noqa: ANN001, ANN202
    mode = g.new_empty(g.shape, dtype=torch.uint8) if store else _no_store(g, torch.uint8)
    return torch.empty_like(g), mode


@torch.library.custom_op("diffmix::smooth_backward", mutates_args=())
def smooth_backward(gy: Tensor, g: Tensor, y: Tensor, mode: Tensor, a_down: Tensor,
                    a_up: Tensor, init: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(dg, da_down, da_up)`` from the decisions ``mode`` the forward recorded."""
    triton_ops = _kernels(backend)
    if triton_ops is not None:
        return triton_ops.smooth_backward(gy, g, y, mode, a_down, a_up, init)
    from diffmix.functional._dynamics_kernels import smooth_backward_numba

    return smooth_backward_numba(gy, g, y, mode, a_down, a_up, init)


@smooth_backward.register_fake
def _(gy, g, y, mode, a_down, a_up, init, backend):  # noqa: ANN001, ANN202
    return torch.empty_like(g), torch.empty_like(a_down), torch.empty_like(a_up)


def _smooth_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    g, a_down, a_up, _hold, init, _holds, _store, backend = inputs
    y, mode = output
    ctx.backend = backend
    ctx.mark_non_differentiable(mode)
    ctx.set_materialize_grads(False)  # no full-length zeros for the unused outputs
    ctx.save_for_backward(g, y, mode, a_down, a_up, init)


def _smooth_grad(ctx, gy, _gmode):  # noqa: ANN001, ANN202
    if gy is None:
        return None, None, None, None, None, None, None, None
    g, y, mode, a_down, a_up, init = ctx.saved_tensors
    gg, gad, gau = smooth_backward(gy, g, y, mode, a_down, a_up, init, ctx.backend)
    return gg, gad, gau, None, None, None, None, None


smooth.register_autograd(_smooth_grad, setup_context=_smooth_setup)


# --------------------------------------------------------------------------- compressor/expander
@torch.library.custom_op("diffmix::dynamics", mutates_args=())
def dynamics(x: Tensor, side: Tensor | None, params: Tensor, hold: Tensor, kind: int,
             mean: bool, lookahead: int, amp: bool, store: bool,
             backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Fused compressor (``kind`` 0) or expander (1) over gain rows ``(rows, nc, T)``:
    ``(out, y, mode)``; see :func:`diffmix.functional._dynamics_fused.fused_forward`."""
    hold = hold.contiguous()
    triton_ops = _kernels(backend)
    if triton_ops is not None:
        return triton_ops.dynamics_forward(x, side, params, hold, kind, mean, lookahead, amp, store)
    from diffmix.functional._dynamics_fused import fused_forward

    return fused_forward(x, side, params, hold, kind, mean, lookahead, amp, store)


@dynamics.register_fake
def _(x, side, params, hold, kind, mean, lookahead, amp, store, backend):  # noqa: ANN001, ANN202
    rows, _, n = x.shape
    if store:
        return torch.empty_like(x), x.new_empty((rows, n + lookahead)), x.new_empty(
            (rows, n + lookahead), dtype=torch.uint8)
    return torch.empty_like(x), _no_store(x, x.dtype), _no_store(x, torch.uint8)


@torch.library.custom_op("diffmix::dynamics_backward", mutates_args=())
def dynamics_backward(gout: Tensor, x: Tensor, side: Tensor | None, params: Tensor, y: Tensor,
                      mode: Tensor, kind: int, mean: bool, lookahead: int, amp: bool,
                      backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dside, dparams)``; ``dside`` is empty when ``side`` is ``None``."""
    triton_ops = _kernels(backend)
    if triton_ops is not None:
        return triton_ops.dynamics_backward(gout, x, side, params, y, mode, kind, mean,
                                            lookahead, amp)
    from diffmix.functional._dynamics_fused import fused_backward

    return fused_backward(gout, x, side, params, y, mode, kind, mean, lookahead, amp)


@dynamics_backward.register_fake
def _(gout, x, side, params, y, mode, kind, mean, lookahead, amp, backend):  # noqa: ANN001, ANN202
    gside = x.new_empty(0) if side is None else torch.empty_like(side)
    return torch.empty_like(x), gside, torch.empty_like(params)


def _dynamics_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    x, side, params, _hold, kind, mean, lookahead, amp, _store, backend = inputs
    _out, y, mode = output
    # y and mode are what backward replays, not results: no gradient flows into them, and
    # none is materialised (a full-length buffer of zeros per call otherwise).
    ctx.mark_non_differentiable(y, mode)
    ctx.set_materialize_grads(False)
    ctx.opts = (kind, mean, lookahead, amp, backend)
    ctx.has_side = side is not None
    ctx.save_for_backward(x, side, params, y, mode)


def _dynamics_grad(ctx, gout, _gy, _gmode):  # noqa: ANN001, ANN202
    if gout is None:
        return None, None, None, None, None, None, None, None, None, None
    x, side, params, y, mode = ctx.saved_tensors
    kind, mean, lookahead, amp, backend = ctx.opts
    gx, gside, gparams = dynamics_backward(gout, x, side if ctx.has_side else None, params, y,
                                           mode, kind, mean, lookahead, amp, backend)
    return gx, (gside if ctx.has_side else None), gparams, None, None, None, None, None, None, None


dynamics.register_autograd(_dynamics_grad, setup_context=_dynamics_setup)
