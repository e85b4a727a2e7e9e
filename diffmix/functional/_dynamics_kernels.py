"""The branching one-pole smoother behind every dynamics effect, with an exact backward.

The recursion, per row ``r`` of a ``(rows, time)`` target ``g`` with state ``y``::

    falling:  g[t] <  y[t-1]   ->  y[t] = a_down * y[t-1] + (1 - a_down) * g[t]
    rising:   g[t] >= y[t-1]   ->  y[t] = a_up   * y[t-1] + (1 - a_up)   * g[t]
    hold:     the first ``hold`` samples of a falling run keep y[t] = y[t-1]

A compressor smooths its gain in dB with ``a_down`` = attack (more reduction) and
``a_up`` = release; a gate uses ``a_down`` = release (closing), ``a_up`` = attack and a
hold; a limiter uses ``a_down = 0`` (instant) and ``a_up`` = release.

Once the branch taken at every sample is fixed, the recursion is *linear* in ``g``,
``a_down`` and ``a_up``: ``y[t] = c[t] y[t-1] + (1 - c[t]) g[t]``. Its adjoint is the
time-reversed recursion ``lam[t] = dL/dy[t] + c[t+1] lam[t+1]``, giving
``dL/dg[t] = (1 - c[t]) lam[t]`` and ``dL/dc[t] = lam[t] (y[t-1] - g[t])``, summed per
branch into ``dL/da_down`` and ``dL/da_up``. The forward pass records the branch (one
byte per sample) so the backward pass replays exactly the decisions it made; the
gradient is exact wherever the decisions are locally constant (everywhere but a
measure-zero set of ties).

Backends (chosen by :func:`diffmix.kernels.backend.resolve`):

- ``"numba"`` (CPU): numba kernels, parallel over rows, compiled once and cached on disk;
- ``"triton"`` (CUDA; CPU tensors under Triton's interpreter): block scans that settle the
  decisions block by block (:mod:`diffmix.kernels._triton_dynamics`);
- ``"torch"`` (any device): a pure-PyTorch solver. The linear recursion for fixed
  decisions is solved with a log-depth parallel scan; the decisions are then re-derived
  from the result and the two steps repeat until they agree. Each pass fixes at least
  the first wrong decision, so it terminates, and in practice it takes a handful of
  passes. At convergence the result *is* the recursion's unique solution, so it matches
  the CPU kernel to rounding (the test suite checks this on CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from diffmix.kernels import ops
from diffmix.kernels.backend import numba_available, resolve

# Whether the numba kernels exist at all; which backend runs is decided per call by
# diffmix.kernels.backend.resolve (DIFFMIX_BACKEND / DIFFMIX_DISABLE_NUMBA are read there).
HAVE_NUMBA = numba_available()
if HAVE_NUMBA:
    import numba

RISING, FALLING, HOLD = 0, 1, 2
FLOOR_POWER = 1e-20  # detector power of digital silence (-200 dB): finite log and gradient


if HAVE_NUMBA:

    @numba.njit(cache=True, nogil=True)
    def _smooth_fwd_nb(r0, r1, g, a_down, a_up, hold, init, y, mode, store):  # noqa: ANN001, ANN202
        n = g.shape[1]
        for r in range(r0, r1):
            ad = a_down[r]
            au = a_up[r]
            h = hold[r]
            prev = init[r]
            run = 0
            for t in range(n):
                gt = g[r, t]
                if gt < prev:
                    run += 1
                    if run <= h:
                        m = HOLD
                    else:
                        m = FALLING
                        prev = gt + ad * (prev - gt)
                else:
                    run = 0
                    m = RISING
                    prev = gt + au * (prev - gt)
                y[r, t] = prev
                if store:
                    mode[r, t] = m

    @numba.njit(cache=True, nogil=True)
    def _smooth_bwd_nb(r0, r1, gy, g, y, mode, a_down, a_up, init, gg, gad, gau):  # noqa: ANN001, ANN202
        n = g.shape[1]
        for r in range(r0, r1):
            ad = a_down[r]
            au = a_up[r]
            carry = 0.0
            sad = 0.0
            sau = 0.0
            for t in range(n - 1, -1, -1):
                lam = gy[r, t] + carry
                yp = y[r, t - 1] if t > 0 else init[r]
                m = mode[r, t]
                if m == FALLING:
                    gg[r, t] = (1.0 - ad) * lam
                    sad += lam * (yp - g[r, t])
                    carry = ad * lam
                elif m == RISING:
                    gg[r, t] = (1.0 - au) * lam
                    sau += lam * (yp - g[r, t])
                    carry = au * lam
                else:
                    gg[r, t] = 0.0
                    carry = lam
            gad[r] = sad
            gau[r] = sau


_POOL: ThreadPoolExecutor | None = None
_MIN_PARALLEL_WORK = 1 << 17  # samples; below this a thread hand-off costs more than it saves


def over_rows(kernel: Callable[..., None], rows: int, work: int, *args: Any) -> None:
    """Run ``kernel(r0, r1, *args)`` over all rows, split across torch's CPU threads.

    The kernels release the GIL (``nogil``), so plain threads run them in parallel. This
    avoids numba's own threading layer, whose start-up costs milliseconds per call, which
    dominates short signals (a fitting loop, gradcheck) and fights torch's OpenMP pool.
    """
    global _POOL
    threads = min(torch.get_num_threads(), rows)
    if threads <= 1 or work < _MIN_PARALLEL_WORK:
        kernel(0, rows, *args)
        return
    if _POOL is None or _POOL._max_workers != threads:  # noqa: SLF001
        _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="diffmix-dynamics")
    # A few chunks per thread, handed out as threads free up: on a shared machine one
    # descheduled thread then delays only its current chunk, not half the work.
    chunks = min(rows, 4 * threads)
    bounds = [rows * i // chunks for i in range(chunks + 1)]
    futures = [_POOL.submit(kernel, a, b, *args) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    for future in futures:
        future.result()


def linear_scan(c: Tensor, b: Tensor, init: Tensor) -> Tensor:
    """Solve ``y[t] = c[t] y[t-1] + b[t]`` with ``y[-1] = init`` by a log-depth scan.

    Hillis-Steele doubling on the affine maps ``y -> c y + b``; only products of
    coefficients in ``[0, 1]`` are formed, so it is stable in float32 at any length.

    Shape:
        ``c, b``: ``(rows, T)``; ``init``: ``(rows,)`` -> ``(rows, T)``.
    """
    a = c
    y = b.clone()
    y[:, 0] = y[:, 0] + c[:, 0] * init
    a = a.clone()
    a[:, 0] = 0.0
    shift = 1
    n = c.shape[-1]
    while shift < n:
        y_new = y.clone()
        y_new[:, shift:] = torch.addcmul(y[:, shift:], a[:, shift:], y[:, :-shift])
        a_new = a.clone()
        a_new[:, shift:] = a[:, shift:] * a[:, :-shift]
        a_new[:, :shift] = 0.0
        y, a = y_new, a_new
        shift *= 2
    return y


def _decide(g: Tensor, y_prev: Tensor, hold: Tensor) -> Tensor:
    falling = g < y_prev
    idx = torch.arange(g.shape[-1], device=g.device).expand_as(g)
    last_not = torch.where(falling, torch.full_like(idx, -1), idx).cummax(-1).values
    run = idx - last_not
    mode = torch.where(falling, FALLING, RISING)
    return torch.where(falling & (run <= hold.unsqueeze(-1)), HOLD, mode).to(torch.uint8)


def _coefs(mode: Tensor, a_down: Tensor, a_up: Tensor) -> Tensor:
    c = torch.where(mode == FALLING, a_down.unsqueeze(-1), a_up.unsqueeze(-1))
    return torch.where(mode == HOLD, torch.ones_like(c), c)


def _smooth_fwd_torch(g: Tensor, a_down: Tensor, a_up: Tensor, hold: Tensor, init: Tensor):  # noqa: ANN202
    y_prev = torch.cat([init.unsqueeze(-1), g[:, :-1]], -1)  # first guess: follow g instantly
    mode = _decide(g, y_prev, hold)
    for _ in range(g.shape[-1] + 1):
        c = _coefs(mode, a_down, a_up)
        y = linear_scan(c, (1.0 - c) * g, init)
        y_prev = torch.cat([init.unsqueeze(-1), y[:, :-1]], -1)
        new_mode = _decide(g, y_prev, hold)
        if torch.equal(new_mode, mode):  # a host sync per pass: the price of no kernel
            return y, mode
        mode = new_mode
    raise RuntimeError("smoother did not converge")  # pragma: no cover - cannot happen


def _smooth_bwd_torch(gy, g, y, mode, a_down, a_up, init):  # noqa: ANN001, ANN202
    c = _coefs(mode, a_down, a_up)
    # lam[t] = gy[t] + c[t+1] lam[t+1]: the same scan, run on the reversed sequences.
    c_next = torch.cat([c[:, 1:], torch.zeros_like(c[:, :1])], -1)
    lam = linear_scan(c_next.flip(-1), gy.flip(-1), torch.zeros_like(init)).flip(-1)
    gg = (1.0 - c) * lam
    y_prev = torch.cat([init.unsqueeze(-1), y[:, :-1]], -1)
    contrib = lam * (y_prev - g)
    gad = torch.where(mode == FALLING, contrib, 0.0).sum(-1)
    gau = torch.where(mode == RISING, contrib, 0.0).sum(-1)
    return gg, gad, gau


def smooth_forward_numba(g: Tensor, a_down: Tensor, a_up: Tensor, hold: Tensor, init: Tensor,
                         store: bool, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The numba forward over ``(rows, T)``: ``(y, mode)``, ``mode`` ``(1, 1)`` unless ``store``;
    ``y`` is written into ``out`` where given (contiguous, ``g``'s shape; ``g`` itself
    works: each sample is read before its output is written)."""
    g = g.detach().contiguous()
    y = torch.empty_like(g) if out is None else out
    mode = torch.empty(g.shape if store else (1, 1), dtype=torch.uint8)
    over_rows(
        _smooth_fwd_nb, g.shape[0], g.numel(), g.numpy(), a_down.detach().contiguous().numpy(),
        a_up.detach().contiguous().numpy(), hold.contiguous().numpy(),
        init.detach().contiguous().numpy(), y.numpy(), mode.numpy(), store,
    )
    return y, mode


def smooth_backward_numba(gy: Tensor, g: Tensor, y: Tensor, mode: Tensor, a_down: Tensor,
                          a_up: Tensor, init: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact backward of :func:`smooth_forward_numba` from its recorded decisions."""
    g = g.detach().contiguous()
    gg = torch.empty_like(g)
    gad = torch.empty(g.shape[0], dtype=torch.float64)
    gau = torch.empty(g.shape[0], dtype=torch.float64)
    over_rows(
        _smooth_bwd_nb, g.shape[0], g.numel(), gy.contiguous().numpy(), g.numpy(), y.numpy(),
        mode.numpy(), a_down.detach().contiguous().numpy(), a_up.detach().contiguous().numpy(),
        init.detach().contiguous().numpy(), gg.numpy(), gad.numpy(), gau.numpy(),
    )
    return gg, gad.to(g.dtype), gau.to(g.dtype)


class _SmoothTorch(torch.autograd.Function):
    """The composite solver (any device); not traceable by ``torch.compile`` (it loops
    until the decisions settle, with a host sync per pass)."""

    @staticmethod
    def forward(ctx, g, a_down, a_up, hold, init):  # noqa: ANN001, ANN205
        store = g.requires_grad or a_down.requires_grad or a_up.requires_grad
        y, mode = _smooth_fwd_torch(g.contiguous(), a_down.detach(), a_up.detach(), hold, init)
        if store:
            ctx.save_for_backward(g, y, mode, a_down.detach(), a_up.detach(), init)
        return y

    @staticmethod
    def backward(ctx, gy):  # noqa: ANN001, ANN205
        g, y, mode, a_down, a_up, init = ctx.saved_tensors
        gg, gad, gau = _smooth_bwd_torch(gy.contiguous(), g, y, mode, a_down, a_up, init)
        return gg, gad, gau, None, None


def smooth(
    g: Tensor,
    a_down: Tensor,
    a_up: Tensor,
    *,
    hold: Tensor | None = None,
    init: float = 0.0,
    backend: str = "auto",
) -> Tensor:
    """Run the branching smoother (module docstring) over each row of ``g``.

    Args:
        g: target, ``(rows, T)``.
        a_down: pole used while falling, ``(rows,)`` in ``[0, 1)``. Differentiable.
        a_up: pole used while rising, ``(rows,)`` in ``[0, 1)``. Differentiable.
        hold: samples to hold at the start of each falling run, ``(rows,)`` integers.
        init: state before the first sample.
        backend: ``"auto"``, ``"numba"``, ``"triton"`` or ``"torch"``
            (:mod:`diffmix.kernels.backend`).

    Returns:
        ``(rows, T)``, differentiable in ``g``, ``a_down`` and ``a_up``.
    """
    kernel = resolve(backend, g, "smooth")
    rows = g.shape[0]
    holds = hold is not None
    if hold is None:
        hold = torch.zeros(rows, dtype=torch.int64, device=g.device)
    init_t = torch.full((rows,), float(init), dtype=g.dtype, device=g.device)
    a_down = a_down.to(g.dtype).expand(rows)
    a_up = a_up.to(g.dtype).expand(rows)
    hold = hold.to(torch.int64).expand(rows)
    if kernel == "torch":
        return _SmoothTorch.apply(g, a_down, a_up, hold, init_t)
    store = torch.is_grad_enabled() and (g.requires_grad or a_down.requires_grad or a_up.requires_grad)
    return ops.smooth(g, a_down, a_up, hold, init_t, holds, store, kernel)[0]
