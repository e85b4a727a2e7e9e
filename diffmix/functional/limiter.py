"""Lookahead brickwall limiter with a guaranteed (true-)peak ceiling.

The gain is the smallest effort that keeps the linked (true-)peak level under the ceiling:
a running minimum over the lookahead, a moving average of the same length (a linear ramp
into each peak that never overshoots), instant attack and a one-pole release. The smooth
gain is what fitting differentiates; with ``exact`` the render adds a final correction
that re-meters the output with the project's true-peak meter (:mod:`diffmix.functional.peaks`)
and closes any residual over; ``strict`` holds the ceiling on every usual meter as well.

References:
    ITU-R BS.1770-4 Annex 2, true-peak measurement by oversampling (in :mod:`~diffmix.functional.peaks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffmix.functional import _peak_kernels as _pk
from diffmix.functional import peaks as _peaks
from diffmix.functional._dynamics_kernels import smooth, smooth_forward_numba
from diffmix.functional.dynamics import _DB_PER_NEPER, _lookahead_samples, ms_to_pole
from diffmix.kernels import ops
from diffmix.kernels.backend import resolve
from diffmix.params import ParamValue, per_sample

# The limiter aims this far below its ceiling (relative, -0.0009 dB) so that float rounding
# in the gain path can never carry a sample over it.
_LIMIT_MARGIN = 1e-4


def true_peak(x: Tensor, sample_rate: int) -> Tensor:
    """Linear true peak per channel with the project's meter, ``(B, C, T) -> (B, C)``.

    The limiter meters with :mod:`diffmix.functional.peaks` (BS.1770 Annex 2
    oversampling, 4x below 96 kHz), so its ceiling holds under the same meter that checks
    deliveries and writes reports.

    >>> n = torch.arange(256.0)
    >>> x = torch.sin(math.pi / 2 * n + math.pi / 4).view(1, 1, -1)  # samples at +-0.707
    >>> round(float(x.abs().max()), 3), round(float(true_peak(x, 48000)), 1)
    (0.707, 1.0)
    """
    return _peaks.true_peak(x, sample_rate)


def _true_peak_envelope(x: Tensor, sample_rate: int) -> Tensor:
    """Per-sample true-peak level: the largest oversampled magnitude within one sample of
    each sample (the intervals either side), so limiting sample ``n`` covers both."""
    factor = _peaks.oversampling_factor(sample_rate)
    mag = x.abs()
    if factor == 1:
        return mag
    b, c, t = x.shape
    # _phases(...)[..., m] are the points between samples m and m + 1.
    after = _peaks._phases(x.reshape(b * c, t), factor).abs().amax(1).reshape(b, c, t)
    before = F.pad(after[..., :-1], (1, 0))
    return torch.maximum(mag, torch.maximum(after, before))


def limiter_envelope(x: Tensor, sample_rate: int, *, true_peak: bool = True,
                     backend: str = "auto") -> Tensor:
    """The level the limiter holds under its ceiling, channels linked.

    Per sample, the largest of ``|x|`` and (with ``true_peak``) the oversampled points on
    either side of it, over all channels. Linear in ``x``: the envelope of ``g x`` is ``g``
    times that of ``x``.

    Args:
        x: audio. sample_rate: Hz.
        true_peak: include the inter-sample points of the true-peak meter.
        backend: :mod:`diffmix.kernels.backend`. numba (CPU) and Triton (CUDA) meter the
            in-between points without materialising the oversampled signal
            (:mod:`diffmix.functional._peak_kernels`, :mod:`diffmix.kernels._triton_peaks`),
            with an exact backward; the torch path convolves every phase.

    Shape:
        ``(B, C, T)`` -> ``(B, 1, T)``, linear. Differentiable in ``x``.

    >>> limiter_envelope(torch.tensor([[[0.5, -1.0], [0.25, 0.0]]]), 48000, true_peak=False)
    tensor([[[0.5000, 1.0000]]])
    """
    if not true_peak or _peaks.oversampling_factor(sample_rate) == 1:
        return x.abs().amax(1, keepdim=True)
    kernel = resolve(backend, x, "limiter")
    if kernel == "triton" or _pk.available(x, backend):
        taps = _peaks.interpolation_filter(_peaks.oversampling_factor(sample_rate))
        taps_t = torch.as_tensor(taps, dtype=x.dtype, device=x.device)
        want_code = torch.is_grad_enabled() and x.requires_grad
        return ops.limiter_envelope(x, taps_t, want_code, kernel)[0]
    return _true_peak_envelope(x, sample_rate).amax(1, keepdim=True)


def limiter_gain(required: Tensor, lookahead: int, release: Tensor, *,
                 backend: str = "auto", out: Tensor | None = None) -> Tensor:
    """Smallest-effort gain ``<= required`` everywhere: lookahead ramp, instant attack,
    one-pole release.

    A minimum over the next ``lookahead + 1`` samples followed by a moving average of the
    same length can never exceed ``required`` (every averaged term already covers the
    current sample), and ramps into each peak linearly over the lookahead.

    Args:
        required: the gain each sample needs, ``(B, 1, T)`` in ``(0, 1]``.
        lookahead: ramp length in samples.
        release: release pole per item, ``(B,)`` or ``(B, 1, 1)`` (:func:`ms_to_pole`).
        backend: :mod:`diffmix.kernels.backend`: the ramp's running minimum and the
            release smoother run on numba, Triton or torch.
        out: a contiguous ``(B, 1, T)`` tensor (not ``required``) to write the gain into
            and return: a render (no gradient) on numba then allocates nothing.

    Shape:
        ``(B, 1, T)`` -> ``(B, 1, T)``. Differentiable in ``required`` and ``release``.

    >>> limiter_gain(torch.tensor([[[1.0, 0.5, 1.0]]]), 1, torch.zeros(1)).tolist()
    [[[0.75, 0.5, 0.75]]]
    """
    b, _, t = required.shape
    kernel = resolve(backend, required, "limiter")
    graph = torch.is_grad_enabled() and (required.requires_grad or release.requires_grad)
    if (lookahead and kernel == "numba" and _pk.available(required, backend) and not graph
            and not torch.compiler.is_compiling()):
        # A render: the ramp into the output, then the release smoother over it in place.
        gain = torch.empty_like(required) if out is None else out
        rows = gain.view(b, t)
        _pk.ramp_values(required.reshape(b, t), int(lookahead), out=rows)
        pole = release.detach().reshape(-1).to(rows.dtype).expand(b).contiguous()
        smooth_forward_numba(rows, torch.zeros_like(pole), pole, torch.zeros(b, dtype=torch.int64),
                             torch.ones_like(pole), False, out=rows)
        return gain
    if lookahead and (kernel == "triton" or _pk.available(required, backend)):
        # O(T) running minimum and running sum, instead of pools that cost O(T * L).
        rows = required.reshape(b, t).contiguous()
        if kernel == "numba" and not torch.compiler.is_compiling() and not (
            torch.is_grad_enabled() and rows.requires_grad
        ):  # a render: the ramp without the backward's indices
            required = _pk.ramp_values(rows, int(lookahead)).reshape(b, 1, t)
        else:
            required = ops.limiter_ramp(rows, int(lookahead), kernel)[0].reshape(b, 1, t)
    elif lookahead:
        padded = F.pad(required, (lookahead, lookahead), value=1.0)
        held = -F.max_pool1d(-padded, lookahead + 1, stride=1)
        required = F.avg_pool1d(held, lookahead + 1, stride=1)
    zero = torch.zeros((), dtype=required.dtype, device=required.device)
    gain = smooth(required.reshape(b, t), zero, release.reshape(-1), init=1.0, backend=backend)
    return gain.reshape(b, 1, t) if out is None else out.copy_(gain.reshape(b, 1, t))



def limiter(
    x: Tensor,
    sample_rate: int,
    *,
    ceiling_db: ParamValue = -1.0,
    release_ms: ParamValue = 100.0,
    gain_db: ParamValue = 0.0,
    lookahead_ms: float = 5.0,
    true_peak: bool = True,
    exact: bool = True,
    strict: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Lookahead brickwall limiter with a guaranteed ceiling, channels linked.

    The gain needed to hold every sample (or, in true-peak mode, every 4x-oversampled
    inter-sample peak around it) under ``ceiling_db`` is ramped in over the lookahead and
    released with a one-pole. In sample-peak mode that already guarantees the ceiling. In
    true-peak mode, changing the gain alters the inter-sample peaks slightly, so with
    ``exact=True`` a final step meters the output (:func:`true_peak`'s meter), pulls any
    residual overs under the ceiling with the same lookahead/release gain shape, and as a
    last resort scales the item down: the meter then never reads above the ceiling. That
    step's correction is treated as a constant by autograd (gradients flow through the
    smooth limiter underneath); pass ``exact=False`` for the purely smooth version when
    fitting, and render with ``exact=True``.

    Args:
        x: audio.
        sample_rate: Hz.
        ceiling_db: output ceiling, dBFS (dBTP in true-peak mode).
        release_ms: release time constant, ms.
        gain_db: input drive before limiting, dB.
        lookahead_ms: ramp-in time, ms (option; latency-free).
        true_peak: limit 4x-oversampled true peaks instead of sample peaks.
        exact: apply the final metered correction (true-peak mode).
        strict: with ``exact``, hold the ceiling on every usual meter
            (:func:`~diffmix.functional.peaks.strict_envelope`: BS.1770 Annex 2, the common
            4x/8x upsamplers and ideal 8x interpolation), not only on this project's meter.
            What a delivered master needs; it costs an ideal interpolation per render, so
            it is off by default (a console's bus limiter) and on in the mastering chain.
        backend: :mod:`diffmix.kernels.backend`, for the envelope, the gain and the
            correction.

    Differentiable: ``ceiling_db``, ``release_ms``, ``gain_db`` and ``x``. CUDA: yes.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Returns:
        The limited audio.

    >>> y = limiter(4 * torch.randn(1, 2, 4800), 48000, ceiling_db=-1.0)
    >>> bool(true_peak(y, 48000).max() <= 10 ** (-1 / 20))
    True
    """
    effect = "limiter"
    lookahead = _lookahead_samples(lookahead_ms, sample_rate, effect)

    def param(v: ParamValue, name: str) -> Tensor:
        p = per_sample(v, x, name=name, effect=effect)
        if p.shape[1] != 1:
            raise ValueError(f"{effect}: channels are linked, so {name} is per item, not per channel")
        return p

    ceiling = torch.exp(param(ceiling_db, "ceiling_db") / _DB_PER_NEPER)
    target = ceiling * (1.0 - _LIMIT_MARGIN)
    release = ms_to_pole(param(release_ms, "release_ms"), sample_rate).expand(x.shape[0], 1, 1)
    driven = x * torch.exp(param(gain_db, "gain_db") / _DB_PER_NEPER)
    resolve(backend, x, effect)
    level = limiter_envelope(driven, sample_rate, true_peak=true_peak, backend=backend)
    if true_peak and exact and strict:
        # Hold the strict level (every usual meter) already in the smooth gain, so the exact
        # correction below only trims residuals. A constant for autograd.
        # Its own envelope already holds this meter's points (meter=False).
        strict_level = _peaks.strict_envelope(driven, sample_rate, meter=False)
        level = torch.maximum(level, strict_level.unsqueeze(1).to(level))
    if torch.is_grad_enabled() and (driven.requires_grad or level.requires_grad or release.requires_grad):
        required = torch.minimum(target / level.clamp_min(1e-30), torch.ones_like(level))
        y = driven * limiter_gain(required, lookahead, release, backend=backend)
    else:
        # A render: the same values, in place on the tensors made here (a 3-minute song's
        # peak held 3 more envelope-sized and 1 more song-sized temporary without this).
        required = level.clamp_min_(1e-30)
        torch.div(target.expand_as(required), required, out=required).clamp_max_(1.0)
        y = driven.mul_(limiter_gain(required, lookahead, release, backend=backend))
    if true_peak and exact:
        y = y * limiter_correction(
            y.detach(), sample_rate, target, ceiling.detach(), lookahead, release.detach(),
            strict=strict, backend=backend,
        )
    return y


@torch.no_grad()
def limiter_correction(
    y: Tensor, sample_rate: int, target: Tensor, ceiling: Tensor, lookahead: int,
    release: Tensor, *, strict: bool = True, backend: str = "auto",
) -> Tensor:
    """Gain ``(B, 1, T)`` that brings ``y``'s true peak under ``ceiling`` on every meter: the
    limiter's exact step (:func:`limiter`), never differentiated.

    First on the project's meter (fast, local), then on :func:`~diffmix.functional.peaks.strict_envelope`
    (BS.1770 Annex 2's own filter and ideal 8x interpolation too), with the same
    lookahead/release shape: a master of content dense near Nyquist read up to 1.3 dB over
    on ideal interpolation while this meter read its ceiling.

    Args:
        y: limited audio ``(B, C, T)``. sample_rate: Hz.
        target: the level to pull overs down to, linear, ``(B, 1, 1)`` (a hair under the
            ceiling). ceiling: linear, ``(B, 1, 1)``.
        lookahead, release: as :func:`limiter_gain`.
        backend: :mod:`diffmix.kernels.backend`, for the first (project-meter) stage: numba
            re-meters only the blocks a pass changed; Triton and the torch path run four
            full passes without a host synchronisation. The strict stage runs in torch.
    """
    return strict_correction(y, sample_rate, target, ceiling, lookahead, release, strict=strict,
                             backend=backend)[0]


@torch.no_grad()
def strict_correction(
    y: Tensor, sample_rate: int, target: Tensor, ceiling: Tensor, lookahead: int,
    release: Tensor, *, strict: bool = True, backend: str = "auto", bound: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`limiter_correction`'s gain, and with ``strict`` the strict true peak of ``y``
    times it, ``(B,)`` linear as :func:`~diffmix.functional.peaks.strict_envelope` reads
    it (metered on the way: no extra pass); None without ``strict``. ``bound`` ``(B,
    blocks)`` (:func:`_driven_bound`): an upper bound on every point of every meter row in
    each 256-sample block of ``y``, with which both meters skip the blocks it keeps under
    :func:`_floor_of` the target (the same gain and peak)."""
    total, metered = _meter_correction(y, sample_rate, target, ceiling, lookahead, release, backend=backend,
                                       bound=bound)
    if not strict:  # the project's meter only
        return total, None
    target = target.detach().reshape(-1, 1).to(torch.float64)
    ceil = ceiling.detach().reshape(-1, 1).to(torch.float64) * (1.0 - 1e-6)
    pole = release.to(torch.float64)
    # (B, T) in y's dtype, as metered; this module's meter's part is the level the first
    # stage left, where it has it (the same kernel on the same samples: not run twice).
    # Below the floor the level need not be exact: only what reaches the target (never above
    # the ceiling) and the peak are read, and the peak is at least the first stage's.
    floor = rows_bound = None
    if metered is not None and bound is not None:
        # Both levels exact from this floor up (the project meter's from its first pass);
        # an item whose peak stays under it is metered again in full (exact_peak). The bound
        # holds for y: blocks whose rows reach a sample the first stage's gain changed
        # are run.
        floor = _floor_of(target.reshape(-1))
        rows_bound = bound
        if not _ones(total):
            moved = F.pad(total[:, 0] != 1.0, (0, -y.shape[-1] % _pk.BLOCK))
            moved = moved.view(y.shape[0], -1, _pk.BLOCK).any(-1)
            moved[:, 1:] |= moved[:, :-1].clone()
            moved[:, :-1] |= moved[:, 1:].clone()
            rows_bound = torch.where(moved.to(bound.device), torch.full_like(bound, math.inf), bound)
    elif metered is not None:
        floor = torch.minimum(target.reshape(-1), metered.amax(1).to(torch.float64)) * (1.0 - 1e-3)
    level = _peaks.strict_envelope(y, sample_rate, gain=None if _ones(total) else total,
                                   meter=metered is None, floor=floor, bound=rows_bound)
    if metered is not None:
        torch.maximum(level, metered.to(level), out=level)

    def exact_peak() -> Tensor:  # the level's peak per item, exact (its floor reached, else metered again)
        top = level.amax(1)
        low = torch.zeros_like(top, dtype=torch.bool) if floor is None else top.to(torch.float64) < floor
        if bool(low.any()):
            idx = low.nonzero().view(-1)
            gain = None if _ones(total) else total[idx]
            again = _peaks.strict_envelope(y[idx], sample_rate, gain=gain).amax(1)
            top[idx] = torch.maximum(again, top[idx])
        return top

    for _ in range(4):
        item_over = level.amax(1, keepdim=True) > ceil
        if not bool(item_over.any()):
            return total, exact_peak()
        over = (level > target) & item_over
        # The gain each sample needs: 1 but where it is over, in float64 (so the release
        # returns to 1.0 exactly); written where needed, not as full-length quotients.
        required = torch.ones(level.shape, dtype=torch.float64, device=level.device)
        required[over] = target.expand_as(level)[over] / level[over].to(torch.float64)
        gain = limiter_gain(required.unsqueeze(1), lookahead, pole, backend=backend)
        del required
        gain = gain.to(total.dtype)
        total = gain if _ones(total) else total.mul_(gain)  # 1 times the gain, exactly
        # Re-meter only the stretches whose gain changed, with context for every filter.
        t = y.shape[-1]
        for lo, hi in _spans((gain[:, 0] != 1.0).any(0).cpu().numpy(), _STRICT_REACH):
            a = lo + _STRICT_REACH if lo > 0 else 0  # levels the change can reach, all
            b = hi - _STRICT_REACH if hi < t else t  # computed with full context
            part = _peaks.strict_envelope(y[..., lo:hi], sample_rate, gain=total[..., lo:hi])
            level[:, a:b] = part[:, a - lo: b - lo]
    # Residual overs after four passes (pathological input): scale each item down.
    peak = _peaks.strict_true_peak(y * total, sample_rate).amax(1).view(-1, 1, 1)
    scale = torch.minimum(target.view(-1, 1, 1).to(y.dtype) / peak, torch.ones_like(peak))
    return total * scale, (peak * scale).view(-1)


def _ones(gain: Tensor) -> bool:
    """Whether ``gain`` is the correction's gain of ones as a view (nothing was corrected)."""
    return gain.stride(-1) == 0


def _floor_of(target: Tensor) -> Tensor:
    """The level (linear, float64, target's shape) from which a correction's meters read
    exact: a hair (0.009 dB) under the target it pulls overs down to."""
    return target.detach().to("cpu", torch.float64) * (1.0 - 1e-3)


def _driven_bound(x: Tensor, level: Tensor, floor: Tensor | None, gain: Tensor, sample_rate: int) -> Tensor:
    """An upper bound ``(B, blocks)`` float64 on every point, in each 256-sample block, of
    the project's meter and the strict meter's FIR rows over ``x * gain`` (a drive render).

    ``level`` ``(B, 1, T)`` is ``x``'s limiter level (:func:`limiter_envelope` and
    :func:`~diffmix.functional.peaks.strict_envelope`), exact from ``floor`` ``(B,)`` up
    and at most exact below (None: exact). Each row is linear: its point over ``g x``
    next to sample ``n`` is ``g[n]`` times the row's point over ``x``, at most ``g[n]
    max(level[n], floor)``, plus the row over ``(g - g[n]) x``, at most the gain's spread
    within the row's reach times the row's L1 norm times ``|x|`` there. Per block: the
    first term's block maximum, plus the spread of ``gain`` and the largest ``|x|`` over
    the block and its neighbours (reach 40 < 256) times the largest L1 norm. A margin of
    1e-5 of ``L1 max g |x|`` covers float32 rounding of the render, the level and the
    meters' sums (each well under 1e-6 of it).
    """
    b, _, t = x.shape
    n_blocks = -(-t // _pk.BLOCK)
    f = _peaks.oversampling_factor(sample_rate)
    rows = [_peaks._strict_rows()[0], *([_peaks.interpolation_filter(f)] if f > 1 else [])]
    l1 = max(float(np.abs(r).sum(1).max()) for r in rows) * (1.0 + 1e-6)
    up = level if floor is None else torch.maximum(level, floor.to(level).view(-1, 1, 1))
    top = torch.empty(b, n_blocks, dtype=torch.float64)
    g_hi = torch.empty_like(top)
    g_lo = torch.empty_like(top)
    mag = torch.empty_like(top)
    span = _pk.BLOCK * 4096  # in parts: no full-length temporary

    def blocks(v: Tensor, value: float) -> Tensor:  # (B, n) -> (B, blocks, 256), padded with value
        return F.pad(v, (0, -v.shape[-1] % _pk.BLOCK), value=value).view(b, -1, _pk.BLOCK)

    for lo in range(0, t, span):
        hi = min(t, lo + span)
        k0, k1 = lo // _pk.BLOCK, -(-hi // _pk.BLOCK)
        g = gain[:, 0, lo:hi]
        top[:, k0:k1] = blocks(g * up[:, 0, lo:hi], 0.0).amax(-1)
        g_hi[:, k0:k1] = blocks(g, 0.0).amax(-1)
        g_lo[:, k0:k1] = blocks(g, math.inf).amin(-1)
        mag[:, k0:k1] = blocks(x[:, :, lo:hi].abs().amax(1), 0.0).amax(-1)

    def widen(v: Tensor, op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:  # over the neighbours too
        w = v.clone()
        w[:, 1:] = op(w[:, 1:], v[:, :-1])
        w[:, :-1] = op(w[:, :-1], v[:, 1:])
        return w

    g_hi, g_lo, mag = widen(g_hi, torch.maximum), widen(g_lo, torch.minimum), widen(mag, torch.maximum)
    return top * (1.0 + 1e-6) + ((g_hi - g_lo) + 1e-5 * g_hi) * l1 * mag


# Samples of context that make a stretch's strict level exact: the ideal interpolation's FFT
# blocks keep 2048 samples of context; twice that covers its ringing and every FIR's reach.
_STRICT_REACH = 4096


def _spans(mask: np.ndarray, reach: int) -> list[tuple[int, int]]:
    """The runs of ``mask`` padded by ``2 * reach`` each side (within it), overlaps merged."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    spans: list[list[int]] = []
    for start, stop in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
        lo, hi = max(0, start - 2 * reach), min(mask.shape[0], stop + 2 * reach)
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = hi
        else:
            spans.append([lo, hi])
    return [(lo, hi) for lo, hi in spans]


@torch.no_grad()
def _meter_correction(
    y: Tensor, sample_rate: int, target: Tensor, ceiling: Tensor, lookahead: int, release: Tensor,
    *, backend: str = "auto", bound: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Gain ``(B, 1, T)`` that brings ``y``'s metered true peak under ``ceiling`` (the
    project's meter), and where the compiled path metered it, ``y`` times that gain's
    per-sample level on that meter ``(B, T)`` (:func:`limiter_envelope`'s; with ``bound``,
    exact from :func:`_floor_of` the target up), else None."""
    target = target.detach()
    if _pk.available(y, backend) and _peaks.oversampling_factor(sample_rate) > 1:
        return _exact_correction_local(y, sample_rate, target, ceiling, lookahead, release, bound)
    # Triton (CUDA, or the interpreter) and the torch path: a fixed four passes with no
    # host synchronisation. Each pass pulls every level above ``target`` of each item that
    # still reads over the ceiling down to it (an item under the ceiling asks for 1.0, so
    # the pass leaves it unchanged); the envelope, ramp and smoother run on ``backend``.
    ceil = ceiling.detach().reshape(-1, 1, 1) * (1.0 - 1e-6)
    total = torch.ones_like(y[:, :1])
    for _ in range(4):
        level = limiter_envelope(y * total, sample_rate, backend=backend)
        item_over = level.amax(-1, keepdim=True) > ceil
        over = (level > target) & item_over
        required = torch.where(over, target / level.clamp_min(1e-30), torch.ones_like(level))
        # The release smoother returns 1.0 to within an ulp: items not over stay bit-exact.
        gain = limiter_gain(required, lookahead, release, backend=backend)
        total = torch.where(item_over, total * gain, total)
    # Residual overs after four passes (pathological input): scale those items down.
    peak = _peaks.true_peak(y * total, sample_rate, backend=backend).amax(1).view(-1, 1, 1)
    return total * torch.where(peak > ceil, target / peak, torch.ones_like(peak)), None


def _exact_correction_local(
    y: Tensor, sample_rate: int, target: Tensor, ceiling: Tensor, lookahead: int, release: Tensor,
    bound: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`_meter_correction` on CPU, re-metering only where the gain changed.

    The envelope is metered once in full with the compiled kernel (no oversampled copy).
    A pass pulls every sample above ``target`` of each item that reads over ``ceiling``
    down to ``target``; the gain it adds ripples the inter-sample peaks by far less than
    the margin between the two, so one pass nearly always suffices, and the loop ends as
    soon as the meter reads at most ``ceiling`` everywhere (the guarantee). The correction
    gain is computed in float64, so its release tail returns exactly to 1.0 in the audio's
    dtype instead of stalling an ulp short; only the 256-sample blocks whose 48-tap
    neighbourhood saw a changed sample are re-metered. Every other block's level is
    bit-identical to a full re-meter, so nothing is traded for the speed.

    ``bound`` ``(B, blocks)`` float64 (:func:`_driven_bound`): an upper bound on every point
    of each 256-sample block of ``y``; the first metering then skips the blocks it keeps
    under :func:`_floor_of` the target (the level there reads 0), so the level returned is
    exact wherever it reaches that floor and at most exact elsewhere.
    """
    b, _, t = y.shape
    yn = y.contiguous().numpy()
    taps = _pk._taps(sample_rate, y.dtype)
    if bound is None:
        level, code = _pk.envelope_numpy(yn, taps, want_code=False)
    else:
        todo = (bound >= _floor_of(target).reshape(-1, 1)).to(torch.uint8).numpy()
        level = np.zeros((b, t), dtype=yn.dtype)  # read 0 where skipped
        level, code = _pk.envelope_numpy(yn, taps, level, todo=todo, want_code=False)
    tgt = np.broadcast_to(target.reshape(-1, 1).to(torch.float64).numpy(), (b, 1))
    # A few ulps of headroom, so the kernel and the meter can never disagree across it.
    ceil = np.broadcast_to(ceiling.reshape(-1).to(y.dtype).numpy() * (1.0 - 1e-6), (b,))
    # The gain, written from the first pass that changes it: a render the meter already
    # reads under the ceiling gets ones as a view (a full-length buffer's fresh pages cost
    # more than the pass that fills it).
    total = None
    pole = release.to(torch.float64)
    n_blocks = -(-t // _pk.BLOCK)
    for _ in range(4):
        item_over = level.max(1) > ceil
        if not item_over.any():
            out = torch.ones((b, 1, 1), dtype=y.dtype).expand(b, 1, t) if total is None else \
                torch.from_numpy(total).unsqueeze(1)
            return out, torch.from_numpy(level)
        over = (level > tgt.astype(yn.dtype)) & item_over[:, None]
        required = np.where(over, tgt / np.maximum(level, 1e-30), 1.0)
        gain64 = limiter_gain(torch.from_numpy(required).unsqueeze(1), lookahead, pole,
                              backend="numba")
        gain = gain64[:, 0].numpy().astype(yn.dtype)
        if total is None:
            total = gain  # 1 times the gain, exactly
        else:
            total *= gain
        # Blocks whose samples, or whose neighbours' within the 24-tap reach, changed.
        per_block = np.zeros((b, n_blocks * _pk.BLOCK), dtype=bool)
        per_block[:, :t] = gain != 1.0
        # any(axis) on a 3-d array is a 2-d array (numpy's stubs also allow a scalar).
        todo = cast(np.ndarray, per_block.reshape(b, n_blocks, _pk.BLOCK).any(-1))
        todo[:, 1:] |= todo[:, :-1].copy()
        todo[:, :-1] |= todo[:, 1:].copy()
        _pk.envelope_numpy(yn * total[:, None, :], taps, level, code, todo.astype(np.uint8), False)
    out = torch.from_numpy(total).unsqueeze(1)
    if (level.max(1) <= ceil).all():
        return out, torch.from_numpy(level)
    # Residual overs after four passes (pathological input): scale each item down.
    peak = true_peak(y * out, sample_rate).amax(1, keepdim=True).unsqueeze(-1)
    return out * torch.minimum(target.to(y.dtype) / peak, torch.ones_like(peak)), None


def drive_renders(
    x: Tensor, sample_rate: int, *, ceiling_db: Tensor, release_ms: Tensor, lookahead_ms: float = 5.0,
    true_peak: bool = True, exact: bool = True, strict: bool = False,
):  # noqa: ANN201 - a pair of callables
    """Cheap ``drives (B,) dB -> output (B, C, T)`` renders of :func:`limiter` over a fixed
    input: ``(smooth, exact)``.

    The limiter's level detector is linear in its drive (the true-peak envelope of ``g · x``
    is ``g`` times that of ``x``), so the envelope of ``x`` is metered once (on first use)
    and every drive after that costs one gain ramp (:func:`limiter_gain`). ``smooth`` leaves
    out the final metered correction, which only ever lowers the level a hair; ``exact`` is
    ``smooth`` times that correction (:func:`limiter_correction`, which meters the very
    output it returns, so the ceiling holds exactly as in :func:`limiter`). ``exact`` equals
    :func:`limiter` at that ``gain_db`` to float rounding. ``exact.strict_peak()`` gives
    the last output's strict true peak ``(B,)`` (linear, metered by the correction; None
    without ``strict``). No gradient.

    Repeated work is skipped where the output can't change: a drive equal to the last
    one reuses its gain (``exact`` after ``smooth`` at the solved drive), and an item
    whose driven level stays under the limiter's target everywhere (the limiter at rest:
    its gain is 1) is not metered again: its output reads under the ceiling by
    construction (:func:`_rest_peak_bound`), which is then its ``strict_peak``. The input's
    strict level is metered exact only where a drive up to ``_FLOOR_HEADROOM_DB`` above the
    first can limit it and at its peak (:func:`~diffmix.functional.peaks.strict_envelope`'s
    ``floor``); a drive past that meters it again in full. The renders read the same.

    Args:
        x: the limiter's input at 0 dB drive, ``(B, C, T)``.
        ceiling_db, release_ms: per item, any shape with ``B`` elements.
        lookahead_ms, true_peak, exact, strict: as :func:`limiter`.
    """
    lookahead = _lookahead_samples(float(lookahead_ms), sample_rate, "limiter")
    with torch.no_grad():
        ceiling = torch.exp(ceiling_db.detach() / _DB_PER_NEPER).reshape(-1, 1, 1)
        target = (ceiling * (1.0 - _LIMIT_MARGIN)).to(x.dtype)
        release = ms_to_pole(release_ms.detach(), sample_rate).reshape(-1).to(x.dtype)
        release = release.expand(x.shape[0]).contiguous()
    cache: list[Tensor] = []
    last_drives: list[Tensor | None] = [None]  # the drives the gain buffer holds
    # The strict level is exact where it reaches this floor (B,) (linear, at 0 dB drive), at
    # most exact below it (peaks.strict_envelope): a drive whose gain keeps every level under
    # it at 1 reads only exact levels. None: exact everywhere.
    floors: list[Tensor | None] = [None]

    def gains(drives: Tensor) -> Tensor:
        return torch.pow(10.0, drives.to(x.device, torch.float64) / 20.0).to(x.dtype).view(-1, 1, 1)

    # On CPU the strict meter's pass meters the project's rows too, under the same floor
    # (the compiled kernel either way: the same level where it counts), so the level is one
    # pass whose rows skip what can't limit; elsewhere the limiter's own envelope runs first.
    fused = _FUSED_LEVEL and true_peak and exact and strict and x.device.type == "cpu" and _pk.available(x)

    # Smooth (no correction, so no peak read from the level): the project meter's level
    # exact only from the floor up on CPU, its rows skipping the 256-sample blocks whose L1
    # bound stays under it (as the strict meter's floor does).
    floored = true_peak and not exact and x.device.type == "cpu" and _pk.available(x) and _FUSED_LEVEL

    def strict_level(floor: Tensor | None, limits: bool = False) -> Tensor:
        if floored:  # the project meter alone
            taps = _peaks.interpolation_filter(_peaks.oversampling_factor(sample_rate))
            todo = None if floor is None else _peaks._fir_todo(x, taps, floor)
            return _peaks._fir_envelope(x, taps, todo).unsqueeze(1)
        # ``limits``: the floor is under each item's samples' peak (the drive limits). Then a
        # few % of blocks reach it and the ideal points, computed first, rule out the FIR
        # rows elsewhere; at a floor at the peak the FIR rows first rule out more.
        level = _peaks.strict_envelope(x, sample_rate, meter=fused, floor=floor, ideal_first=limits)
        return level.unsqueeze(1)

    def smooth(drives: Tensor) -> Tensor:
        g = gains(drives)
        with torch.no_grad():
            if not cache:  # metered on first use: a job without a loudness goal never pays
                if true_peak and exact and strict:  # as limiter() does
                    # Exact from _FLOOR_HEADROOM_DB under where this drive starts to limit,
                    # and at the peak (the floor at most the samples' peak, which the level's
                    # peak is not under, so the peak is exact).
                    headroom = 10.0 ** (_FLOOR_HEADROOM_DB / 20.0)
                    where = target.view(-1).double() / (g.view(-1).double() * headroom)
                    if fused:
                        peak = x.abs().amax((1, 2)).double().cpu()
                        floors[0] = torch.minimum(where.cpu(), peak)
                        level = strict_level(floors[0], bool((where.cpu() < peak).all())).to(x.dtype)
                    else:
                        level = limiter_envelope(x, sample_rate, true_peak=true_peak)
                        peak = level.amax((1, 2)).double().cpu()
                        floors[0] = torch.minimum(where.cpu(), peak)
                        limits = bool((where.cpu() < peak).all())
                        level = torch.maximum(level, strict_level(floors[0], limits).to(level))
                elif floored and _peaks.oversampling_factor(sample_rate) > 1:
                    headroom = 10.0 ** (_FLOOR_HEADROOM_DB / 20.0)
                    floors[0] = (target.view(-1).double() / (g.view(-1).double() * headroom)).cpu()
                    level = strict_level(floors[0]).to(x.dtype)
                else:
                    level = limiter_envelope(x, sample_rate, true_peak=true_peak)
                # The level, then two buffers every drive reuses for the gain it needs
                # and the gain: each full-length temporary would be fresh memory, which
                # costs more here than the arithmetic. Last, each item's peak level.
                cache.extend([level, torch.empty_like(level), torch.empty_like(level), level.amax((1, 2))])
            floor = floors[0]
            if floor is not None and bool(
                (floor * g.view(-1).double().cpu() * (1.0 + 1e-6) > target.view(-1).double().cpu()).any()
            ):  # a drive that limits some level under the floor: the strict level exact everywhere
                torch.maximum(cache[0], strict_level(None).to(cache[0]), out=cache[0])
                floors[0] = None
            level, required, gain, _ = cache
            key = drives.detach().to("cpu", torch.float64).reshape(-1)
            if last_drives[0] is None or not torch.equal(last_drives[0], key):
                last_drives[0] = None  # the buffer is being rewritten
                # min(target / max(g level, 1e-30), 1)
                torch.mul(level, g, out=required).clamp_min_(1e-30)
                torch.div(target, required, out=required).clamp_max_(1.0)
                limiter_gain(required, lookahead, release, out=gain).mul_(g)
                last_drives[0] = key.clone()
            return x * gain

    last_peak: list[Tensor | None] = [None]

    def corrected(drives: Tensor) -> Tensor:
        y = smooth(drives)
        last_peak[0] = None
        if not (true_peak and exact):
            return y  # sample-peak mode: the smooth gain already holds the ceiling
        with torch.no_grad():  # y is this call's own render: corrected in place
            g = gains(drives).view(-1)
            # At rest: every sample's driven level (float, as smooth() computes it) is at
            # most the target, so the gain is 1 and the output reads under the ceiling.
            driven = cache[3] * g
            rest = (driven <= target.view(-1)).cpu()
            bound = _rest_peak_bound(driven, sample_rate)
            if bool(rest.all()):
                last_peak[0] = bound if strict else None
                return y
            todo = (~rest).nonzero().view(-1)
            whole = todo.numel() == y.shape[0]
            part = y if whole else y[todo]
            pick = (lambda v: v) if whole else (lambda v: v[todo.to(v.device)])
            # Where this render's own level bounds the meters' points (the compiled path), they
            # skip the blocks that can't reach the correction's floor.
            rows_bound = None
            if _pk.available(x) and _peaks.oversampling_factor(sample_rate) > 1:
                floor = floors[0]
                rows_bound = _driven_bound(pick(x), pick(cache[0]), None if floor is None else pick(floor),
                                           pick(cache[2]), sample_rate)
            gain, peak = strict_correction(
                part, sample_rate, pick(target), pick(ceiling.to(x.dtype)), lookahead,
                pick(release).view(-1, 1, 1), strict=strict, bound=rows_bound,
            )
            if whole:
                last_peak[0] = peak
                return y if _ones(gain) else y.mul_(gain)
            y[todo] = part if _ones(gain) else part.mul_(gain)
            if strict and peak is not None:
                last_peak[0] = bound.index_copy(0, todo.to(bound.device), peak.to(bound))
            return y

    # a getter, not an attribute the function sets on itself: that would be a reference
    # cycle, keeping the input and the buffers alive past the renderer's last use
    corrected.strict_peak = lambda: last_peak[0]  # type: ignore[attr-defined]
    return smooth, corrected


# Whether the drive renders on CPU meter the project's rows under the level's floor (in the
# strict meter's pass, or alone in smooth mode) rather than in a whole pass of their own
# first: the same renders either way (a switch for the test that compares them).
_FUSED_LEVEL = True

# How far above the first drive the pre-limiter strict level stays exact enough for every
# later drive of a solve (which moves by hundredths to tenths of a dB); a drive beyond it
# meters the whole level again.
_FLOOR_HEADROOM_DB = 1.0


def _rest_peak_bound(driven: Tensor, sample_rate: int) -> Tensor:
    """An upper bound ``(B,)`` float64 on the strict true peak of a drive render at rest.

    ``driven`` is ``g`` times each item's peak level on the limiter's meters (its project
    and strict envelopes of the input, as metered), where the gain is 1 (``driven`` at
    most the target): the output is ``g x`` but for float32 rounding of the product and
    the release's last ulps (a few units in the last place of each sample), so its reading
    is at most ``driven`` times the meter's rounding plus its gain on that error
    (:func:`~diffmix.functional.peaks.strict_sensitivity`): about 4.4e-5 of ``driven``,
    well inside the limiter's 1e-4 margin under its ceiling.
    """
    sensitivity, rounding = _peaks.strict_sensitivity(sample_rate)
    moved = 2.0 ** -21  # of the peak: eight float32 ulps per sample, a generous count
    return driven.detach().to("cpu", torch.float64) * (1.0 + rounding + sensitivity * moved + 2.0 ** -22)
