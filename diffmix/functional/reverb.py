"""Deterministic, differentiable algorithmic reverb: a synthesized impulse response.

The impulse response is built from fixed, seeded buffers and the parameters, then
convolved with the input by FFT:

- **late tail**: white noise split into low/mid/high bands by complementary raised-cosine
  masks (half an octave wide, zero phase) and shaped per band by
  ``onset(t) · exp(-ln(1000) · t / RT60_band)``, the envelope that falls 60 dB in
  ``RT60_band`` seconds. Each band is normalised analytically to unit energy, so the
  level does not change with the decay time. The decay is a function of seconds, not
  samples, so RT60 is the same at every sample rate.
- **early reflections**: 24 sparse taps between 3 and 80 ms with seeded times and signs
  and an exponentially falling level, also unit energy.
- **width**: two independent noise sets ``M`` and ``S``; channel ``c`` uses
  ``(M ± w·S) / sqrt(1 + w²)``: ``w = 0`` is one IR on both sides, ``w = 1`` two
  uncorrelated ones (interchannel correlation ``(1 - w²) / (1 + w²)``).
- **pre-delay**: a phase shift of the IR's spectrum (a band-limited fractional delay,
  differentiable in milliseconds).

Because the buffers are generated once from ``seed`` (on the CPU, then cached per device),
the same parameters always give the same output. Render cost: one FFT of the IR and one
of the input per channel, one inverse FFT.

References:
    J. A. Moorer, "About this reverberation business", Computer Music Journal, 1979.
    M. R. Schroeder, "New method of measuring reverberation time", JASA 37, 1965.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from diffmix.functional._cache import ValueCache, constant_key
from diffmix.functional.delay import delay_phasor
from diffmix.functional.filters import next_fast_len
from diffmix.params import ParamValue, broadcast_param

LN1000 = math.log(1000.0)
MAX_PRE_DELAY_MS = 250.0
ER_START_MS, ER_END_MS, ER_TAPS = 3.0, 80.0, 24
ONSET_MS = 8.0
AUTO_TAIL = 1.5  # x the longest RT60: the tail is cut 90 dB down
_RESPONSES = ValueCache(4, 128 << 20)  # spectra of fixed settings (reverb)


def band_masks(n_fft: int, sample_rate: int, crossover_hz: tuple[float, float]) -> Tensor:
    """Three zero-phase masks on the ``rfft`` grid that sum to one: low, mid, high.

    Each crossover is a raised-cosine transition one octave wide (±half an octave) in
    log frequency. Returns ``(3, n_fft // 2 + 1)`` float64.
    """
    f = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (sample_rate / n_fft)
    octs = torch.log2(f.clamp_min(1e-3))

    def falling(fc: float) -> Tensor:
        u = ((octs - math.log2(fc)) + 0.5).clamp(0.0, 1.0)
        return 0.5 * (1.0 + torch.cos(math.pi * u))

    low = falling(crossover_hz[0])
    high = 1.0 - falling(crossover_hz[1])
    return torch.stack([low, 1.0 - low - high, high])


_BLOCK = 1 << 14
_GUARD_S = 0.1


def _white(seed: int, start: int, length: int) -> Tensor:
    """``(2, length)`` white noise at absolute positions ``start ...``: each block of
    ``_BLOCK`` samples has its own seeded generator, so a sample's value depends on its
    position and the seed only, never on how long a buffer is asked for."""
    first, last = start // _BLOCK, (start + length - 1) // _BLOCK
    blocks = [
        torch.randn(
            2, _BLOCK, generator=torch.Generator().manual_seed(seed * 1_000_003 + k), dtype=torch.float64
        )
        for k in range(first, last + 1)
    ]
    offset = start - first * _BLOCK
    return torch.cat(blocks, -1)[:, offset : offset + length]


@functools.lru_cache(maxsize=8)
def _buffers(
    sample_rate: int,
    length: int,
    seed: int,
    crossover_hz: tuple[float, float],
    device: str,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Band-split noise ``(2, 3, L)`` and early reflections ``(2, L)``; index 0 = M, 1 = S.

    A buffer of any length is a prefix of a longer one (to about -100 dB: the band split
    is circular, and a 0.1 s guard either side keeps its wrap-around off the kept part),
    so an IR does not change with the length chosen for it.
    """
    guard = int(math.ceil(_GUARD_S * sample_rate))
    # Positions -guard ... length + guard: the guards absorb the circular split's wrap.
    noise = _white(seed, 0, length + 2 * guard)
    total = noise.shape[-1]
    masks = band_masks(total, sample_rate, crossover_hz)
    bands = torch.fft.irfft(torch.fft.rfft(noise).unsqueeze(1) * masks, total)[..., guard : guard + length]
    gen = torch.Generator().manual_seed(seed * 1_000_003 - 1)
    times = ER_START_MS + (ER_END_MS - ER_START_MS) * torch.rand(
        2, ER_TAPS, generator=gen, dtype=torch.float64
    )
    signs = torch.where(torch.rand(2, ER_TAPS, generator=gen) < 0.5, -1.0, 1.0)
    gains = signs * torch.exp(-times / (0.4 * ER_END_MS))
    idx = torch.round(times * (sample_rate / 1000.0)).long()
    gains = gains / gains.norm(dim=1, keepdim=True)
    er = torch.zeros(2, max(length, int(idx.max()) + 1), dtype=torch.float64)
    er.scatter_add_(1, idx, gains)
    return bands.to(device=device, dtype=dtype), er[:, :length].to(device=device, dtype=dtype)


@torch.library.custom_op("diffmix::reverb_buffers", mutates_args=())
def _buffers_op(like: Tensor, sample_rate: int, length: int, seed: int,
                crossover_hz: list[float]) -> tuple[Tensor, Tensor]:
    """:func:`_buffers` as an op, for ``torch.compile``: it cannot trace the seeded
    generators, and the buffers are constants of the graph (copies of the cached ones)."""
    bands, er = _buffers(sample_rate, length, seed, (crossover_hz[0], crossover_hz[1]),
                         str(like.device), like.dtype)
    return bands.clone(), er.clone()


@_buffers_op.register_fake
def _(like, sample_rate, length, seed, crossover_hz):  # noqa: ANN001, ANN202
    return like.new_empty((2, 3, length)), like.new_empty((2, length))


def check_crossovers(crossover_hz: tuple[float, float], sample_rate: int, effect: str) -> tuple[float, float]:
    """Validate the two band edges: at least an octave apart, inside (20 Hz, Nyquist/√2)."""
    try:
        lo, hi = (float(v) for v in crossover_hz)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{effect}: crossover_hz must be two frequencies, got {crossover_hz!r}") from exc
    if not (20.0 <= lo and hi * math.sqrt(2.0) <= sample_rate / 2 and hi >= 2.0 * lo):
        raise ValueError(
            f"{effect}: crossover_hz={crossover_hz!r} must satisfy 20 <= low, high >= 2*low "
            f"and high*sqrt(2) <= {sample_rate / 2:g} (Nyquist)"
        )
    return lo, hi


def reverb_ir(
    sample_rate: int,
    length: int,
    *,
    rt60_s: Tensor,
    rt60_low_ratio: Tensor,
    rt60_high_ratio: Tensor,
    early_late: Tensor,
    width: Tensor,
    channels: int,
    crossover_hz: tuple[float, float] = (250.0, 4000.0),
    seed: int = 0,
) -> Tensor:
    """The reverb's impulse response without pre-delay.

    Args:
        sample_rate: Hz.
        length: IR length in samples.
        rt60_s, rt60_low_ratio, rt60_high_ratio, early_late, width: ``(B|1, C|1)``
            tensors (see :func:`reverb`); their dtype and device are used.
        channels: 1 (uses the ``M`` set only) or 2.
        crossover_hz: low/mid and mid/high band edges in Hz.
        seed: selects the noise and reflection pattern.

    Returns:
        ``(B|1, channels, length)``.
    """
    if torch.compiler.is_compiling():
        bands, er = _buffers_op(rt60_s.detach(), sample_rate, length, seed, list(crossover_hz))
    else:
        bands, er = _buffers(sample_rate, length, seed, crossover_hz, str(rt60_s.device), rt60_s.dtype)
    mid, low, high = torch.broadcast_tensors(rt60_s, rt60_low_ratio, rt60_high_ratio)
    rt = torch.stack([mid * low, mid, mid * high], -1).unsqueeze(-1)  # (B, C, 3, 1)
    t = torch.arange(length, dtype=rt.dtype, device=rt.device) / sample_rate
    onset = -torch.expm1(-t * (1000.0 / ONSET_MS))
    rate = LN1000 / rt
    # Unit energy per band: the integral of (onset(t) e^{-rate t})^2 in closed form.
    c = 1000.0 / ONSET_MS
    energy = 1.0 / (2.0 * rate) - 2.0 / (2.0 * rate + c) + 1.0 / (2.0 * rate + 2.0 * c)
    env = onset * torch.exp(-rate * t) * torch.rsqrt(energy * sample_rate)
    if channels == 1:
        late = (bands[0] * env).sum(-2)
        early = er[:1]
    else:
        w = width.unsqueeze(-1)
        norm = torch.rsqrt(1.0 + w * w)
        sign = torch.tensor([1.0, -1.0], dtype=rt.dtype, device=rt.device).view(1, 2, 1)
        mixed = (bands[0] + (sign * w).unsqueeze(-1) * bands[1]) * norm.unsqueeze(-1)
        late = (mixed * env).sum(-2)
        early = (er[0] + sign * w * er[1]) * norm
    theta = early_late.unsqueeze(-1) * (math.pi / 2.0)
    return torch.cos(theta) * early + torch.sin(theta) * late


def reverb(
    x: Tensor,
    sample_rate: int,
    *,
    rt60_s: ParamValue = 1.5,
    rt60_low_ratio: ParamValue = 1.0,
    rt60_high_ratio: ParamValue = 1.0,
    pre_delay_ms: ParamValue = 0.0,
    early_late: ParamValue = 0.7,
    width: ParamValue = 1.0,
    mix: ParamValue = 0.3,
    crossover_hz: tuple[float, float] = (250.0, 4000.0),
    tail_s: float | None = None,
    seed: int = 0,
) -> Tensor:
    """Reverb by FFT convolution with a synthesized, deterministic impulse response.

    Args:
        x: audio ``(B, 1 or 2, T)``.
        sample_rate: Hz.
        rt60_s: decay time of the mid band (60 dB), seconds. Default 1.5.
        rt60_low_ratio: low band RT60 = ``rt60_s * rt60_low_ratio``. Default 1.
        rt60_high_ratio: high band RT60 = ``rt60_s * rt60_high_ratio``. Default 1.
        pre_delay_ms: delay before the reverb starts, 0 to 250 ms. Default 0.
        early_late: 0 early reflections only, 1 late tail only (equal power). Default 0.7.
        width: 0 the same IR in both channels, 1 decorrelated channels. Default 1.
        mix: 0 dry, 1 wet only. Default 0.3.
        crossover_hz: (low/mid, mid/high) band edges in Hz. Default (250, 4000).
        tail_s: IR length in seconds. ``None`` takes 1.5 x the longest band RT60, where
            the tail is 90 dB down (this reads the parameter values on the host, one sync
            on CUDA); pass a number inside fitting loops on CUDA.
        seed: chooses the noise and reflection pattern. Default 0.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``; the tail past ``T`` is cut (pad to keep it).

    Returns:
        ``x + mix * (wet - x)``; the wet signal has about the input's energy.

    Differentiable in ``x`` and every parameter: ``rt60_s``, ``rt60_low_ratio``,
    ``rt60_high_ratio``, ``pre_delay_ms``, ``early_late``, ``width``, ``mix``. CPU and CUDA.

    >>> y = reverb(torch.randn(2, 2, 4800), 48000, rt60_s=0.5, mix=0.5)
    >>> y.shape
    torch.Size([2, 2, 4800])
    """
    effect = "reverb"
    if x.shape[1] not in (1, 2):
        raise ValueError(f"{effect}: audio must have 1 or 2 channel(s), got {x.shape[1]}")
    crossover_hz = check_crossovers(crossover_hz, sample_rate, effect)

    def param(value: ParamValue, name: str) -> Tensor:
        return broadcast_param(value, x, name=name, effect=effect)

    rt60 = param(rt60_s, "rt60_s")
    low = param(rt60_low_ratio, "rt60_low_ratio")
    high = param(rt60_high_ratio, "rt60_high_ratio")
    pre = param(pre_delay_ms, "pre_delay_ms")
    if tail_s is None:
        longest = rt60.detach() * torch.maximum(low, high).detach().clamp_min(1.0)
        tail_s = AUTO_TAIL * float(longest.max())
    if not (isinstance(tail_s, (int, float)) and math.isfinite(tail_s) and tail_s > 0):
        raise ValueError(f"{effect}: tail_s must be a positive number of seconds, got {tail_s!r}")
    n = x.shape[-1]
    length = max(2, int(math.ceil(tail_s * sample_rate)))
    el, wd = param(early_late, "early_late"), param(width, "width")
    n_fft = next_fast_len(n + length + int(math.ceil(MAX_PRE_DELAY_MS * sample_rate / 1000.0)))

    def response() -> Tensor:
        ir = reverb_ir(
            sample_rate,
            length,
            rt60_s=rt60,
            rt60_low_ratio=low,
            rt60_high_ratio=high,
            early_late=el,
            width=wd,
            channels=x.shape[1],
            crossover_hz=crossover_hz,
            seed=seed,
        )
        spec_ir = torch.fft.rfft(ir, n_fft)
        shift = delay_phasor((pre * (sample_rate / 1000.0)).unsqueeze(-1), n_fft).to(spec_ir.dtype)
        return spec_ir * shift

    # Fixed settings (a send bus whose reverb is not fitted) give the same spectrum: made
    # once, not at every render.
    key = constant_key("reverb", sample_rate, length, n_fft, seed, crossover_hz, x.shape[1],
                       rt60, low, high, pre, el, wd)
    wet = torch.fft.irfft(torch.fft.rfft(x, n_fft) * _RESPONSES.get(key, response), n_fft)[..., :n]
    m = param(mix, "mix").unsqueeze(-1)
    return x + m * (wet - x)
