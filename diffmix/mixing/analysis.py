"""Spectral analysis for the mix fit's closed-form start: bands, band powers, the stems'
complex statistics against a reference, the lag between them, K-weighting per band.

Pure functions on tensors (no console, no solve); :mod:`diffmix.mixing.solvers` turns
their output into gains.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from diffmix.functional.filters import sos_response
from diffmix.functional.loudness import k_weighting_coefficients

N_FFT = 8192
BANDS_PER_OCTAVE = 2
LOW_HZ = 22.4
STATS_BLOCK_FRAMES = 128  # STFT frames per block when summing the coherent statistics



def band_edges(sample_rate: int) -> np.ndarray:
    """Half-octave band edges (Hz) from 22.4 Hz to the Nyquist frequency (or 20 kHz)."""
    top = min(20000.0, 0.5 * sample_rate)
    n = int(math.floor(BANDS_PER_OCTAVE * math.log2(top / LOW_HZ)))
    edges = LOW_HZ * 2.0 ** (np.arange(n + 1) / BANDS_PER_OCTAVE)
    return np.append(edges[edges < top], top)


def band_frame_powers(x: Tensor, sample_rate: int, edges: np.ndarray, n_fft: int = N_FFT) -> Tensor:
    """Power per band and frame: ``(..., T)`` -> ``(..., n_bands, frames)`` float64.

    Hann-windowed STFT with 50 % overlap; each band sums the power of its bins.
    """
    lead, t = x.shape[:-1], x.shape[-1]
    n = min(n_fft, 1 << max(8, int(math.log2(max(t, 256)))))
    spec = torch.stft(
        x.reshape(-1, t).double(),
        n,
        n // 2,
        window=torch.hann_window(n, dtype=torch.float64, device=x.device),
        return_complex=True,
        center=True,
    )
    power = spec.real.square() + spec.imag.square()
    freqs = torch.fft.rfftfreq(n, 1.0 / sample_rate).to(x.device)
    e = torch.as_tensor(edges, dtype=torch.float64, device=x.device)
    member = ((freqs.unsqueeze(1) >= e[:-1]) & (freqs.unsqueeze(1) < e[1:])).double()  # (bins, bands)
    out = torch.einsum("rft,fb->rbt", power, member)
    return out.reshape(*lead, out.shape[-2], out.shape[-1])




def coherent_band_stats(
    stems: Tensor, reference: Tensor, sample_rate: int, edges: np.ndarray, n_fft: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per band, the stem channels' complex Gram matrix and their inner products with each
    reference channel: the normal equations of ``R_c ~= sum_j A[j, c] X_j`` per band, where
    the regressors ``X_j`` are the stems' channels.

    Args:
        stems: ``(M, T)`` regressors (each stem channel to be fitted on its own; a mono stem
            carried as two equal channels gives one); reference: ``(C, T)``, aligned.

    Returns:
        ``gram (nb, M, M)`` (Hermitian, ``G[i, j] = sum conj(X_i) X_j``), ``cross (nb, M, C)``
        (``sum conj(X_j) R_c``), ``ref_power (nb, C)`` and ``stem_power (M, nb)``, each summed
        over frames and the band's STFT bins. Complex128 / float64 on the host.
    """
    m, t = stems.shape
    c = reference.shape[0]
    size = min(n_fft, 1 << max(8, int(math.log2(max(t, 256)))))
    hop = size // 2
    window = torch.hann_window(size, dtype=torch.float32, device=stems.device)
    # Frames of a centred STFT, taken a block of frames at a time: the sums are exact and
    # a five-minute song with 16 stems needs ~100 MB of spectra at once instead of GBs.
    # float32 spectra; each band is promoted to double before its products are summed.
    xs = torch.nn.functional.pad(stems.float(), (hop, hop))
    xr = torch.nn.functional.pad(reference[..., :t].float(), (hop, hop))
    frames = 1 + (t + 2 * hop - size) // hop
    freqs = torch.fft.rfftfreq(size, 1.0 / sample_rate).numpy()
    nb = len(edges) - 1
    spans = []
    for b in range(nb):
        bins = np.nonzero((freqs >= edges[b]) & (freqs < edges[b + 1]))[0]
        # a band narrower than one bin (the lowest, on a short signal) stays empty
        spans.append((int(bins[0]), int(bins[-1]) + 1) if len(bins) else None)
    gram = torch.zeros(nb, m, m, dtype=torch.complex128, device=stems.device)
    cross = torch.zeros(nb, m, c, dtype=torch.complex128, device=stems.device)
    ref_power = torch.zeros(nb, c, dtype=torch.float64, device=stems.device)

    def stft(x: Tensor) -> Tensor:
        return torch.stft(x, size, hop, window=window, center=False, return_complex=True)

    for f0 in range(0, frames, STATS_BLOCK_FRAMES):
        count = min(STATS_BLOCK_FRAMES, frames - f0)
        s0, s1 = f0 * hop, f0 * hop + (count - 1) * hop + size
        spec = stft(xs[..., s0:s1])  # (M, bins, frames)
        ref = stft(xr[..., s0:s1])  # (C, bins, frames)
        for b, span in enumerate(spans):
            if span is None:
                continue
            a = spec[:, span[0] : span[1]].reshape(m, -1).to(torch.complex128)
            r = ref[:, span[0] : span[1]].reshape(c, -1).to(torch.complex128)
            gram[b] += a.conj() @ a.T
            cross[b] += a.conj() @ r.T
            ref_power[b] += r.abs().square().sum(-1)
    gram_np, cross_np, ref_power_np = gram.cpu().numpy(), cross.cpu().numpy(), ref_power.cpu().numpy()
    stem_power = np.real(np.einsum("bkk->kb", gram_np)).copy()
    return gram_np, cross_np, ref_power_np, stem_power


def estimate_lag(x: Tensor, reference: Tensor, max_lag: int) -> int:
    """Samples by which ``reference`` lags ``x`` (negative: it leads), within ``+-max_lag``.

    The peak of the coherence-weighted cross-correlation (the smoothed coherence
    transform) of the two signals' mid channels: the cross-spectrum averaged over Hann
    frames, divided by the geometric mean of the two power spectra, back to the lag
    domain. Every frequency then weighs by how coherent the signals are there, not by
    its energy. A plain cross-correlation is ruled by the loudest band, the lows of a
    kick drum, where the reference's filters (a high-pass, a low shelf) turn the phase:
    a quarter turn at 55 Hz moves its peak by 200 samples, while the delay itself turns
    every frequency's phase in proportion. A loud, modulated stem shifted by even 20
    samples moves a frame's power by a few per cent, which is the whole contribution of
    a stem 20 dB under it: so the frames are aligned first.

    Args:
        x: ``(C, T)`` the stems' sum; reference: ``(C', T')``.
        max_lag: samples (>= 0).

    References:
        Carter, Nuttall & Cable, "The smoothed coherence transform", Proc. IEEE 61(10), 1973;
        Knapp & Carter, "The generalized correlation method for estimation of time delay",
        IEEE Trans. ASSP 24(4), 1976.
    """
    if max_lag <= 0:
        return 0
    return _whole_peak(*_coherence_spectrum(x, reference, max_lag), max_lag)


def estimate_delay(x: Tensor, reference: Tensor, max_lag: int) -> float:
    """Samples by which ``reference`` lags ``x``, to a fraction of a sample (float).

    :func:`estimate_lag`'s whole-sample peak moved to the maximum of the same
    coherence-weighted cross-correlation between samples: its band-limited interpolation
    ``r(d) = sum_f w_f Re(C_f e^{j 2 pi f d})`` (``C`` the coherence, ``w`` the rfft
    bins' weights), maximised by Newton steps from the best of a 0.02-sample grid within
    one sample of the peak. For a reference that is the stems delayed by ``D`` samples
    every ``C_f`` is ``|C_f| e^{-j 2 pi f D}`` and ``r`` peaks at ``D`` exactly: a renderer's
    half-sample latency, which puts the whole-sample peak on either neighbour by a
    hair, is found as such (and :func:`~diffmix.functional.delay.fractional_shift` aligns
    the two). Within ~0.01 sample where Hann frames are averaged (signals of two FFT sizes
    or more); on one zero-padded frame its unwindowed edges pull it by up to ~0.2.

    Args:
        x: ``(C, T)`` the stems' sum; reference: ``(C', T')``.
        max_lag: samples (>= 0); the result lies within ``+-(max_lag + 1)``.

    Returns:
        The delay in samples (negative: the reference leads). Not differentiable.
    """
    if max_lag <= 0:
        return 0.0
    coherence, size = _coherence_spectrum(x, reference, max_lag)
    k = _whole_peak(coherence, size, max_lag)
    weight = torch.full((coherence.shape[-1],), 2.0, dtype=torch.float64, device=coherence.device)
    weight[0] = 1.0
    if size % 2 == 0:
        weight[-1] = 1.0
    bins = torch.arange(coherence.shape[-1], dtype=torch.float64, device=coherence.device)
    omega = 2.0 * math.pi * bins / size
    c = coherence * weight

    def r(d: Tensor) -> Tensor:
        return (c * torch.polar(torch.ones_like(d * omega), d * omega)).real.sum(-1)

    grid = k + torch.linspace(-1.0, 1.0, 101, dtype=torch.float64, device=coherence.device)
    d = grid[int(torch.argmax(r(grid.unsqueeze(-1))))]
    for _ in range(4):  # Newton on r'(d) = 0, kept within the grid's step
        turn = c * torch.polar(torch.ones_like(omega), d * omega)
        slope = -(omega * turn.imag).sum()
        curve = -(omega.square() * turn.real).sum()
        if float(curve) >= 0.0:
            break
        d = d - (slope / curve).clamp(-0.02, 0.02)
    return float(d)


def _whole_peak(coherence: Tensor, size: int, max_lag: int) -> int:
    xc = torch.fft.irfft(coherence, size)
    lags = torch.cat([xc[: max_lag + 1], xc[-max_lag:]])
    k = int(torch.argmax(lags))
    return k if k <= max_lag else k - (2 * max_lag + 1)


def _coherence_spectrum(x: Tensor, reference: Tensor, max_lag: int) -> tuple[Tensor, int]:
    """The smoothed coherence transform's spectrum of :func:`estimate_lag` and its FFT size."""
    a, b = x.double().mean(0), reference.double().mean(0)
    t = min(a.shape[-1], b.shape[-1])
    a, b = a[:t], b[:t]
    size = max(4096, 1 << (4 * max_lag - 1).bit_length())
    if t < 2 * size:
        # Too short to average over frames: one frame, zero-padded past the largest lag
        # (every bin then weighs the same: the phase transform).
        size = 1 << (t + max_lag - 1).bit_length()
        fa, fb = torch.fft.rfft(a, size).unsqueeze(0), torch.fft.rfft(b, size).unsqueeze(0)
    else:
        hop = size // 2
        window = torch.hann_window(size, dtype=torch.float64, device=a.device)
        fa = torch.fft.rfft(a.unfold(-1, size, hop) * window)
        fb = torch.fft.rfft(b.unfold(-1, size, hop) * window)
    cross = (fa.conj() * fb).sum(0)
    power = (fa.abs().square().sum(0) * fb.abs().square().sum(0)).sqrt()
    live = power > 1e-12 * power.max().clamp_min(1e-300)
    return torch.where(live, cross / power.clamp_min(1e-300), torch.zeros_like(cross)), size


def k_weight_power(freqs_hz: np.ndarray, sample_rate: int) -> np.ndarray:
    b1, a1, b2, a2 = (torch.tensor(c, dtype=torch.float64) for c in k_weighting_coefficients(sample_rate))
    b, a = torch.stack([b1, b2]), torch.stack([a1, a2])
    h = sos_response(b, a, torch.as_tensor(freqs_hz, dtype=torch.float64), sample_rate)
    return h.abs().square().numpy()



def stft_frames(t: int, n_fft: int = 4096) -> tuple[int, int, int]:
    """The frame grid of :func:`coherent_band_stats` for ``t`` samples: ``(size, hop,
    frames)``; frame ``f`` covers samples ``f * hop - hop`` to ``f * hop - hop + size``."""
    size = min(n_fft, 1 << max(8, int(math.log2(max(t, 256)))))
    hop = size // 2
    return size, hop, 1 + (t + 2 * hop - size) // hop


def frame_energy(x: Tensor, n_fft: int = 4096) -> Tensor:
    """Hann²-weighted energy per frame of :func:`stft_frames`'s grid: ``(..., T)`` ->
    ``(..., frames)``, summed over channels when ``x`` is ``(..., C, T)`` with ``sum_channels``."""
    size, hop, frames = stft_frames(x.shape[-1], n_fft)
    w = torch.hann_window(size, dtype=x.dtype, device=x.device).square()
    xp = torch.nn.functional.pad(x, (hop, hop))
    return (xp.unfold(-1, size, hop)[..., :frames, :].square() * w).sum(-1)


def frame_gains(
    stems: Tensor,
    owner: list[int],
    amp: np.ndarray,
    reference: Tensor,
    sample_rate: int,
    edges: np.ndarray,
    n_fft: int = 4096,
    ridge: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Each stem's gain frame by frame against its static (per-band) fit.

    With ``Y_k`` stem ``k`` through its per-band channel gains ``amp`` (the static fit),
    each frame's real gains ``g_k(t)`` minimise ``sum |R - sum_k g_k(t) Y_k|^2`` over the
    frame's bins and both channels, pulled toward 1 by ``ridge`` (relative to each stem's
    energy in the frame): a compressor's moving gain, as the mix shows it.

    Args:
        stems: ``(M, T)`` the regressors of :func:`coherent_band_stats`; ``owner[j]`` the
            stem of regressor ``j``; ``amp`` ``(nb, M, 2)`` their per-band gains.
        reference: ``(2, T)`` aligned.

    Returns:
        ``gain (N, frames)`` and ``energy (N, frames)`` (each stem's fitted energy per frame:
        how much its frame's gain is worth), float64 on the host.
    """
    m, t = stems.shape
    n = max(owner) + 1
    size, hop, frames = stft_frames(t, n_fft)
    window = torch.hann_window(size, dtype=torch.float32, device=stems.device)
    xs = torch.nn.functional.pad(stems.float(), (hop, hop))
    xr = torch.nn.functional.pad(reference[..., :t].float(), (hop, hop))
    freqs = torch.fft.rfftfreq(size, 1.0 / sample_rate).numpy()
    band = np.searchsorted(edges, freqs, side="right") - 1
    inside = (band >= 0) & (band < len(edges) - 1)
    # Per-bin gains (M, 2, bins) from the per-band ones; bins outside the bands get 0.
    per_bin = np.zeros((m, 2, len(freqs)), dtype=np.complex64)
    per_bin[:, :, inside] = amp[band[inside]].transpose(1, 2, 0)
    gains_bin = torch.as_tensor(per_bin, device=stems.device).unsqueeze(-1)  # (M, 2, bins, 1)
    owners = torch.as_tensor(owner, device=stems.device)
    out_g = np.ones((n, frames))
    out_e = np.zeros((n, frames))

    def stft(x: Tensor) -> Tensor:
        return torch.stft(x, size, hop, window=window, center=False, return_complex=True)

    for f0 in range(0, frames, STATS_BLOCK_FRAMES):
        count = min(STATS_BLOCK_FRAMES, frames - f0)
        s0, s1 = f0 * hop, f0 * hop + (count - 1) * hop + size
        spec = stft(xs[..., s0:s1])  # (M, bins, fr)
        ref = stft(xr[..., s0:s1])  # (2, bins, fr)
        # Each stem's fitted spectrum, frames first: (frames, N, 2 bins); then per frame
        # the normal equations as two batched products.
        parts = (gains_bin * spec.unsqueeze(1)).permute(3, 0, 1, 2)  # (fr, M, 2, bins)
        y = parts.new_zeros(count, n, *parts.shape[2:]).index_add_(1, owners, parts).flatten(2)
        yh = y.conj()
        gram = (yh @ y.transpose(1, 2)).real.double()  # (fr, N, N)
        cross = (yh @ ref.permute(2, 0, 1).reshape(count, -1, 1)).real.double()[..., 0]  # (fr, N)
        diag = torch.diagonal(gram, dim1=1, dim2=2)  # (fr, N)
        lam = ridge * diag + 1e-12 * diag.amax(1, keepdim=True).clamp_min(1e-30)
        g = torch.linalg.solve(gram + torch.diag_embed(lam), (cross + lam).unsqueeze(-1)).squeeze(-1)
        out_g[:, f0 : f0 + count] = g.T.cpu().numpy()
        out_e[:, f0 : f0 + count] = diag.T.cpu().numpy()
    return out_g, out_e


def loudest_window(x: Tensor, sample_rate: int, seconds: float, block_s: float = 0.1) -> tuple[int, int]:
    """The ``seconds``-long run of ``x`` ``(..., T)`` with the most energy (every leading
    axis summed), on a grid of ``block_s`` blocks: ``(first, end)`` in samples; the whole
    signal when it is no longer than that (or ``seconds`` is 0)."""
    t = x.shape[-1]
    if not 0 < seconds * sample_rate < t:
        return 0, t
    length = int(round(seconds * sample_rate))
    block = max(1, int(round(block_s * sample_rate)))
    blocks = t // block
    energy = x[..., : blocks * block].double().square().reshape(-1, blocks, block).sum((0, 2)).cpu().numpy()
    span = max(1, length // block)
    run = np.convolve(energy, np.ones(span), mode="valid")
    first = int(np.argmax(run)) * block
    return first, min(t, first + length)
