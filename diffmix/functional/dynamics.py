"""Compressor and expander/gate; the limiter and the multiband compressor build on them
(:mod:`diffmix.functional.limiter`, :mod:`diffmix.functional.multiband`).

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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from diffmix.checks import check_choice
from diffmix.functional._dynamics_kernels import FLOOR_POWER, smooth
from diffmix.kernels import ops
from diffmix.kernels.backend import resolve
from diffmix.params import ParamValue, per_sample

DETECTORS = ("peak", "rms")
LINKS = ("max", "mean", "none")
_DB_PER_NEPER = 20.0 / math.log(10.0)


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
    """Detector -> curve -> smoother -> gain, by a fused kernel (numba or Triton) or the
    composite path (``backend`` as :func:`diffmix.kernels.backend.resolve`)."""
    solver = resolve(backend, x, "compressor" if setting.kind == 0 else "expander")
    side = x if sidechain is None else sidechain
    power = _rms_power(side, sample_rate, rms_ms, solver) if detector == "rms" else None
    b, c, t = x.shape
    per_channel = any(v.shape[1] != 1 for v in (*setting.values, setting.hold))
    # A per-channel setting on a linked detector has no single gain row: composite path.
    if solver != "torch" and not (per_channel and link != "none" and c > 1):
        linked = link != "none" or c == 1
        rows, nc = (b, c) if linked else (b * c, 1)

        def per_row(v: Tensor) -> Tensor:
            return v.expand(b, 1 if linked else c, 1).reshape(rows)

        side_in = power if power is not None else (None if sidechain is None else sidechain)
        side_rows = None if side_in is None else side_in.reshape(rows, nc, t)
        params = torch.stack([per_row(v.to(x.dtype)) for v in setting.values], 1)
        store = torch.is_grad_enabled() and any(
            v is not None and v.requires_grad for v in (x, side_rows, params)
        )
        out = ops.dynamics(
            x.reshape(rows, nc, t), side_rows, params, per_row(setting.hold), setting.kind,
            link == "mean", lookahead, power is None, store, solver,
        )[0]
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
        backend: ``"auto"`` (the fused numba kernel on CPU, the fused Triton kernel on
            CUDA), ``"numba"``, ``"triton"`` or ``"torch"`` (the composite path with the
            pure-PyTorch smoother, everywhere); see :mod:`diffmix.kernels.backend`.

    Parameters are floats, ``(B,)`` or ``(B, C)``; all but the options are differentiable.
    CUDA: yes (Triton kernel; the numba kernel runs on CPU).

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
        detector, rms_ms, link, lookahead_ms, sidechain, backend: as in :func:`compressor`.

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
