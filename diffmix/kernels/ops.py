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
  (:mod:`diffmix.functional._dynamics_fused`, :mod:`diffmix.kernels._triton_dynamics`);
- ``diffmix::limiter_envelope`` / ``diffmix::limiter_envelope_backward``: the limiter's
  true-peak envelope, and ``diffmix::limiter_ramp`` / ``diffmix::limiter_ramp_backward``:
  its lookahead ramp (:mod:`diffmix.functional._peak_kernels`,
  :mod:`diffmix.kernels._triton_peaks`).

The ``"torch"`` backend is composite PyTorch code and needs no op.

The ops are defined on a :class:`torch.library.Library` directly (:func:`_op`) rather than
with ``torch.library.custom_op``: the latter wraps every implementation in
``torch._disable_dynamo``, which imports ``torch._dynamo`` (about 0.7 s) on the first call
in every process, compiled or not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

_LIB = torch.library.Library("diffmix", "DEF")


def _op(name: str) -> Callable[[Callable[..., Any]], torch._ops.OpOverload]:
    """Define ``diffmix::<name>`` with the decorated function's signature (no argument is
    mutated) and implement it by that function on every device; returns the op."""

    def define(fn: Callable[..., Any]) -> torch._ops.OpOverload:
        _LIB.define(name + torch.library.infer_schema(fn, mutates_args=()))
        _LIB.impl(name, fn, "CompositeExplicitAutograd")
        op = getattr(torch.ops.diffmix, name).default
        op.__doc__ = fn.__doc__
        return op

    return define


def _fake(op: torch._ops.OpOverload) -> Callable[[Callable[..., Any]], Any]:
    """Register the decorated function as ``op``'s shape-only implementation."""
    return torch.library.register_fake(op, lib=_LIB)


def _autograd(op: torch._ops.OpOverload, backward: Callable[..., Any], setup: Callable[..., Any]) -> None:
    torch.library.register_autograd(op, backward, setup_context=setup, lib=_LIB)


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
@_op("smooth")
def smooth(g: Tensor, a_down: Tensor, a_up: Tensor, hold: Tensor, init: Tensor, holds: bool,
           store: bool, backend: str) -> tuple[Tensor, Tensor]:
    """Branching smoother over ``(rows, T)``: ``(y, mode)``; ``mode`` (the branch taken per
    sample, for the backward) is ``(1, 1)`` unless ``store``."""
    triton_ops = _kernels(backend)
    if triton_ops is not None:
        return triton_ops.smooth_forward(g, a_down, a_up, hold, init, store, holds)
    from diffmix.functional._dynamics_kernels import smooth_forward_numba

    return smooth_forward_numba(g, a_down, a_up, hold, init, store)


@_fake(smooth)
def _(g, a_down, a_up, hold, init, holds, store, backend):  # noqa: ANN001, ANN202
    mode = g.new_empty(g.shape, dtype=torch.uint8) if store else _no_store(g, torch.uint8)
    return torch.empty_like(g), mode


@_op("smooth_backward")
def smooth_backward(gy: Tensor, g: Tensor, y: Tensor, mode: Tensor, a_down: Tensor,
                    a_up: Tensor, init: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(dg, da_down, da_up)`` from the decisions ``mode`` the forward recorded."""
    triton_ops = _kernels(backend)
    if triton_ops is not None:
        return triton_ops.smooth_backward(gy, g, y, mode, a_down, a_up, init)
    from diffmix.functional._dynamics_kernels import smooth_backward_numba

    return smooth_backward_numba(gy, g, y, mode, a_down, a_up, init)


@_fake(smooth_backward)
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


_autograd(smooth, _smooth_grad, _smooth_setup)


# --------------------------------------------------------------------------- compressor/expander
@_op("dynamics")
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


@_fake(dynamics)
def _(x, side, params, hold, kind, mean, lookahead, amp, store, backend):  # noqa: ANN001, ANN202
    rows, _, n = x.shape
    if store:
        return torch.empty_like(x), x.new_empty((rows, n + lookahead)), x.new_empty(
            (rows, n + lookahead), dtype=torch.uint8)
    return torch.empty_like(x), _no_store(x, x.dtype), _no_store(x, torch.uint8)


@_op("dynamics_backward")
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


@_fake(dynamics_backward)
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


_autograd(dynamics, _dynamics_grad, _dynamics_setup)


# --------------------------------------------------------------------------- limiter
def _peak_kernels(backend: str):  # noqa: ANN202
    triton_ops = _kernels(backend)
    if triton_ops is not None:
        return triton_ops
    from diffmix.functional import _peak_kernels

    return _peak_kernels


@_op("limiter_envelope")
def limiter_envelope(x: Tensor, taps: Tensor, want_code: bool, backend: str) -> tuple[Tensor, Tensor]:
    """True-peak level ``(B, 1, T)`` of ``x`` ``(B, C, T)`` with the interpolator ``taps``
    ``(phases, K)``, and the winner per sample ``(B, T)`` int32 (``(1, 1)`` unless
    ``want_code``) that the backward replays."""
    return _peak_kernels(backend).envelope_forward(x, taps, want_code)


@_fake(limiter_envelope)
def _(x, taps, want_code, backend):  # noqa: ANN001, ANN202
    b, _, t = x.shape
    code = x.new_empty((b, t), dtype=torch.int32) if want_code else _no_store(x, torch.int32)
    return x.new_empty((b, 1, t)), code


@_op("limiter_envelope_backward")
def limiter_envelope_backward(grad: Tensor, x: Tensor, taps: Tensor, code: Tensor,
                              backend: str) -> Tensor:
    """``dx`` ``(B, C, T)`` from the level's gradient ``(B, 1, T)``."""
    return _peak_kernels(backend).envelope_backward(grad, x, taps, code)


@_fake(limiter_envelope_backward)
def _(grad, x, taps, code, backend):  # noqa: ANN001, ANN202
    return torch.empty_like(x)


def _envelope_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    x, taps, _want, backend = inputs
    _level, code = output
    ctx.backend = backend
    ctx.mark_non_differentiable(code)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, taps, code)


def _envelope_grad(ctx, grad, _gcode):  # noqa: ANN001, ANN202
    if grad is None:
        return None, None, None, None
    x, taps, code = ctx.saved_tensors
    return limiter_envelope_backward(grad, x, taps, code, ctx.backend), None, None, None


_autograd(limiter_envelope, _envelope_grad, _envelope_setup)


@_op("limiter_ramp")
def limiter_ramp(required: Tensor, lookahead: int, backend: str) -> tuple[Tensor, Tensor]:
    """The limiter's lookahead ramp over ``(rows, T)`` and, per window ``i < T + L``, the
    sample holding its minimum (int64, ``-1`` for the padding), for the backward."""
    return _peak_kernels(backend).ramp_forward(required, lookahead)


@_fake(limiter_ramp)
def _(required, lookahead, backend):  # noqa: ANN001, ANN202
    rows, t = required.shape
    return torch.empty_like(required), required.new_empty((rows, t + lookahead), dtype=torch.int64)


@_op("limiter_ramp_backward")
def limiter_ramp_backward(grad: Tensor, arg: Tensor, lookahead: int, backend: str) -> Tensor:
    """``drequired`` ``(rows, T)``."""
    return _peak_kernels(backend).ramp_backward(grad, arg, lookahead)


@_fake(limiter_ramp_backward)
def _(grad, arg, lookahead, backend):  # noqa: ANN001, ANN202
    return torch.empty_like(grad)


def _ramp_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    _required, lookahead, backend = inputs
    _out, arg = output
    ctx.lookahead, ctx.backend = lookahead, backend
    ctx.mark_non_differentiable(arg)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(arg)


def _ramp_grad(ctx, grad, _garg):  # noqa: ANN001, ANN202
    if grad is None:
        return None, None, None
    (arg,) = ctx.saved_tensors
    return limiter_ramp_backward(grad.contiguous(), arg, ctx.lookahead, ctx.backend), None, None


_autograd(limiter_ramp, _ramp_grad, _ramp_setup)
