"""Differentiable features a mix or master is matched on.

All take stereo ``(B, 2, T)`` audio and return per-item tensors. Level-independent
features (tone, width) are normalised so they compare shape, not volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmix.functional._cache import SignalMemo
from diffmix.functional.gain import mid_side
from diffmix.functional.spectrum import band_matrix, band_powers, mid_side_psd, power_db, welch_psd

# Width is compared in coarse bands: the ear judges width per region, not per 1/3 octave.
WIDTH_EDGES_HZ = (20.0, 250.0, 2000.0, 8000.0, 20000.0)
# A band's side this far under its mid (or its mid under its side), dB, is none at all
# (a mono signal's side reads 0, an antiphase signal's mid 0).
SIDE_FLOOR_DB = -120.0


@dataclass
class SpectralFeatures:
    """Band features of ``(B, 2, T)`` audio.

    Attributes:
        mid_db, side_db: third-octave powers of mid and side, ``(B, bands)`` in dB.
        tone_mid, tone_side: the same minus their power-weighted mean: spectral *shape*.
        width_db: side-to-mid power ratio per coarse band, ``(B, 4)`` in dB.
        correlation: inter-channel correlation over the whole signal, ``(B,)``.
        mid_heard, side_heard, width_heard: per third-octave band ``(B, bands)`` and per
            coarse band ``(B, 4)``, bool: whether the mid is there at all (within
            :data:`SIDE_FLOOR_DB` of the side), whether mid and side both are, and both in
            the coarse band. Where one is not (a mono signal has no side, one channel's
            polarity flipped no mid), its dB is the floor, and a term comparing it, or
            normalised by it, compares nothing.
    """

    mid_db: Tensor
    side_db: Tensor
    tone_mid: Tensor
    tone_side: Tensor
    width_db: Tensor
    correlation: Tensor
    mid_heard: Tensor
    side_heard: Tensor
    width_heard: Tensor


class FeatureExtractor(torch.nn.Module):
    """Computes :class:`SpectralFeatures` with cached band matrices.

    Args:
        sample_rate: Hz.
        n_fft: Welch segment length (8192 at 44.1 kHz resolves ~5 Hz).
    """

    # Buffers registered in __init__ (declared for the type checker).
    third: Tensor
    centres: Tensor
    coarse: Tensor

    def __init__(self, sample_rate: int, n_fft: int = 8192) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        third, centres = band_matrix(sample_rate, n_fft, 3)
        self.register_buffer("third", third, persistent=False)
        self.register_buffer("centres", centres, persistent=False)
        freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
        edges = torch.tensor(WIDTH_EDGES_HZ, dtype=torch.float64)
        coarse = ((freqs >= edges[:-1, None]) & (freqs < edges[1:, None])).to(torch.float64)
        self.register_buffer("coarse", coarse, persistent=False)

    def psd(self, x: Tensor) -> Tensor:
        """Mid and side PSDs, ``(B, 2, bins)``."""
        return welch_psd(mid_side(x), self.n_fft)

    def from_psd(self, psd: Tensor, x: Tensor | None = None) -> SpectralFeatures:
        bands = band_powers(psd, self.third)
        mid_db, side_db = power_db(bands[:, 0]), power_db(bands[:, 1])
        weights = bands[:, 0] / bands[:, 0].sum(-1, keepdim=True).clamp_min(1e-20)
        level = (weights.detach() * mid_db).sum(-1, keepdim=True)
        coarse = band_powers(psd, self.coarse)
        width_db = power_db(coarse[:, 1]) - power_db(coarse[:, 0])
        corr = correlation(x) if x is not None else torch.full_like(level[:, 0], float("nan"))
        floor = 10.0 ** (SIDE_FLOOR_DB / 10.0)
        with torch.no_grad():
            mid_heard = bands[:, 0] > floor * bands[:, 1]
            side_heard = (bands[:, 1] > floor * bands[:, 0]) & mid_heard
            width_heard = (coarse[:, 1] > floor * coarse[:, 0]) & (coarse[:, 0] > floor * coarse[:, 1])
        return SpectralFeatures(mid_db, side_db, mid_db - level, side_db - level, width_db, corr,
                                mid_heard, side_heard, width_heard)

    def forward(self, x: Tensor) -> SpectralFeatures:
        return self.from_psd(self.psd(x), x)


def correlation(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Pearson correlation of left and right over time, ``(B, 2, T) -> (B,)``; 1 for mono.

    Silence gives 1 (nothing decorrelated), not NaN.
    """
    left, right = x[:, 0], x[:, 1]
    n = x.shape[-1]  # inner products: no full-length temporaries
    num = torch.linalg.vecdot(left, right) / n
    energy = (torch.linalg.vecdot(left, left) / n) * (torch.linalg.vecdot(right, right) / n)
    den = torch.sqrt(energy.clamp_min(eps * eps))  # clamped first: sqrt'(0) is infinite
    return torch.where(energy > eps * eps, num / den, torch.ones_like(num))


def crest_factor_db(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Sample peak over RMS in dB over all channels and time, ``(B, C, T) -> (B,)``.

    Differentiable (the peak's gradient goes to the loudest sample); 0 dB for silence.
    """
    flat = x.flatten(1)  # an inner product and two extremes: no full-length temporaries
    if torch.is_grad_enabled() and flat.requires_grad:
        return _Crest.apply(flat, eps)
    return _crest(flat, eps)[0]


def _crest(flat: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Crest factor (dB) of ``flat`` ``(B, N)`` and what its gradient needs: the mean square,
    the peak (both before their floors), the peak's index ``(B, 1)`` and sign."""
    ms = torch.linalg.vecdot(flat, flat) / flat.shape[-1]
    hi, lo = flat.argmax(-1, keepdim=True), flat.argmin(-1, keepdim=True)
    top, bottom = flat.gather(-1, hi)[:, 0], -flat.gather(-1, lo)[:, 0]
    up = top >= bottom
    peak = torch.where(up, top, bottom)
    crest = 20.0 * torch.log10(peak.clamp_min(eps) / ms.clamp_min(eps * eps).sqrt())
    return crest, ms, peak, torch.where(up, hi[:, 0], lo[:, 0]), torch.where(up, 1.0, -1.0).to(flat.dtype)


class _Crest(torch.autograd.Function):
    # d crest / dx = 20 / ln 10 (sign / peak at the peak's sample - x / (N ms) everywhere):
    # one full-length product and one scatter (autograd's through amax, amin and the inner
    # product made masks, counts and sums over the whole signal, ~16 ms an 8 s excerpt).
    @staticmethod
    def forward(ctx, flat: Tensor, eps: float) -> Tensor:  # noqa: ANN001
        crest, ms, peak, idx, sign = _crest(flat, eps)
        ctx.save_for_backward(flat, ms, peak, idx, sign)
        ctx.eps = eps
        return crest

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        flat, ms, peak, idx, sign = ctx.saved_tensors
        k = 20.0 / math.log(10.0) * grad
        # a floored term is constant: no gradient through it
        rms_part = torch.where(ms > ctx.eps * ctx.eps, -k / (flat.shape[-1] * ms), torch.zeros_like(ms))
        peak_part = torch.where(peak > ctx.eps, k * sign / peak, torch.zeros_like(peak))
        out = flat * rms_part.unsqueeze(-1)
        out.scatter_add_(-1, idx.unsqueeze(-1), peak_part.unsqueeze(-1).to(out.dtype))
        return out, None


def side_mid_ratio_db_floored(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Overall side-to-mid power ratio in dB, ``(B, 2, T) -> (B,)``, with ``eps`` added to
    both powers so it stays finite (and differentiable) on mono and silence. The meter,
    which reads ``-inf``/``+inf`` there, is :func:`diffmix.functional.analysis.side_mid_ratio_db`."""
    return _floored_ratio_db(mid_side(x).square().mean(-1), eps)


def audible_mask(sample_rate: int, n_fft: int) -> Tensor:
    """``(n_fft // 2 + 1,)`` float64 0/1: the rFFT bins from :data:`WIDTH_EDGES_HZ`'s first
    edge to its last (20 Hz to 20 kHz), where a side/mid ratio counts."""
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    return ((freqs >= WIDTH_EDGES_HZ[0]) & (freqs < WIDTH_EDGES_HZ[-1])).to(torch.float64)


def audible_side_mid_db(psd: Tensor, sample_rate: int, n_fft: int) -> Tensor:
    """Side over mid power over the audible band (:func:`audible_mask`) in dB, from mid and
    side power spectra ``(B, 2, n_fft // 2 + 1)``: ``(B,)``, floored as
    :func:`side_mid_ratio_db_floored`. What :func:`spectral_errors` compares."""
    power = psd @ audible_mask(sample_rate, n_fft).to(psd.device, psd.dtype)
    return _floored_ratio_db(power)


def _floored_ratio_db(power: Tensor, eps: float = 1e-12) -> Tensor:
    """Side over mid power in dB, ``(B, 2) -> (B,)``, ``eps`` added to both."""
    return 10.0 * torch.log10((power[:, 1] + eps) / (power[:, 0] + eps))


@torch.no_grad()
def spectral_errors(y: Tensor, reference: Tensor, sample_rate: int, n_fft: int = 8192) -> dict[str, float]:
    """How far ``y`` is from ``reference`` in tone and width (both ``(1, 2, T)``).

    Returns RMS errors in dB of the level-free third-octave spectra of mid and side, and
    the error of the side/mid power ratio over the audible band (20 Hz to 20 kHz, the
    width term's :data:`WIDTH_EDGES_HZ`, from the Welch spectrum: a DC offset or subsonic
    rumble, which a master removes, is not width; the window spreads DC over ``2 sr / n_fft``,
    11 Hz at the default). These are the quality metrics of the master benchmark.
    """
    (mid_a, side_a, ratio_a), (mid_b, side_b, ratio_b) = (_tone(v, sample_rate, n_fft)
                                                          for v in (y, reference))
    return {
        "tone_mid_rms_db": float((mid_a - mid_b).square().mean().sqrt()),
        "tone_side_rms_db": float((side_a - side_b).square().mean().sqrt()),
        "side_mid_ratio_error_db": float((ratio_a - ratio_b).abs()[0]),
    }


def _tone(x: Tensor, sample_rate: int, n_fft: int) -> tuple[Tensor, Tensor, Tensor]:
    """``x``'s mid and side tone and side/mid ratio in float64, measured once per signal
    (a job compares its input and its master with one reference)."""

    def make() -> tuple[Tensor, Tensor, Tensor]:
        psd = mid_side_psd(x, n_fft)  # shared with the match EQ's band levels of the same signal
        f = FeatureExtractor(sample_rate, n_fft).to(x.device).from_psd(psd)
        return f.tone_mid, f.tone_side, audible_side_mid_db(psd, sample_rate, n_fft)

    return _TONES.get(x, (int(sample_rate), int(n_fft)), make)


_TONES = SignalMemo(8)
