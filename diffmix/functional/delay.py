"""Feedback delay with a differentiable fractional time, damping and ping-pong.

The whole effect, feedback loop included, is one transfer function evaluated on an FFT
grid, so there is no loop over samples and ``time_ms``, ``feedback``, ``damping_hz`` and
``mix`` are all differentiable.

Derivation. With ``D`` the delay in samples (any real number), ``g`` the feedback and
``LP(z) = (1 - a) / (1 - a z^-1)`` the one-pole damping low-pass in the loop
(``a = exp(-2π f_c / f_s)``, unity gain at DC), the wet path is

    H(z) = z^-D / (1 - u(z)),        u(z) = g · LP(z) · z^-D

and a ping-pong pair sends odd echoes left and even echoes right:

    H_L = z^-D / (1 - u²),           H_R = z^-D · u / (1 - u²).

``z^-D`` is a fractional delay: a Blackman-windowed sinc of 64 taps centred on ``D``
(flat and linear-phase to about 0.9 x Nyquist), normalised to unit DC gain. It is exactly
a pure delay for whole samples and differentiable in ``D`` everywhere (the window goes to
zero at its ends, so moving across a whole sample is smooth).

The recursion's response is infinite, and an FFT of size ``N`` evaluates it time-aliased
with period ``N``. We pad by the signal length and use an exponential window: the input
is multiplied by ``r^-n``, ``H`` is evaluated at ``z = r e^{jω}`` (each tap at lag ``l``
weighted by ``r^-l``) and the output is multiplied by ``r^n``. This is exact algebra, and
it damps every wrapped-around echo by ``r^-P`` (``P`` the padding): by 60 dB in float32,
120 dB in float64, on top of the loop's own decay. The kernel is finite, so the window
cannot blow up the sinc's tails, which an analytic ``e^{-jωD}`` off the unit circle would.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from diffmix.functional.filters import next_fast_len
from diffmix.params import ParamValue, broadcast_param

NOTE_VALUES = {
    "1/1": 4.0,
    "1/2": 2.0,
    "1/4": 1.0,
    "1/8": 0.5,
    "1/16": 0.25,
    "1/32": 0.125,
}


def note_to_ms(bpm: float, note: str = "1/4") -> float:
    """Duration of a note value at ``bpm`` quarter notes per minute, in milliseconds.

    Args:
        bpm: tempo in beats (quarter notes) per minute, > 0.
        note: ``"1/1"`` ... ``"1/32"``, optionally followed by ``"d"`` (dotted, x1.5) or
            ``"t"`` (triplet, x2/3), e.g. ``"1/8d"``.

    Returns:
        The time in ms, ready for ``time_ms``.

    >>> note_to_ms(120.0, "1/8d")
    375.0
    """
    if isinstance(bpm, bool) or not isinstance(bpm, (int, float)) or not bpm > 0:
        raise ValueError(f"delay: bpm must be a positive number, got {bpm!r}")
    base, factor = note, 1.0
    if note.endswith(("d", "t")):
        base, factor = note[:-1], (1.5 if note.endswith("d") else 2.0 / 3.0)
    if base not in NOTE_VALUES:
        raise ValueError(
            f"delay: unknown note value {note!r}; choose one of {list(NOTE_VALUES)} "
            "with an optional 'd' (dotted) or 't' (triplet)"
        )
    return 60000.0 / bpm * NOTE_VALUES[base] * factor


def delay_phasor(samples: Tensor, n_fft: int, *, damp: float = 0.0) -> Tensor:
    """``exp(-(damp + jω) · samples)`` on the ``rfft`` grid of size ``n_fft``.

    Formed in float64 (the phase ``ωD`` is large) and returned as complex128; the caller
    casts it. Differentiable in ``samples``, which broadcasts against the frequency axis
    (give it a trailing axis of size 1).
    """
    d = samples.to(torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64, device=samples.device)
    # ωD = 2π k D / N, reduced modulo 2π on the integer part of D to keep precision.
    whole = torch.floor(d.detach())
    frac = d - whole
    turns = torch.remainder(k * whole, n_fft) + k * frac
    phase = (-2.0 * math.pi / n_fft) * turns
    mag = torch.exp(-damp * d)
    return torch.polar(mag.expand_as(phase), phase)


FRACTIONAL_HALF_TAPS = 32


def fractional_delay_spectrum(samples: Tensor, n_fft: int, *, damp: float = 0.0) -> Tensor:
    """``rfft`` of a windowed-sinc delay of ``samples`` (trailing axis of size 1), each tap
    at lag ``l`` weighted by ``exp(-damp * l)``. Differentiable in ``samples``.

    Returns a complex tensor of shape ``(*samples.shape[:-1], n_fft // 2 + 1)``.
    """
    half = FRACTIONAL_HALF_TAPS
    whole = torch.floor(samples.detach())
    frac = samples - whole
    m = torch.arange(1 - half, half + 1, dtype=samples.dtype, device=samples.device)
    t = m - frac
    window = 0.42 + 0.5 * torch.cos(math.pi * t / half) + 0.08 * torch.cos(2.0 * math.pi * t / half)
    taps = torch.sinc(t) * window
    taps = taps / taps.sum(-1, keepdim=True)
    lag = whole + m
    taps = taps * torch.exp(-damp * lag)
    index = torch.remainder(lag, n_fft).long()
    shape = (*np.broadcast_shapes(taps.shape[:-1], index.shape[:-1]), n_fft)
    buf = torch.zeros(shape, dtype=samples.dtype, device=samples.device)
    buf = buf.scatter_add(-1, index.expand(*shape[:-1], -1), taps.expand(*shape[:-1], -1))
    return torch.fft.rfft(buf)


def fractional_shift(x: Tensor, samples: float) -> Tensor:
    """``x`` delayed by ``samples`` (any real number; negative: advanced), same length.

    The ideal band-limited delay ``e^{-jωD}`` (flat in level and exact in phase up to
    Nyquist; exactly a shift for whole samples), applied by an FFT of ``x`` zero-padded to
    twice its length and more than the shift: what moves past an end is dropped and
    zeros (with the sinc's decaying tail of the edge) come in at the other. A windowed
    sinc (:func:`fractional_delay_spectrum`) would do as well up to 0.9 x Nyquist, but a
    half-sample one is zero at Nyquist, and a fit's log-magnitude terms see its top bins.

    Args:
        x: ``(..., T)``.
        samples: the delay in samples.

    Returns:
        ``(..., T)``, differentiable in ``x`` (not in ``samples``). CPU and CUDA.

    >>> x = torch.zeros(1, 8); x[0, 2] = 1.0
    >>> int(fractional_shift(x, 3.0).argmax()), round(float(fractional_shift(x, 3.0).max()), 6)
    (5, 1.0)
    >>> [round(v, 2) for v in fractional_shift(x, 0.5)[0, 2:4].tolist()]  # half way: 2 and 3
    [0.64, 0.64]
    """
    n = x.shape[-1]
    n_fft = next_fast_len(2 * n + 2 * int(math.ceil(abs(samples))))
    spec = torch.fft.rfft(x, n_fft)
    h = delay_phasor(torch.tensor([float(samples)], device=x.device), n_fft)
    return torch.fft.irfft(spec * h.to(spec.dtype), n_fft)[..., :n]


def _window_db(dtype: torch.dtype) -> float:
    return 120.0 if dtype == torch.float64 else 60.0


def delay(
    x: Tensor,
    sample_rate: int,
    *,
    time_ms: ParamValue,
    feedback: ParamValue = 0.0,
    damping_hz: ParamValue = 20000.0,
    mix: ParamValue = 0.5,
    ping_pong: bool = False,
) -> Tensor:
    """Feedback delay with fractional time, a damping low-pass in the loop and ping-pong.

    Args:
        x: audio ``(B, C, T)``; ping-pong needs ``C == 2``.
        sample_rate: Hz.
        time_ms: delay between echoes in ms, > 0; fractional samples by a 64-tap
            windowed-sinc delay, flat to 0.003 dB and 2e-4 rad up to 0.9 x Nyquist.
        feedback: gain of each recirculation, ``0 <= feedback < 1``. Default 0 (one echo).
        damping_hz: cut-off of the one-pole low-pass inside the loop; every repeat is one
            pass darker. Default 20000.
        mix: 0 dry, 1 wet only. Default 0.5.
        ping_pong: echoes alternate left, right, left ...; the input is summed to mono
            first. Parameters are read from the left channel. Default False.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``. Echoes past the end of ``x`` are not returned;
        pad ``x`` to keep the tail.

    Returns:
        The mixed signal.

    Differentiable in ``x``, ``time_ms``, ``feedback``, ``damping_hz`` and ``mix``.
    CPU and CUDA; cost: three FFTs of ``~2T`` samples per channel (input, delay kernel, output).

    >>> x = torch.zeros(1, 1, 16); x[..., 0] = 1.0
    >>> y = delay(x, 1000, time_ms=4.0, feedback=0.5, mix=1.0)
    >>> [round(v, 4) for v in y[0, 0, :13:4].tolist()]
    [0.0, 1.0, 0.5, 0.25]
    """
    effect = "delay"
    if ping_pong and x.shape[1] != 2:
        raise ValueError(f"{effect}: ping_pong needs stereo audio, got {x.shape[1]} channel(s)")
    n = x.shape[-1]
    d = broadcast_param(time_ms, x, name="time_ms", effect=effect) * (sample_rate / 1000.0)
    g = broadcast_param(feedback, x, name="feedback", effect=effect)
    fc = broadcast_param(damping_hz, x, name="damping_hz", effect=effect)
    m = broadcast_param(mix, x, name="mix", effect=effect).unsqueeze(-1)
    if ping_pong:
        d, g, fc = d[:, :1], g[:, :1], fc[:, :1]

    pad = max(n, 4 * FRACTIONAL_HALF_TAPS)
    n_fft = next_fast_len(n + pad)
    alpha = _window_db(x.dtype) / 20.0 * math.log(10.0) / pad
    t = torch.arange(n, dtype=x.dtype, device=x.device)
    down = torch.exp(-alpha * t)
    src = x.mean(1, keepdim=True) if ping_pong else x
    spec = torch.fft.rfft(src * down, n_fft)
    cplx = spec.dtype

    z_d = fractional_delay_spectrum(d.unsqueeze(-1), n_fft, damp=alpha).to(cplx)
    z_1 = delay_phasor(torch.ones(1, device=x.device), n_fft, damp=alpha).to(cplx)
    a = torch.exp(-2.0 * math.pi * fc / sample_rate).unsqueeze(-1)
    lp = (1.0 - a) / (1.0 - a * z_1)
    u = g.unsqueeze(-1) * lp * z_d
    if ping_pong:
        den = 1.0 - u * u
        h = torch.cat([z_d / den, z_d * u / den], dim=1)
    else:
        h = z_d / (1.0 - u)
    wet = torch.fft.irfft(spec * h, n_fft)[..., :n] / down
    return x + m * (wet - x)
