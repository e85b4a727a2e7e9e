"""Match EQ: a smooth, high-resolution mid/side EQ with one gain per fractional-octave band.

A mastering engineer matching a reference draws a smooth curve through per-band gain
differences and applies it as a linear-phase FIR, separately to mid and side. This module
does that differentiably:

1. **Curve.** Each band's gain (dB) sits at its centre frequency (IEC 61260-1 base-10
   centres, the same bands :mod:`diffmix.features` measures); between centres the curve
   moves from one gain to the next along a smoothstep in log-frequency (so it is flat at
   every centre: a band's gain reads exactly there); it is flat beyond the last centre
   and falls back to 0 dB over the octave under the first band's lower edge (no subsonic
   boost). The
   curve is a fixed ``(bins, bands)`` interpolation matrix times the gains, so it is
   linear (and cheap) in the parameters.
2. **FIR.** The curve sampled on an ``n_fir``-point grid is the magnitude of a zero-phase
   impulse response (``irfft`` of a real spectrum), cut to ``n_fir`` taps by a Hann window
   centred on tap 0. That is a linear-phase FIR whose delay of ``n_fir / 2`` taps is
   removed, so the output lines up with the input sample for sample.
3. **Apply.** One FFT convolution over the whole signal (padded by half the FIR so
   nothing wraps around): mid and side each get their own curve, and ``mix`` blends
   with the dry signal.

The window smooths the curve over about ``2 · sample_rate / n_fir`` Hz (~2.7 Hz for the
default 32768 taps at 44.1 kHz), finer than the narrowest third-octave band (25 Hz: 5.8 Hz).

References:
    IEC 61260-1:2014, fractional-octave band centres. Oppenheim & Schafer, *Discrete-Time
    Signal Processing*, frequency-sampling FIR design with a window (ch. 7).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from diffmix.checks import check_audio
from diffmix.functional._cache import SignalMemo
from diffmix.functional.filters import LinearFilter, fft_convolve, fold_mix
from diffmix.functional.gain import mid_side
from diffmix.functional.spectrum import band_centres, band_matrix, mid_side_psd, power_db, welch_psd
from diffmix.params import ParamValue, broadcast_param, per_sample

FIR_SECONDS = 0.75  # 32768 taps at 44.1 kHz: ~2.7 Hz of smoothing, finer than the 25 Hz band


def fir_length(sample_rate: int) -> int:
    """Default FIR length: the power of two nearest ``FIR_SECONDS`` of audio (>= 256).

    >>> fir_length(44100), fir_length(48000), fir_length(96000)
    (32768, 32768, 65536)
    """
    return max(256, 2 ** round(math.log2(FIR_SECONDS * sample_rate)))


def match_centres(
    sample_rate: int, bands_per_octave: int = 3, low_hz: float = 20.0, high_hz: float = 20000.0
) -> Tensor:
    """Band centres (Hz, float64) of a match EQ: base-10 centres up to 0.45 ``sample_rate``.

    >>> len(match_centres(44100)), round(float(match_centres(44100)[16]))
    (29, 1000)
    """
    return band_centres(bands_per_octave, low_hz, min(high_hz, 0.45 * sample_rate))


@lru_cache(maxsize=32)
def _interp(centres: tuple[float, ...], sample_rate: int, n_fft: int) -> Tensor:
    """``(n_fft // 2 + 1, bands)``: each bin's weights on the band gains (rows sum to 1 from
    the first band's lower edge up; under it the first band's weight falls to 0 over an
    octave)."""
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    logf = torch.log2(freqs.clamp_min(1e-3))
    logc = torch.log2(torch.tensor(centres, dtype=torch.float64))
    n = len(centres)
    w = torch.zeros(freqs.numel(), n, dtype=torch.float64)
    if n == 1:
        w[:, 0] = 1.0
        return w
    pos = logf.clamp(logc[0], logc[-1])
    hi = torch.searchsorted(logc, pos, right=True).clamp(1, n - 1)
    lo = hi - 1
    frac = ((pos - logc[lo]) / (logc[hi] - logc[lo])).clamp(0.0, 1.0)
    frac = frac * frac * (3.0 - 2.0 * frac)  # smoothstep: flat at each centre, no kinks
    rows = torch.arange(freqs.numel())
    w[rows, lo] = 1.0 - frac
    w[rows, hi] += frac
    # Under the first band's lower edge the curve returns to 0 dB over an octave (a
    # smoothstep down to half that frequency): no band boosts the subsonic rumble and DC
    # that no loudness meter hears but every peak meter does.
    edge = logc[0] - 0.5 / (logc.numel() - 1) * (logc[-1] - logc[0])  # the first band's lower edge
    below = logf < edge
    under = (logf - edge + 1.0).clamp(0.0, 1.0)
    w[below, 0] = (under * under * (3.0 - 2.0 * under))[below]
    return w


def interpolation(centres_hz: Tensor, sample_rate: int, n_fft: int) -> Tensor:
    """``(n_fft // 2 + 1, bands)`` float64: each bin's weights on the band gains, the
    designed curve being ``gain_db @ interpolation(...).T`` (rows sum to 1 from the first
    band's lower edge up and fall to 0 over the octave under it)."""
    return _interp(tuple(float(c) for c in centres_hz.tolist()), int(sample_rate), int(n_fft))


def design_curve_db(gain_db: Tensor, centres_hz: Tensor, sample_rate: int, n_fft: int) -> Tensor:
    """The designed response in dB on the ``n_fft``-point rFFT grid, ``(..., n_fft // 2 + 1)``.

    ``gain_db`` is ``(..., bands)``; a smoothstep in log-frequency between centres.

    >>> c = match_centres(44100)
    >>> g = torch.zeros(c.numel(), dtype=torch.float64); g[16] = 6.0
    >>> curve = design_curve_db(g, c, 44100, 44100)  # 1 Hz bins
    >>> round(float(curve[1000]), 6), round(float(curve[100]), 6)
    (6.0, 0.0)
    """
    w = interpolation(centres_hz, sample_rate, n_fft)
    return gain_db @ w.to(gain_db.device, gain_db.dtype).T


def design_fir(gain_db: Tensor, centres_hz: Tensor, sample_rate: int, n_fir: int) -> Tensor:
    """Zero-phase FIR taps for band gains ``(..., bands)``: ``(..., n_fir)``, circular order.

    Tap ``k`` for ``k < n_fir / 2`` is the response at lag ``k``; the last ``n_fir / 2``
    taps are the negative lags (``h[-k] == h[k]``). ``torch.roll(h, n_fir // 2)`` gives
    the causal linear-phase filter with a delay of ``n_fir // 2`` taps.
    """
    curve = design_curve_db(gain_db, centres_hz, sample_rate, n_fir)
    h = torch.fft.irfft(torch.pow(10.0, curve / 20.0), n=n_fir)
    window = torch.hann_window(n_fir, periodic=True, dtype=h.dtype, device=h.device)
    return h * torch.fft.ifftshift(window)  # the window's peak on lag 0


def response(gain_db: Tensor, centres_hz: Tensor, sample_rate: int, n_fir: int, n_fft: int) -> Tensor:
    """The amplitude response of the FIR :func:`match_eq` applies for band gains
    ``(..., bands)``, on the ``n_fft``-point rFFT grid: ``(..., n_fft // 2 + 1)``, real (the
    taps are zero-phase). Its square times a signal's power spectrum is the rendered
    signal's (the FIR is linear and time-invariant), up to the spectral estimate's own
    smoothing where the response moves within it. Not differentiable."""
    h = design_fir(gain_db.detach(), centres_hz, sample_rate, n_fir)
    if n_fir >= n_fft:
        if n_fir % n_fft:
            raise ValueError(f"match_eq.response: n_fir {n_fir} is not a multiple of n_fft {n_fft}")
        return torch.fft.rfft(h)[..., :: n_fir // n_fft].real
    half = n_fir // 2  # zero-phase taps: lags 0 .. half-1 first, the negative lags last
    pad = h.new_zeros((*h.shape[:-1], n_fft - n_fir))
    return torch.fft.rfft(torch.cat([h[..., :half], pad, h[..., half:]], -1)).real


def _decimate(x: Tensor, factor: int) -> Tensor:
    """``x`` ``(B, C, T)`` low-passed (a Blackman-windowed sinc, linear phase, cut at 0.8 of
    the new Nyquist) and kept every ``factor``-th sample: ``(B, C, ceil(T / factor))``.
    Not torchaudio's resampler (:func:`diffmix.inputs.resample`): its band edge at 0.99 of
    the new Nyquist aliases into the bands under it. In :class:`FilteredBandLevels`, bands
    up to 2 kHz read 3.5e-4 and 2.4e-4 dB off a full render with it, against 1.9e-5 and
    2.3e-5 dB with this filter (``tests/test_match_eq.py``, seed 3, 44.1 and 48 kHz)."""
    half = 24 * factor
    n = torch.arange(-half, half + 1, dtype=torch.float64)
    cut = 0.8 / factor  # of the old Nyquist
    window = torch.blackman_window(2 * half + 1, periodic=False, dtype=torch.float64)
    taps = cut * torch.sinc(cut * n) * window
    fir = (taps / taps.sum()).to(x.dtype).view(1, 1, -1)
    return fft_convolve(x, fir, skip=half)[..., ::factor]


class FilteredBandLevels:
    """The :func:`band_levels_db` (``shared``: float64 powers) of :func:`match_eq` applied to
    ``x`` ``(B, 2, T)`` for band gains ``(B, 2, bands)`` (mid, side) and ``mix`` ``(B,)``, at a
    fraction of a full render's cost: ``levels(gains, mix)`` -> ``(B, 2, bands)``. Not
    differentiable.

    Bands up to a quarter of the rate over ``factor`` (2 kHz at 44.1 kHz): the match EQ
    rendered on ``x`` decimated by ``factor`` (4, or 2, when it divides the rate, the FIR
    and ``n_fft``), the same curve in Hz, measured by Welch at ``n_fft / factor`` (the same
    bins and window in Hz); the output's levels are ``x``'s plus the change the render
    makes to the decimated signal's (the low-pass cancels). Where bands are a bin or two
    wide and the response moves between them (the lowest), only a render measures what
    Welch's window mixes. Bands above: the FIR is linear and time-invariant, so the output's
    spectrum is ``x``'s times the blend's squared response (:func:`response`); there bands
    span many bins and the response moves slowly across Welch's window.
    """

    def __init__(self, x: Tensor, sample_rate: int, centres_hz: Tensor, n_fir: int,
                 n_fft: int = 8192) -> None:
        self.sample_rate, self.n_fir, self.n_fft = int(sample_rate), int(n_fir), int(n_fft)
        self.centres = centres_hz.detach().to("cpu", torch.float64)
        self.factor = next((f for f in (4, 2) if not (sample_rate % f or n_fir % f or n_fft % f)), 1)
        step = float(self.centres[1] / self.centres[0]) if self.centres.numel() > 1 else 2 ** (1 / 3)
        self.low = self.centres * math.sqrt(step) < 0.25 * self.sample_rate / self.factor
        self.x = x.detach()
        self.psd = mid_side_psd(self.x, self.n_fft)  # x's band levels are this spectrum's
        if self.factor > 1 and bool(self.low.any()):
            self.small = _decimate(self.x, self.factor)
            # x's full-rate levels less the decimated signal's: what the low-pass took
            full = psd_band_levels_db(self.psd, self.sample_rate, self.centres, self.n_fft)
            self.offset = full[..., self.low] - self._low_levels(self.small)

    def _low_levels(self, y: Tensor) -> Tensor:
        return band_levels_db(y, self.sample_rate // self.factor, self.centres[self.low],
                              self.n_fft // self.factor, shared=True)

    def _render(self, x: Tensor, sample_rate: int, gain_db: Tensor, mix: Tensor, n_fir: int) -> Tensor:
        g, m = gain_db.to(x.dtype), mix.to(x.dtype)
        return match_eq(x, sample_rate, mid_gain_db=g[:, 0], side_gain_db=g[:, 1], mix=m,
                        centres_hz=self.centres, n_fir=n_fir)

    @torch.no_grad()
    def __call__(self, gain_db: Tensor, mix: Tensor) -> Tensor:
        gain_db = gain_db.detach().to(self.psd.device, torch.float64)
        mix = mix.detach().to(self.psd.device, torch.float64).reshape(-1)
        if self.factor == 1:  # no decimation divides the rate: the render itself
            y = self._render(self.x, self.sample_rate, gain_db, mix, self.n_fir)
            return band_levels_db(y, self.sample_rate, self.centres, self.n_fft, shared=True)
        h = response(gain_db, self.centres, self.sample_rate, self.n_fir, self.n_fft)
        blend = (1.0 + mix.view(-1, 1, 1) * (h - 1.0)).square()
        levels = psd_band_levels_db(self.psd * blend, self.sample_rate, self.centres, self.n_fft)
        if bool(self.low.any()):
            f = self.factor
            y = self._render(self.small, self.sample_rate // f, gain_db, mix, self.n_fir // f)
            levels[..., self.low] = self._low_levels(y) + self.offset
        return levels


def match_eq(
    x: Tensor,
    sample_rate: int,
    *,
    mid_gain_db: ParamValue,
    side_gain_db: ParamValue,
    mix: ParamValue = 1.0,
    centres_hz: Tensor | None = None,
    n_fir: int | None = None,
) -> Tensor:
    """Apply a smooth mid/side match EQ with one gain per band (see the module notes).

    Args:
        x: stereo audio ``(B, 2, T)``.
        sample_rate: Hz.
        mid_gain_db: band gains for the mid in dB, ``(bands,)`` or ``(B, bands)``.
        side_gain_db: band gains for the side in dB, same shapes.
        mix: dry/wet, 0 to 1; float, ``(B,)`` or ``(B, C)`` (M and S). Default 1.
        centres_hz: band centres in Hz; default :func:`match_centres` (third octaves).
        n_fir: FIR length in taps (even); default :func:`fir_length`.

    Shape:
        ``(B, 2, T)`` -> ``(B, 2, T)``.

    Returns:
        The equalised audio, aligned with the input (zero phase).

    Differentiable in ``x``, ``mid_gain_db``, ``side_gain_db`` and ``mix``. CUDA: yes (FFTs
    on the input's device, no host sync).

    >>> x = torch.randn(2, 2, 4000)
    >>> c = match_centres(44100)
    >>> match_eq(x, 44100, mid_gain_db=torch.zeros(c.numel()), side_gain_db=torch.zeros(c.numel())).shape
    torch.Size([2, 2, 4000])
    """
    check_audio(x, "match_eq", channels=(2,))
    return match_eq_filter(x, sample_rate, mid_gain_db=mid_gain_db, side_gain_db=side_gain_db, mix=mix,
                           centres_hz=centres_hz, n_fir=n_fir)(x)


def match_eq_filter(
    x: Tensor,
    sample_rate: int,
    *,
    mid_gain_db: ParamValue,
    side_gain_db: ParamValue,
    mix: ParamValue = 1.0,
    centres_hz: Tensor | None = None,
    n_fir: int | None = None,
) -> LinearFilter:
    """:func:`match_eq` as the :class:`~diffmix.functional.filters.LinearFilter` it applies to
    audio shaped like ``x`` ``(B, 2, T)`` (read for its shape, device and dtype only);
    arguments as :func:`match_eq`'s (a ``mix`` per channel is M's and S's). Dry/wet folds
    into the response, ``(1 - mix) delta + mix h``; the causal taps (``h`` rolled by half the
    FIR) with that half taken out as ``skip``. Differentiable in the gains and ``mix``."""
    centres = match_centres(sample_rate) if centres_hz is None else centres_hz
    n_fir = fir_length(sample_rate) if n_fir is None else int(n_fir)
    if n_fir < 2 or n_fir % 2:
        raise ValueError(f"match_eq: n_fir must be an even number of taps >= 2, got {n_fir}")
    bands = int(centres.numel())
    mid = broadcast_param(mid_gain_db, x[:, :1], name="mid_gain_db", effect="match_eq", trailing=1)
    side = broadcast_param(side_gain_db, x[:, :1], name="side_gain_db", effect="match_eq", trailing=1)
    if mid.shape[-1] != bands or side.shape[-1] != bands:
        raise ValueError(
            f"match_eq: mid_gain_db and side_gain_db need {bands} band values, got "
            f"{mid.shape[-1]} and {side.shape[-1]}"
        )
    gains = torch.cat(torch.broadcast_tensors(mid, side), dim=1)  # (B|1, 2, bands)
    h = design_fir(gains, centres, sample_rate, n_fir)  # (B|1, 2, n_fir), lag 0 first
    h = fold_mix(h, per_sample(mix, x, name="mix", effect="match_eq"))  # mix (B|1, C|1, 1)
    # Zero-phase taps reach half the FIR both ways: the causal filter (the taps rolled by
    # half) over the signal and half a filter of zeros, read half a filter later. Long
    # signals take overlap-save blocks (fft_convolve), not one transform of the whole song.
    return LinearFilter(torch.roll(h, n_fir // 2, dims=-1), skip=n_fir // 2, ms=True)


def signal_band_levels_db(x: Tensor, sample_rate: int, centres_hz: Tensor, n_fft: int = 8192) -> Tensor:
    """:func:`band_levels_db` of ``x`` (float64, from :func:`~diffmix.functional.spectrum.
    mid_side_psd`), measured once per signal
    (:class:`~diffmix.functional._cache.SignalMemo`): a job that matches one input to one
    reference analyses each several times (the closed form, the width, the refine passes).
    Not differentiable."""

    def make() -> Tensor:
        with torch.no_grad():
            return band_levels_db(x, sample_rate, centres_hz, n_fft, shared=True)

    return _LEVELS.get(x, (int(sample_rate), tuple(centres_hz.tolist()), int(n_fft)), make)


_LEVELS = SignalMemo()


def band_levels_db(x: Tensor, sample_rate: int, centres_hz: Tensor, n_fft: int = 8192, *,
                   shared: bool = False) -> Tensor:
    """Third-octave (or the centres' fraction) powers of mid and side in dB, ``(B, 2, bands)``.

    The bands are those of :func:`diffmix.functional.spectrum.band_matrix` with the same
    edges as ``centres_hz``; a band too narrow to hold a bin reads its nearest bins'
    interpolated level (so every band has a finite reading). ``shared``: from the
    signal's one analysis (:func:`~diffmix.functional.spectrum.mid_side_psd`: float64
    powers, measured once per signal; not differentiable), not a fresh one in ``x``'s dtype.
    """
    if shared and not (torch.is_grad_enabled() and x.requires_grad):
        psd = mid_side_psd(x, n_fft)  # measured once per signal (the report's tone error too)
    else:
        psd = welch_psd(x, n_fft, pre=mid_side)
    return psd_band_levels_db(psd, sample_rate, centres_hz, n_fft)


def psd_band_levels_db(psd: Tensor, sample_rate: int, centres_hz: Tensor, n_fft: int = 8192) -> Tensor:
    """:func:`band_levels_db` from a power spectrum ``(..., n_fft // 2 + 1)`` already taken:
    ``(..., bands)``."""
    centres_hz = centres_hz.detach().to("cpu", torch.float64)
    fraction = round(0.3 / math.log10(float(centres_hz[1] / centres_hz[0]))) if centres_hz.numel() > 1 else 3
    matrix, found = band_matrix(sample_rate, n_fft, fraction, float(centres_hz[0]) * 0.99,
                                float(centres_hz[-1]) * 1.01)
    levels = power_db(psd @ matrix.to(psd.device, psd.dtype).T)  # (B, 2, kept bands)
    if found.numel() == centres_hz.numel():
        return levels
    # Fill bands without a bin by interpolating in log-frequency between kept ones.
    logc, logk = torch.log2(centres_hz), torch.log2(found)
    idx = torch.searchsorted(logk, logc).clamp(1, logk.numel() - 1)
    frac = ((logc - logk[idx - 1]) / (logk[idx] - logk[idx - 1])).clamp(0, 1)
    idx, frac = idx.to(levels.device), frac.to(levels.device, levels.dtype)
    return levels[..., idx - 1] * (1 - frac) + levels[..., idx] * frac


def match_gains(
    x: Tensor,
    reference: Tensor,
    sample_rate: int,
    centres_hz: Tensor,
    *,
    mid_range_db: tuple[float, float] = (-24.0, 24.0),
    side_range_db: tuple[float, float] = (-60.0, 24.0),
    n_fft: int = 8192,
    reference_db: Tensor | None = None,
    x_db: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Closed-form band gains that move ``x``'s mid and side tone onto ``reference``'s.

    Both spectra are made level-free the way :class:`diffmix.features.FeatureExtractor`
    does (minus the power-weighted mean of the mid's band levels), so the side's gains
    also carry the side/mid balance. The gains are then shifted together so the mid's
    power-weighted mean gain is 0 dB (the level is the loudness solve's job), or as near
    to that as keeps them all inside their ranges, and clipped to the ranges.

    Args:
        x: ``(B, 2, T)`` input; reference: ``(1 | B, 2, T_ref)``.
        sample_rate: Hz. centres_hz: band centres.
        mid_range_db, side_range_db: allowed gains, dB (the side may cut further: a wide
            mix matched to a mono-bass reference needs it).
        reference_db: the reference's :func:`band_levels_db` where already measured (a
            fixed reference matched several times is analysed once); ``reference`` is
            then unused.
        x_db: ``x``'s band levels where already measured (``x`` then only sets the dtype).

    Returns:
        ``(mid_gain_db, side_gain_db)``, each ``(B, bands)`` in ``x``'s dtype.

    Not differentiable (a closed-form starting point). CUDA: yes.
    """
    centres_hz = centres_hz.detach().to("cpu", torch.float64)
    if x_db is None:
        x_db = signal_band_levels_db(x, sample_rate, centres_hz, n_fft)
    lx = x_db.to(x.device, torch.float64)
    if reference_db is None:
        reference_db = signal_band_levels_db(reference, sample_rate, centres_hz, n_fft)
    lr = reference_db.to(x.device, torch.float64)

    def level(levels: Tensor) -> Tensor:
        p = torch.pow(10.0, levels[:, 0] / 10.0)
        return (p / p.sum(-1, keepdim=True) * levels[:, 0]).sum(-1, keepdim=True)

    tx, tr = lx - level(lx).unsqueeze(1), lr - level(lr).unsqueeze(1)
    diff = tr - tx  # (B, 2, bands)
    p = torch.pow(10.0, lx[:, 0] / 10.0)
    offset = (p / p.sum(-1, keepdim=True) * diff[:, 0]).sum(-1)
    lo = diff.new_tensor([mid_range_db[0], side_range_db[0]]).view(1, 2, 1)
    hi = diff.new_tensor([mid_range_db[1], side_range_db[1]]).view(1, 2, 1)
    # Where the gains fit their ranges but the level-keeping shift pushes some out, shift
    # only as far as needed to fit (the level is re-set downstream).
    lo_shift = (diff - hi).flatten(1).amax(-1)  # offsets that keep every gain inside
    hi_shift = (diff - lo).flatten(1).amin(-1)
    fits = lo_shift <= hi_shift
    offset = torch.where(fits, torch.minimum(torch.maximum(offset, lo_shift), hi_shift), offset)
    gains = torch.minimum(torch.maximum(diff - offset.view(-1, 1, 1), lo), hi).to(x.dtype)
    return gains[:, 0], gains[:, 1]
