"""Multiband compressor: phase-aligned Linkwitz-Riley bands, a compressor on each."""

from __future__ import annotations

import torch
from torch import Tensor

from diffmix.functional.dynamics import compressor
from diffmix.functional.filters import linkwitz_riley
from diffmix.params import ParamValue, broadcast_param

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
