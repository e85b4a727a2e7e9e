"""Compressor, expander/gate, lookahead limiter and 4x true-peak metering.

Every effect here is a feed-forward design in the log domain (Giannoulis et al. 2012):

1. a detector turns the side-chain into a level in dB (sample peak, or RMS from a one-pole
   mean-square follower), linked across channels by ``max`` or ``mean`` or left unlinked;
2. a static gain computer maps the level to a target gain in dB (soft knee, ratio, range);
3. a branching one-pole smoother applies attack and release (and hold, for the gate) to the
   gain in dB; it runs as a compiled kernel with an exact time-reversed backward
   (:mod:`diffmix.functional._dynamics_kernels`);
4. the gain is converted to amplitude, shifted earlier by the lookahead, and applied.

Time constants: ``attack_ms`` and ``release_ms`` are the one-pole time constants, so after a
step the gain has covered ``1 - 1/e`` (63.2 %) of the way to its target after exactly that
time: pole ``a = exp(-1 / (t * sample_rate))``.

Lookahead is latency-free: the gain computed ``lookahead_ms`` ahead is applied now (the
side-chain sees silence past the end), so the output stays aligned with the input.

References:
    D. Giannoulis, M. Massberg, J. D. Reiss, "Digital Dynamic Range Compressor Design - A
    Tutorial and Analysis", JAES 60(6), 2012.
    ITU-R BS.1770-4 Annex 2, true-peak measurement by 4x oversampling.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffmix.checks import check_choice
from diffmix.functional import _peak_kernels as _pk
from diffmix.functional import peaks as _peaks
from diffmix.functional._dynamics_kernels import FLOOR_POWER, HAVE_NUMBA, smooth
from diffmix.functional.filters import linkwitz_riley
from diffmix.params import ParamValue, broadcast_param, per_sample

if HAVE_NUMBA:
    from diffmix.functional._dynamics_fused import FusedDynamics

DETECTORS = ("peak", "rms")
LINKS = ("max", "mean", "none")
_DB_PER_NEPER = 20.0 / math.log(10.0)
# The limiter aims this far below its ceiling (relative, -0.0009 dB) so that float rounding
# in the gain path can never carry a sample over it.
_LIMIT_MARGIN = 1e-4


def ms_to_pole(ms: Tensor, sample_rate: int) -> Tensor:
    """One-pole coefficient ``exp(-1 / (t * sample_rate))`` for a time constant in ms."""
    return torch.exp(-1000.0 / (ms * sample_rate))


def knee_curve(d: Tensor, knee_db: Tensor) -> Tensor:
    """Soft rectifier ``f(d)``: 0 below ``-knee/2``, ``d`` above ``knee/2``, quadratic between.

    ``f`` and its derivative are continuous; with ``knee_db = 0`` it is ``relu(d)`` and every
    gradient (including the one to ``knee_db``) stays finite.
    """
    half = 0.5 * knee_db
    inside = torch.minimum(torch.maximum(d, -half), half) + half
    quad = inside * inside / (2.0 * knee_db.clamp_min(1e-6))
    return torch.where(d >= half, d, torch.where(d <= -half, torch.zeros_like(d), quad))


def compressor_curve(
    level_db: Tensor, threshold_db: Tensor, ratio: Tensor, knee_db: Tensor
) -> Tensor:
    """Static compressor gain in dB (``<= 0``) for an input level in dB.

    Above the knee the output level rises ``1/ratio`` dB per input dB; inside the knee
    (``|level - threshold| < knee/2``) the slope moves smoothly from 1 to ``1/ratio``.
    """
    return (1.0 / ratio - 1.0) * knee_curve(level_db - threshold_db, knee_db)


def expander_curve(
    level_db: Tensor, threshold_db: Tensor, ratio: Tensor, knee_db: Tensor, range_db: Tensor
) -> Tensor:
    """Static downward-expander gain in dB: below threshold the output falls ``ratio`` dB per
    input dB, limited to ``-range_db``. A large ratio makes it a gate."""
    gain = (1.0 - ratio) * knee_curve(threshold_db - level_db, knee_db)
    return torch.maximum(gain, -range_db)


def _rms_power(x: Tensor, sample_rate: int, rms_ms: float, backend: str = "auto") -> Tensor:
    """One-pole mean square with time constant ``rms_ms``."""
    b, c, t = x.shape
    pole = torch.tensor(math.exp(-1000.0 / (rms_ms * sample_rate)), dtype=x.dtype, device=x.device)
    return smooth((x * x).reshape(b * c, t), pole, pole, backend=backend).reshape(b, c, t)


def _level_db(power: Tensor, link: str) -> Tensor:
    """Linked detector level in dB, ``(B, C or 1, T)``, floored for digital silence."""
    if link == "max":
        power = power.amax(1, keepdim=True)
    elif link == "mean":
        power = power.mean(1, keepdim=True)
    return (0.5 * _DB_PER_NEPER) * torch.log(power.clamp_min(FLOOR_POWER))


def _smooth_db(
    gain_db: Tensor, a_down: Tensor, a_up: Tensor, hold: Tensor | None, init: float,
    backend: str = "auto",
) -> Tensor:
    """Branching smoother over ``(B, C, T)`` with poles shaped ``(B|1, C|1, 1)``."""
    b, c, t = gain_db.shape
    rows = b * c

    def per_row(p: Tensor) -> Tensor:
        return p.expand(b, c, 1).reshape(rows)

    hold_rows = None if hold is None else per_row(hold)
    out = smooth(
        gain_db.reshape(rows, t), per_row(a_down), per_row(a_up), hold=hold_rows, init=init,
        backend=backend,
    )
    return out.reshape(b, c, t)


def _lookahead_samples(lookahead_ms: float, sample_rate: int, effect: str) -> int:
    if isinstance(lookahead_ms, Tensor) or not math.isfinite(lookahead_ms) or lookahead_ms < 0:
        raise ValueError(f"{effect}: lookahead_ms must be a non-negative float, got {lookahead_ms!r}")
    return int(round(lookahead_ms * sample_rate / 1000.0))


def _check_sidechain(x: Tensor, sidechain: Tensor | None, effect: str) -> None:
    if sidechain is None:
        return
    if not isinstance(sidechain, Tensor) or sidechain.shape != x.shape:
        shape = tuple(sidechain.shape) if isinstance(sidechain, Tensor) else type(sidechain).__name__
        raise ValueError(
            f"{effect}: sidechain must have the input's shape {tuple(x.shape)}, got {shape}"
        )
    if sidechain.dtype != x.dtype or sidechain.device != x.device:
        raise ValueError(f"{effect}: sidechain must have the input's dtype and device")


class _Setting:
    """The per-sample parameters of one dynamics call, each ``(B|1, C|1, 1)``."""

    def __init__(self, kind: int, thr: Tensor, slope: Tensor, knee: Tensor, rng: Tensor,
                 a_down: Tensor, a_up: Tensor, hold: Tensor, makeup: Tensor, mix: Tensor) -> None:
        self.kind = kind
        self.values = (thr, slope, knee, rng, a_down, a_up, makeup, mix)
        self.hold = hold

    def curve(self, level: Tensor) -> Tensor:
        thr, slope, knee, rng = self.values[:4]
        if self.kind == 0:
            return slope * knee_curve(level - thr, knee)
        return torch.maximum(slope * knee_curve(thr - level, knee), -rng)


def _run(
    x: Tensor,
    sample_rate: int,
    setting: _Setting,
    *,
    detector: str,
    rms_ms: float,
    link: str,
    lookahead: int,
    sidechain: Tensor | None,
    backend: str,
) -> Tensor:
    """Detector -> curve -> smoother -> gain, by the fused kernel or the composite path."""
    side = x if sidechain is None else sidechain
    solver = "torch" if backend == "torch" else "auto"
    power = _rms_power(side, sample_rate, rms_ms, solver) if detector == "rms" else None
    b, c, t = x.shape
    per_channel = any(v.shape[1] != 1 for v in (*setting.values, setting.hold))
    fused = backend != "torch" and HAVE_NUMBA and x.device.type == "cpu"
    if fused and not (per_channel and link != "none" and c > 1):
        linked = link != "none" or c == 1
        rows, nc = (b, c) if linked else (b * c, 1)

        def per_row(v: Tensor) -> Tensor:
            return v.expand(b, 1 if linked else c, 1).reshape(rows)

        side_in = power if power is not None else (None if sidechain is None else sidechain)
        side_rows = None if side_in is None else side_in.reshape(rows, nc, t)
        values = [per_row(v.to(x.dtype)) for v in setting.values]
        store = torch.is_grad_enabled() and any(
            v is not None and v.requires_grad for v in (x, side_rows, *values)
        )
        opts = (setting.kind, link == "mean", lookahead, per_row(setting.hold), power is None, store)
        out = FusedDynamics.apply(x.reshape(rows, nc, t), side_rows, *values, opts)
        return out.reshape(b, c, t)
    if power is None:
        power = side * side
    if lookahead:
        power = F.pad(power, (0, lookahead))
    gain_db = setting.curve(_level_db(power, link))
    thr, slope, knee, rng, a_down, a_up, makeup, mix = setting.values
    smoothed = _smooth_db(gain_db, a_down, a_up, setting.hold, 0.0, solver)
    if lookahead:
        smoothed = smoothed[..., lookahead:]
    wet = torch.exp((smoothed + makeup) / _DB_PER_NEPER)
    return x * (1.0 + mix * (wet - 1.0))


def compressor(
    x: Tensor,
    sample_rate: int,
    *,
    threshold_db: ParamValue = -20.0,
    ratio: ParamValue = 4.0,
    knee_db: ParamValue = 6.0,
    attack_ms: ParamValue = 10.0,
    release_ms: ParamValue = 100.0,
    makeup_db: ParamValue = 0.0,
    mix: ParamValue = 1.0,
    detector: str = "peak",
    rms_ms: float = 10.0,
    link: str = "max",
    lookahead_ms: float = 0.0,
    sidechain: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Feed-forward compressor with soft knee, ballistics, lookahead and side-chain.

    Args:
        x: audio.
        sample_rate: Hz.
        threshold_db: level where compression starts (centre of the knee), dB.
        ratio: input dB per output dB above the knee (1 = no compression).
        knee_db: width of the soft knee in dB (0 = hard knee, gradients stay finite).
        attack_ms: time constant while gain reduction grows, ms (63.2 % of a step).
        release_ms: time constant while gain reduction recovers, ms.
        makeup_db: output gain, dB.
        mix: dry/wet, 0 dry (parallel compression in between) to 1 fully compressed.
        detector: ``"peak"`` (sample magnitude) or ``"rms"`` (one-pole mean square).
        rms_ms: time constant of the RMS detector, ms.
        link: ``"max"`` or ``"mean"`` of the channels' detector power, or ``"none"``.
        lookahead_ms: the gain reacts this much ahead of the audio (no added latency).
        sidechain: external detector input (ducking), same shape as ``x``.
        backend: ``"auto"`` (fused numba kernel on CPU, composite torch path elsewhere) or
            ``"torch"`` (the composite path with the pure-PyTorch smoother, everywhere).

    Parameters are floats, ``(B,)`` or ``(B, C)``; all but the options are differentiable.
    CUDA: yes (torch solver; the numba kernel runs on CPU).

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Returns:
        The compressed audio.

    >>> y = compressor(torch.randn(2, 2, 4410), 44100, threshold_db=-30.0, ratio=4.0)
    >>> y.shape
    torch.Size([2, 2, 4410])
    """
    effect = "compressor"
    check_choice(detector, DETECTORS, effect, "detector")
    check_choice(link, LINKS, effect, "link")
    _check_sidechain(x, sidechain, effect)

    def param(v: ParamValue, name: str) -> Tensor:
        return per_sample(v, x, name=name, effect=effect)

    zero = torch.zeros((1, 1, 1), dtype=x.dtype, device=x.device)
    setting = _Setting(
        0,
        param(threshold_db, "threshold_db"),
        1.0 / param(ratio, "ratio") - 1.0,
        param(knee_db, "knee_db"),
        zero,
        ms_to_pole(param(attack_ms, "attack_ms"), sample_rate),
        ms_to_pole(param(release_ms, "release_ms"), sample_rate),
        zero.long(),
        param(makeup_db, "makeup_db"),
        param(mix, "mix"),
    )
    return _run(
        x, sample_rate, setting, detector=detector, rms_ms=rms_ms, link=link,
        lookahead=_lookahead_samples(lookahead_ms, sample_rate, effect), sidechain=sidechain,
        backend=backend,
    )


def expander(
    x: Tensor,
    sample_rate: int,
    *,
    threshold_db: ParamValue = -50.0,
    ratio: ParamValue = 4.0,
    knee_db: ParamValue = 0.0,
    attack_ms: ParamValue = 1.0,
    release_ms: ParamValue = 100.0,
    hold_ms: ParamValue = 10.0,
    range_db: ParamValue = 60.0,
    detector: str = "peak",
    rms_ms: float = 10.0,
    link: str = "max",
    lookahead_ms: float = 0.0,
    sidechain: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Downward expander / noise gate with hold and range.

    Below ``threshold_db`` the gain falls ``ratio - 1`` dB per dB (a ratio of 20 or more acts
    as a gate), never below ``-range_db``. ``attack_ms`` is how fast the gate opens,
    ``release_ms`` how fast it closes, after staying open for ``hold_ms`` once the signal
    drops.

    Args:
        x: audio.
        sample_rate: Hz.
        threshold_db: dB. ratio: expansion ratio (>= 1). knee_db: soft knee width, dB.
        attack_ms, release_ms: opening and closing time constants, ms.
        hold_ms: time the gain stays put before closing, ms (not differentiable: it
            counts whole samples).
        range_db: largest attenuation, dB.
        detector, rms_ms, link, lookahead_ms, sidechain: as in :func:`compressor`.

    Differentiable: all parameters but ``hold_ms``. CUDA: yes.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Returns:
        The expanded (gated) audio.

    >>> x = torch.cat([torch.full((1, 1, 441), 1e-4), torch.ones(1, 1, 441)], -1)
    >>> y = expander(x, 44100, threshold_db=-40.0, ratio=50.0, range_db=60.0,
    ...              attack_ms=1.0, release_ms=1.0, hold_ms=0.0)
    >>> bool(y[..., 400:441].abs().max() < 2e-7), bool(y[..., -1] > 0.999)
    (True, True)
    """
    effect = "expander"
    check_choice(detector, DETECTORS, effect, "detector")
    check_choice(link, LINKS, effect, "link")
    _check_sidechain(x, sidechain, effect)

    def param(v: ParamValue, name: str) -> Tensor:
        return per_sample(v, x, name=name, effect=effect)

    zero = torch.zeros((1, 1, 1), dtype=x.dtype, device=x.device)
    hold = torch.round(param(hold_ms, "hold_ms").detach() * (sample_rate / 1000.0)).long()
    setting = _Setting(
        1,
        param(threshold_db, "threshold_db"),
        1.0 - param(ratio, "ratio"),
        param(knee_db, "knee_db"),
        param(range_db, "range_db"),
        ms_to_pole(param(release_ms, "release_ms"), sample_rate),  # closing
        ms_to_pole(param(attack_ms, "attack_ms"), sample_rate),  # opening
        hold,
        zero,
        zero + 1.0,
    )
    return _run(
        x, sample_rate, setting, detector=detector, rms_ms=rms_ms, link=link,
        lookahead=_lookahead_samples(lookahead_ms, sample_rate, effect), sidechain=sidechain,
        backend=backend,
    )


# ---- true peak ------------------------------------------------------------------------

# ITU-R BS.1770-4 Annex 2: the 48-tap, 4-phase interpolating FIR of the true-peak meter, as
# printed in the Recommendation (one row per phase; tap j multiplies x[n - j]).
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


def _linked_level(x: Tensor, sample_rate: int, true_peak: bool) -> Tensor:
    """The level to hold under the ceiling, channels linked: ``(B, C, T) -> (B, 1, T)``.

    On CPU the true-peak envelope is one compiled pass that never materialises the
    oversampled signal (:mod:`diffmix.functional._peak_kernels`), with an exact backward.
    """
    if not true_peak or _peaks.oversampling_factor(sample_rate) == 1:
        return x.abs().amax(1, keepdim=True)
    if _pk.available(x):
        return _pk.envelope(x, sample_rate)
    return _true_peak_envelope(x, sample_rate).amax(1, keepdim=True)


def _limit_gain(required: Tensor, lookahead: int, release: Tensor) -> Tensor:
    """Smallest-effort gain ``<= required`` everywhere: lookahead ramp, instant attack,
    one-pole release. ``required`` is ``(B, 1, T)`` in ``(0, 1]``.

    A minimum over the next ``lookahead + 1`` samples followed by a moving average of the
    same length can never exceed ``required`` (every averaged term already covers the
    current sample), and ramps into each peak linearly over the lookahead.
    """
    b, _, t = required.shape
    if lookahead and _pk.available(required):
        # O(T) running minimum and running sum, instead of pools that cost O(T * L).
        required = _pk.ramp(required.reshape(b, t), lookahead).reshape(b, 1, t)
    elif lookahead:
        padded = F.pad(required, (lookahead, lookahead), value=1.0)
        held = -F.max_pool1d(-padded, lookahead + 1, stride=1)
        required = F.avg_pool1d(held, lookahead + 1, stride=1)
    zero = torch.zeros((), dtype=required.dtype, device=required.device)
    out = smooth(required.reshape(b, t), zero, release.reshape(-1), init=1.0)
    return out.reshape(b, 1, t)


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
    level = _linked_level(driven, sample_rate, true_peak)
    required = torch.minimum(target / level.clamp_min(1e-30), torch.ones_like(level))
    y = driven * _limit_gain(required, lookahead, release)
    if true_peak and exact:
        y = y * _exact_correction(
            y.detach(), sample_rate, target, ceiling.detach(), lookahead, release.detach()
        )
    return y


@torch.no_grad()
def _exact_correction(
    y: Tensor, sample_rate: int, target: Tensor, ceiling: Tensor, lookahead: int, release: Tensor
) -> Tensor:
    """Gain ``(B, 1, T)`` that brings ``y``'s metered true peak under ``ceiling``."""
    target = target.detach()
    if _pk.available(y) and _peaks.oversampling_factor(sample_rate) > 1:
        return _exact_correction_local(y, sample_rate, target, ceiling, lookahead, release)
    total = torch.ones_like(y[:, :1])
    # The smooth stage aims a hair under the ceiling with the same meter, so usually nothing
    # is over: one fast true-peak read (no oversampled copy) settles that, and the
    # envelope passes below run only for the items actually over the ceiling.
    if bool((true_peak(y, sample_rate).amax(1) <= ceiling.reshape(-1, 1)[:, 0]).all()):
        return total
    for _ in range(4):
        level = _true_peak_envelope(y * total, sample_rate).amax(1, keepdim=True)
        over = level > target
        if not bool(over.any()):
            return total
        required = torch.where(over, target / level, torch.ones_like(level))
        total = total * _limit_gain(required, lookahead, release)
    # Residual overs after four passes (pathological input): scale each item down.
    peak = true_peak(y * total, sample_rate).amax(1, keepdim=True).unsqueeze(-1)
    return total * torch.minimum(target / peak, torch.ones_like(peak))


def _exact_correction_local(
    y: Tensor, sample_rate: int, target: Tensor, ceiling: Tensor, lookahead: int, release: Tensor
) -> Tensor:
    """:func:`_exact_correction` on CPU, re-metering only where the gain changed.

    The envelope is metered once in full with the compiled kernel (no oversampled copy).
    A pass pulls every sample above ``target`` of each item that reads over ``ceiling``
    down to ``target``; the gain it adds ripples the inter-sample peaks by far less than
    the margin between the two, so one pass nearly always suffices, and the loop ends as
    soon as the meter reads at most ``ceiling`` everywhere (the guarantee). The correction
    gain is computed in float64, so its release tail returns exactly to 1.0 in the audio's
    dtype instead of stalling an ulp short; only the 256-sample blocks whose 48-tap
    neighbourhood saw a changed sample are re-metered. Every other block's level is
    bit-identical to a full re-meter, so nothing is traded for the speed.
    """
    b, _, t = y.shape
    yn = y.contiguous().numpy()
    taps = _pk._taps(sample_rate, y.dtype)
    level, code = _pk.envelope_numpy(yn, taps, want_code=False)
    tgt = np.broadcast_to(target.reshape(-1, 1).to(torch.float64).numpy(), (b, 1))
    # A few ulps of headroom, so the kernel and the meter can never disagree across it.
    ceil = np.broadcast_to(ceiling.reshape(-1).to(y.dtype).numpy() * (1.0 - 1e-6), (b,))
    total = np.ones((b, t), dtype=yn.dtype)
    pole = release.to(torch.float64)
    n_blocks = -(-t // _pk.BLOCK)
    for _ in range(4):
        item_over = level.max(1) > ceil
        if not item_over.any():
            return torch.from_numpy(total).unsqueeze(1)
        over = (level > tgt.astype(yn.dtype)) & item_over[:, None]
        required = np.where(over, tgt / np.maximum(level, 1e-30), 1.0)
        gain64 = _limit_gain(torch.from_numpy(required).unsqueeze(1), lookahead, pole)
        gain = gain64[:, 0].numpy().astype(yn.dtype)
        total *= gain
        # Blocks whose samples, or whose neighbours' within the 24-tap reach, changed.
        per_block = np.zeros((b, n_blocks * _pk.BLOCK), dtype=bool)
        per_block[:, :t] = gain != 1.0
        todo = per_block.reshape(b, n_blocks, _pk.BLOCK).any(-1)
        todo[:, 1:] |= todo[:, :-1].copy()
        todo[:, :-1] |= todo[:, 1:].copy()
        _pk.envelope_numpy(yn * total[:, None, :], taps, level, code, todo.astype(np.uint8), False)
    out = torch.from_numpy(total).unsqueeze(1)
    if (level.max(1) <= ceil).all():
        return out
    # Residual overs after four passes (pathological input): scale each item down.
    peak = true_peak(y * out, sample_rate).amax(1, keepdim=True).unsqueeze(-1)
    return out * torch.minimum(target.to(y.dtype) / peak, torch.ones_like(peak))


# ---- multiband ------------------------------------------------------------------------

BAND_COUNTS = (3, 4)


def _band_values(value: ParamValue, x: Tensor, n: int, name: str, effect: str) -> Tensor:
    """A per-band parameter as ``(B|1, C|1, n)``: a float applies to every band."""
    t = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=x.dtype)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape[-1] != n:
        raise ValueError(f"{effect}: {name} needs one value per band ({n}), got shape {tuple(t.shape)}")
    return broadcast_param(t, x, name=name, effect=effect, trailing=1)


def split_bands(x: Tensor, sample_rate: int, *, crossover_hz: ParamValue) -> list[Tensor]:
    """Split into ``len(crossover_hz) + 1`` phase-aligned Linkwitz-Riley (LR4) bands.

    A tree of LR4 crossovers splits the signal, lowest crossover first; each band below
    the top then passes through the allpass (low + high) of every higher crossover, so all
    bands share one phase response and their sum is an allpass: flat magnitude.

    Args:
        x: audio.
        sample_rate: Hz.
        crossover_hz: ascending frequencies, ``(K,)``, ``(B, K)`` or ``(B, C, K)``.
            Differentiable.

    Shape:
        ``(B, C, T)`` -> a list of ``K + 1`` tensors ``(B, C, T)``, low to high.

    >>> bands = split_bands(torch.randn(1, 2, 4410), 44100, crossover_hz=[200.0, 2000.0])
    >>> len(bands), bands[0].shape
    (3, torch.Size([1, 2, 4410]))
    """
    freqs = crossover_hz if isinstance(crossover_hz, Tensor) else torch.as_tensor(crossover_hz)
    freqs = broadcast_param(freqs.to(x.dtype), x, name="crossover_hz", effect="split_bands", trailing=1)
    k = freqs.shape[-1]
    bands, rest = [], x
    for i in range(k):
        low, rest = linkwitz_riley(rest, sample_rate, freq_hz=freqs[..., i])
        bands.append(low)
    bands.append(rest)
    for i in range(k - 1):
        for j in range(i + 1, k):
            low, high = linkwitz_riley(bands[i], sample_rate, freq_hz=freqs[..., j])
            bands[i] = low + high
    return bands


def multiband_compressor(
    x: Tensor,
    sample_rate: int,
    *,
    crossover_hz: ParamValue = (200.0, 2000.0),
    threshold_db: ParamValue = -20.0,
    ratio: ParamValue = 4.0,
    knee_db: ParamValue = 6.0,
    attack_ms: ParamValue = 10.0,
    release_ms: ParamValue = 100.0,
    makeup_db: ParamValue = 0.0,
    mix: ParamValue = 1.0,
    detector: str = "peak",
    rms_ms: float = 10.0,
    link: str = "max",
    lookahead_ms: float = 0.0,
) -> Tensor:
    """3- or 4-band compressor on phase-aligned Linkwitz-Riley (LR4) bands.

    The bands from :func:`split_bands` are compressed side by side (one batched call of
    :func:`compressor`, each band with its own settings) and summed. With every band at
    unity (ratio 1) the output is the input through an allpass: flat magnitude.

    Args:
        x: audio.
        sample_rate: Hz.
        crossover_hz: ``K = 2`` or ``3`` ascending crossover frequencies (3 or 4 bands),
            ``(K,)``, ``(B, K)`` or ``(B, C, K)``. They are sorted before use, so bands stay
            ordered low to high even if an optimiser pushes two past each other.
        threshold_db, ratio, knee_db, attack_ms, release_ms, makeup_db, mix: per band: a
            float for every band, or ``(n_bands,)``, ``(B, n_bands)``, ``(B, C, n_bands)``.
        detector, rms_ms, link, lookahead_ms: as in :func:`compressor`.

    Differentiable: every parameter, crossovers included. CUDA: yes.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Returns:
        The compressed audio.

    >>> y = multiband_compressor(torch.randn(1, 2, 4410), 44100, crossover_hz=[150.0, 1500.0, 6000.0],
    ...                          threshold_db=[-30.0, -24.0, -20.0, -18.0])
    >>> y.shape
    torch.Size([1, 2, 4410])
    """
    effect = "multiband_compressor"
    freqs = crossover_hz if isinstance(crossover_hz, Tensor) else torch.as_tensor(crossover_hz)
    if freqs.ndim == 0 or freqs.shape[-1] + 1 not in BAND_COUNTS:
        raise ValueError(
            f"{effect}: crossover_hz needs 2 or 3 frequencies (3 or 4 bands), "
            f"got shape {tuple(freqs.shape)}"
        )
    n = freqs.shape[-1] + 1
    freqs = broadcast_param(freqs.to(x.dtype), x, name="crossover_hz", effect=effect, trailing=1)
    bands = split_bands(x, sample_rate, crossover_hz=freqs.sort(-1).values)
    b, c, t = x.shape
    stacked = torch.stack(bands, 1).reshape(b * n, c, t)

    def rows(value: ParamValue, name: str) -> Tensor:
        v = _band_values(value, x, n, name, effect)  # (B|1, C|1, n)
        v = v.permute(0, 2, 1).expand(b, n, v.shape[1])
        return v.reshape(b * n, v.shape[2])

    y = compressor(
        stacked, sample_rate, threshold_db=rows(threshold_db, "threshold_db"), ratio=rows(ratio, "ratio"),
        knee_db=rows(knee_db, "knee_db"), attack_ms=rows(attack_ms, "attack_ms"),
        release_ms=rows(release_ms, "release_ms"), makeup_db=rows(makeup_db, "makeup_db"),
        mix=rows(mix, "mix"), detector=detector, rms_ms=rms_ms, link=link, lookahead_ms=lookahead_ms,
    )
    return y.reshape(b, n, c, t).sum(1)
