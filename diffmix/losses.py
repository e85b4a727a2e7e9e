"""Distances between a rendered mix/master and a reference, and loudness-spec penalties.

Every loss returns one value per batch item, ``(B,)``; the objective weights and sums
them. All are differentiable in the rendered audio. CUDA: yes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffmix.functional.gain import mid_side


def a_weighting(freqs_hz: Tensor) -> Tensor:
    """IEC 61672 A-weighting as linear amplitude (1.0 at 1 kHz)."""
    f2 = freqs_hz.double().square()
    num = (12194.0**2) * f2.square()
    den = (f2 + 20.6**2) * torch.sqrt((f2 + 107.7**2) * (f2 + 737.9**2)) * (f2 + 12194.0**2)
    gain = num / den.clamp_min(1e-300)
    return (gain / 0.7943282347242815).to(freqs_hz.dtype)  # normalise: A(1 kHz) = 0 dB


def stereo_views(x: Tensor, mode: str) -> Tensor:
    """``(B, 2, T)`` -> the channels a loss compares: ``lr``, ``ms`` or ``lr+ms``.

    Mono ``(B, 1, T)`` input gives just that channel.
    """
    if x.shape[1] == 1:
        return x
    if mode == "lr":
        return x
    if mode == "ms":
        return mid_side(x)
    if mode == "lr+ms":
        return torch.cat([x, mid_side(x)], dim=1)
    raise ValueError(f"stereo mode must be 'lr', 'ms' or 'lr+ms', got {mode!r}")


class MRSTFTLoss(nn.Module):
    """Multi-resolution STFT distance: spectral convergence plus log-magnitude L1.

    Args:
        sample_rate: Hz.
        fft_sizes: STFT sizes; hops are ``hop_fraction`` of each.
        stereo: ``lr``, ``ms`` or ``lr+ms`` (left/right and sum/difference).
        weighting: ``None`` or ``"a"`` (A-weighted magnitudes, a perceptual weighting).

    Shape:
        ``y, ref``: ``(B, C, T)`` -> ``(B,)``.

    References:
        Yamamoto et al., "Parallel WaveGAN", ICASSP 2020 (the multi-resolution STFT loss).

    >>> loss = MRSTFTLoss(44100, fft_sizes=(256, 64))
    >>> x = torch.randn(2, 2, 4096)
    >>> loss(x, x).abs().max().item() < 1e-6
    True
    """

    def __init__(
        self,
        sample_rate: int,
        fft_sizes: Sequence[int] = (4096, 1024, 256),
        hop_fraction: float = 0.25,
        stereo: str = "lr+ms",
        weighting: str | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if weighting not in (None, "a"):
            raise ValueError(f"MRSTFTLoss: weighting must be null or 'a', got {weighting!r}")
        stereo_views(torch.zeros(1, 2, 1), stereo)
        self.sample_rate = sample_rate
        self.fft_sizes = [int(n) for n in fft_sizes]
        self.hop_fraction = hop_fraction
        self.stereo = stereo
        self.weighting = weighting
        self.eps = eps
        self._windows: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}

    def _window(self, n: int, like: Tensor) -> Tensor:
        key = (n, like.dtype, like.device)
        if key not in self._windows:
            self._windows[key] = torch.hann_window(n, dtype=like.dtype, device=like.device)
        return self._windows[key]

    def magnitudes(self, x: Tensor, n_fft: int) -> Tensor:
        b, c, t = x.shape
        hop = max(1, int(n_fft * self.hop_fraction))
        spec = torch.stft(
            x.reshape(b * c, t), n_fft, hop, window=self._window(n_fft, x), return_complex=True
        )
        mag = spec.abs().view(b, c, spec.shape[-2], spec.shape[-1])
        if self.weighting == "a":
            freqs = torch.linspace(0, self.sample_rate / 2, mag.shape[-2], device=x.device)
            mag = mag * a_weighting(freqs).to(mag.dtype).view(1, 1, -1, 1)
        return mag

    def _compare(self, my: Tensor, mr: Tensor) -> Tensor:
        """Spectral convergence plus mean log-magnitude distance, ``(B,)``."""
        sc = torch.linalg.vector_norm((my - mr).flatten(1), dim=1) / torch.linalg.vector_norm(
            mr.flatten(1), dim=1
        ).clamp_min(self.eps)
        logmag = (torch.log(my + self.eps) - torch.log(mr + self.eps)).abs().flatten(1).mean(1)
        return sc + logmag

    def reference(self, ref: Tensor) -> list[Tensor]:
        """The reference's magnitudes at every resolution, to reuse across calls of
        :meth:`distance` (a fit that compares against the same excerpt many times computes
        them once). Not differentiable (computed without a graph)."""
        with torch.no_grad():
            ref = stereo_views(ref, self.stereo)
            return [self.magnitudes(ref, n_fft) for n_fft in self.fft_sizes]

    def distance(self, y: Tensor, ref_mags: Sequence[Tensor]) -> Tensor:
        """The loss against magnitudes from :meth:`reference`: ``(B, C, T) -> (B,)``."""
        y = stereo_views(y, self.stereo)
        total = y.new_zeros(y.shape[0])
        for n_fft, mr in zip(self.fft_sizes, ref_mags, strict=True):
            my = self.magnitudes(y, n_fft)
            if my.shape != mr.shape:
                raise ValueError(
                    f"MRSTFTLoss: magnitudes differ: {tuple(my.shape)} vs reference {tuple(mr.shape)}"
                )
            total = total + self._compare(my, mr)
        return total / len(self.fft_sizes)

    def forward(self, y: Tensor, ref: Tensor) -> Tensor:
        if y.shape != ref.shape:
            raise ValueError(f"MRSTFTLoss: shapes differ: {tuple(y.shape)} vs {tuple(ref.shape)}")
        y_views, ref_views = stereo_views(y, self.stereo), stereo_views(ref, self.stereo)
        total = y.new_zeros(y.shape[0])
        for n_fft in self.fft_sizes:
            my, mr = self.magnitudes(y_views, n_fft), self.magnitudes(ref_views, n_fft)
            total = total + self._compare(my, mr)
        return total / len(self.fft_sizes)


def hinge(x: Tensor) -> Tensor:
    """One-sided quadratic penalty: 0 below zero, ``x²`` above (a smooth gradient at 0)."""
    return torch.relu(x).square()
