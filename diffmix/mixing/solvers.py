"""The mix fit's first stage: per-stem gains and coarse tone, in closed form, from the audio.

A mix is, to a good approximation, a sum of independently processed stems, and the
energies of independent signals add. So in every frequency band ``b`` and analysis frame
``f`` the reference's power is close to a non-negative combination of the stems' powers::

    P_ref[c, b, f] ~= sum_k w[k, b] * P_k[c, b, f]        (c: left, right)

where ``w[k, b]`` is stem ``k``'s power gain in band ``b`` (its fader and EQ together).
Solving that by non-negative least squares (NNLS), band by band over all frames, recovers
each stem's level and coarse tone without a gradient step and without seeing the setting
that made the reference (the hidden values stay hidden: only the audio is read).

Why this is a good start:

- **Quiet tracks land right.** Every band's equation counts every frame, so a bass drum
  20 LU under the lead is still fitted on the frames and bands where it carries energy;
  a waveform (MR-STFT) gradient barely sees it.
- **Robust to misalignment.** Frames are ~93 ms long, so stems that lead or lag the mix
  by a few dozen samples (a producer's render is rarely sample-aligned with its stems)
  give the same powers; the phase, which a waveform loss needs, is never used.
- **Cheap.** One STFT of each stem and of the reference, then a handful of tiny NNLS
  problems (frames x stems): a fraction of one gradient step.

When the reference is a mix of these very stems (the hidden-setting case), the same least
squares runs on the complex STFT instead (``coherent``): ``R[c, f, t] ~= sum_k w[k, b] *
S_k[c, f, t]`` with a complex ``w`` per band, whose ``|w|^2`` is the power gain. Two stems
with energy in the same bands and frames (two kick drums on one beat) are then told apart
by their waveforms, and a complex gain absorbs the phase the reference's own filters
turned, which a real one would leak into the quieter stem. It is used where it explains at
least half of the reference's power (a producer's render with its own effects: ~0.2-0.3),
and, stem by stem, not for a loud stem the reference carries out of phase (what it misses
of that stem is then in its residual); band powers stand in for those.

Each band's solve is pulled (ridge) toward a broadband solve, so a band where a stem
has almost no energy keeps the stem's overall gain instead of an arbitrary value. The
per-band gains are then split into an input gain (their K-weighted, energy-weighted mean:
what a loudness meter hears) and an EQ curve, fitted to the console's own parametric EQ
response (its band types and frequencies) by a few Gauss-Newton steps on its magnitude
response, weighted by where the stem has energy; :func:`fit_eq_bands` then fits the band
frequencies and Qs too (a hidden EQ's bands need not sit on the console's). The gradient
fit then refines
everything (compression, pan, width, sends and the EQ itself) from there, and
:func:`polish_levels` finally sets each fader so the track's loudness through the fitted
console is the estimate's again (a waveform loss trades quiet tracks' levels away).

References:
    Lawson & Hanson, "Solving Least Squares Problems", 1974 (the NNLS active-set method,
    as in :func:`diffmix.linalg.nnls`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from diffmix.functional.eq import eq_coeffs, parse_band
from diffmix.functional.filters import sos_response
from diffmix.linalg import nnls
from diffmix.mixing.analysis import (
    BANDS_PER_OCTAVE,
    band_edges,
    band_frame_powers,
    coherent_band_stats,
    estimate_lag,
    frame_gains,
    k_weight_power,
    stft_frames,
)

GAIN_DB_RANGE = (-60.0, 24.0)
# The coherent solve is used when it explains at least this share of the reference's
# power (a mix of the stems through EQs and compressors: ~0.98; a producer's mix with
# effects the stems lack: ~0.2); otherwise the band powers are.
MIN_COHERENT_EXPLAINED = 0.5
# A stem holding at least this share of the mix whose band-power estimate is this many
# times its coherent one is carried processed (out of phase) by the reference.
LOUD_SHARE = 0.1
INCOHERENT_RATIO = 2.0
# A stem whose side (L-R) energy is at most this share of its mid (L+R) energy is solved
# as one channel (-40 dB: quantisation differences between two copies of one signal).
MONO_SIDE = 1e-4
# Pull of each stem's placement toward its neutral one, relative to the data's own weight.
PLACE_RIDGE = 5e-3
# The least residual a band's data are taken to carry, relative to its power (-60 dB): the
# weighted placement solve counts a band by the inverse of its residual.
NOISE_FLOOR = 1e-6
# How often the weighted solve's band weights are taken again from its own residual.
REWEIGHTS = 2
# The most a stem's tone may lift one band above its typical level (dB): what a strip's EQ
# can give (bands of +-12 dB overlapping). In a band where a stem has next to no energy an
# unbounded complex gain takes up whatever residual of the other stems it correlates with
# (x1000 and more), and through its weight in the placement solve that residual's left/right
# balance becomes the stem's.
TONE_BOOST_DB = 12.0



@dataclass
class MixEstimate:
    """What the closed-form stage found.

    Attributes:
        gain_db: ``(N,)`` each stem's broadband gain (dB), K-weighted: what a loudness meter
            hears of the stem in the reference, relative to the stem as given.
        band_db: ``(N, n_bands)`` each stem's gain per analysis band (dB).
        weight: ``(N, n_bands)`` how much each band of each stem is worth trusting (the
            stem's K-weighted share of energy in that band, 0..1).
        centres_hz: ``(n_bands,)`` analysis band centres.
        explained: fraction of the reference's band power the fitted sum explains (1 is a
            perfect fit; a producer's mix with effects and a master bus reads lower).
        lag: samples by which the reference lags the stems (negative: leads).
        coherent: solved on complex spectra (True) or band powers.
        incoherent: with ``coherent``, the loud stems the reference carries out of phase
            (processed), whose gains come from band powers instead.
        matrix: with ``coherent``, ``(N, 2, 2)`` each stem's broadband channel matrix (stem
            channels as given -> left/right of the mix; a mono stem's second column is 0):
            its gain, pan and width together, with the tone taken out.
        tone_db: with ``coherent``, ``(N, n_bands)`` each stem's tone (dB) relative to
            ``matrix``: the part of its per-band response both channels share (its EQ).
        frame_gain, frame_energy: with ``coherent``, ``(N, frames)`` each stem's gain per
            STFT frame against its static fit (a compressor's moving gain) and its fitted
            energy per frame (:func:`~diffmix.mixing.analysis.frame_gains`), on the grid of
            :func:`~diffmix.mixing.analysis.stft_frames` from stem sample ``frame_offset``.
        one_column: with ``coherent``, the stems solved as one channel (mono, or two
            channels carrying the same signal): their ``matrix`` holds column 0 only, the
            gains of channel 0 standing for both.
        channel_gram: with ``coherent``, ``(N, 2, 2)`` each stem's channel Gram matrix
            through its tone (real, trace 1; a one-column stem: ``[[1, 0], [0, 0]]``): the
            weight of each direction of ``matrix`` in the stem's output energy, since
            ``|(M - M') X|^2 = tr((M - M') C (M - M')^T)``.
    """

    gain_db: Tensor
    band_db: Tensor
    weight: Tensor
    centres_hz: Tensor
    explained: float
    lag: int = 0
    coherent: bool = False
    incoherent: list[int] = field(default_factory=list)
    matrix: Tensor | None = None
    tone_db: Tensor | None = None
    frame_gain: Tensor | None = None
    frame_energy: Tensor | None = None
    frame_offset: int = 0
    one_column: list[bool] = field(default_factory=list)
    channel_gram: Tensor | None = None



def _nnls(a: np.ndarray, b: np.ndarray, prior: np.ndarray | None = None, ridge: float = 0.0) -> np.ndarray:
    """Non-negative ``w`` minimising ``|a w - b|^2 + ridge |n (w - prior)|^2``.

    ``n`` are the column norms: the columns are solved normalised (``A^T A`` has a unit
    diagonal), so ``ridge`` is relative to each stem's own contribution. A stem with no
    power keeps its prior (or 0).
    """
    norms = np.linalg.norm(a, axis=0)
    live = norms > 0
    w = np.zeros(a.shape[1]) if prior is None else prior.astype(np.float64).copy()
    if not live.any():
        return w
    an, bn = a[:, live] / norms[live], b
    if prior is not None and ridge > 0:
        m, s = int(live.sum()), math.sqrt(ridge)
        an = np.vstack([an, s * np.eye(m)])
        bn = np.concatenate([b, s * prior[live] * norms[live]])
    u, _ = nnls(an, bn, maxiter=50 * an.shape[1])
    w[live] = u / norms[live]
    return w


def estimate_mix(
    stems: Tensor,
    reference: Tensor,
    sample_rate: int,
    *,
    ridge: float | None = None,
    max_lag_ms: float = 50.0,
    coherent: bool = False,
    lag: int | None = None,
    mono: list[bool] | None = None,
) -> MixEstimate:
    """Per-stem gains and per-band tone that best explain the reference's band powers.

    Args:
        stems: ``(N, 2, T)`` the stems as they reach the console's EQ (after any fixed
            routing such as a mono pan law).
        reference: ``(2, T')`` the reference mix; ``min(T, T')`` samples are compared.
        sample_rate: Hz.
        ridge: pull of each band's solve toward the broadband one (relative; 0 = none;
            default 0.05 on band powers, 0.02 on complex spectra).
        max_lag_ms: the reference may lead or lag the stems by up to this; the lag is
            found (:func:`estimate_lag`) and the frames aligned before comparing.
        coherent: solve on the complex spectra (phase included) instead of band powers:
            for a reference that is a mix of these very stems (sample-aligned after the
            lag). Each band's least squares then separates stems by their waveforms, not
            only by when and where they carry energy, so a quiet track sharing its band
            and its beat with a loud one (two kick drums) is still resolved; on the
            shared multitracks it puts every stem's loudness within ~0.5 dB where band
            powers miss by up to 6 dB. False (default): powers, which tolerate a
            reference with effects the stems lack (reverb, a producer's own processing).
        lag: samples by which the reference lags the stems, when the caller has already
            found it (a full-length cross-correlation costs seconds on a whole song);
            ``None`` (default): found here within ``+-max_lag_ms``.
        mono: which stems are mono sources carried as two equal channels (one regressor
            each in the coherent solve instead of two).

    Returns:
        :class:`MixEstimate`. Runs on the stems' device; the NNLS solves on the host.

    Three noise stems that come and go at different times, mixed at +6, -6 and 0 dB:

    >>> g = torch.Generator().manual_seed(0)
    >>> t = torch.arange(88200) / 44100
    >>> gates = torch.stack([(torch.sin(2 * torch.pi * r * t) > 0).float() for r in (1.0, 1.5, 2.5)])
    >>> stems = torch.randn(3, 2, 88200, generator=g) * gates.unsqueeze(1) * 0.1
    >>> ref = (stems * torch.tensor([2.0, 0.5, 1.0]).view(3, 1, 1)).sum(0)
    >>> est = estimate_mix(stems, ref, 44100)
    >>> [round(v) for v in est.gain_db.tolist()]
    [6, -6, 0]
    """
    stems, reference = stems.detach(), reference.detach()
    if lag is None:
        lag = estimate_lag(stems.sum(0), reference, int(max_lag_ms * 1e-3 * sample_rate))
    if lag > 0:
        reference = reference[..., lag:]
    elif lag < 0:
        stems = stems[..., -lag:]
    t = min(stems.shape[-1], reference.shape[-1])
    edges = band_edges(sample_rate)
    centres = np.sqrt(edges[:-1] * edges[1:])
    kw = k_weight_power(centres, sample_rate)
    w, stem_energy, explained = _solve_powers(
        stems[..., :t], reference[..., :t], sample_rate, edges, 0.05 if ridge is None else ridge
    )
    incoherent: list[int] = []
    matrix = tone = frames = chan = None
    if coherent:
        flags = list(mono) if mono is not None else [False] * stems.shape[0]
        wc, ec, explained_c, resid, matrix, tone, frames, chan = _solve_stereo(
            stems[..., :t], reference[..., :t], sample_rate, edges, 0.02 if ridge is None else ridge, flags
        )
        coherent = explained_c >= MIN_COHERENT_EXPLAINED
        flags = list(frames[2])
        if coherent:
            # A stem the reference carries processed out of phase with the stem (delayed,
            # re-amped, through a reverb) is louder in band powers than in the coherent
            # solve, and what the coherent solve misses of it is left in its residual. So a
            # stem is judged incoherent when the residual, band by band, can hold the gap
            # between the two estimates and that gap at least doubles the coherent one
            # (with no residual the coherent solve explains the reference, whatever cross
            # terms between alike stems do to the band powers). Only loud stems are judged:
            # band powers misread a quiet one by more than that (cross-terms with the loud
            # stems swamp it). Both in the coherent path's units (each path's STFT has its
            # own scale; gains are scale-free).
            p_pow = (w * stem_energy * kw).sum(axis=1)
            gap = np.minimum(np.maximum(w - wc, 0.0) * ec, resid[None, :])
            held = (gap * kw).sum(axis=1)
            p_coh = (wc * ec * kw).sum(axis=1)
            loud = p_pow >= LOUD_SHARE * p_pow.sum()
            incoherent = np.nonzero(loud & (held > (INCOHERENT_RATIO - 1) * p_coh))[0].tolist()
            keep = np.ones(len(p_pow), dtype=bool)
            keep[incoherent] = False
            w = np.where(keep[:, None], wc, w)
            stem_energy, explained = ec, explained_c
        else:
            matrix = tone = frames = None
    energy = stem_energy * kw  # (N, nb): K-weighted band energy of each stem
    share = _shares(energy)
    total = (w * share).sum(axis=1)
    gain_db = 10 * np.log10(np.maximum(total, 1e-12))
    band_db = 10 * np.log10(np.maximum(w, 1e-12))
    lo, hi = GAIN_DB_RANGE
    silent = energy.sum(axis=1) <= 0
    gain_db = np.where(silent | (total <= 0), 0.0, np.clip(gain_db, lo, hi))
    if matrix is not None:
        for k in incoherent:
            # No trustworthy channel matrix: the stem as given, at its band-power gains.
            matrix[k] = 10 ** (gain_db[k] / 20) * np.array([[1.0, 0.0], [0.0, 1.0]])
            if flags[k]:
                matrix[k] = 10 ** (gain_db[k] / 20) * np.array([[1.0, 0.0], [1.0, 0.0]])
            tone[k] = band_db[k] - gain_db[k]
    dev = stems.device
    return MixEstimate(
        gain_db=torch.as_tensor(gain_db, device=dev),
        band_db=torch.as_tensor(np.clip(band_db, lo, hi), device=dev),
        weight=torch.as_tensor(share, device=dev),
        centres_hz=torch.as_tensor(centres, device=dev),
        explained=explained,
        lag=lag,
        coherent=coherent,
        incoherent=incoherent,
        matrix=None if matrix is None else torch.as_tensor(matrix, device=dev),
        tone_db=None if tone is None else torch.as_tensor(np.clip(tone, lo, hi), device=dev),
        frame_gain=None if frames is None else torch.as_tensor(frames[0]),
        frame_energy=None if frames is None else torch.as_tensor(frames[1]),
        frame_offset=max(0, -lag),
        one_column=[] if frames is None else list(frames[2]),
        channel_gram=None if matrix is None else torch.as_tensor(chan),
    )


def _solve_powers(
    stems: Tensor, reference: Tensor, sample_rate: int, edges: np.ndarray, ridge: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-band power gains ``(N, nb)`` from band powers per frame, the stems' band
    energies ``(N, nb)`` and the share of the reference explained."""
    ps = band_frame_powers(stems, sample_rate, edges).cpu().numpy()  # (N, 2, nb, F)
    pr = band_frame_powers(reference, sample_rate, edges).cpu().numpy()  # (2, nb, F)
    n, nb = ps.shape[0], ps.shape[2]
    # Broadband: every band weighs the same (each band's rows divided by its reference power).
    scale = 1.0 / np.maximum(pr.sum(axis=(0, 2)), 1e-30)  # (nb,)
    a_all = (ps * scale[None, None, :, None]).transpose(1, 2, 3, 0).reshape(-1, n)
    broad = _nnls(a_all, (pr * scale[None, :, None]).reshape(-1))
    w = np.zeros((n, nb))
    for b in range(nb):
        a = ps[:, :, b, :].transpose(1, 2, 0).reshape(-1, n)
        w[:, b] = _nnls(a, pr[:, b, :].reshape(-1), prior=broad, ridge=ridge)
    fitted = np.einsum("kb,kcbf->cbf", w, ps)
    explained = float(1.0 - np.abs(fitted - pr).sum() / max(pr.sum(), 1e-30))
    return w, ps.sum(axis=(1, 3)), explained


def _typical(mag: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The weighted median over axis 0 of ``mag`` ``(nb, K)`` with weights ``(nb, K)``."""
    order = np.argsort(mag, axis=0)
    m = np.take_along_axis(mag, order, 0)
    w = np.take_along_axis(weight, order, 0)
    cum = np.cumsum(w, axis=0)
    half = 0.5 * cum[-1:]
    i = np.clip((cum < half).sum(axis=0), 0, mag.shape[0] - 1)
    return m[i, np.arange(mag.shape[1])]


def _bound_tone(gain: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """``gain`` ``(nb, K, ...)`` (per band, per stem) with each band's magnitude held to at
    most :data:`TONE_BOOST_DB` above the stem's typical one (the share-weighted median over
    its bands, ``shares`` ``(nb, K)``); cuts are left as they are."""
    mag = np.sqrt((np.abs(gain.reshape(gain.shape[0], gain.shape[1], -1)) ** 2).sum(-1))
    cap = 10 ** (TONE_BOOST_DB / 20) * _typical(mag, shares)[None, :]
    scale = np.where(mag > cap, cap / np.maximum(mag, 1e-300), 1.0)
    return gain * scale.reshape(scale.shape + (1,) * (gain.ndim - 2))


def _shared_tone_fit(
    gram: np.ndarray,
    cross: np.ndarray,
    owner: np.ndarray,
    e: np.ndarray,
    m_lr: np.ndarray,
    shares: np.ndarray,
    ridge: float,
    iterations: int = 12,
    noise: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of ``R_c ~= sum_k e_k(b) sum_d M_k[c, d] X_kd`` by alternating solves.

    The realisable structure of a strip: a tone ``e_k(b)`` (complex, per band) that both
    channels share, then a placement ``M_k`` (real, broadband). With ``M`` fixed each band
    is a least squares in ``e`` (one unknown per stem, pulled by ``ridge`` toward a flat 1
    where a stem has little energy); with ``e`` fixed every band at once is a least squares
    in ``M``. Two correlated stems (two kick drums) can trade a band's energy between
    channels in an unconstrained solve; here a stem's placement is fitted on all its bands.

    Args:
        gram, cross: :func:`~diffmix.mixing.analysis.coherent_band_stats`.
        owner: ``(M,)`` the stem of each regressor; ``e`` ``(nb, N)`` and ``m_lr`` ``(M, 2)``
            (``m_lr[j, c] = M_owner(j)[c, d_j]``) the start; ``shares`` ``(N, nb)`` the stems'
            K-weighted energy shares per band.
        noise: ``(nb,)`` the variance per STFT bin and frame of what a fit leaves unexplained
            in each band (:func:`_band_noise`); each band then counts by the inverse of it
            (weighted least squares), so a placement is read where the data show it (the
            bands where a quiet stem is not collinear with a loud one) and not where the
            console's unexplained part swamps it. Both mix channels alike: a stem's balance
            is one ratio over the same bands. None: every bin alike.

    Returns:
        ``e`` normalised to mean power 1 over ``shares`` and ``m_lr`` carrying the level.
    """
    nb, m = gram.shape[0], gram.shape[1]
    n = e.shape[1]
    one = np.zeros((m, n))
    one[np.arange(m), owner] = 1.0
    e, m_lr = e.copy(), m_lr.copy()
    # Scale-free: every ridge below is relative to the weighted data's own diagonal.
    wt = np.ones(nb) if noise is None else 1.0 / noise
    wt = wt / max(float(wt.max()), 1e-300)
    for _ in range(iterations):
        for b in range(nb):
            p = [one * m_lr[:, c : c + 1] for c in range(2)]  # (M, N) per output channel
            ga = sum(p[c].T @ gram[b] @ p[c] for c in range(2))
            ha = sum(p[c].T @ cross[b, :, c] for c in range(2))
            d = np.sqrt(np.maximum(np.real(np.diag(ga)), 0.0))
            live = d > 1e-12 * max(float(d.max(initial=0.0)), 1e-300)
            if not live.any():
                continue
            dl = d[live]
            g = ga[np.ix_(live, live)] / np.outer(dl, dl)
            h = ha[live] / dl + ridge * dl
            e[b, live] = np.linalg.solve(g + (ridge + 1e-9) * np.eye(int(live.sum())), h) / dl
        e = _bound_tone(e, shares.T)
        ee = e[:, owner]  # (nb, M)
        gb = np.real(np.einsum("b,bi,bij,bj->ij", wt, ee.conj(), gram, ee))
        hb = np.real(np.einsum("b,bj,bjc->jc", wt, ee.conj(), cross))
        dn = np.sqrt(np.maximum(np.diag(gb), 1e-300))
        # Pulled (PLACE_RIDGE, relative) toward the stem's neutral placement (its own
        # channels, centred, at its mean level): a direction the data barely show (the
        # side of a nearly mono stem) then stays neutral instead of taking up residue.
        prior = np.zeros((m, 2))
        for k in range(n):
            idx = np.nonzero(owner == k)[0]
            if len(idx) == 2:
                prior[idx[0], 0] = prior[idx[1], 1] = 0.5 * (m_lr[idx[0], 0] + m_lr[idx[1], 1])
            else:
                prior[idx[0]] = m_lr[idx[0]]
        rhs = hb / dn[:, None] + PLACE_RIDGE * prior * dn[:, None]
        m_lr = np.linalg.solve(gb / np.outer(dn, dn) + (PLACE_RIDGE + 1e-6) * np.eye(m), rhs) / dn[:, None]
        level = np.sqrt(np.maximum(np.einsum("kb,bk->k", shares, np.abs(e) ** 2), 1e-30))
        e = e / level[None, :]
        m_lr = m_lr * level[owner, None]
    return e, m_lr


def _residual(amp: np.ndarray, gram: np.ndarray, cross: np.ndarray, ref_power: np.ndarray) -> np.ndarray:
    """``(nb,)`` the reference's power per band (both channels) that ``amp`` ``(nb, M, 2)``
    leaves unexplained: ``|R - sum a X|^2 = |R|^2 - 2 Re(a^H h) + a^H G a`` per channel."""
    fitted = np.real(np.einsum("bic,bij,bjc->b", amp.conj(), gram, amp))
    return ref_power.sum(1) - 2 * np.real(np.einsum("bjc,bjc->b", amp.conj(), cross)) + fitted


def _band_noise(
    resid: np.ndarray, ref_power: np.ndarray, t: int, sample_rate: int, edges: np.ndarray
) -> np.ndarray:
    """``(nb,)`` the variance per STFT bin and frame of a fit's residual ``resid`` ``(nb,)``
    (both mix channels: what the strips' model, a shared tone and a placement per stem,
    cannot reproduce), on the grid of
    :func:`~diffmix.mixing.analysis.coherent_band_stats` for ``t`` samples; ``ref_power``
    ``(nb,)``. Held to at least :data:`NOISE_FLOOR` of the band's power (a band explained
    to rounding is not infinitely sure) and of the reference's mean power per bin."""
    size, _, _ = stft_frames(t)
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    bins = ((freqs[:, None] >= edges[None, :-1]) & (freqs[:, None] < edges[None, 1:])).sum(0)
    # The floor: NOISE_FLOOR of the band's power, and of the reference's mean power per bin
    # (float32 spectra: a band next to empty holds rounding and window leakage, not data).
    mean = float(ref_power.sum()) / max(int(bins.sum()), 1)
    noise = np.maximum(np.maximum(resid, NOISE_FLOOR * ref_power) / np.maximum(bins, 1), NOISE_FLOOR * mean)
    return noise if mean > 0 else np.ones_like(noise)


def _solve_stereo(
    stems: Tensor,
    reference: Tensor,
    sample_rate: int,
    edges: np.ndarray,
    ridge: float,
    mono: list[bool],
    with_frames: bool = True,
) -> tuple[
    np.ndarray, np.ndarray, float, np.ndarray, np.ndarray, np.ndarray,
    tuple[np.ndarray | None, np.ndarray | None, list[bool]], np.ndarray,
]:
    """Least squares of each reference channel on every stem channel, band by band, on the
    complex spectra; then each stem's channel matrix and tone.

    Per band ``b`` and mix channel ``c``: ``R_c ~= sum_j A_b[j, c] X_j`` over the stems'
    channels ``X_j`` (one for a mono stem), complex ``A`` (the hidden chain's filters turn
    the phase as well as the level). A stem's pan and width are a real 2x2 matrix ``M``
    shared by every band, its EQ a complex gain ``e_b`` shared by both channels, so its
    block of ``A_b`` is ``e_b M``: ``M`` is the leading eigenvector of
    ``Re(sum_b s_b a_b a_b^H)`` over the bands' vectorised blocks ``a_b`` (weighted by the
    stem's K-weighted energy share ``s_b``), and ``e_b = M . a_b``. Each band is pulled
    (ridge) toward the broadband real solve. That start is then refined by
    :func:`_shared_tone_fit` as a weighted least squares, each band counted by the inverse
    of what is left unexplained in it (:func:`_band_noise`): a quiet stem nearly collinear
    with a loud one in some bands is placed from the others.

    Returns:
        Power gains per band ``(N, nb)`` (the stem's contribution over its own energy, both
        channels), the stems' band energies ``(N, nb)``, the share of the reference
        explained, the residual power per band ``(nb,)``, the channel matrices
        ``(N, 2, 2)``, the tones ``(N, nb)`` in dB (mean power 1 over ``s_b``), and the
        frame gains and energies of :func:`~diffmix.mixing.analysis.frame_gains` with the
        one-column flags, and each stem's channel Gram through its tone ``(N, 2, 2)``
        (:attr:`MixEstimate.channel_gram`).
    """
    n = stems.shape[0]
    # A stem whose channels are (nearly) the same signal cannot show how its two channels
    # were placed, only their sum: it is one regressor, as a mono stem is (two nearly
    # collinear ones would trade huge opposite gains on noise).
    # (norms: only compared, so no float64 copy of every stem)
    side = torch.linalg.vector_norm(stems[:, 0] - stems[:, 1], dim=-1, dtype=torch.float64).square()
    mid = torch.linalg.vector_norm(stems[:, 0] + stems[:, 1], dim=-1, dtype=torch.float64).square()
    mono = [bool(m) or bool(sd <= MONO_SIDE * md) for m, sd, md in zip(mono, side, mid, strict=True)]
    cols = [(k, d) for k in range(n) for d in ((0,) if mono[k] else (0, 1))]
    regs = torch.stack([stems[k, d] for k, d in cols])
    gram, cross, pr, px = coherent_band_stats(regs, reference, sample_rate, edges)
    nb, m = gram.shape[0], gram.shape[1]
    centres = np.sqrt(edges[:-1] * edges[1:])
    kw = k_weight_power(centres, sample_rate)
    # Broadband: every band weighs the same (each divided by the reference's power in it).
    scale = 1.0 / np.maximum(pr.sum(axis=1), 1e-30)
    gb = (gram.real * scale[:, None, None]).sum(0)
    hb = (cross.real * scale[:, None, None]).sum(0)
    dn = np.sqrt(np.maximum(np.diag(gb), 1e-300))
    broad = np.linalg.solve(gb / np.outer(dn, dn) + 1e-3 * np.eye(m), hb / dn[:, None]) / dn[:, None]
    amp = np.zeros((nb, m, 2), dtype=np.complex128)
    resid = np.zeros(nb)
    for b in range(nb):
        norms = np.sqrt(np.maximum(px[:, b], 0.0))
        live = norms > 1e-12 * max(float(norms.max(initial=0.0)), 1e-300)
        amp[b] = broad
        if live.any():
            d = norms[live]
            g = gram[b][np.ix_(live, live)] / np.outer(d, d)
            h = cross[b][live] / d[:, None] + ridge * broad[live] * d[:, None]
            amp[b, live] = np.linalg.solve(g + (ridge + 1e-9) * np.eye(int(live.sum())), h) / d[:, None]
        for c in range(2):
            a = amp[b, :, c]
            # |R - sum a X|^2 = |R|^2 - 2 Re(a^H h) + a^H G a
            resid[b] += pr[b, c] - 2 * np.real(np.vdot(a, cross[b, :, c])) + np.real(a.conj() @ gram[b] @ a)
    explained = float(1.0 - np.maximum(resid, 0.0).sum() / max(pr.sum(), 1e-30))
    noise = _band_noise(resid, pr.sum(1), regs.shape[-1], sample_rate, edges)
    owner = np.array([k for k, _ in cols])
    energy = np.zeros((n, nb))
    shares = np.zeros((n, nb))
    m_init = np.zeros((m, 2))
    e = np.ones((nb, n), dtype=np.complex128)
    for k in range(n):
        idx = np.nonzero(owner == k)[0]
        # A mono stem as given is two equal channels: its energy counts both.
        energy[k] = px[idx].sum(0) * (2.0 if len(idx) == 1 else 1.0)
        share = energy[k] * kw
        shares[k] = share / max(share.sum(), 1e-30)
        # The start: the leading rank-1 part of the stem's unconstrained per-band blocks.
        vec = amp[:, idx, :].transpose(0, 2, 1).reshape(nb, -1)  # (nb, 2 d): output-major
        vec = _bound_tone(vec[:, None, :], shares[k][:, None])[:, 0]
        cov = np.real(np.einsum("b,bi,bj->ij", shares[k], vec, vec.conj()))
        v = np.linalg.eigh(cov)[1][:, -1]
        v = v * (1.0 if v.sum() >= 0 else -1.0)
        e[:, k] = vec @ v
        m_init[idx] = v.reshape(2, len(idx)).T
    # Each band counted by the inverse of what the fit cannot explain there (weighted least
    # squares): first what the free per-band solve leaves (a loud stem's misfit no strip
    # reproduces, a compressor's moving gain, is large where it sounds, and a quiet stem
    # alike it there is then placed from the bands where it is not), then what the shared
    # tone and placement leave (also a stem's content in a band at another placement than
    # its own), re-estimated REWEIGHTS times.
    e, m_lr = _shared_tone_fit(gram, cross, owner, e, m_init, shares, ridge, noise=noise)
    for _ in range(REWEIGHTS):
        resid = _residual(e[:, owner, None] * m_lr[None, :, :], gram, cross, pr)
        noise = _band_noise(resid, pr.sum(1), regs.shape[-1], sample_rate, edges)
        e, m_lr = _shared_tone_fit(gram, cross, owner, e, m_lr, shares, ridge, noise=noise)
    amp = e[:, owner, None] * m_lr[None, :, :]  # (nb, M, 2)
    resid = _residual(amp, gram, cross, pr)
    explained = float(1.0 - np.maximum(resid, 0.0).sum() / max(pr.sum(), 1e-30))
    power = np.zeros((n, nb))
    matrix = np.zeros((n, 2, 2))
    tone = np.zeros((n, nb))
    chan = np.zeros((n, 2, 2))
    for k in range(n):
        idx = np.nonzero(owner == k)[0]
        gk = gram[:, idx][:, :, idx]  # (nb, d, d)
        ck = np.real(np.einsum("b,bde->de", np.abs(e[:, k]) ** 2, gk))
        chan[k, : len(idx), : len(idx)] = ck / max(float(np.trace(ck)), 1e-300)
        ak = amp[:, idx, :]  # (nb, d, 2)
        out = np.real(np.einsum("bdc,bde,bec->b", ak.conj(), gk, ak))  # contribution per band
        power[k] = np.maximum(out, 0.0) / np.maximum(energy[k], 1e-30)
        matrix[k, :, : len(idx)] = m_lr[idx].T
        tone[k] = 20 * np.log10(np.maximum(np.abs(e[:, k]), 1e-6))
    frames = (
        frame_gains(regs, [k for k, _ in cols], amp, reference, sample_rate, edges)
        if with_frames
        else (None, None)
    )
    return power, energy, explained, np.maximum(resid, 0.0), matrix, tone, (*frames, mono), chan


def solve_placement(
    stems: Tensor, reference: Tensor, sample_rate: int, *, mono: list[bool], ridge: float = 0.02
) -> tuple[Tensor, list[bool], Tensor, float]:
    """Each stem's channel matrix from an aligned reference, by the coherent solve of
    :func:`estimate_mix` (per band and reference channel, a shared tone and a broadband
    placement per stem), without the band-power and frame-gain passes.

    Args:
        stems: ``(N, 2, T)`` signals that reach the mix only through their channel
            matrices (a strip's output before its width and pan, through the master bus).
        reference: ``(2, T')`` the mix, sample-aligned with ``stems``.
        mono: which stems are mono sources carried as two equal channels.

    Returns:
        ``matrix (N, 2, 2)``, the one-column flags, ``channel_gram (N, 2, 2)`` (as in
        :class:`MixEstimate`) and the share of the reference explained.
    """
    t = min(stems.shape[-1], reference.shape[-1])
    edges = band_edges(sample_rate)
    _, _, explained, _, matrix, _, frames, chan = _solve_stereo(
        stems[..., :t].detach(), reference[..., :t].detach(), sample_rate, edges, ridge, list(mono), False
    )
    return torch.as_tensor(matrix), list(frames[2]), torch.as_tensor(chan), explained


def solve_tone(
    stems: Tensor, reference: Tensor, sample_rate: int, *, mono: list[bool], ridge: float = 0.02
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Each stem's tone from an aligned reference, by the coherent solve of
    :func:`estimate_mix` (a shared tone per band and a broadband placement per stem),
    without the frame-gain pass: what is left of a strip's tone on its output.

    Args: as :func:`solve_placement`.

    Returns:
        ``tone_db (N, nb)`` (each stem's response per analysis band relative to its
        broadband placement, mean power 1 over its energy shares), ``weight (N, nb)``
        (its K-weighted energy share per band), ``centres_hz (nb,)`` and the share of the
        reference explained.
    """
    t = min(stems.shape[-1], reference.shape[-1])
    edges = band_edges(sample_rate)
    _, energy, explained, _, _, tone, _, _ = _solve_stereo(
        stems[..., :t].detach(), reference[..., :t].detach(), sample_rate, edges, ridge, list(mono), False
    )
    centres = np.sqrt(edges[:-1] * edges[1:])
    share = _shares(energy * k_weight_power(centres, sample_rate)[None, :])
    return torch.as_tensor(tone), torch.as_tensor(share), torch.as_tensor(centres), explained


def _shares(energy: np.ndarray) -> np.ndarray:
    """``(N, nb)`` K-weighted band energies -> each stem's share of its own energy per band."""
    return energy / np.maximum(energy.sum(axis=1, keepdims=True), 1e-30)


def fit_eq_gains(
    estimate: MixEstimate,
    bands: tuple[str, ...] | list[str],
    freq_hz: Tensor,
    q: Tensor,
    sample_rate: int,
    *,
    limit_db: float = 12.0,
    ridge: float = 1e-2,
    iterations: int = 8,
) -> Tensor:
    """EQ gains (dB) whose response best follows each stem's tone relative to its gain.

    Weighted least squares on the dB response at the analysis band centres, by
    Gauss-Newton (the response in dB is close to linear in the band gains); bands where
    the stem has no energy carry no weight, and a small ridge keeps unobserved bands flat.

    Args:
        estimate: from :func:`estimate_mix`.
        bands: the EQ's band types.
        freq_hz, q: ``(N, n_eq)`` or ``(n_eq,)``, the EQ's (fixed) frequencies and Qs.
        sample_rate: Hz.
        limit_db: the gains are kept within +-this.

    Returns:
        ``(N, n_eq)`` gains in dB (float64, on the estimate's device).
    """
    if estimate.tone_db is not None:
        target = estimate.tone_db.double()
    else:
        target = (estimate.band_db - estimate.gain_db.unsqueeze(1)).double()  # (N, nb)
    weight = estimate.weight.double()
    f = estimate.centres_hz.double()
    n = target.shape[0]
    fz = torch.as_tensor(freq_hz, dtype=torch.float64, device=f.device).expand(n, len(bands))
    qq = torch.as_tensor(q, dtype=torch.float64, device=f.device).expand(n, len(bands))
    gains = torch.zeros(n, len(bands), dtype=torch.float64, device=f.device)

    def response_db(g: Tensor) -> Tensor:  # (..., n_eq) -> (..., nb)
        shape = g.shape
        b, a = eq_coeffs(tuple(bands), fz.expand(*shape), qq.expand(*shape), g, sample_rate)
        return 20 * torch.log10(sos_response(b, a, f, sample_rate).abs().clamp_min(1e-9))

    m = len(bands)
    fz, qq = fz.unsqueeze(1), qq.unsqueeze(1)  # (N, 1, n_eq): broadcast over the probes
    eye = torch.eye(m, dtype=torch.float64, device=f.device)
    step = 1e-3 * eye  # forward differences in float64: the response is smooth in dB
    for _ in range(iterations):
        probes = torch.cat([gains.unsqueeze(1), gains.unsqueeze(1) + step], dim=1)  # (N, 1+m, m)
        resp = response_db(probes)  # (N, 1+m, nb)
        jac = ((resp[:, 1:] - resp[:, :1]) / 1e-3).transpose(1, 2)  # (N, nb, m)
        resid = target - resp[:, 0]
        jw = jac * weight.unsqueeze(-1)
        lhs = jw.transpose(1, 2) @ jac + ridge * eye
        rhs = (jw.transpose(1, 2) @ resid.unsqueeze(-1)).squeeze(-1) - ridge * gains
        gains = (gains + torch.linalg.solve(lhs, rhs)).clamp(-limit_db, limit_db)
    return gains




# Sub-points per analysis band at which an EQ's power response is averaged: the estimate's
# tone is a band's mean, and a bell narrower than a band sits between two centres.
EQ_SUBPOINTS = 6
# Ridges of the band fit, on the weighted mean square error in dB^2 (the weights sum to 1):
# a band's gain toward 0 dB and its log Q toward its start, so a band the data do not ask
# for stays flat and a flat band's frequency and Q stay put (~0.01 dB rms of bias).
EQ_GAIN_RIDGE = 1e-4
EQ_LOGQ_RIDGE = 1e-4
MOVABLE = ("peak", "low_shelf", "high_shelf")


def _bell_q_limit() -> float:
    """The highest Q the analysis bands resolve: a bell half an analysis band wide
    (``Q = 1 / (2 sinh(ln 2 * bw / 2))``, ``bw`` in octaves)."""
    bw = 0.5 / BANDS_PER_OCTAVE
    return 1.0 / (2.0 * math.sinh(math.log(2.0) * bw / 2.0))


def _band_grid(centres: Tensor, sample_rate: int) -> Tensor:
    """``EQ_SUBPOINTS`` frequencies spread over each half-octave analysis band around its
    centre, ``(nb * EQ_SUBPOINTS,)``."""
    s = (torch.arange(EQ_SUBPOINTS, dtype=torch.float64) + 0.5) / EQ_SUBPOINTS - 0.5
    grid = (centres.double()[:, None] * 2.0 ** (s[None, :] / BANDS_PER_OCTAVE)).reshape(-1)
    return grid.clamp(max=0.49 * sample_rate)


def _band_response_db(
    bands: tuple[str, ...] | list[str], freq_hz: Tensor, q: Tensor, gain_db: Tensor, grid: Tensor, nb: int,
    sample_rate: int,
) -> Tensor:
    """An EQ's power response averaged over each analysis band (dB), ``(..., nb)``: what the
    closed form's tone measures of it."""
    b, a = eq_coeffs(tuple(bands), freq_hz, q, gain_db, sample_rate)
    p = sos_response(b, a, grid, sample_rate).abs().square().reshape(*freq_hz.shape[:-1], nb, -1)
    return 10 * torch.log10(p.mean(-1).clamp_min(1e-12))


def eq_band_response_db(
    bands: tuple[str, ...] | list[str], freq_hz: Tensor, q: Tensor, gain_db: Tensor, centres_hz: Tensor,
    sample_rate: int,
) -> Tensor:
    """``(N, n_eq)`` EQ settings -> ``(N, nb)`` their power responses averaged over each
    analysis band around ``centres_hz`` (dB, float64): the EQ as the closed form's tone
    sees it (:func:`fit_eq_bands` fits this)."""
    f64 = torch.float64
    grid = _band_grid(centres_hz.double().cpu(), sample_rate)
    return _band_response_db(bands, freq_hz.to(f64).cpu(), q.to(f64).cpu(), gain_db.to(f64).cpu(), grid,
                             centres_hz.numel(), sample_rate)


def fit_eq_bands(
    estimate: MixEstimate,
    bands: tuple[str, ...] | list[str],
    freq_hz: Tensor,
    q: Tensor,
    gain_db: Tensor,
    sample_rate: int,
    *,
    freq_range: tuple[float, float],
    q_range: tuple[float, float],
    limit_db: float = 12.0,
    iterations: int = 40,
) -> dict[str, Tensor]:
    """Each stem's EQ bands (frequency, gain, Q) and a level offset whose response follows
    its measured tone, with the band frequencies free.

    Weighted least squares of the tone in dB (weights: the stem's K-weighted energy share
    per analysis band, so bands where it has no energy do not drive it) against the EQ's
    power response averaged over each analysis band, plus one offset (dB, for the input
    gain: the tone is normalised to mean power 1). Three starts per stem, the best kept:
    the EQ as it is (``freq_hz``, ``q``, ``gain_db``), and two greedy placements (each bell
    in turn at the band where the weighted residual ``w r^2`` is largest, its gain that
    residual, its Q from the width of the residual's lobe, then all refined; the shelves
    free from the start or only after the bells). Each start is refined by
    Levenberg-Marquardt on (log f, log Q, gain, offset), bounded by the given ranges;
    shelves move in frequency and gain (their Q stays), other band types stay.

    Args:
        estimate: from :func:`estimate_mix` (``tone_db`` where it has one).
        bands: the EQ's band types.
        freq_hz, q, gain_db: ``(N, n_eq)`` the EQ as it stands.
        freq_range, q_range: the EQ's parameter ranges (Hz; Q is further held to what the
            half-octave bands resolve).
        limit_db: band gains within +-this.

    Returns:
        ``{"freq_hz", "q", "gain_db": (N, n_eq), "offset_db": (N,), "rms_db": (N,) the
        weighted rms error after, "rms_fixed_db": (N,) with the EQ as it stands (offset
        fitted)}`` in float64 on the CPU.
    """
    if estimate.tone_db is not None:
        target = estimate.tone_db.double().cpu()
    else:
        target = (estimate.band_db - estimate.gain_db.unsqueeze(1)).double().cpu()
    weight = estimate.weight.double().cpu()
    weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-30)
    centres = estimate.centres_hz.double().cpu()
    n, nb = target.shape
    m = len(bands)
    kinds = [parse_band(b)[0] for b in bands]
    move_f = torch.tensor([k in MOVABLE for k in kinds])
    move_q = torch.tensor([k == "peak" for k in kinds])
    bells = [j for j, k in enumerate(kinds) if k == "peak"]
    grid = _band_grid(centres, sample_rate)

    f0 = torch.as_tensor(freq_hz, dtype=torch.float64).cpu().expand(n, m).clone()
    q0 = torch.as_tensor(q, dtype=torch.float64).cpu().expand(n, m).clone()
    g0 = torch.as_tensor(gain_db, dtype=torch.float64).cpu().expand(n, m).clone()
    q_hi = min(q_range[1], _bell_q_limit())
    lo_t = torch.cat([torch.full((m,), math.log(freq_range[0])), torch.full((m,), math.log(q_range[0])),
                      torch.full((m,), -limit_db), torch.tensor([-60.0])]).double()
    hi_t = torch.cat([torch.full((m,), math.log(freq_range[1])), torch.full((m,), math.log(q_hi)),
                      torch.full((m,), limit_db), torch.tensor([60.0])]).double()
    # A parameter that does not move (a fixed band's frequency, a shelf's Q) keeps its start.
    free = torch.cat([move_f, move_q, move_f, torch.tensor([True])])
    logq_prior = q0.log()

    def response(theta: Tensor) -> Tensor:  # (..., 3m+1) -> (..., nb) dB
        f, qq, g = theta[..., :m].exp(), theta[..., m : 2 * m].exp(), theta[..., 2 * m : 3 * m]
        return _band_response_db(bands, f, qq, g, grid, nb, sample_rate) + theta[..., -1:]

    def residuals(theta: Tensor, resp: Tensor) -> Tensor:  # (N, [P,] nb + 2m) weighted
        # With a probe axis (theta (N, P, 3m+1), resp (N, P, nb)): every probe at once, the
        # same elementwise values as one at a time.
        lead = (slice(None),) * (theta.ndim - 1)
        per = (slice(None),) + (None,) * (theta.ndim - 2)
        r = (target[per] - resp) * weight.sqrt()[per]
        rg = math.sqrt(EQ_GAIN_RIDGE) * theta[(*lead, slice(2 * m, 3 * m))] * move_f
        rq = math.sqrt(EQ_LOGQ_RIDGE) * (theta[(*lead, slice(m, 2 * m))] - logq_prior[per]) * move_q
        return torch.cat([r, -rg, -rq], dim=-1)

    def refine(theta: Tensor, active: Tensor) -> Tensor:
        """Levenberg-Marquardt on the ``active`` ``(N, P)`` parameters, bounded."""
        p = theta.shape[1]
        mu = torch.full((n,), 1e-2, dtype=torch.float64)
        h = 1e-5
        eye = torch.eye(p, dtype=torch.float64)
        for _ in range(iterations):
            probes = theta.unsqueeze(1) + h * eye * active.unsqueeze(1)  # (N, P, P)
            both = torch.cat([theta.unsqueeze(1), probes], dim=1)  # (N, 1+P, P): one design
            resp = response(both)
            r0 = residuals(theta, resp[:, 0])
            rp = residuals(probes, resp[:, 1:]).transpose(1, 2).contiguous()  # (N, nb + 2m, P)
            jac = (r0.unsqueeze(2) - rp) / h  # d(-r)/dtheta = -(rp - r0)/h: J of the model
            jtj = jac.transpose(1, 2) @ jac
            jtr = (jac.transpose(1, 2) @ r0.unsqueeze(-1)).squeeze(-1)
            diag = torch.diagonal(jtj, dim1=1, dim2=2)
            lhs = jtj + mu.view(-1, 1, 1) * torch.diag_embed(diag + 1e-9)
            lhs = lhs + torch.diag_embed((~active).double())  # frozen: a zero step
            step = torch.linalg.solve(lhs, (jtr * active).unsqueeze(-1)).squeeze(-1)
            trial = torch.where(active, torch.maximum(torch.minimum(theta + step, hi_t), lo_t), theta)
            c0 = r0.square().sum(1)
            c1 = residuals(trial, response(trial)).square().sum(1)
            better = c1 < c0
            theta = torch.where(better.unsqueeze(1), trial, theta)
            mu = torch.where(better, mu / 3.0, mu * 4.0).clamp(1e-9, 1e9)
        return theta

    def cost(theta: Tensor) -> Tensor:
        return residuals(theta, response(theta)).square().sum(1)

    active = free.expand(n, -1).clone()
    start = torch.cat([f0.log(), q0.log(), g0, torch.zeros(n, 1, dtype=torch.float64)], dim=1)
    # Only what moves is held to the ranges: a band that stays keeps its values exactly.
    start = torch.where(free, torch.maximum(torch.minimum(start, hi_t), lo_t), start)
    offset_only = torch.zeros_like(active)
    offset_only[:, -1] = True
    fixed = refine(start, offset_only)
    as_is = refine(fixed, active)
    log_c = centres.log()
    bell = torch.tensor([j in bells for j in range(m)])

    def greedy(shelves_first: bool) -> Tensor:
        """Every movable gain at 0, then each bell in turn where the weighted residual
        ``w r^2`` is largest, all placed bands refined after each; the shelves move from
        the start (``shelves_first``) or only once every bell is placed."""
        theta = start.clone()
        theta[:, 2 * m : 3 * m] = torch.where(move_f, 0.0, theta[:, 2 * m : 3 * m])
        placed = ~bell if shelves_first else torch.zeros(m, dtype=torch.bool)
        theta = refine(theta, active & torch.cat([placed, placed, placed, torch.tensor([True])]))
        for j in bells:
            res = target - response(theta)
            b = (weight * res.square()).argmax(1)  # (N,)
            peak = res.gather(1, b[:, None]).squeeze(1)
            # The lobe: neighbouring bands whose residual keeps the sign and half the peak.
            same = (res * peak[:, None] > 0) & (res.abs() >= 0.5 * peak.abs()[:, None])
            width = torch.ones(n, dtype=torch.float64)
            for k in range(n):
                lo_i = hi_i = int(b[k])
                while lo_i > 0 and bool(same[k, lo_i - 1]):
                    lo_i -= 1
                while hi_i < nb - 1 and bool(same[k, hi_i + 1]):
                    hi_i += 1
                width[k] = (hi_i - lo_i + 1) / BANDS_PER_OCTAVE  # octaves
            theta[:, j] = log_c[b]
            theta[:, m + j] = (1.0 / (2.0 * torch.sinh(math.log(2.0) * width / 2.0))).log()
            theta[:, 2 * m + j] = peak.clamp(-limit_db, limit_db)
            theta = torch.where(free, torch.maximum(torch.minimum(theta, hi_t), lo_t), theta)
            placed[j] = True
            theta = refine(theta, active & torch.cat([placed, placed, placed, torch.tensor([True])]))
        return refine(theta, active)

    best = as_is
    for candidate in (greedy(True), greedy(False)):
        best = torch.where((cost(candidate) < cost(best)).unsqueeze(1), candidate, best)
    silent = weight.sum(1) <= 0
    best = torch.where(silent.unsqueeze(1), start, best)

    def rms(theta: Tensor) -> Tensor:
        return (weight * (target - response(theta)).square()).sum(1).sqrt()

    return {
        # A band that does not move, and a silent stem, keep the values as given (no log/exp
        # round trip).
        # exp(log(v)) of a value on its range's edge can land a rounding step outside it.
        "freq_hz": torch.where(move_f & ~silent[:, None], best[:, :m].exp().clamp(*freq_range), f0),
        "q": torch.where(move_q & ~silent[:, None], best[:, m : 2 * m].exp().clamp(q_range[0], q_hi), q0),
        "gain_db": torch.where(move_f & ~silent[:, None], best[:, 2 * m : 3 * m], g0),
        "offset_db": best[:, -1],
        "rms_db": rms(best),
        "rms_fixed_db": rms(fixed),
    }
