"""Compiled kernels behind the true-peak limiter: the between-sample peak envelope and the
lookahead ramp, each with an exact backward.

Envelope. For every sample ``n`` of an item, the level the limiter must hold is::

    level[n] = max over channels c of max(|x[c, n]|, between[c, n - 1], between[c, n])
    between[c, m] = max over phases p of |sum_k taps[p, k] x[c, m - 23 + k]|

with the meter's polyphase interpolator (:func:`diffmix.functional.peaks.interpolation_filter`),
so limiting sample ``n`` covers the inter-sample peaks on both sides of it. Materialising
the oversampled signal costs ``factor`` full-length copies; the kernel instead accumulates
each phase of a block of 256 points eight taps at a time (contiguous loads, so it
vectorises; shared with the meter's kernel) and keeps only the running maxima. The
forward records which point won at every sample (channel, phase, side) in one ``int32``;
the backward replays it: ``level[n]`` is ``|v|`` of one point
``v = sum_k taps[p, k] x[c, m - 23 + k]``, so its gradient adds ``g[n] sign(v) taps[p, k]``
to ``x[c, m - 23 + k]``. Blocks of the backward scatter into overlapping 48-sample
neighbourhoods, so even blocks run in parallel, then odd ones.

Ramp. :func:`ramp` is the limiter's lookahead: a running minimum of the required gain over
the next ``L + 1`` samples (monotonic deque, O(T)) followed by a moving average of the same
length (running sum in float64, so a 30-minute row loses nothing to cancellation). Its
backward is the transposed moving average (another running sum) scattered to the sample
that held each minimum.

Both run on CPU with numba; :mod:`diffmix.functional.limiter` falls back to the torch
formulation (``conv1d`` phases, ``max_pool1d``/``avg_pool1d``) on other devices.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffmix.functional._dynamics_kernels import HAVE_NUMBA
from diffmix.functional.peaks import _accumulate_phase, interpolation_filter, oversampling_factor
from diffmix.kernels.backend import numba_threads, resolve

BLOCK = 256  # samples per envelope block (one vectorised accumulator per phase)
_SIDE = 8  # code = channel * _SIDE + kind; kind 0: the sample, 1..3: after, 4..6: before

if HAVE_NUMBA:
    import numba

    @numba.njit(parallel=True, cache=True, fastmath={"contract"})
    def _envelope_nb(x, taps, todo, level, code, want_code):  # noqa: ANN001, ANN202
        # x (B, C, T); todo (B, n_blocks) uint8, blocks to (re)compute; level (B, T) and
        # code (B, T) are written only inside those blocks (code only if want_code).
        n_items, n_ch, t = x.shape
        n_phase, n_taps = taps.shape
        half = n_taps // 2
        n_blocks = todo.shape[1]
        for job in numba.prange(n_items * n_blocks):
            b = job // n_blocks
            s = job % n_blocks
            if todo[b, s] == 0:
                continue
            lo = s * BLOCK
            hi = min(t, lo + BLOCK)
            w = hi - lo + 1  # points m = lo - 1 .. hi - 1
            start = lo - 1 - (half - 1)
            inside = start >= 0 and hi - 1 + half < t
            acc = np.empty((n_phase, w), dtype=x.dtype)
            bmax = np.empty(w, dtype=x.dtype)
            for i in range(hi - lo):
                level[b, lo + i] = -1.0
            for c in range(n_ch):
                xr = x[b, c]
                for p in range(n_phase):
                    ap = acc[p]
                    for i in range(w):
                        ap[i] = 0.0
                    if inside:
                        _accumulate_phase(ap, xr[start: start + w + n_taps - 1], taps, p, w)
                    else:
                        for k in range(n_taps):
                            tap = taps[p, k]
                            off = start + k
                            for i in range(w):
                                j = off + i
                                if j >= 0 and j < t:
                                    ap[i] += tap * xr[j]
                for i in range(w):
                    m = abs(acc[0, i])
                    for p in range(1, n_phase):
                        m = max(m, abs(acc[p, i]))
                    bmax[i] = m
                if lo == 0:
                    bmax[0] = 0.0  # no point before the first sample
                if not want_code:
                    for i in range(hi - lo):
                        n = lo + i
                        v = max(abs(xr[n]), max(bmax[i], bmax[i + 1]))
                        if v > level[b, n]:
                            level[b, n] = v
                    continue
                for i in range(hi - lo):
                    n = lo + i
                    best = abs(xr[n])
                    kind = 0
                    if bmax[i + 1] > best:
                        best = bmax[i + 1]
                        kind = 1
                        for p in range(n_phase):
                            if abs(acc[p, i + 1]) == best:
                                kind = 1 + p
                                break
                    if bmax[i] > best:
                        best = bmax[i]
                        kind = 4
                        for p in range(n_phase):
                            if abs(acc[p, i]) == best:
                                kind = 4 + p
                                break
                    if best > level[b, n]:
                        level[b, n] = best
                        code[b, n] = c * _SIDE + kind

    @numba.njit(cache=True, fastmath={"contract"})
    def _envelope_bwd_block(x, taps, code, g, gx, b, lo, hi):  # noqa: ANN001, ANN202
        t = x.shape[2]
        n_taps = taps.shape[1]
        half = n_taps // 2
        for n in range(lo, hi):
            gn = g[b, n]
            if gn == 0.0:
                continue
            c = code[b, n] // _SIDE
            kind = code[b, n] % _SIDE
            if kind == 0:
                v = x[b, c, n]
                if v > 0:
                    gx[b, c, n] += gn
                elif v < 0:
                    gx[b, c, n] -= gn
                continue
            if kind < 4:
                p, m = kind - 1, n
            else:
                p, m = kind - 4, n - 1
            start = m - (half - 1)
            v = 0.0
            for k in range(n_taps):
                j = start + k
                if j >= 0 and j < t:
                    v += taps[p, k] * x[b, c, j]
            if v == 0.0:
                continue
            s = gn if v > 0 else -gn
            for k in range(n_taps):
                j = start + k
                if j >= 0 and j < t:
                    gx[b, c, j] += s * taps[p, k]

    @numba.njit(parallel=True, cache=True)
    def _envelope_bwd_nb(x, taps, code, g, gx):  # noqa: ANN001, ANN202
        # A block's scatter reaches at most 25 samples into each neighbour, so blocks of
        # one parity never collide: even blocks in parallel, then odd ones.
        n_items, t = g.shape
        n_blocks = (t + BLOCK - 1) // BLOCK
        for parity in range(2):
            n_jobs = (n_blocks - parity + 1) // 2
            for job in numba.prange(n_items * n_jobs):
                b = job // n_jobs
                s = 2 * (job % n_jobs) + parity
                lo = s * BLOCK
                _envelope_bwd_block(x, taps, code, g, gx, b, lo, min(t, lo + BLOCK))

    @numba.njit(parallel=True, cache=True)
    def _ramp_nb(req, lookahead, out, arg, want_arg):  # noqa: ANN001, ANN202
        # held[i] = min(req[i - L .. i]) (1 outside), i = 0 .. T + L - 1; arg[i] is the
        # sample that holds it (-1: padding), written only if want_arg (the backward's);
        # out[j] = mean(held[j .. j + L]). Deque and
        # the last L + 1 held values live in power-of-two rings (a mask, not a division).
        n_rows, t = req.shape
        span = lookahead + 1
        cap = 1
        while cap < span + 1:
            cap *= 2
        mask = cap - 1
        for r in numba.prange(n_rows):
            dq = np.empty(cap, dtype=np.int64)
            hist = np.empty(cap, dtype=np.float64)
            head = 0
            size = 0
            acc = 0.0
            for i in range(t + lookahead):
                if i < t:
                    v = req[r, i]
                    while size > 0 and req[r, dq[(head + size - 1) & mask]] >= v:
                        size -= 1
                    dq[(head + size) & mask] = i
                    size += 1
                if size > 0 and dq[head] < i - lookahead:
                    head = (head + 1) & mask
                    size -= 1
                # The window reaches past the end (or before the start) onto padding of 1.
                h = 1.0
                a = -1
                if size > 0:
                    m = req[r, dq[head]]
                    if m < 1.0 or (i >= lookahead and i < t):
                        h = m
                        a = dq[head]
                if want_arg:
                    arg[r, i] = a
                acc += h
                if i >= span:
                    acc -= hist[(i - span) & mask]
                hist[i & mask] = h
                if i >= lookahead:
                    out[r, i - lookahead] = acc / span

    @numba.njit(parallel=True, cache=True)
    def _ramp_bwd_nb(grad, lookahead, arg, greq):  # noqa: ANN001, ANN202
        n_rows, t = grad.shape
        span = lookahead + 1
        for r in numba.prange(n_rows):
            acc = 0.0  # sum of grad[j] over j in [i - L, i] within [0, T)
            for i in range(t + lookahead):
                if i < t:
                    acc += grad[r, i]
                if i - span >= 0:
                    acc -= grad[r, i - span]
                a = arg[r, i]
                if a >= 0:
                    greq[r, a] += acc / span


def available(x: Tensor, backend: str = "auto") -> bool:
    """Whether the compiled kernels serve ``x``: ``backend`` resolves to numba
    (:mod:`diffmix.kernels.backend`) and ``x`` is float32/float64."""
    return (HAVE_NUMBA and resolve(backend, x, "limiter") == "numba"
            and x.dtype in (torch.float32, torch.float64))


def _taps(sample_rate: int, dtype: torch.dtype) -> np.ndarray:
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    return np.ascontiguousarray(interpolation_filter(oversampling_factor(sample_rate)), np_dtype)


def envelope_numpy(
    x: np.ndarray, taps: np.ndarray, level: np.ndarray | None = None,
    code: np.ndarray | None = None, todo: np.ndarray | None = None, want_code: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Envelope ``(B, T)`` of ``x`` ``(B, C, T)`` (and the winner codes, if ``want_code``);
    with ``todo`` ``(B, n_blocks)``, recompute only those blocks of ``level`` in place."""
    b, _, t = x.shape
    if level is None:
        level = np.empty((b, t), dtype=x.dtype)
    if code is None:
        code = np.zeros((b, t), dtype=np.int32)
    if todo is None:
        todo = np.ones((b, -(-t // BLOCK)), dtype=np.uint8)
    numba_threads()
    _envelope_nb(x, taps, todo, level, code, want_code)
    return level, code


def envelope_forward(x: Tensor, taps: Tensor, want_code: bool) -> tuple[Tensor, Tensor]:
    """The ``diffmix::limiter_envelope`` op on numba: level ``(B, 1, T)`` of ``x``
    ``(B, C, T)`` and the winner codes ``(B, T)`` (``(1, 1)`` unless ``want_code``)."""
    xn = x.detach().contiguous().numpy()
    level, code = envelope_numpy(xn, taps.detach().to(x.dtype).contiguous().numpy(), want_code=want_code)
    code_t = torch.from_numpy(code) if want_code else torch.zeros((1, 1), dtype=torch.int32)
    return torch.from_numpy(level).unsqueeze(1), code_t


def envelope_backward(grad: Tensor, x: Tensor, taps: Tensor, code: Tensor) -> Tensor:
    """The envelope's exact backward on numba: ``dx`` ``(B, C, T)`` from ``grad`` ``(B, 1, T)``."""
    xn = x.detach().contiguous().numpy()
    gx = np.zeros(xn.shape, dtype=xn.dtype)
    g = np.ascontiguousarray(grad.detach()[:, 0].to(x.dtype).numpy())
    numba_threads()
    _envelope_bwd_nb(xn, taps.detach().to(x.dtype).contiguous().numpy(), code.contiguous().numpy(), g, gx)
    return torch.from_numpy(gx)


def envelope(x: Tensor, sample_rate: int) -> Tensor:
    """True-peak level per sample, channels linked: ``(B, C, T) -> (B, 1, T)`` (module
    docstring). Differentiable in ``x``. CPU only (see :func:`available`); factor > 1."""
    from diffmix.kernels import ops

    taps = torch.from_numpy(_taps(sample_rate, x.dtype))
    return ops.limiter_envelope(x, taps, x.requires_grad, "numba")[0]


def ramp_forward(required: Tensor, lookahead: int) -> tuple[Tensor, Tensor]:
    """The ``diffmix::limiter_ramp`` op on numba: the ramp ``(rows, T)`` and, per window
    ``i < T + L``, the sample holding its minimum (``-1``: the padding)."""
    req = required.detach().contiguous().numpy()
    out = np.empty_like(req)
    arg = np.empty((req.shape[0], req.shape[1] + lookahead), dtype=np.int64)
    numba_threads()
    _ramp_nb(req, lookahead, out, arg, True)
    return torch.from_numpy(out), torch.from_numpy(arg)


def ramp_values(required: Tensor, lookahead: int, out: Tensor | None = None) -> Tensor:
    """:func:`ramp_forward`'s ramp alone, for a render (no gradient): the backward's
    indices (int64, one per sample and lookahead) are neither written nor allocated. The
    ramp is written into ``out`` where given (contiguous, ``required``'s shape, not
    ``required`` itself)."""
    req = required.detach().contiguous().numpy()
    res = torch.from_numpy(np.empty_like(req)) if out is None else out
    numba_threads()
    _ramp_nb(req, lookahead, res.numpy(), np.empty((1, 1), dtype=np.int64), False)
    return res


def ramp_backward(grad: Tensor, arg: Tensor, lookahead: int) -> Tensor:
    """The ramp's exact backward on numba: ``drequired`` ``(rows, T)``."""
    g = np.ascontiguousarray(grad.detach().numpy())
    greq = np.zeros_like(g)
    numba_threads()
    _ramp_bwd_nb(g, lookahead, arg.contiguous().numpy(), greq)
    return torch.from_numpy(greq)


def ramp(required: Tensor, lookahead: int) -> Tensor:
    """Lookahead ramp ``(rows, T)``: the mean over ``j .. j + L`` of the minimum of
    ``required`` over each window ``i - L .. i`` (1 outside). Never above ``required``;
    differentiable. CPU only (see :func:`available`)."""
    from diffmix.kernels import ops

    return ops.limiter_ramp(required, int(lookahead), "numba")[0]
