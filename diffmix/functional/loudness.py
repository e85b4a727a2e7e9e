"""BS.1770 loudness: K-weighting at any sample rate, momentary, short-term, integrated, LRA.

All meters take ``(batch, channels, time)`` audio and return one value (or one series) per
batch item; channels are summed with the BS.1770 channel weights. CPU and CUDA.

Differentiable: :func:`integrated_loudness`, :func:`short_term_loudness` and
:func:`momentary_loudness` pass gradients to the audio (the gates are decided without
gradient, as BS.1770 defines them on the measured values). :func:`loudness_range` is a
statistic of gated short-term values and is reported, not fitted.

Conventions (each is tested):

* Loudness of digital silence, or of audio whose every block is gated out, is ``-inf``
  LUFS, never NaN; its loudness range is ``0.0`` LU.
* Audio shorter than a window (400 ms, or 3 s for short-term) is measured as one block
  spanning the whole signal, so a short clip still has a finite, differentiable loudness.
* Mono is one channel of weight 1.0 (BS.1770; not "dual mono").
* The meters step in units of about 10 ms (:func:`meter_unit`), ten times the 10 Hz that
  EBU Tech 3341 requires, so the maximum momentary loudness of a 400 ms burst is caught
  within 0.03 dB wherever the burst starts.

References:
    ITU-R BS.1770-5 (2023), Algorithms to measure audio programme loudness and true-peak
    audio level. EBU Tech 3341 (2016), Loudness metering: 'EBU Mode' metering.
    EBU Tech 3342 (2016), Loudness range.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from diffmix._compat import import_torchaudio
from diffmix.checks import check_audio, check_sample_rate, input_checks, value_checks_enabled
from diffmix.kernels.backend import numba_threads, resolve, use_numba

try:  # numba is a runtime dependency; the torch path below is the fallback.
    import numba
except ImportError:  # pragma: no cover - depends on the install
    numba = None  # type: ignore[assignment]

# BS.1770-5 Tables 1 and 2: the K-weighting stages at 48 kHz.
_SHELF_48K_B = (1.53512485958697, -2.69169618940638, 1.19839281085285)
_SHELF_48K_A = (1.0, -1.69065929318241, 0.73248077421585)
_HP_48K_B = (1.0, -2.0, 1.0)
_HP_48K_A = (1.0, -1.99004745483398, 0.99007225036621)

LUFS_OFFSET = -0.691
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
LRA_RELATIVE_GATE_LU = -20.0
SURROUND_WEIGHT = 1.41

# Loudness weights by channel count, in the WAVE/ITU order L R C LFE Ls Rs.
_DEFAULT_WEIGHTS = {
    1: (1.0,),
    2: (1.0, 1.0),
    3: (1.0, 1.0, 1.0),
    5: (1.0, 1.0, 1.0, SURROUND_WEIGHT, SURROUND_WEIGHT),
    6: (1.0, 1.0, 1.0, 0.0, SURROUND_WEIGHT, SURROUND_WEIGHT),
}


def check_meter_input(x: Tensor, meter: str, *, scan: bool = True) -> None:
    """:func:`~diffmix.checks.check_audio`; the CPU loudness kernel skips the NaN/Inf scan
    (``scan=False``) and checks its block energies instead, which NaN/Inf reach too.
    Honours :func:`~diffmix.checks.input_checks`.
    """
    with input_checks(scan and value_checks_enabled()):
        check_audio(x, meter)


def _fast_path(x: Tensor) -> bool:
    return _numba(x) and not (torch.is_grad_enabled() and x.requires_grad)


def _numba(x: Tensor) -> bool:
    """Whether the numba K-filter serves ``x`` (:mod:`diffmix.kernels.backend`; the
    environment switch reaches it)."""
    return numba is not None and use_numba(x, "loudness")


# --------------------------------------------------------------------------- K-weighting
CALIBRATION_HZ = 997.0  # BS.1770: -0.691 cancels the K-weighting's gain at 997 Hz
HIGH_PASS_HZ = 38.0  # the RLB high-pass corner, where its stage is pre-warped


def _bilinear_constant(sample_rate: float, warp_hz: float) -> float:
    # s = c (z - 1) / (z + 1), pre-warped so that warp_hz maps exactly.
    return 2.0 * math.pi * warp_hz / math.tan(math.pi * warp_hz / sample_rate)


def _to_analog(b: Sequence[float], a: Sequence[float], fs: float,
               warp_hz: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # Invert the bilinear transform: substitute z^-1 = (c - s) / (c + s) and collect powers
    # of s. Returns (B2, B1, B0), (A2, A1, A0) of H(s) = (B2 s^2 + B1 s + B0) / (A2 s^2 + ...).
    c = _bilinear_constant(fs, warp_hz)

    def poly(p: Sequence[float]) -> tuple[float, float, float]:
        return (p[0] - p[1] + p[2], 2.0 * c * (p[0] - p[2]), c * c * (p[0] + p[1] + p[2]))

    return poly(b), poly(a)


def _to_digital(num: Sequence[float], den: Sequence[float], fs: float,
                warp_hz: float):  # noqa: ANN202
    c = _bilinear_constant(fs, warp_hz)

    def poly(p: Sequence[float]) -> tuple[float, float, float]:
        s2, s1, s0 = p[0] * c * c, p[1] * c, p[2]
        return (s2 + s1 + s0, 2.0 * (s0 - s2), s2 - s1 + s0)

    b, a = poly(num), poly(den)
    return tuple(v / a[0] for v in b), tuple(v / a[0] for v in a)


@functools.lru_cache(maxsize=64)
def k_weighting_coefficients(sample_rate: int) -> tuple[tuple[float, ...], ...]:
    """The two K-weighting biquads at ``sample_rate``: ``(b_shelf, a_shelf, b_hp, a_hp)``.

    BS.1770 gives the K-weighting only as 48 kHz biquads. We recover the analog filter
    behind them by inverting the bilinear transform, and discretise it again at
    ``sample_rate``. The shelf's transforms are pre-warped at 997 Hz, the frequency whose
    gain the standard's -0.691 dB cancels, so a 997 Hz tone reads the same at every rate;
    the high-pass's at its 38 Hz corner, so the low end keeps its shape. At 48 kHz the
    standard's coefficients come back to ~1e-14. (Pre-warping the shelf at its 1682 Hz
    corner instead, as some meters do, would read a 997 Hz tone 0.2 dB low at 8 kHz.)
    The high-pass keeps the analog gain of the standard's un-normalised (1, -2, 1)
    numerator (+0.043 dB), which is part of the -0.691 calibration.

    Args:
        sample_rate: in Hz; above 2 x 1682 Hz, the shelf's corner.

    Returns:
        Four 3-tuples of floats, each ``a`` normalised to ``a[0] = 1``.

    >>> b, a, _, _ = k_weighting_coefficients(48000)
    >>> [round(v, 8) for v in b]
    [1.53512486, -2.69169619, 1.19839281]
    """
    sr = check_sample_rate(sample_rate, "k_weighting")
    if sr <= _MIN_RATE:
        raise ValueError(
            f"k_weighting: sample_rate must exceed {_MIN_RATE:.0f} Hz (twice the K-weighting "
            f"shelf corner), got {sr}"
        )
    shelf = _to_digital(*_to_analog(_SHELF_48K_B, _SHELF_48K_A, 48000.0, CALIBRATION_HZ), sr,
                        CALIBRATION_HZ)
    hp = _to_digital(*_to_analog(_HP_48K_B, _HP_48K_A, 48000.0, HIGH_PASS_HZ), sr, HIGH_PASS_HZ)
    return shelf[0], shelf[1], hp[0], hp[1]


_MIN_RATE = 2 * 1682.0


@functools.lru_cache(maxsize=64)
def _warmup(sample_rate: int) -> int:
    # Filtering runs in parallel over segments of the signal; each segment starts from zero
    # state this many samples early, by when the cascade's impulse response has decayed
    # below 1e-12 of its peak, so the stitched output equals one serial pass to ~1e-12.
    b1, a1, b2, a2 = k_weighting_coefficients(sample_rate)
    radius = max(abs(r) for a in (a1, a2) for r in np.roots(a))
    n = 32
    while n * radius**n > 1e-12:  # near-double pole: envelope ~ n r^n
        n = int(n * 1.25) + 1
    return n


def _coeff_array(sample_rate: int) -> np.ndarray:
    b1, a1, b2, a2 = k_weighting_coefficients(sample_rate)
    return np.array([b1[0], b1[1], b1[2], a1[1], a1[2], b2[0], b2[1], b2[2], a2[1], a2[2]])


_LANES = 32  # segments filtered side by side: four AVX-512 vectors of float64


def _kernel(x, rows, starts, n_real, nunits, unit, tile, warm, c, energy, y):  # pragma: no cover
    # Each group of _LANES lanes walks its own stretch of the signal in lock step; a
    # small tile is transposed into ``buf`` so the inner loop over lanes vectorises.
    n_t = x.shape[1]
    b0, b1, b2, a1, a2 = c[0], c[1], c[2], c[3], c[4]
    g0, g1, g2, h1, h2 = c[5], c[6], c[7], c[8], c[9]
    n_units_out = energy.shape[1]
    total = warm + nunits * unit
    for grp in numba.prange(rows.shape[0] // _LANES):
        l0 = grp * _LANES
        st = np.zeros((5, _LANES))
        buf = np.empty((tile, _LANES), dtype=x.dtype)  # a copy: exact in the input dtype
        out = np.empty((tile, _LANES))
        for t1 in range(-warm, total - warm, tile):
            for g in range(_LANES):
                row = rows[l0 + g]
                base = starts[l0 + g] + t1
                if base >= 0 and base + tile <= n_t:
                    for i in range(tile):
                        buf[i, g] = x[row, base + i]
                else:
                    for i in range(tile):
                        p = base + i
                        buf[i, g] = x[row, p] if (p >= 0 and p < n_t) else 0.0
            if t1 % unit == 0:
                for g in range(_LANES):
                    st[4, g] = 0.0
            for i in range(tile):
                for g in range(_LANES):
                    xv = buf[i, g]
                    v = b0 * xv + st[0, g]
                    st[0, g] = b1 * xv - a1 * v + st[1, g]
                    st[1, g] = b2 * xv - a2 * v
                    z = g0 * v + st[2, g]
                    st[2, g] = g1 * v - h1 * z + st[3, g]
                    st[3, g] = g2 * v - h2 * z
                    st[4, g] += z * z
                    if y is not None:
                        out[i, g] = z
            if y is not None and t1 >= 0:
                for g in range(min(_LANES, n_real - l0)):
                    row = rows[l0 + g]
                    base = starts[l0 + g] + t1
                    for i in range(min(tile, n_t - base)):
                        y[row, base + i] = out[i, g]
            if t1 >= 0 and (t1 + tile) % unit == 0:
                u = (t1 + tile) // unit - 1
                for g in range(min(_LANES, n_real - l0)):
                    uu = starts[l0 + g] // unit + u
                    if uu < n_units_out:
                        energy[rows[l0 + g], uu] = st[4, g]


if numba is not None:
    # Compiled once per signature; ``y=None`` compiles an energy-only variant whose dead
    # store branch numba prunes, so its inner loop vectorises fully.
    _kernel = numba.njit(parallel=True, cache=True, fastmath={"contract"})(_kernel)


def _tile_for(unit: int) -> int:
    for tile in range(min(unit, 160), 0, -1):
        if unit % tile == 0 and tile >= 24:
            return tile
    return unit if unit <= 512 else max(d for d in range(1, 161) if unit % d == 0)


def _kfilter_numpy(x: np.ndarray, sample_rate: int, unit: int, want_y: bool):
    """K-weight rows of ``x`` (N, T) on the CPU; unit energies (N, T // unit) and optionally y."""
    n, t = x.shape
    numba_threads()
    warm = _warmup(sample_rate)
    tile = _tile_for(unit)
    warm = -(-warm // unit) * unit
    n_units = t // unit
    # Segments per row: enough lanes to fill the vectors on every core, but each segment
    # at least ~4 warm-ups long so the warm-up overhead stays small. Lanes beyond the real
    # ones (to fill the last group) re-read the start of row 0 and store nothing.
    total_units = -(-t // unit)
    target = _LANES * numba.get_num_threads()
    per_row = max(1, min(-(-target // n), total_units * unit // (4 * warm)))
    units_per_lane = -(-total_units // per_row)
    rows = np.repeat(np.arange(n, dtype=np.int64), per_row)
    starts = np.tile(np.arange(per_row, dtype=np.int64) * units_per_lane * unit, n)
    n_real = rows.shape[0]
    pad = (-n_real) % _LANES
    rows = np.concatenate([rows, np.zeros(pad, np.int64)])
    starts = np.concatenate([starts, np.zeros(pad, np.int64)])
    energy = np.zeros((n, n_units))
    y = np.empty((n, t), dtype=x.dtype) if want_y else None
    _kernel(x, rows, starts, n_real, units_per_lane, unit, tile, warm, _coeff_array(sample_rate),
            energy, y)
    return energy, (y if want_y else None)


def _kfilter_torch(x: Tensor, sample_rate: int) -> Tensor:
    """K-weight rows of ``x`` (N, T) with torchaudio, in parallel segments (any device)."""
    functional = import_torchaudio().functional
    n, t = x.shape
    warm = _warmup(sample_rate)
    seg = max(4 * warm, -(-t // 256))
    n_seg = -(-t // seg)
    xp = torch.nn.functional.pad(x, (warm, n_seg * seg - t))
    lanes = xp.unfold(1, seg + warm, seg).reshape(n * n_seg, seg + warm)
    b1, a1, b2, a2 = (torch.tensor(v, dtype=x.dtype, device=x.device)
                      for v in k_weighting_coefficients(sample_rate))
    y = functional.lfilter(lanes, a1, b1, clamp=False)
    y = functional.lfilter(y, a2, b2, clamp=False)
    return y[:, warm:].reshape(n, n_seg * seg)[:, :t]


class _KWeight(torch.autograd.Function):
    # The K-weighting is a fixed causal LTI filter F (lower-triangular Toeplitz), so its
    # adjoint is the same filter run backwards in time: grad_x = flip(F(flip(grad_y))).
    @staticmethod
    def forward(ctx, x: Tensor, sample_rate: int) -> Tensor:  # noqa: ANN001
        ctx.sample_rate = sample_rate
        return _kfilter_rows(x, sample_rate)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        return _kfilter_rows(grad.flip(-1), ctx.sample_rate).flip(-1), None


def _kernel_dtype(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _kfilter_rows(x: Tensor, sample_rate: int) -> Tensor:
    if _numba(x):
        # The kernel takes float32/float64; half precisions are metered in float32.
        xn = np.ascontiguousarray(_kernel_dtype(x.detach()).numpy())
        _, y = _kfilter_numpy(xn, sample_rate, _tile_for(meter_unit(sample_rate)), True)
        return torch.from_numpy(y).to(x.dtype)
    if resolve("auto", x, "loudness") == "triton":
        from diffmix.kernels.triton_ops import kfilter

        warm = _warmup(sample_rate)
        segment = max(4 * warm, -(-x.shape[-1] // 256))
        coefficients = torch.from_numpy(_coeff_array(sample_rate))
        return kfilter(_kernel_dtype(x.detach()), coefficients, warm, segment).to(x.dtype)
    return _kfilter_torch(x.detach(), sample_rate)


def k_weight(x: Tensor, sample_rate: int) -> Tensor:
    """Apply the BS.1770 K-weighting (pre-filter shelf, then RLB high-pass).

    Args:
        x: audio.
        sample_rate: in Hz (above 3364 Hz).

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Differentiable in ``x``. Parallel segments on every backend
    (:mod:`diffmix.kernels.backend`): numba on CPU, Triton on CUDA, torchaudio otherwise.

    >>> k_weight(torch.zeros(1, 2, 100), 48000).shape
    torch.Size([1, 2, 100])
    """
    check_meter_input(x, "k_weight")
    sr = check_sample_rate(sample_rate, "k_weight")
    k_weighting_coefficients(sr)
    rows = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and x.requires_grad:
        y = _KWeight.apply(rows, sr)
    else:
        y = _kfilter_rows(rows, sr)
    return y.reshape(x.shape)


# --------------------------------------------------------------------------- block energies
def block_samples(sample_rate: int) -> tuple[int, int, int]:
    """``(hop, momentary, short_term)`` lengths in samples: 100 ms, 400 ms and 3 s."""
    hop = round(0.1 * sample_rate)
    return hop, 4 * hop, 30 * hop


def meter_unit(sample_rate: int) -> int:
    """The meters' time step in samples: about 10 ms, dividing the 100 ms gating hop.

    >>> meter_unit(44100), meter_unit(48000)
    (441, 480)
    """
    hop = block_samples(sample_rate)[0]
    return math.gcd(hop, max(1, round(0.01 * sample_rate)))


def channel_weights(num_channels: int, weights: Sequence[float] | None = None) -> list[float]:
    """BS.1770 channel weights: 1.0 for L, R, C; 1.41 for Ls, Rs; LFE excluded (0).

    Defaults exist for 1, 2, 3 (L R C), 5 (L R C Ls Rs) and 6 (L R C LFE Ls Rs) channels;
    any other layout must pass ``weights`` explicitly.

    >>> channel_weights(6)
    [1.0, 1.0, 1.0, 0.0, 1.41, 1.41]
    """
    if weights is not None:
        w = [float(v) for v in weights]
        if len(w) != num_channels or any(not math.isfinite(v) or v < 0 for v in w):
            raise ValueError(
                f"loudness: channel_weights must be {num_channels} finite non-negative numbers, "
                f"got {list(weights)}"
            )
        return w
    if num_channels not in _DEFAULT_WEIGHTS:
        raise ValueError(
            f"loudness: no default BS.1770 channel weights for {num_channels} channels; "
            f"pass channel_weights=[...] (defaults exist for {sorted(_DEFAULT_WEIGHTS)})"
        )
    return list(_DEFAULT_WEIGHTS[num_channels])


class _UnitEnergy(torch.autograd.Function):
    # Unit energies E_u = sum over unit u of y^2 with y = F x (F the K-weighting). Backward:
    # dE/dx = F^T (2 y g_u), and F^T is the filter run backwards in time. The forward keeps
    # y (float64; the kernel's energies are the same bit for bit, at the same cost, as its
    # energy-only pass), so the backward is one kernel pass, the adjoint, all in numpy.
    @staticmethod
    def forward(ctx, x: Tensor, sample_rate: int, unit: int) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        ctx.sample_rate, ctx.unit = sample_rate, unit
        b, c, t = x.shape
        xn = np.ascontiguousarray(_kernel_dtype(x.detach()).reshape(b * c, t).numpy())
        energy, ctx.y = _kfilter_numpy(xn.astype(np.float64), sample_rate, unit, True)
        return torch.from_numpy(energy).reshape(b, c, t // unit)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        sr, unit, y = ctx.sample_rate, ctx.unit, ctx.y
        b, c, t = x.shape
        n = grad.shape[-1] * unit
        gy = np.zeros((b * c, t))
        g = grad.detach().reshape(b * c, -1).numpy().astype(np.float64)
        # Each unit's gradient over its samples, in place (np.repeat's full-length copy cost
        # ~15 ms a fit step); 2 g y equals 2 y g exactly.
        for row in range(b * c):
            units = gy[row, :n].reshape(-1, unit)
            np.multiply(y[row, :n].reshape(-1, unit), 2.0 * g[row, :, None], out=units)
        _, gx = _kfilter_numpy(np.ascontiguousarray(gy[:, ::-1]), sr, unit, True)
        gx = torch.from_numpy(np.ascontiguousarray(gx[:, ::-1])).reshape(b, c, t)
        return gx.to(x.dtype), None, None


def _unit_energies(x: Tensor, sample_rate: int, meter: str = "loudness") -> Tensor:
    """Sum of squared K-weighted samples per channel per meter unit: ``(B, C, T // unit)``.

    Differentiable when ``x`` requires grad; otherwise the CPU runs a fused kernel that
    never materialises the filtered signal.
    """
    unit = meter_unit(sample_rate)
    b, c, t = x.shape
    n_units = t // unit
    if _fast_path(x):
        xn = np.ascontiguousarray(_kernel_dtype(x.detach()).reshape(b * c, t).numpy())
        energy, _ = _kfilter_numpy(xn, sample_rate, unit, False)
        if value_checks_enabled() and not np.isfinite(energy).all():
            raise ValueError(f"{meter}: audio contains NaN or Inf (or is too large to meter)")
        return torch.from_numpy(energy).reshape(b, c, n_units)
    if _numba(x):
        return _UnitEnergy.apply(x, sample_rate, unit)  # the caller has scanned x
    y = k_weight(x, sample_rate)
    return y[..., : n_units * unit].reshape(b, c, n_units, unit).square().sum(-1)


def _window_power(x: Tensor, sample_rate: int, window: int, step_units: int,
                  weights: Sequence[float] | None, meter: str) -> Tensor:
    """Weighted mean-square power of each window: ``(B, N)``; one window if too short."""
    b, c, t = x.shape
    w = torch.tensor(channel_weights(c, weights), dtype=x.dtype, device=x.device)
    if t < window or not _fast_path(x):
        check_meter_input(x, meter)  # the NaN/Inf scan the fast path does on its energies
    if t < window:
        y = k_weight(x, sample_rate).to(torch.float64)
        return (y.square().mean(-1) * w.to(torch.float64)).sum(-1, keepdim=True)
    unit = meter_unit(sample_rate)
    per = window // unit
    # One windowing for every meter, whole or fed in chunks (GatedMeter).
    energy = _unit_energies(x, sample_rate, meter).to(torch.float64)
    return _energy_windows(energy, window, per, step_units, w.to(torch.float64))


def _energy_windows(energy: Tensor, window: int, per: int, step_units: int, w: Tensor) -> Tensor:
    """Weighted mean-square power of each window of ``per`` meter units (``window`` samples),
    every ``step_units``, from float64 unit energies ``(B, C, U)``: ``(B, N)``.

    Window sums come from a float64 running sum: exact to ~1e-16 of the whole signal's energy.
    """
    running = torch.nn.functional.pad(energy, (1, 0)).cumsum(-1)
    starts = torch.arange(0, energy.shape[-1] - per + 1, step_units, device=energy.device)
    window_sums = running[..., starts + per] - running[..., starts]
    return ((window_sums / window) * w[:, None]).sum(1)


def _to_lufs(power: Tensor) -> Tensor:
    # -inf for zero power without a NaN gradient: the clamp stops the gradient there.
    lufs = LUFS_OFFSET + 10.0 * torch.log10(power.clamp_min(torch.finfo(power.dtype).tiny))
    return torch.where(power > 0, lufs, torch.full_like(lufs, -math.inf))


def momentary_loudness(x: Tensor, sample_rate: int, *,
                       channel_weights: Sequence[float] | None = None) -> Tensor:
    """Momentary loudness (400 ms rectangular window) every :func:`meter_unit` samples.

    Value ``k`` covers samples ``[k*unit, k*unit + 0.4 s)``. Audio shorter than 400 ms gives
    one value over the whole signal.

    Args:
        x: audio.
        sample_rate: in Hz.
        channel_weights: per-channel weights; default BS.1770 (:func:`channel_weights`).

    Shape:
        ``(B, C, T)`` -> ``(B, N)`` LUFS, ``-inf`` where a window is silent.

    Differentiable in ``x``. CPU and CUDA.

    >>> sr = 48000
    >>> t = torch.arange(sr) / sr
    >>> tone = (10 ** (-23 / 20) * torch.sin(2 * math.pi * 1000 * t)).expand(1, 2, -1)
    >>> round(float(momentary_loudness(tone, sr)[0, -1]), 1)
    -23.0
    """
    check_meter_input(x, "momentary_loudness", scan=False)
    sr = check_sample_rate(sample_rate, "momentary_loudness")
    power = _window_power(x, sr, block_samples(sr)[1], 1, channel_weights, "momentary_loudness")
    return _to_lufs(power).to(x.dtype)


def short_term_loudness(x: Tensor, sample_rate: int, *,
                        channel_weights: Sequence[float] | None = None) -> Tensor:
    """Short-term loudness (3 s rectangular window) every :func:`meter_unit` samples.

    As :func:`momentary_loudness` with a 3 s window; audio shorter than 3 s gives one value.

    Shape:
        ``(B, C, T)`` -> ``(B, N)`` LUFS.

    Differentiable in ``x``. CPU and CUDA.
    """
    check_meter_input(x, "short_term_loudness", scan=False)
    sr = check_sample_rate(sample_rate, "short_term_loudness")
    power = _window_power(x, sr, block_samples(sr)[2], 1, channel_weights, "short_term_loudness")
    return _to_lufs(power).to(x.dtype)


def _masked_mean(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    count = mask.sum(-1)
    total = torch.where(mask, values, torch.zeros_like(values)).sum(-1)
    return total / count.clamp_min(1).to(values.dtype), count


def integrated_loudness(x: Tensor, sample_rate: int, *,
                        channel_weights: Sequence[float] | None = None) -> Tensor:
    """Gated integrated loudness per ITU-R BS.1770-4/5.

    400 ms blocks with 75 % overlap; blocks at or below -70 LUFS are dropped (absolute
    gate), then blocks at or below the mean of the rest minus 10 LU (relative gate); the
    result is the loudness of the mean power of the blocks left.

    Args:
        x: audio.
        sample_rate: in Hz.
        channel_weights: per-channel weights; default BS.1770 (L R C 1.0, LFE 0, Ls Rs 1.41).

    Shape:
        ``(B, C, T)`` -> ``(B,)`` LUFS. ``-inf`` if no block passes the gates (silence).

    Differentiable in ``x`` (gate decisions carry no gradient). CPU and CUDA.

    References:
        ITU-R BS.1770-5, Annex 1.

    >>> sr = 48000
    >>> t = torch.arange(2 * sr) / sr
    >>> tone = (10 ** (-23 / 20) * torch.sin(2 * math.pi * 1000 * t)).expand(1, 2, -1)
    >>> round(float(integrated_loudness(tone, sr)[0]), 1)
    -23.0
    """
    check_meter_input(x, "integrated_loudness", scan=False)
    sr = check_sample_rate(sample_rate, "integrated_loudness")
    hop, block, _ = block_samples(sr)
    power = _window_power(x, sr, block, hop // meter_unit(sr), channel_weights,
                          "integrated_loudness")
    return _gated_loudness(power, ABSOLUTE_GATE_LUFS, RELATIVE_GATE_LU).to(x.dtype)


def loudness_profile(x: Tensor, sample_rate: int, *,
                     channel_weights: Sequence[float] | None = None) -> tuple[Tensor, Tensor]:
    """:func:`integrated_loudness` ``(B,)`` and :func:`short_term_loudness` ``(B, N)`` (LUFS)
    from one K-weighting of ``x``: the same values, at one filter pass (and one adjoint
    pass for the gradient) instead of two.

    Differentiable in ``x``. CPU and CUDA.
    """
    check_meter_input(x, "loudness_profile", scan=False)
    sr = check_sample_rate(sample_rate, "loudness_profile")
    if x.shape[-1] < block_samples(sr)[2]:  # a window over the whole signal: the meters' own short path
        return (integrated_loudness(x, sr, channel_weights=channel_weights),
                short_term_loudness(x, sr, channel_weights=channel_weights))
    if not _fast_path(x):
        check_meter_input(x, "loudness_profile")  # the NaN/Inf scan the fast path does on its energies
    return _profile(x, sr, channel_weights)


def _profile(x: Tensor, sr: int, weights: Sequence[float] | None) -> tuple[Tensor, Tensor]:
    hop, block, window = block_samples(sr)
    unit = meter_unit(sr)
    # the weights as _window_power takes them (in x's dtype), so the values are the meters'
    w = torch.tensor(channel_weights(x.shape[1], weights), dtype=x.dtype, device=x.device).to(torch.float64)
    energy = _unit_energies(x, sr, "loudness_profile").to(torch.float64)
    blocks = _energy_windows(energy, block, block // unit, hop // unit, w)
    short = _energy_windows(energy, window, window // unit, 1, w)
    lufs = _gated_loudness(blocks, ABSOLUTE_GATE_LUFS, RELATIVE_GATE_LU).to(x.dtype)
    return lufs, _to_lufs(short).to(x.dtype)


@torch.no_grad()
def _gate(power: Tensor, absolute_lufs: float, relative_lu: float) -> Tensor:
    """BS.1770's two gates on block powers ``(B, N)``: the blocks kept, ``(B, N)`` bool.

    Above ``absolute_lufs``, then above the mean power of those blocks plus ``relative_lu``.
    """
    p = power.detach()
    keep = p > 10.0 ** ((absolute_lufs - LUFS_OFFSET) / 10.0)
    mean_abs, _ = _masked_mean(p, keep)
    return keep & (p > mean_abs.unsqueeze(-1) * 10.0 ** (relative_lu / 10.0))


def _gated_loudness(power: Tensor, absolute_lufs: float, relative_lu: float) -> Tensor:
    keep = _gate(power, absolute_lufs, relative_lu)
    mean, count = _masked_mean(power, keep)
    return torch.where(count > 0, _to_lufs(mean), torch.full_like(mean, -math.inf))


def _masked_quantile(values: Tensor, mask: Tensor, q: float) -> Tensor:
    """Linear-interpolated quantile over masked entries per row (rows without any give 0)."""
    count = mask.sum(-1)
    filled = torch.where(mask, values, torch.full_like(values, math.inf))
    ordered = filled.sort(-1).values
    pos = q * (count - 1).clamp_min(0).to(values.dtype)
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, (count - 1).clamp_min(0))
    v_lo = ordered.gather(-1, lo[:, None]).squeeze(-1)
    v_hi = ordered.gather(-1, hi[:, None]).squeeze(-1)
    out = v_lo + (v_hi - v_lo) * (pos - lo.to(values.dtype))
    return torch.where(count > 0, out, torch.zeros_like(out))


def loudness_range(x: Tensor, sample_rate: int, *,
                   channel_weights: Sequence[float] | None = None) -> Tensor:
    """Loudness range (LRA) per EBU Tech 3342.

    Short-term loudness (3 s windows) every 100 ms, absolute gate at -70 LUFS, relative
    gate 20 LU below the power mean of what is left; LRA is the spread between the 10th
    and 95th percentiles (linear interpolation) of the remaining values.

    Shape:
        ``(B, C, T)`` -> ``(B,)`` LU. ``0.0`` for silence or audio with a single
        short-term value (shorter than 3.1 s).

    Reported, not fitted (differentiable almost everywhere, but not a loss). CPU and CUDA.

    References:
        EBU Tech 3342 (2016), section 4.
    """
    check_meter_input(x, "loudness_range", scan=False)
    sr = check_sample_rate(sample_rate, "loudness_range")
    hop, _, short = block_samples(sr)
    with torch.no_grad():
        power = _window_power(x.detach(), sr, short, hop // meter_unit(sr), channel_weights,
                              "loudness_range")
        lra = _range_of(power)
    return lra.to(x.dtype)


@torch.no_grad()
def _range_of(power: Tensor) -> Tensor:
    """EBU Tech 3342's LRA from short-term window powers ``(B, N)``: ``(B,)`` LU."""
    keep = _gate(power, ABSOLUTE_GATE_LUFS, LRA_RELATIVE_GATE_LU)
    lufs = LUFS_OFFSET + 10.0 * torch.log10(power.clamp_min(1e-300))
    return _masked_quantile(lufs, keep, 0.95) - _masked_quantile(lufs, keep, 0.10)


class GatedMeter:
    """Integrated loudness and loudness range of a long signal fed in consecutive chunks.

    The one gated meter over chunks: each chunk's K-weighted energies per meter unit
    (:func:`meter_unit`) are kept (``(C, T / unit)`` float64, ~2.4 kB per channel-minute),
    and the 400 ms and 3 s windows and BS.1770 / EBU Tech 3342 gates run over all of them at
    the end, globally, exactly as :func:`integrated_loudness` and :func:`loudness_range`
    do on the whole signal (to ~1e-9 LU).

    Feed each chunk with at least :meth:`warmup` samples of the signal before it (zeros
    before the start), so the K-filter has settled; chunks must start on multiples of the
    meter unit. Not differentiable.

    >>> sr = 48000
    >>> x = 0.1 * torch.randn(1, 2, 4 * sr, generator=torch.Generator().manual_seed(0))
    >>> m, w = GatedMeter(sr, 2), GatedMeter.warmup(sr)
    >>> padded = torch.nn.functional.pad(x, (w, 0))
    >>> for start in range(0, 4 * sr, sr):
    ...     m.add(padded[..., start : start + w + sr], w, sr)
    >>> abs(m.integrated_lufs() - float(integrated_loudness(x, sr)[0])) < 1e-6
    True
    """

    def __init__(self, sample_rate: int, channels: int) -> None:
        self.sr, self.channels = check_sample_rate(sample_rate, "GatedMeter"), channels
        self.unit = meter_unit(sample_rate)
        self.weights = torch.tensor(channel_weights(channels), dtype=torch.float64)
        self.energies: list[Tensor] = []

    @staticmethod
    def warmup(sample_rate: int) -> int:
        """Left context the K-filter needs, in samples (a whole number of meter units)."""
        unit = meter_unit(sample_rate)
        return math.ceil(_warmup(sample_rate) / unit) * unit

    def add(self, y: Tensor, left: int, n: int) -> None:
        """Meter ``y[..., left : left + n]`` of ``y`` ``(1, C, >= left + n)``, ``left`` at
        least :meth:`warmup` samples of what came before."""
        w = self.warmup(self.sr)
        if left < w or y.shape[-1] < left + n:
            raise ValueError(f"GatedMeter: need {w} samples before a chunk")
        # Everything from the warm-up on (a slice to the end stays contiguous when it
        # starts at 0), keeping the whole units of the chunk itself.
        e = _unit_energies(y.detach()[..., left - w :], self.sr)
        self.energies.append(e[..., w // self.unit : (w + n) // self.unit].cpu())

    def _powers(self, window: int, step_units: int) -> Tensor:
        """``(1, N)`` window powers; one window over everything when shorter than one, as
        the whole-signal meters read a short signal (:func:`_window_power`)."""
        energy = torch.cat(self.energies, -1).to(torch.float64)
        per = window // self.unit
        if energy.shape[-1] < per:
            mean = energy.sum(-1) / max(energy.shape[-1] * self.unit, 1)
            return (mean * self.weights).sum(-1, keepdim=True)
        return _energy_windows(energy, window, per, step_units, self.weights)

    def integrated_lufs(self) -> float:
        """BS.1770 gated loudness over every 400 ms block of every chunk (global gating);
        under one block, the loudness of everything as one block, as
        :func:`integrated_loudness` reads a short signal."""
        power = self._powers(block_samples(self.sr)[1], block_samples(self.sr)[0] // self.unit)
        return float(_gated_loudness(power, ABSOLUTE_GATE_LUFS, RELATIVE_GATE_LU)[0])

    def loudness_range(self) -> float:
        """EBU Tech 3342 loudness range (LU); ``0.0`` under one 3 s window, as
        :func:`loudness_range` reads a signal with a single short-term value."""
        hop, _, window = block_samples(self.sr)
        return float(_range_of(self._powers(window, hop // self.unit))[0])

    def max_short_term_lufs(self) -> float:
        """The highest short-term loudness (3 s windows every meter unit, as
        :func:`short_term_loudness`); one window over everything when shorter."""
        return float(_to_lufs(self._powers(block_samples(self.sr)[2], 1).amax()))
