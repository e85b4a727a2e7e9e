"""Launchers and autograd wrappers for the Triton kernels (:mod:`._triton_dynamics`).

The kernels run compiled on CUDA tensors and under Triton's interpreter on CPU tensors, in
one process: the kernel module is executed twice, once with ``TRITON_INTERPRET=1`` (its
``@triton.jit`` decorators then build interpreted functions) and once without, because
Triton reads that variable when a function is decorated, not when it is launched. With
``TRITON_INTERPRET=1`` in the environment everything is interpreted, as Triton documents.

Triton itself is imported only here, inside functions, on first use.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

_SOURCES = {"dynamics": "_triton_dynamics.py", "peaks": "_triton_peaks.py",
            "loudness": "_triton_loudness.py"}
_LOADED: dict[tuple[str, bool], ModuleType] = {}
_LOCK = threading.Lock()
# Samples per time block: wide on a GPU (one program per row streams long blocks); small
# under the interpreter so that tests on short signals still cross block boundaries.
BLOCK = {"cuda": 1024, "interpreter": 16}
FLOOR_POWER = 1e-20  # as diffmix.functional._dynamics_kernels
N_GRADS = 8


def interpreted(x: Tensor) -> bool:
    """Whether kernels for ``x`` run under the interpreter (CPU tensors, or the env)."""
    return x.device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels(interpret: bool, source: str = "dynamics") -> ModuleType:
    """A kernel module (``source`` in ``_SOURCES``), compiled (``interpret=False``) or
    interpreted; each loaded once."""
    with _LOCK:
        if (source, interpret) in _LOADED:
            return _LOADED[(source, interpret)]
        # Triton's own library (and the launcher module it imports lazily) is decorated
        # under the caller's setting first, so that toggling the variable below only
        # affects our kernels.
        import triton
        import triton.language  # noqa: F401

        try:
            import triton.experimental.gluon  # noqa: F401
        except ImportError:  # pragma: no cover - older Triton
            pass
        interpret = interpret or os.environ.get("TRITON_INTERPRET", "0") == "1"
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        try:
            path = Path(__file__).with_name(_SOURCES[source])
            name = f"diffmix.kernels.{path.stem}_{'interpreted' if interpret else 'compiled'}"
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            if old is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = old
        del triton
        _LOADED[(source, interpret)] = module
        return module


def _launch(x: Tensor, total: int) -> tuple[ModuleType, int]:
    interp = interpreted(x)
    block = BLOCK["interpreter" if interp else "cuda"]
    block = min(block, max(16, 1 << max(0, total - 1).bit_length()))
    return kernels(interp), block


def constants(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The kernels' literals in the audio's dtype (a float literal in Triton is float32)."""
    values = [10.0 / math.log(10.0), math.log(10.0) / 20.0, FLOOR_POWER, 0.0, 0.5, 1.0, 2.0,
              1e-6, math.inf]
    return torch.tensor(values, dtype=dtype, device=device)


def smooth_forward(g: Tensor, a_down: Tensor, a_up: Tensor, hold: Tensor, init: Tensor,
                   store: bool, holds: bool) -> tuple[Tensor, Tensor]:
    """Branching smoother over ``(rows, T)``: ``(y, mode)`` (``mode`` ``(1, 1)`` unless
    ``store``); ``holds`` compiles the hold counter in."""
    g = g.detach().contiguous()
    rows, t = g.shape
    y = torch.empty_like(g)
    mode = torch.empty((rows, t) if store else (1, 1), dtype=torch.uint8, device=g.device)
    if rows and t:
        k, block = _launch(g, t)
        k.smooth_fwd[(rows,)](
            g, a_down.detach().contiguous(), a_up.detach().contiguous(), hold.contiguous(),
            init.detach().contiguous(), y, mode, t, STORE=store, HOLDS=holds, BLOCK=block,
        )
    return y, mode


def smooth_backward(gy: Tensor, g: Tensor, y: Tensor, mode: Tensor, a_down: Tensor,
                    a_up: Tensor, init: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact backward of :func:`smooth_forward` from its recorded decisions."""
    g = g.detach().contiguous()
    rows, t = g.shape
    gg = torch.empty_like(g)
    gad = torch.zeros(rows, dtype=torch.float64, device=g.device)
    gau = torch.zeros(rows, dtype=torch.float64, device=g.device)
    if rows and t:
        k, block = _launch(g, t)
        k.smooth_bwd[(rows,)](
            gy.contiguous(), g, y, mode, a_down.detach().contiguous(),
            a_up.detach().contiguous(), init.detach().contiguous(), gg, gad, gau, t, BLOCK=block,
        )
    return gg, gad.to(g.dtype), gau.to(g.dtype)


def dynamics_forward(x: Tensor, side: Tensor | None, params: Tensor, hold: Tensor, kind: int,
                     mean: bool, lookahead: int, amp: bool, store: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Fused compressor/expander over gain rows ``x`` ``(rows, nc, T)`` with detector input
    ``side`` (the same shape, or ``None`` for ``x``; amplitudes if ``amp``, else powers) and
    ``params``
    ``(rows, 8)``: threshold, slope, knee, range, a_down, a_up, makeup, mix. Returns
    ``(out, y, mode)``; ``y`` (smoothed gain in dB) and ``mode`` only if ``store``."""
    x = x.detach().contiguous()
    side = x if side is None else side.detach().contiguous()
    params = params.detach().contiguous()
    rows, nc, n = x.shape
    total = n + lookahead
    out = torch.empty_like(x)
    shape = (rows, total) if store else (1, 1)
    y = torch.empty(shape, dtype=x.dtype, device=x.device)
    mode = torch.empty(shape, dtype=torch.uint8, device=x.device)
    if rows and n:
        k, block = _launch(x, total)
        k.dyn_fwd[(rows,)](
            x, side, params, constants(x.dtype, x.device), hold, out, y, mode, nc, n, lookahead,
            KIND=kind, MEAN=mean, AMP=amp, STORE=store, HOLDS=kind == 1, BLOCK=block,
        )
    return out, y, mode


def dynamics_backward(gout: Tensor, x: Tensor, side: Tensor | None, params: Tensor, y: Tensor,
                      mode: Tensor, kind: int, mean: bool, lookahead: int,
                      amp: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Exact backward of :func:`dynamics_forward`: ``(dx, dside, dparams)``; with ``side``
    ``None`` the side-chain's share is added into ``dx`` and ``dside`` is empty. ``dparams``
    is ``(rows, 8)`` in the audio's dtype."""
    side_is_x = side is None
    x = x.detach().contiguous()
    side = x if side is None else side.detach().contiguous()
    params = params.detach().contiguous()
    rows, nc, n = x.shape
    gx = torch.empty_like(x)
    gs = torch.empty_like(side)
    grads = torch.zeros((rows, N_GRADS), dtype=torch.float64, device=x.device)
    if rows and n:
        k, block = _launch(x, n + lookahead)
        k.dyn_bwd[(rows,)](
            gout.contiguous(), x, side, params, constants(x.dtype, x.device), y, mode, gx, gs,
            grads, nc, n, lookahead, KIND=kind, MEAN=mean, AMP=amp, BLOCK=block,
        )
    if side_is_x:
        return gx + gs, x.new_empty(0), grads.to(x.dtype)
    return gx, gs, grads.to(x.dtype)


# --------------------------------------------------------------------------- true peak
PEAK_BLOCK = {"cuda": 256, "interpreter": 64}


def between(x: Tensor, taps: Tensor) -> tuple[Tensor, Tensor]:
    """The in-between points of ``x`` ``(rows, T)`` with the interpolator ``taps``
    ``(phases, K)``: per point ``m``, the signed value of the phase with the largest
    magnitude and that phase, ``((rows, T), (rows, T) int32)``."""
    x = x.detach().contiguous()
    rows, t = x.shape
    taps = taps.to(x.dtype).contiguous()
    val = torch.empty_like(x)
    arg = torch.empty((rows, t), dtype=torch.int32, device=x.device)
    if rows and t:
        interp = interpreted(x)
        block = PEAK_BLOCK["interpreter" if interp else "cuda"]
        grid = (rows, -(-t // block))
        kernels(interp, "peaks").between_fwd[grid](
            x, taps, val, arg, t, P=taps.shape[0], K=taps.shape[1], BLOCK=block)
    return val, arg


def between_adjoint(w: Tensor, arg: Tensor, taps: Tensor) -> Tensor:
    """The gradient reaching ``x`` from gradients ``w`` ``(rows, T)`` on the points that
    :func:`between` chose (phase ``arg``): the interpolator's transpose, as a gather."""
    w = w.contiguous()
    rows, t = w.shape
    taps = taps.to(w.dtype).contiguous()
    gx = torch.empty_like(w)
    if rows and t:
        interp = interpreted(w)
        block = PEAK_BLOCK["interpreter" if interp else "cuda"]
        kernels(interp, "peaks").between_bwd[(rows, -(-t // block))](
            w, arg.contiguous(), taps, gx, t, K=taps.shape[1], BLOCK=block)
    return gx


def _winners(x: Tensor, val: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample, the limiter's level over channels and what set it, with the numba
    kernel's tie order: the sample, else the point after it, else the point before it
    (strictly larger wins), and the first channel of the largest."""
    mag = x.abs()
    after = val.abs()
    before = torch.nn.functional.pad(after[..., :-1], (1, 0))
    kind = torch.where(after > mag, 1, 0)
    best = torch.maximum(after, mag)
    kind = torch.where(before > best, 2, kind)
    best = torch.maximum(before, best)
    level, channel = best.max(1, keepdim=True)
    return level, channel, kind


def envelope_forward(x: Tensor, taps: Tensor, want_code: bool) -> tuple[Tensor, Tensor]:
    """The ``diffmix::limiter_envelope`` op on Triton: level ``(B, 1, T)`` and the numba
    kernel's winner codes ``(B, T)`` (channel * 8 + kind; kind 0: the sample, 1 + p: the
    point after it at phase p, 4 + p: the point before it), ``(1, 1)`` unless ``want_code``."""
    x = x.detach()
    b, c, t = x.shape
    val, arg = between(x.reshape(b * c, t), taps)
    val, arg = val.reshape(b, c, t), arg.reshape(b, c, t)
    level, channel, kind = _winners(x, val)
    if not want_code:
        return level, torch.zeros((1, 1), dtype=torch.int32, device=x.device)
    before = torch.nn.functional.pad(arg[..., :-1], (1, 0))
    phase = torch.where(kind == 1, 1 + arg, torch.where(kind == 2, 4 + before, 0))
    chosen = torch.gather(phase, 1, channel)
    code = (channel * 8 + chosen)[:, 0].to(torch.int32)
    return level, code


def envelope_backward(grad: Tensor, x: Tensor, taps: Tensor, code: Tensor) -> Tensor:
    """The envelope's exact backward on Triton: ``dx`` ``(B, C, T)`` from ``grad``
    ``(B, 1, T)`` and the forward's codes (the points are re-interpolated for their sign)."""
    x = x.detach()
    b, c, t = x.shape
    val, arg = between(x.reshape(b * c, t), taps)
    val = val.reshape(b, c, t)
    code = code.to(torch.int64).unsqueeze(1)  # (B, 1, T)
    chosen = torch.arange(c, device=x.device).view(1, c, 1) == code // 8
    kind = code % 8
    g = grad.to(x.dtype)
    gx = torch.where(chosen & (kind == 0), g * torch.sign(x), 0.0)
    # point m collects its "after" win (sample m) and its "before" win (sample m + 1)
    sign = torch.sign(val)
    w = torch.where(chosen & (kind >= 1) & (kind < 4), g * sign, 0.0)
    wb = torch.where(chosen & (kind >= 4), g, 0.0)[..., 1:]
    w = w + torch.nn.functional.pad(wb * sign[..., :-1], (0, 1))
    return gx + between_adjoint(w.reshape(b * c, t), arg, taps).reshape(b, c, t)


# --------------------------------------------------------------------------- lookahead ramp
def _window_min(required: Tensor, lookahead: int) -> tuple[Tensor, Tensor]:
    req = required.detach().contiguous()
    rows, t = req.shape
    n = t + lookahead
    held = torch.empty((rows, n), dtype=req.dtype, device=req.device)
    arg = torch.empty((rows, n), dtype=torch.int64, device=req.device)
    if rows and t:
        interp = interpreted(req)
        block = PEAK_BLOCK["interpreter" if interp else "cuda"]
        kernels(interp, "peaks").window_min[(rows, -(-n // block))](
            req, held, arg, t, lookahead, BLOCK=block)
    return held, arg


def _window_sums(v: Tensor, span: int) -> Tensor:
    """``out[j] = sum(v[j .. j + span - 1])`` from a float64 prefix sum."""
    csum = torch.nn.functional.pad(v.to(torch.float64).cumsum(-1), (1, 0))
    return csum[..., span:] - csum[..., :-span]


def ramp_forward(required: Tensor, lookahead: int) -> tuple[Tensor, Tensor]:
    """The ``diffmix::limiter_ramp`` op on Triton (as :func:`diffmix.functional._peak_kernels.ramp`):
    the mean over ``j .. j + L`` of the running minimum (the minimum on the Triton kernel,
    the sums as float64 prefix sums), and the sample holding each window's minimum."""
    held, arg = _window_min(required, lookahead)
    return (_window_sums(held, lookahead + 1) / (lookahead + 1)).to(required.dtype), arg


def ramp_backward(grad: Tensor, arg: Tensor, lookahead: int) -> Tensor:
    """``drequired``: held[i] feeds out[j] for j in i - L .. i (inside [0, T)), so each
    window's gradient is a sum of the padded output gradient, scattered to its sample."""
    span = lookahead + 1
    padded = torch.nn.functional.pad(grad.to(torch.float64), (lookahead, lookahead))
    per_held = _window_sums(padded, span) / span
    greq = torch.zeros(grad.shape, dtype=torch.float64, device=grad.device)
    greq.scatter_add_(1, arg.clamp_min(0), torch.where(arg >= 0, per_held, 0.0))
    return greq.to(grad.dtype)


# --------------------------------------------------------------------------- K-weighting
# Lanes (segments) per program: one warp's worth on a GPU, a few under the interpreter.
KFILTER_BLOCK = {"cuda": 32, "interpreter": 8}


def kfilter(x: Tensor, coefficients: Tensor, warm: int, segment: int) -> Tensor:
    """K-weight rows of ``x`` ``(rows, T)`` (float32/float64) with the two-biquad cascade
    ``coefficients`` (10 values, float64), in parallel segments of ``segment`` samples,
    each started ``warm`` samples early from zero state."""
    x = x.detach().contiguous()
    rows, t = x.shape
    y = torch.empty_like(x)
    if rows and t:
        segment = min(segment, t)
        n_seg = -(-t // segment)
        lanes = rows * n_seg
        interp = interpreted(x)
        block = KFILTER_BLOCK["interpreter" if interp else "cuda"]
        kernels(interp, "loudness").kfilter[(-(-lanes // block),)](
            x, y, coefficients.to(device=x.device, dtype=torch.float64).contiguous(), t,
            segment, warm, n_seg, lanes, BLOCK=block)
    return y
