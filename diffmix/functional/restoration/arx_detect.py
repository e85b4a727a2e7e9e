"""The click detector's joint-model (ARX) candidate rule, stereo only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tnf
from torch import Tensor

from diffmix.functional.restoration._common import (
    _ARX_CHUNK,
    _ARX_ORDER,
    _ARX_SPAN,
    _NOISE_MAX,
    _SUB,
    _frame_windows,
    _hop,
)
from diffmix.functional.restoration.ar import _unique_pairs
from diffmix.functional.restoration.arx import _arx_filters
from diffmix.functional.restoration.guards import _local_scale
from diffmix.functional.restoration.masks import _flagged


def _arx_tests(
    rows: Tensor, other: Tensor, frames: Tensor, a: Tensor, h: Tensor, a0: Tensor, ab: Tensor,
    hb: Tensor, hop: int, width: int, threshold: float, z_threshold: float, z_reach: int,
    floor: float,
) -> tuple[Tensor, Tensor]:
    """The tests of :func:`_arx_candidates` on the ``frames`` (``(K, 2)``) with their
    joint models (forward ``a, h``, mono ``a0``, backward ``ab, hb``; rows per frame), the
    signal ``rows`` and ``other`` (``(2B, T)``; its partner row is the known input), read
    at the frames' windows (zero outside the signal): ``(better (K,), hit (K, hop))`` bool."""
    p, q = a.shape[-1] - 1, h.shape[-1] // 2
    # Errors over the frame and `width` sub-blocks either side (the local scales' reach),
    # all under the frame's models: n in [s0, s0 + span), s0 = f hop - wide.
    wide = width * _SUB
    span = hop + 2 * wide
    # (read as frame windows: a strided view of the rows, zero outside the signal)
    partner = torch.stack([frames[:, 0] + 1 - 2 * (frames[:, 0] % 2), frames[:, 1]], -1)
    xs = _frame_windows(rows, frames, hop, wide + p, span + 3 * p).to(torch.float64)
    rs = _frame_windows(other, partner, hop, wide + q, span + p + 2 * q).to(torch.float64)
    # xs[m] = x[s0 - p + m], rs[m] = ref[s0 - q + m]; the filters by FFT (linear, no wrap:
    # every product below reads inside the zero-padded transform), n = s0 + i:
    # forward e[i] = sum_k a[k] x[n - k] - sum_j h[j] ref[n - j] (i < span + p),
    # backward eb[i] = sum_k ab[k] x[n + k] - sum_j hb[j] ref[n + j], and the matched
    # filter z[i] = sum_k a[k] e[i + k] / |a|.
    n_fft = 1 << math.ceil(math.log2(xs.shape[-1] + p + 1))
    fxs, frs = torch.fft.rfft(xs, n_fft), torch.fft.rfft(rs, n_fft)
    fa, fab = torch.fft.rfft(a, n_fft), torch.fft.rfft(ab, n_fft)
    e = (torch.fft.irfft(fxs * fa, n_fft)[:, p : 2 * p + span]
         - torch.fft.irfft(frs * torch.fft.rfft(h, n_fft), n_fft)[:, 2 * q : 2 * q + span + p])
    eb = (torch.fft.irfft(fxs * fab.conj(), n_fft)[:, p : p + span]
          - torch.fft.irfft(frs * torch.fft.rfft(hb, n_fft).conj(), n_fft)[:, :span])
    z = torch.fft.irfft(torch.fft.rfft(e, n_fft) * fa.conj(), n_fft)[:, :span]
    z = z * a.square().sum(-1, keepdim=True).rsqrt()
    e0 = torch.fft.irfft(fxs * torch.fft.rfft(a0, n_fft), n_fft)[:, p + wide : p + wide + hop]
    e = e[:, :span]
    mid = slice(wide, wide + hop)

    def scale(v: Tensor) -> Tensor:
        return v[:, : hop // _SUB * _SUB].reshape(len(v), -1, _SUB).square().mean(-1).median(-1).values

    s_arx, s_mono = scale(e[:, mid]), scale(e0)
    n_eff = 2.0 * _ARX_SPAN * hop / 3.0  # (sum w)^2 / sum w^2 of a Hann window
    price = (2 * q + 1) * math.log(n_eff) / n_eff
    better = torch.log(s_mono.clamp(min=1e-30) / s_arx.clamp(min=1e-30)) > price
    # The mono rules' tests (see `detect_clicks`) on the joint model's errors, with the
    # same local scales: the larger of the robust RMS before and after each sub-block.
    k = len(frames)
    before, after = _local_scale(torch.cat([(e.square() + eb.square()).mul(0.5).sqrt(), z]), width)
    sc = torch.maximum(before, after).repeat_interleave(_SUB, -1)[:, :span]
    sc_e, sc_z = sc[:k, mid].clamp(min=floor), sc[k:, mid].clamp(min=1e-30)
    zpeak = tnf.max_pool1d((z.abs()[:, mid] / sc_z)[:, None], 2 * z_reach + 1, 1, z_reach)[:, 0]
    stat = torch.minimum(e.abs(), eb.abs())[:, mid] / sc_e
    hit = (stat > threshold) & (zpeak > z_threshold)
    return better, hit


def _arx_candidates(
    xd: Tensor, fit_on: Tensor, other: Tensor, z_ratio: Tensor, sample_rate: int, taps: int,
    threshold: float, z_threshold: float, z_reach: int, floor: float, width: int,
    partner: Tensor, memo: dict | None = None, limit: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The joint-model (ARX) candidate rule of :func:`detect_clicks`, stereo only.

    Where a sample's interpolation error under the mono model exceeds ``z_threshold``
    robust scales (``z_ratio``, ``(2B, T)``) while the other channel's stays under
    ``_NOISE_MAX`` within ``_PARTNER_REACH`` samples, its 40 ms frame is looked at again
    with the joint model of :func:`repair_clicks` (:func:`_arx_filters`: own past, order
    ``_ARX_ORDER``, and the other channel at lags ``-taps .. taps``, fitted on
    ``fit_on``, forwards and backwards). In a mix the other channel predicts the music
    but not a click in one channel, so the click stands far above the joint model's
    innovation where it barely clears the mono model's (and a click whitens the model
    fitted over it less when most of the frame is predicted from the other channel).
    The errors are those of ``xd`` with ``other`` (the other channel with the clicks
    found so far interpolated) as the known input.

    A frame is looked at only where the joint model predicts it better than the mono
    model nested in it (same window, same own order) by more than BIC's price of its
    ``2 taps + 1`` extra coefficients, ``(2 taps + 1) ln(N) / N`` in ``ln`` of the
    innovation variance (``N`` the window's effective length; innovation: the median
    RMS of 32-sample sub-blocks, robust to a click): on independent channels it adds
    nothing and the mono rules stand. There, where the other channel is quiet as above,
    the mono rules' tests are made on the joint model's errors instead: the minimum of
    the forward and backward errors over ``threshold`` times their robust local scale
    (as :func:`detect_clicks`, ``width`` sub-blocks either side), and the interpolation
    error (matched filter) over ``z_threshold`` times its own within ``z_reach``
    samples. Its candidates replace the mono rules' there (the joint model's two
    one-sided errors localise a click where the mono rules, their model whitened by it,
    may spread its candidates past a click's length).

    ``memo`` (a dict, empty at first): an earlier call's frame tests, reused on a later
    call (the detector's next pass, on the same ``xd``) for the frames whose fits and
    tests read no sample of ``other`` that changed since (``fit_on`` must be ``other``,
    as the detector passes them, clamped to ``limit``). ``limit`` (``(B, 2, T)``): the
    fits read ``fit_on`` clamped to ``+-limit`` (at their windows only).

    Returns:
        ``(candidates, where they replace the mono rules' ones)``, each ``(2B, T)`` bool.
    """
    b, c, t = xd.shape
    hop = _hop(sample_rate, 40.0)
    p, q = _ARX_ORDER, taps
    out = torch.zeros(b * c, t, dtype=torch.bool, device=xd.device)
    at = _flagged(z_ratio > z_threshold)
    if len(at) == 0:
        return out, out
    near = partner[:, :t]
    quiet = near[at[:, 0], at[:, 1]] < _NOISE_MAX
    frames = _unique_pairs(at[quiet, 0], at[quiet, 1] // hop, -(-t // hop))
    if len(frames) == 0:
        return out, out
    nf = -(-t // hop)
    lead = p + q + width * _SUB
    todo, reuse, old = frames, None, None
    if memo:
        # Frames whose fit windows (both channels, `_ARX_SPAN` hops) and tests (the other
        # channel, `lead` either side) see no changed sample of `other` keep their tests.
        span = _ARX_SPAN * hop
        before, after = max((span - hop) // 2, lead), max(span - (span - hop) // 2, hop + lead + p)
        at = _flagged((other != memo["other"]).reshape(b * c, t))
        # Frame f reads samples f hop - before .. f hop + after - 1: a change at s makes
        # stale the frames with s - after < f hop <= s + before, no more (a wider margin
        # refits frames whose inputs are the same, to the same tests).
        lo = torch.div(at[:, 1:2] - after, hop, rounding_mode="floor") + 1
        hi = torch.div(at[:, 1:2] + before, hop, rounding_mode="floor")
        f = lo + torch.arange((before + after) // hop + 1, device=xd.device)
        f = torch.where(f <= hi, f, lo).clamp(0, nf - 1)
        rows_at = torch.cat([at[:, :1], at[:, :1] + 1 - 2 * (at[:, :1] % 2)]).expand(-1, f.shape[1])
        stale = _unique_pairs(rows_at.reshape(-1), f.repeat(2, 1).reshape(-1), nf)
        key, okey = frames[:, 0] * nf + frames[:, 1], memo["frames"][:, 0] * nf + memo["frames"][:, 1]
        old = torch.searchsorted(okey, key).clamp(max=max(len(okey) - 1, 0))
        reuse = (okey[old] == key) & ~torch.isin(key, stale[:, 0] * nf + stale[:, 1]) if len(okey) else (
            torch.zeros(len(key), dtype=torch.bool, device=xd.device))
        todo = frames[~reuse]
    better = torch.zeros(len(todo), dtype=torch.bool, device=xd.device)
    hit = torch.zeros(len(todo), hop, dtype=torch.bool, device=xd.device)
    if len(todo):
        a, h, a0, ab, hb = _arx_filters(fit_on, None, hop, p, q, todo, mono=True, both=True,
                                        limit=limit)
        a, h, a0, ab, hb = (v.reshape(b * c, -1, v.shape[-1])[todo[:, 0], todo[:, 1]]
                            for v in (a, h, a0, ab, hb))
        rows = xd.reshape(b * c, t)
        ref = other.reshape(b * c, t)
        # In chunks of frames (their spectra are large at dense clicks).
        tests = [_arx_tests(rows, ref, todo[lo : lo + _ARX_CHUNK],
                            *(v[lo : lo + _ARX_CHUNK] for v in (a, h, a0, ab, hb)),
                            hop, width, threshold, z_threshold, z_reach, floor)
                 for lo in range(0, len(todo), _ARX_CHUNK)]
        better = torch.cat([v[0] for v in tests])
        hit = torch.cat([v[1] for v in tests])
    if reuse is not None:
        both_b = memo["better"][old].clone()
        both_h = memo["hit"][old].clone()
        both_b[~reuse], both_h[~reuse] = better, hit
        better, hit = both_b, both_h
    if memo is not None:
        memo.update(other=other, frames=frames, better=better, hit=hit)
    # The samples of the frames the joint model predicts better where the other channel
    # is quiet: there its tests replace the mono ones. Written frame by frame into
    # ``(2B, F, hop)`` grids (a frame's samples are one row of it), not sample by sample.
    pos = frames[:, 1:2] * hop + torch.arange(hop, device=xd.device)
    quiet = near[frames[:, :1], pos.clamp(max=t - 1)] < _NOISE_MAX
    domain = quiet & better[:, None] & (pos < t)
    grids = torch.zeros(2, b * c, nf, hop, dtype=torch.bool, device=xd.device)
    grids[0, frames[:, 0], frames[:, 1]] = hit & domain
    grids[1, frames[:, 0], frames[:, 1]] = domain
    hits, out = grids.reshape(2, b * c, nf * hop)[:, :, :t]
    return hits, out
