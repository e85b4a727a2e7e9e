"""Restoration: find and repair clicks, clipped runs and DC offset.

All functions take ``(batch, channels, time)`` audio and run batched over items and
channels, on CPU or CUDA. Detection (which samples are damaged) is a hard decision made
without gradient; the repair is least-squares autoregressive (LSAR) interpolation of the
flagged samples from their neighbours. Once the mask and the AR coefficients are fixed
the repair is *linear* in the audio, so it is differentiable with respect to the audio
(:func:`lsar_interpolate` is gradchecked).

Shared machinery:

* :func:`ar_coefficients`: an AR model per hop-length frame, fitted by the autocorrelation
  method (Hann-windowed analysis window of two hops centred on the frame, Levinson-Durbin
  batched over every frame of every channel).
* :func:`lsar_interpolate`: every run of masked samples (runs closer than the AR order
  merge into one segment) is solved jointly by least squares, batched over segments of
  similar length (one Cholesky solve per half-octave length bucket; a long segment's
  banded system block by block, :func:`_band_solve`).

The click detector (why it leaves drums alone, and its second look in stereo) is
documented in :func:`detect_clicks`; the click repair (the flagged samples read as signal
plus a click of EM-fitted variance, a stereo click repaired with a joint model of both
channels, spans grown over missed click edges) in :func:`repair_clicks`.

References:
    S. J. Godsill and P. J. W. Rayner, *Digital Audio Restoration*, Springer 1998,
    ch. 5 (LSAR interpolation) and ch. 5.3 (detection by the AR prediction error).
    J. Durbin, "The fitting of time-series models", Rev. Int. Stat. Inst., 1960.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tnf
from torch import Tensor

from diffmix.checks import check_audio, check_sample_rate

_SUB = 32  # samples per sub-block of the robust local scales
_PERIOD_DB = 10.0
_TIGHTEN = 4  # rounds of repair and tightening of the click spans
_ONSET_S = 0.010  # level mismatch (dB) a periodic repeat may have at no cost
_GROW = 3  # rounds of growing the click spans over missed edges
# A click's noise burst crosses zero: some of its samples are as small as the music's own
# error. Growing a span outwards carries on over up to this many quiet samples in a row.
_GROW_GAP = 8
# A Gaussian noise's largest value over a few milliseconds stays under about 3.5 standard
# deviations: beyond 4, a matched-filter output is taken as a sign of something there.
_NOISE_MAX = 4.0
# How far (samples, about 1.5 ms at 44.1 kHz) the other channel must show nothing for the
# stereo candidate rule of `detect_clicks`: an attack in both channels of a mix need not
# line up to the sample.
_PARTNER_REACH = 64
# Own-past order of the joint (ARX) stereo repair model of `repair_clicks`.
_ARX_ORDER = 32
# Its fit covers this many frames (hops of `repair_clicks`): 4 hops of 40 ms give some
# 28 samples per coefficient at 48 taps a side.
_ARX_SPAN = 4
# Frames per batch of its normal equations (129 x 129 each at 48 taps) and tests: at 256
# a batch of normal matrices took 34 MB, fresh pages on every allocation, and the batched
# Cholesky and solves ran several times slower per matrix than in batches of 32.
_ARX_CHUNK = 32


def _rows(x: Tensor, what: str) -> tuple[Tensor, tuple[int, int, int]]:
    check_audio(x, what)
    b, c, t = x.shape
    return x.reshape(b * c, t), (b, c, t)


def _hop(sample_rate: int, hop_ms: float) -> int:
    return max(64, int(round(hop_ms * 1e-3 * sample_rate)))


def levinson(r: Tensor) -> Tensor:
    """Levinson-Durbin recursion, batched: autocorrelation ``(..., p + 1)`` -> prediction
    error filter ``a`` ``(..., p + 1)`` with ``a[..., 0] = 1``, such that
    ``e[n] = sum_k a[k] x[n - k]`` is the forward prediction error.

    The loop runs over the order (``p`` steps), never over frames or samples.

    >>> levinson(torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)).tolist()
    [1.0, -0.5, 0.0]
    """
    p = r.shape[-1] - 1
    a = torch.zeros_like(r)
    a[..., 0] = 1.0
    err = r[..., 0].clone()
    for m in range(1, p + 1):
        acc = (a[..., :m] * r[..., 1 : m + 1].flip(-1)).sum(-1)
        k = -acc / err
        prev = a[..., : m + 1].clone()
        a[..., 1 : m + 1] = prev[..., 1 : m + 1] + k[..., None] * prev[..., :m].flip(-1)
        err = err * (1.0 - k * k)
    return a


def ar_coefficients(
    x: Tensor,
    sample_rate: int,
    *,
    order: int = 32,
    hop: int,
    limit: Tensor | None = None,
    frames: Tensor | None = None,
    into: Tensor | None = None,
) -> Tensor:
    """AR prediction-error filters per ``hop``-sample frame (autocorrelation method).

    Frame ``f`` covers samples ``[f hop, (f + 1) hop)``; its model is fitted on the
    Hann-windowed ``2 hop`` samples centred on it. A -60 dB white floor is added to each
    autocorrelation (so silence and pure tones give stable, well-conditioned filters).
    With ``limit`` (``(B, C, T)``, positive) the signal is clamped to ``+-limit`` before
    fitting, so a loud click does not turn the model of its frame white. With ``frames``
    (``(K, 2)`` int64 rows ``(batch * C + channel, frame)``) only those frames are fitted
    and written into a copy of ``into`` (``(B, C, F, order + 1)``; zeros when ``None``):
    a refit after a few samples changed costs what they touch, not the whole signal. Not
    differentiable (fitted on ``x.detach()``).

    Shape:
        ``(B, C, T)`` -> ``(B, C, F, order + 1)`` with ``F = ceil(T / hop)``, float64.
    """
    rows, (b, c, t) = _rows(x, "ar_coefficients")
    check_sample_rate(sample_rate, "ar_coefficients")
    subset = frames
    frames = -(-t // hop)
    half = hop // 2
    rows = rows.detach()
    if limit is not None:
        lim = limit.reshape(b * c, t)
        rows = torch.maximum(torch.minimum(rows, lim), -lim)
    xp = tnf.pad(rows, (half, frames * hop - t + 2 * hop - half))
    seg = xp.unfold(-1, 2 * hop, hop)[:, :frames]  # (N, F, 2 hop)
    if subset is not None:
        seg = seg[subset[:, 0], subset[:, 1]]  # (K, 2 hop)
    win = torch.hann_window(2 * hop, periodic=False, dtype=seg.dtype, device=seg.device)
    n_fft = 1 << math.ceil(math.log2(2 * hop + order + 1))
    spec = torch.fft.rfft(seg * win, n_fft)
    r = torch.fft.irfft(spec.real.square() + spec.imag.square(), n_fft)[..., : order + 1]
    r = r.to(torch.float64)
    r0 = r[..., :1]
    r = torch.cat([r0 * (1.0 + 1e-6) + 1e-20, r[..., 1:]], -1)
    if subset is None:
        return levinson(r).reshape(b, c, frames, order + 1)
    out = (torch.zeros(b * c, frames, order + 1, dtype=torch.float64, device=x.device)
           if into is None else into.reshape(b * c, frames, order + 1).clone())
    if len(subset):
        out[subset[:, 0], subset[:, 1]] = levinson(r)
    return out.reshape(b, c, frames, order + 1)


def _frames_near(r: Tensor, hop: int, frames: int, reach: int) -> Tensor:
    """``(row, frame)`` pairs (``(K, 2)``, unique) of the frames whose analysis window
    (two hops centred on the frame) comes within ``reach`` samples of a run ``(row,
    start, end)``: the frames a change to those samples can alter."""
    if len(r) == 0:
        return r[:, :2]
    half = hop // 2
    lo = torch.div(r[:, 1] - reach + half - 2 * hop, hop, rounding_mode="floor") + 1
    hi = torch.div(r[:, 2] + reach + half - 1, hop, rounding_mode="floor")
    steps = torch.arange(int((hi - lo).max()) + 1, device=r.device)
    f = lo[:, None] + steps
    ok = (f <= hi[:, None]) & (f >= 0) & (f < frames)
    rows = r[:, :1].expand(-1, len(steps))
    return _unique_pairs(rows[ok], f[ok], frames)


def _unique_pairs(row: Tensor, frame: Tensor, frames: int) -> Tensor:
    """The distinct ``(row, frame)`` pairs (``frame < frames``), sorted by row then
    frame, as ``(K, 2)`` int64: ``torch.unique(..., dim=0)`` on one int64 key, which is
    far cheaper than unique over rows."""
    key = torch.unique(row * frames + frame)
    return torch.stack([torch.div(key, frames, rounding_mode="floor"), key % frames], -1)


def ar_residuals(
    x: Tensor, coeffs: Tensor, hop: int, drive: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward, backward and interpolation errors of each sample under its frame's AR
    model (zeros beyond the ends). Linear in ``x`` (coefficients fixed).

    ``forward[n] = sum_k a[k] x[n - k]`` and ``backward[n] = sum_k a[k] x[n + k]``;
    ``interpolation[n] = sum_k r[k] x[n + k] / sqrt(r[0])`` (``k = -p .. p``) with ``r``
    the autocorrelation of the prediction-error filter ``a``: the forward error filtered
    backwards by the same filter, normalised. The last is the matched filter for an
    impulse in the AR process: a click of height ``A`` on one sample gives
    ``A sqrt(r[0])`` against a background of the innovation's standard deviation, where a
    one-sided error gives ``A`` (``r[0] = sum a_k^2`` is 10 to 1000 for tonal music).
    With ``drive`` (``(B, C, T)``, a model's known input, as :func:`lsar_interpolate`'s)
    the forward error is ``sum_k a[k] x[n - k] - drive[n]`` and the interpolation error
    filters that backwards; the backward error ignores it.

    Shape:
        ``x (B, C, T)``, ``coeffs (B, C, F, p + 1)`` -> three ``(B, C, T)`` tensors.
    """
    return _residuals(x, coeffs, hop, drive, (0, 1, 2))


def _residuals(x: Tensor, coeffs: Tensor, hop: int, drive: Tensor | None,
               kinds: tuple[int, ...], frames: Tensor | None = None,
               prev: tuple[Tensor, ...] | None = None) -> tuple[Tensor, ...]:
    """:func:`ar_residuals`' errors of the given ``kinds`` only (0 forward, 1 backward,
    2 interpolation), in that order: the same values, without the others' transforms.
    With ``frames`` (``(K, 2)`` rows ``(batch * C + channel, frame)``) only those frames
    are computed and the rest copied from ``prev`` (the same errors of a signal that
    differs from ``x`` only where those frames' errors can see it)."""
    rows, (b, c, t) = _rows(x, "ar_residuals")
    p = coeffs.shape[-1] - 1
    nf = coeffs.shape[-2]
    a = coeffs.reshape(b * c, nf, p + 1).to(rows.dtype)
    xp = tnf.pad(rows, (p, nf * hop - t + p))
    seg = xp.unfold(-1, hop + 2 * p, hop)[:, :nf]  # (N, F, hop + 2p)
    dseg = None
    if drive is not None:
        dp = tnf.pad(drive.reshape(b * c, t).to(rows.dtype), (p, nf * hop - t + p))
        dseg = dp.unfold(-1, hop + 2 * p, hop)[:, :nf]
    if frames is not None:
        seg, a = seg[frames[:, 0], frames[:, 1]], a[frames[:, 0], frames[:, 1]]
        dseg = None if dseg is None else dseg[frames[:, 0], frames[:, 1]]
    n_fft = 1 << math.ceil(math.log2(hop + 3 * p + 1))
    sx = torch.fft.rfft(seg, n_fft)
    sa = torch.fft.rfft(a, n_fft)
    out = []
    for i, kind in enumerate(kinds):
        if kind == 0:
            e = torch.fft.irfft(sx * sa, n_fft)[..., p : p + hop]
            if dseg is not None:
                e = e - dseg[..., p : p + hop]
        elif kind == 1:
            e = torch.fft.irfft(sx * sa.conj(), n_fft)[..., p : p + hop]  # correlation with a
        else:
            norm = a.square().sum(-1, keepdim=True).rsqrt()
            power = (sa.real.square() + sa.imag.square()) * norm
            e = torch.fft.irfft(sx * power, n_fft)[..., p : p + hop]
            if dseg is not None:
                sd = torch.fft.rfft(dseg, n_fft)
                e = e - torch.fft.irfft(sd * sa.conj(), n_fft)[..., p : p + hop] * norm
        if frames is not None:
            assert prev is not None
            full = tnf.pad(prev[i].reshape(b * c, t), (0, nf * hop - t)).reshape(b * c, nf, hop)
            full[frames[:, 0], frames[:, 1]] = e
            e = full
        out.append(e.reshape(b * c, nf * hop)[:, :t].reshape(b, c, t))
    return tuple(out)


def _errors_cache(coeffs: Tensor, hop: int, drive: Tensor | None):
    """``errors(x, kind)``: :func:`_residuals`' error of one kind under fixed models,
    remembering the last signal of each kind: the same signal costs nothing, and one that
    changed in a few places costs the frames whose errors can see a change (a frame's
    errors read ``p`` samples beyond it either side). The repair's rounds change a few
    spans at a time."""
    memo: dict[int, tuple[Tensor, Tensor]] = {}
    p = coeffs.shape[-1] - 1
    nf = coeffs.shape[-2]

    def errors(x: Tensor, kind: int) -> Tensor:
        hit = memo.get(kind)
        if hit is not None and hit[0] is x:
            return hit[1]
        if hit is None:
            e = _residuals(x, coeffs, hop, drive, (kind,))[0]
        else:
            b, c, t = x.shape
            changed = tnf.pad((x != hit[0]).reshape(b * c, t), (0, nf * hop - t))
            near = changed.reshape(b * c, nf, hop).any(-1)
            reach = -(-p // hop)
            near = tnf.max_pool1d(near[:, None].to(x.dtype), 2 * reach + 1, 1, reach)[:, 0] > 0
            frames = near.nonzero()
            e = hit[1] if len(frames) == 0 else _residuals(
                x, coeffs, hop, drive, (kind,), frames, (hit[1],))[0]
        memo[kind] = (x, e)
        return e

    return errors


def runs(mask: Tensor) -> Tensor:
    """Runs of ``True`` along time: ``(K, 3)`` int64 rows ``(row, start, end)`` with
    ``end`` exclusive and ``row = batch * C + channel``, sorted by row then start.

    >>> runs(torch.tensor([[[False, True, True, False, True]]])).tolist()
    [[0, 1, 3], [0, 4, 5]]
    """
    m = mask.reshape(-1, mask.shape[-1]).to(torch.int8)
    d = torch.diff(tnf.pad(m, (1, 1)), dim=-1)
    # Starts and ends alternate along each row (and rows come in order): one scan.
    at = d.nonzero()
    return torch.stack([at[0::2, 0], at[0::2, 1], at[1::2, 1]], -1)


def spans(mask: Tensor) -> list[dict]:
    """The runs of a ``(B, C, T)`` mask as dicts ``{"batch", "channel", "start", "end"}``
    (sample indices, ``end`` exclusive), for reports."""
    _, c, _ = mask.shape
    return [
        {"batch": r // c, "channel": r % c, "start": s, "end": e}
        for r, s, e in runs(mask).tolist()
    ]


def _mask_from_runs(r: Tensor, shape: tuple[int, int], pad: int, device: torch.device) -> Tensor:
    """``(N, T)`` bool mask of the runs ``r`` (``(K, 3)`` row, start, end), each widened
    by ``pad`` samples a side (clipped to the signal). Costs the runs' length, not ``T``."""
    n, t = shape
    mask = torch.zeros(n, t, dtype=torch.bool, device=device)
    if len(r) == 0:
        return mask
    width = int((r[:, 2] - r[:, 1]).max()) + 2 * pad
    idx = r[:, 1:2] - pad + torch.arange(width, device=device)
    ok = (idx < r[:, 2:3] + pad) & (idx >= 0) & (idx < t)
    mask[r[:, 0:1].expand(-1, width)[ok], idx[ok]] = True
    return mask


def _segments(r: Tensor, gap: int) -> Tensor:
    """Merge runs of the same row closer than ``gap`` samples: ``(S, 3)`` (row, start, end)."""
    if len(r) == 0:
        return r
    new = torch.ones(len(r), dtype=torch.bool, device=r.device)
    new[1:] = (r[1:, 0] != r[:-1, 0]) | (r[1:, 1] - r[:-1, 2] >= gap)
    first = new.nonzero()[:, 0]
    last = torch.cat([first[1:] - 1, first.new_tensor([len(r) - 1])])
    return torch.stack([r[first, 0], r[first, 1], r[last, 2]], -1)


def lsar_interpolate(
    x: Tensor,
    mask: Tensor,
    coeffs: Tensor,
    hop: int,
    *,
    max_span: int = 4096,
    beyond: bool = False,
    iterations: int = 4,
    innovation: Tensor | None = None,
    em_steps: int = 4,
    drive: Tensor | None = None,
) -> Tensor:
    """Least-squares AR interpolation of the masked samples.

    Each segment of masked samples (runs closer than the AR order ``p`` are one segment)
    is replaced by the values that minimise the sum of squared forward prediction errors
    ``sum_n (sum_k a[k] x[n - k])^2`` over every error term that involves one of them,
    with the AR model of the frame holding the segment's centre and the unmasked samples
    fixed (Godsill and Rayner's LSAR). Samples outside the signal count as zeros.

    With ``beyond=True`` (declipping) the solution is constrained to lie beyond the
    observed value, ``sign(x) u >= |x|``: samples that the unconstrained solution pulls
    back inside the clip level are fixed at it and the rest re-solved (an active-set
    iteration, ``iterations`` rounds; any violator left is held at the rail).

    With ``innovation`` (the innovation's standard deviation ``sigma_e`` per frame) the
    masked samples are not missing but observed through additive Gaussian noise (the
    click) of unknown variance ``sigma_n^2``, one per segment: the repair is the
    posterior mean, which minimises ``||A x||^2 / sigma_e^2 + ||y_u - x_u||^2 / sigma_n^2``,
    that is ``(A_u^T A_u + lam I) x_u = -A_u^T A_k x_k + lam y_u`` with
    ``lam = sigma_e^2 / sigma_n^2``. ``sigma_n^2`` is fitted by EM (``em_steps`` rounds
    from the plain LSAR solution): the mean of ``(y_u - x_u)^2`` plus the posterior
    variance ``sigma_e^2 diag((A_u^T A_u + lam I)^-1)``. A loud click gets ``lam``
    near 0 (plain LSAR); a quiet one, or clean samples in the span, keep part of what
    they tell about the signal. Not with ``beyond``.

    With ``drive`` each error term is ``(a * x)[n] - drive[n]``: a model with a known
    input, as the joint (ARX) stereo model of :func:`repair_clicks`, whose part from
    the other channel is the drive.

    Differentiable with respect to ``x`` (and ``drive``): for a fixed mask, coefficients
    (and active set, and ``lam``) the result is linear in them. ``coeffs``, ``mask`` and
    ``innovation`` get no gradient.

    Args:
        x: audio.
        mask: ``True`` where a sample is to be interpolated.
        coeffs: prediction-error filters per frame (:func:`ar_coefficients`).
        hop: frame length of ``coeffs`` in samples.
        max_span: segments longer than this are left as they are.
        innovation: ``(B, C, F)``, positive, or ``None`` (the masked samples are missing).
        drive: ``(B, C, T)`` or ``None`` (a plain AR model).

    Shape:
        ``x (B, C, T)``, ``mask (B, C, T)``, ``coeffs (B, C, F, p + 1)`` -> ``(B, C, T)``.

    References:
        Godsill and Rayner (1998), section 5.2.2, the LSAR interpolator; the click as
        additive noise on the observed samples, their Bayesian treatment (ch. 9).
    """
    rows, (b, c, t) = _rows(x, "lsar_interpolate")
    if mask.shape != x.shape:
        raise ValueError(f"lsar_interpolate: mask shape {tuple(mask.shape)} != audio {tuple(x.shape)}")
    if innovation is not None and beyond:
        raise ValueError("lsar_interpolate: innovation (a noisy observation) and beyond "
                         "(a clipped one) do not combine")
    if drive is not None and drive.shape != x.shape:
        raise ValueError(f"lsar_interpolate: drive shape {tuple(drive.shape)} != audio {tuple(x.shape)}")
    p = coeffs.shape[-1] - 1
    frames = coeffs.shape[-2]
    a_all = coeffs.reshape(b * c, frames, p + 1).detach()
    m2 = mask.reshape(b * c, t).to(x.device)
    segs = _segments(runs(m2[:, None]), p)
    if len(segs) == 0:
        return x
    length = segs[:, 2] - segs[:, 1]
    segs = segs[length <= max_span]
    length = length[length <= max_span]
    if len(segs) == 0:
        return x
    xpad = tnf.pad(rows, (p, max_span + p))
    mpad = tnf.pad(m2, (p, max_span + p))
    dpad = None if drive is None else tnf.pad(drive.reshape(b * c, t), (p, max_span + p))
    # Half-octave buckets (2^k and 3 2^(k - 1)): a segment's solve costs its bucket's
    # length cubed, so a finer grid wastes less on padding (the padded unknowns are
    # identity rows, decoupled: the bucket changes nothing but rounding).
    k = torch.ceil(torch.log2(length.double())).long()
    bucket = torch.where(4 * length <= 3 << k, 3 << (k - 2).clamp(min=0), 1 << k).clamp(min=8)
    out_rows, out_cols, out_vals = [], [], []
    for lb in torch.unique(bucket).tolist():
        sel = bucket == lb
        seg, ls = segs[sel], length[sel]
        row, start = seg[:, 0], seg[:, 1]
        pos = torch.arange(lb + 2 * p, device=x.device)
        idx = start[:, None] + pos  # window [start - p, start + lb + p) in padded coords
        xs = xpad[row[:, None], idx].to(torch.float64)  # the Gram matrix can be ill-conditioned
        inside = (pos[None, p : p + lb] - p) < ls[:, None]
        unknown = mpad[row[:, None], idx][:, p : p + lb] & inside
        frame = ((start + ls // 2) // hop).clamp(max=frames - 1)
        a = a_all[row, frame].to(xs.dtype)  # (nb, p + 1)
        # G = A_u^T A_u is Toeplitz in the autocorrelation of the filter (all error rows
        # touching the segment are in the objective).
        # The filters by FFT (no wrap: every index read lies inside the transform).
        n_fft = 1 << math.ceil(math.log2(lb + 3 * p + 1))
        fa = torch.fft.rfft(a, n_fft)
        ra = torch.fft.irfft(fa.real.square() + fa.imag.square(), n_fft)[:, : p + 1]
        ra = tnf.pad(ra, (0, 1))
        # The Gram matrix is banded (bandwidth p): a long plain solve goes block by block
        # (blocks of `band` >= p samples, block-tridiagonal, see `_band_solve`).
        band = 1 << max(3, math.ceil(math.log2(p)))
        banded = innovation is None and lb >= 4 * band and lb % band == 0
        if not banded:
            lag = (pos[:lb, None] - pos[None, :lb]).abs().clamp(max=p + 1)
            gram = ra[:, lag]  # (nb, lb, lb)
        sign = torch.sign(xs[:, p : p + lb]).detach()
        level = xs[:, p : p + lb].detach().abs()
        unk = unknown
        for _ in range(iterations if beyond else 1):
            d = unk.to(xs.dtype)
            known = xs.clone()
            known[:, p : p + lb] = xs[:, p : p + lb] * (1 - d)
            # e0[i] = sum_k a[k] known[i + p - k]: error term n = start + i, i < lb + p
            e0 = torch.fft.irfft(torch.fft.rfft(known, n_fft) * fa, n_fft)[:, p : lb + 2 * p]
            if dpad is not None:  # error term n = start + i is (a * x)[n] - drive[n]
                e0 = e0 - dpad[row[:, None], idx[:, p:]].to(xs.dtype)
            # g[i] = sum_k a[k] e0[i + k] (A_u^T e0), i < lb
            g = torch.fft.irfft(torch.fft.rfft(e0, n_fft) * fa.conj(), n_fft)[:, :lb, None]
            if banded:
                u = _band_solve(ra, d, -d * g[..., 0], band)
            else:
                mat = gram * (d[:, :, None] * d[:, None, :])
                mat.diagonal(dim1=-2, dim2=-1).add_(1 - d)
                chol, _ = torch.linalg.cholesky_ex(mat)
                u = torch.cholesky_solve(-d[..., None] * g, chol)[..., 0]
            if innovation is not None:
                # EM for the click variance: start from plain LSAR (lam = 0), then solve
                # with lam = sigma_e^2 / sigma_n^2 and re-estimate sigma_n^2. lam is
                # detached, so the last solve is linear in x.
                s2 = innovation.reshape(b * c, frames)[row, frame].detach().to(xs.dtype).square()
                y = xs[:, p : p + lb]
                lam = torch.zeros_like(d)
                for step in range(em_steps + 1):
                    if step:
                        damped = mat.clone()
                        damped.diagonal(dim1=-2, dim2=-1).add_(lam)
                        chol, _ = torch.linalg.cholesky_ex(damped)
                        u = torch.cholesky_solve((-d * g[..., 0] + lam * y)[..., None], chol)[..., 0]
                    if step == em_steps:
                        break
                    post = s2[:, None] * torch.cholesky_inverse(chol).diagonal(dim1=-2, dim2=-1)
                    noise = (((y.detach() - u.detach()).square() + post) * d).sum(-1)
                    noise = noise / d.sum(-1).clamp(min=1)
                    lam = (s2 / noise.clamp(min=1e-30))[:, None] * d
            if not beyond:
                break
            bad = unk & (sign * u.detach() < level)
            unk = unk & ~bad
        vals = torch.where(unk, u, xs[:, p : p + lb])
        keep = unknown
        r_idx = row[:, None].expand(-1, lb)[keep]
        c_idx = (start[:, None] + pos[None, :lb])[keep]
        out_rows.append(r_idx)
        out_cols.append(c_idx)
        out_vals.append(vals[keep])
    r_cat, c_cat, v_cat = torch.cat(out_rows), torch.cat(out_cols), torch.cat(out_vals)
    y = rows.index_put((r_cat, c_cat), v_cat.to(rows.dtype))
    return y.reshape(b, c, t)


def _band_solve(ra: Tensor, d: Tensor, rhs: Tensor, band: int) -> Tensor:
    """Solve ``M u = rhs`` with ``M = D G D + I - D`` (``G`` Toeplitz in ``ra``
    (``(K, p + 2)``, zero from lag ``p + 1``), ``D = diag(d)``; ``d``, ``rhs`` ``(K, n)``,
    ``n`` a multiple of ``band >= p``): :func:`lsar_interpolate`'s system, symmetric
    positive definite and banded, so block-tridiagonal in blocks of ``band``. Block
    Cholesky, ``M = L L^T`` with diagonal blocks ``L_i`` and sub-diagonal blocks
    ``W_i = C_i L_(i-1)^-T`` (``C_i`` the block of ``M`` below the diagonal):
    ``L_i L_i^T = M_ii - W_i W_i^T``; then the two block substitutions. It costs
    ``n band^2`` where the dense factorisation costs ``n^3 / 3``; the loop runs over the
    ``n / band`` blocks, each step batched over the segments. Linear in ``rhs``."""
    k, n = d.shape
    m = n // band
    ar = torch.arange(band, device=d.device)
    p1 = ra.shape[-1] - 1
    t0 = ra[:, (ar[:, None] - ar[None]).abs().clamp(max=p1)]  # (K, band, band)
    t1 = ra[:, (band + ar[:, None] - ar[None]).clamp(max=p1)]  # the block below it
    db = d.reshape(k, m, band)
    diag = t0[:, None] * (db[..., :, None] * db[..., None, :])  # (K, m, band, band)
    diag.diagonal(dim1=-2, dim2=-1).add_(1 - db)
    below = t1[:, None] * (db[:, 1:, :, None] * db[:, :-1, None, :])  # (K, m - 1, band, band)
    rb = rhs.reshape(k, m, band, 1)
    chol, low, y = [], [], []
    for i in range(m):
        s = diag[:, i]
        if i:
            x = torch.linalg.solve_triangular(chol[-1], below[:, i - 1].transpose(-1, -2),
                                              upper=False)  # L_(i-1)^-1 C_i^T = W_i^T
            low.append(x.transpose(-1, -2))
            s = s - x.transpose(-1, -2) @ x
        chol.append(torch.linalg.cholesky_ex(s)[0])
        r = rb[:, i] if not i else rb[:, i] - low[-1] @ y[-1]
        y.append(torch.linalg.solve_triangular(chol[-1], r, upper=False))
    u = [None] * m
    for i in reversed(range(m)):
        r = y[i] if i == m - 1 else y[i] - low[i].transpose(-1, -2) @ u[i + 1]
        u[i] = torch.linalg.solve_triangular(chol[i].transpose(-1, -2), r, upper=True)
    return torch.cat(u, -2).reshape(k, n)


def _local_scale(v: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Robust local RMS of ``v`` (N, T) on a grid of ``_SUB``-sample sub-blocks: the
    median of the sub-block RMS over the ``width`` (rounded down to a multiple of 4)
    sub-blocks before and after each one (excluding it). Returns ``(before, after)``, each ``(N, nsb)``."""
    n, t = v.shape
    nsb = -(-t // _SUB)
    ms = tnf.pad(v.square(), (0, nsb * _SUB - t)).reshape(n, nsb, _SUB).mean(-1).sqrt()
    # Medians on a grid of `stride` sub-blocks (sorting every window costs more than the
    # rest of the detector), each window shifted to end (start) just before (after) the
    # first (last) sub-block of its grid cell.
    # The width is a whole number of cells, so the window after a cell is the window
    # before the cell `width / stride + 1` cells later: one median per cell serves both.
    stride = 4
    width = max(stride, width // stride * stride)
    cells = -(-nsb // stride)
    padded = tnf.pad(ms[:, None], (width, width + cells * stride - nsb + stride), mode="replicate")[:, 0]
    med = padded.unfold(-1, width, stride).median(-1).values
    later = width // stride + 1
    before, after = med[:, :cells], med[:, later : later + cells]
    return (before.repeat_interleave(stride, -1)[:, :nsb],
            after.repeat_interleave(stride, -1)[:, :nsb])


def _periodicity(res: Tensor, bursts: Tensor, sample_rate: int) -> Tensor:
    """How periodic the prediction error around each burst is: the largest ``L`` in
    1.5-20 ms of ``min(ncc(+L), ncc(-L))``, the normalised correlation of the 64 error
    samples centred on the burst with those one lag later and one lag earlier (best of
    three neighbouring lags each). A waveform with a cusp every period (a buzzy synth, a
    pulse wave) repeats its error spike on both sides; a click, even among others, does
    not. A repeat counts only as much as its level matches (more than ``_PERIOD_DB``
    apart, the correlation is scaled down by the excess): a loud click in a buzzy sound
    correlates in shape with the sound's cusps but is far above them. 64 samples, not
    fewer: two independent noise bursts (dense clicks a period apart) correlate by chance
    with a standard deviation of 1 / sqrt(n), and the best of some 800 lags reached the
    0.6 threshold with 32. ``(K,)`` in [0, 1]."""
    half, lmin, lmax = 32, int(0.0015 * sample_rate), int(0.020 * sample_rate)
    n = 2 * half
    padded = tnf.pad(res, (lmax + half, lmax + half))
    centre = (bursts[:, 1] + bursts[:, 2]) // 2  # in padded coordinates: + lmax + half
    region = padded[bursts[:, 0, None], centre[:, None] + torch.arange(2 * lmax + n, device=res.device)]
    seg = region[:, lmax : lmax + n]
    n_fft = 1 << math.ceil(math.log2(2 * lmax + 2 * n))
    dots = torch.fft.irfft(torch.fft.rfft(region, n_fft) * torch.fft.rfft(seg, n_fft).conj(), n_fft)
    dots = dots[:, : 2 * lmax + 1]  # dots[:, j] = <seg, region[j : j + n]>, lag j - lmax
    # Energy of each n-sample window: a running sum (float64: no cancellation), which
    # costs the region's length where a pooled window sum costs n times that.
    cum = tnf.pad(region.double().square().cumsum(-1), (1, 0))
    e_ref = (cum[:, n : n + 2 * lmax + 1] - cum[:, : 2 * lmax + 1]).to(region.dtype)
    e_seg = seg.square().sum(-1, keepdim=True)
    # A repeat must also match in level, within `_PERIOD_DB` (a decaying pluck's error
    # spikes lose a few dB a period): the correlation <a, b> / (|a| |b|) times
    # min(1, k min(|a|/|b|, |b|/|a|)) with k = 10^(_PERIOD_DB / 20), which is the smaller
    # of the correlation and k <a, b> / max(|a|^2, |b|^2). A click far louder than the
    # music's own error spikes a period away is not periodic however their shapes match.
    ncc = dots / (e_ref * e_seg).sqrt().clamp(min=1e-30)
    level = dots * (10.0 ** (_PERIOD_DB / 20.0)) / torch.maximum(e_ref, e_seg).clamp(min=1e-30)
    ncc = torch.minimum(ncc, level).clamp(-1.0, 1.0)
    ncc = tnf.max_pool1d(ncc[:, None], 3, 1, 1)[:, 0]
    later, earlier = ncc[:, lmax + lmin :], ncc[:, : lmax - lmin + 1].flip(-1)
    return torch.minimum(later, earlier).amax(-1).clamp(min=0.0)


def _explained(
    x: Tensor, repaired: Tensor, bursts: Tensor, coeffs: Tensor, hop: int, pad: int, max_len: int
) -> Tensor:
    """How much the repair of each burst explains: the energy of the forward prediction
    error over the padded burst and the ``p`` samples after it (every error term the burst
    enters), before over after the repair, in dB. ``x``, ``repaired`` ``(N, T)``, ``bursts``
    ``(K, 3)``, ``coeffs`` ``(N, F, p + 1)`` -> ``(K,)``."""
    p = coeffs.shape[-1] - 1
    t = x.shape[-1]
    width = max_len + 2 * pad + p
    pos = torch.arange(-p, width, device=x.device)
    idx = bursts[:, 1:2] - pad + pos  # (K, width + p): p samples of history first
    ok = (idx >= 0) & (idx < t)
    idx = idx.clamp(0, t - 1)
    frame = ((bursts[:, 1] + bursts[:, 2]) // 2 // hop).clamp(max=coeffs.shape[1] - 1)
    a = coeffs[bursts[:, 0], frame].to(x.dtype)  # (K, p + 1)
    # error term n counts when it lies in [start - pad, end + pad + p)
    inside = pos[p:] < (bursts[:, 2:3] - bursts[:, 1:2] + 2 * pad + p)
    energy = []
    for sig in (x, repaired):
        w = torch.where(ok, sig[bursts[:, 0:1], idx], 0.0)
        e = w.unfold(-1, p + 1, 1) @ a.flip(-1)[..., None]  # (K, width, 1)
        energy.append(torch.where(inside, e[..., 0].square(), 0.0).sum(-1))
    return 10.0 * torch.log10(energy[0].clamp(min=1e-30) / energy[1].clamp(min=1e-30))


def _guards(
    x: Tensor, repaired: Tensor, bursts: Tensor, level: Tensor, coeffs: Tensor, hop: int,
    pad: int, max_len: int, sr: int, *, above_db: float | None, explain_db: float | None,
    loud_db: float | None, onset_db: float | None,
) -> Tensor:
    """The last tests of :func:`detect_clicks` (see there): which ``bursts`` (``(K, 3)``)
    are clicks, given the rows ``x`` and their repair ``repaired`` ``(N, T)``, the
    programme's robust local level ``(N, T)`` and the AR models ``(N, F, p + 1)``."""
    t = x.shape[-1]
    # What the repair would remove, peak over the programme's robust local level.
    removed = (x - repaired).abs() / level.clamp(min=1e-9)
    span = max_len + 2 * pad
    idx = (bursts[:, 1:2] - pad + torch.arange(span, device=x.device)).clamp(0, t - 1)
    inside = idx < (bursts[:, 2:3] + pad)
    peak = torch.where(inside, removed[bursts[:, 0:1], idx], 0.0).amax(-1)
    keep = torch.ones_like(peak, dtype=torch.bool)
    # Far above the music around it: no attack, whatever the tests below say.
    loud = peak >= 10.0 ** (loud_db / 20.0) if loud_db is not None else ~keep
    if above_db is not None:
        # It must stand out: an onset the model cannot predict is no louder than
        # the music it starts.
        keep &= peak >= 10.0 ** (above_db / 20.0)
    if explain_db is not None:
        gain = _explained(x, repaired, bursts, coeffs, hop, pad, max_len)
        # ...and the repair must explain it, unless it is far above the music.
        keep &= (gain >= explain_db) | loud
    if onset_db is not None:
        # A sound that starts here (its level after the burst far above the level
        # before it, as a kick out of silence) is an attack, however well the
        # model of its own body explains it; a click is added to music that goes
        # on. Levels over 10 ms of the repaired signal either side.
        near = int(round(0.010 * sr))
        ar = torch.arange(near, device=x.device)
        pre = (bursts[:, 1:2] - pad - near + ar).clamp(0, t - 1)
        post = (bursts[:, 2:3] + pad + ar).clamp(0, t - 1)
        e_pre = repaired[bursts[:, 0:1], pre].square().mean(-1)
        e_post = repaired[bursts[:, 0:1], post].square().mean(-1)
        keep &= (e_post <= e_pre * 10.0 ** (onset_db / 10.0)) | loud
    return keep


def _stereo_guards(
    x: Tensor, repaired: Tensor, bursts: Tensor, judge: Tensor, sr: int, order: int, hop: int,
    pad: int, max_len: int, width: int, taps: int, **guards: float | None,
) -> Tensor:
    """Second look, in stereo, at the bursts the guards vetoed (``~keep``): an attack
    sounds in both channels of a mix, a click in one. Each channel minus what the other
    channel predicts of it (the FIR of :func:`repair_clicks`, fitted on the signal with
    every burst interpolated) is the part of the music the other channel does not
    explain; a burst that passes the same guards there, with AR models and the local
    level of that residual, is a click. An attack heard in both channels cancels; one in
    a single channel is judged as before. Returns ``(K,)`` bool: rescued bursts."""
    b, c, t = x.shape
    vetoed = judge.nonzero()[:, 0]
    if len(vetoed) == 0:
        return judge
    cand = bursts[vetoed]
    frames = -(-t // hop)
    near = _frames_near(cand, hop, frames, order + taps + pad)
    # The signal with every burst interpolated: the filters and models see no burst.
    clean = repaired
    other = clean.flip(1)
    h = _cross_filters(clean, other, hop, taps, near)
    pred = _fir_frames(other, h, hop)
    resid = (x - pred).reshape(b * c, t)
    resid_clean = (clean - pred)
    coeffs = ar_coefficients(resid_clean, sr, order=order, hop=hop, frames=near)
    mask = _mask_from_runs(cand, (b * c, t), pad, x.device).reshape(b, c, t)
    rep = lsar_interpolate(resid.reshape(b, c, t), mask, coeffs, hop).reshape(b * c, t)
    level = _burst_level(resid, cand, width, max_len + 2 * pad)
    ok = _guards(resid, rep, cand, level, coeffs.reshape(b * c, frames, order + 1), hop, pad,
                 max_len, sr, **guards)
    out = torch.zeros_like(judge)
    out[vetoed[ok]] = True
    return out


def _keep_inside(bursts: Tensor, long: Tensor, kept: Tensor, t: int) -> Tensor:
    """``bursts`` (``(K, 3)`` rows ``(row, start, end)``, sorted) and the runs of
    ``kept`` that lie inside one of the ``long`` runs holding two or more of them, sorted
    by row then start. Two clicks kept by an earlier pass with candidates between them
    are dense clicks (the refitted models, sharper, flag more of the error each spreads
    over the other); one kept burst at the start of a long run of candidates is the start
    of a sound (as a slapped string's or a woodblock's attack), and goes as before."""
    if len(kept) == 0 or len(long) == 0:
        return bursts
    key = long[:, 0] * (t + 1) + long[:, 1]  # sorted, as the runs are
    i = torch.searchsorted(key, kept[:, 0] * (t + 1) + kept[:, 1], right=True) - 1
    inside = (i >= 0) & (long[i.clamp(min=0), 0] == kept[:, 0]) & (
        long[i.clamp(min=0), 2] >= kept[:, 2])
    count = torch.zeros(len(long), dtype=torch.long, device=long.device)
    count.index_add_(0, i[inside], torch.ones_like(i[inside]))
    inside &= count[i.clamp(min=0)] >= 2
    out = torch.cat([bursts, kept[inside]])
    return out[torch.argsort(out[:, 0] * (t + 1) + out[:, 1])]


def _partner_peak(z_ratio: Tensor) -> Tensor:
    """Row ``r`` (``batch * 2 + channel``): the other channel's ``z_ratio`` (``(N, T)``,
    non-negative) peak within ``_PARTNER_REACH`` samples of each sample. ``(N, T)``."""
    n, t = z_ratio.shape
    return _sliding_max(z_ratio, _PARTNER_REACH).reshape(n // 2, 2, t).flip(1).reshape(n, t)


def _near_and_alone(cand: Tensor, z_ratio: Tensor, reach: int, z_threshold: float,
                    partner: Tensor) -> Tensor:
    """The stereo candidate rule of :func:`detect_clicks`: of the samples ``cand``
    (``(N, T)`` bool, rows ``batch * 2 + channel``), those whose row's ``z_ratio``
    (``(N, T)``, interpolation error over its robust scale) exceeds ``z_threshold``
    within ``reach`` samples while the other channel's stays under ``_NOISE_MAX`` within
    ``_PARTNER_REACH`` samples (``partner``, :func:`_partner_peak`). ``(N, T)`` bool."""
    t = cand.shape[-1]
    at = cand.nonzero()
    out = torch.zeros_like(cand)
    if len(at) == 0:
        return out
    pos = (at[:, 1:2] + torch.arange(-reach, reach + 1, device=cand.device)).clamp(0, t - 1)
    ok = (z_ratio[at[:, :1], pos].amax(-1) > z_threshold) & (partner[at[:, 0], at[:, 1]] < _NOISE_MAX)
    out[at[ok, 0], at[ok, 1]] = True
    return out


def _sliding_max(v: Tensor, half: int) -> Tensor:
    """``out[..., n] = max(v[..., n - half .. n + half])`` with zeros beyond the ends
    (``v >= 0``): a doubling table of maxima over powers of two, ``log2(2 half + 1)``
    passes over the signal whatever ``half``. ``(..., T)`` -> ``(..., T)``."""
    t = v.shape[-1]
    w = 2 * half + 1
    m, size = tnf.pad(v, (half, half)), 1
    while 2 * size <= w:  # m[i] = max over [i, i + size) of the padded signal
        m = torch.maximum(m[..., :-size], m[..., size:])
        size *= 2
    return torch.maximum(m[..., :t], m[..., w - size : w - size + t])


def _arx_tests(
    xpad: Tensor, rpad: Tensor, frames: Tensor, a: Tensor, h: Tensor, a0: Tensor, ab: Tensor,
    hb: Tensor, hop: int, width: int, threshold: float, z_threshold: float, z_reach: int,
    floor: float,
) -> tuple[Tensor, Tensor]:
    """The tests of :func:`_arx_candidates` on the ``frames`` (``(K, 2)``) with their
    joint models (forward ``a, h``, mono ``a0``, backward ``ab, hb``; rows per frame), the
    signal and the other channel padded by ``lead = p + q + width _SUB`` samples before:
    ``(better (K,), hit (K, hop))`` bool."""
    p, q = a.shape[-1] - 1, h.shape[-1] // 2
    # Errors over the frame and `width` sub-blocks either side (the local scales' reach),
    # all under the frame's models: n in [s0, s0 + span), s0 = f hop - wide.
    wide = width * _SUB
    span = hop + 2 * wide
    lead = p + q + wide
    s0 = frames[:, 1:2] * hop - wide
    ar_ = torch.arange(span + 3 * p + 2 * q, device=xpad.device)
    xs = xpad[frames[:, :1], s0 + lead - p + ar_[: span + 3 * p]]
    rs = rpad[frames[:, :1], s0 + lead - q + ar_[: span + p + 2 * q]]
    xs, rs = xs.to(torch.float64), rs.to(torch.float64)
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
    partner: Tensor,
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

    Returns:
        ``(candidates, where they replace the mono rules' ones)``, each ``(2B, T)`` bool.
    """
    b, c, t = xd.shape
    hop = _hop(sample_rate, 40.0)
    p, q = _ARX_ORDER, taps
    out = torch.zeros(b * c, t, dtype=torch.bool, device=xd.device)
    at = (z_ratio > z_threshold).nonzero()
    if len(at) == 0:
        return out, out
    near = partner[:, :t]
    quiet = near[at[:, 0], at[:, 1]] < _NOISE_MAX
    frames = _unique_pairs(at[quiet, 0], at[quiet, 1] // hop, -(-t // hop))
    if len(frames) == 0:
        return out, out
    a, h, a0, ab, hb = _arx_filters(fit_on, fit_on.flip(1), hop, p, q, frames, mono=True, both=True)
    a, h, a0, ab, hb = (v.reshape(b * c, -1, v.shape[-1])[frames[:, 0], frames[:, 1]]
                        for v in (a, h, a0, ab, hb))
    rows = xd.reshape(b * c, t)
    ref = other.flip(1).reshape(b * c, t)
    # In chunks of frames (their spectra are large at dense clicks).
    lead = p + q + width * _SUB
    rows, ref = (tnf.pad(v, (lead, lead + hop + 2 * p)) for v in (rows, ref))
    tests = [_arx_tests(rows, ref, frames[lo : lo + _ARX_CHUNK],
                        *(v[lo : lo + _ARX_CHUNK] for v in (a, h, a0, ab, hb)),
                        hop, width, threshold, z_threshold, z_reach, floor)
             for lo in range(0, len(frames), _ARX_CHUNK)]
    better = torch.cat([v[0] for v in tests])
    hit = torch.cat([v[1] for v in tests])
    # The samples of the frames the joint model predicts better where the other channel
    # is quiet: there its tests replace the mono ones.
    pos = frames[:, 1:2] * hop + torch.arange(hop, device=xd.device)
    quiet = near[frames[:, :1], pos.clamp(max=t - 1)] < _NOISE_MAX
    domain = quiet & better[:, None] & (pos < t)
    out[frames[:, :1].expand(-1, hop)[domain], pos[domain]] = True
    hits = out.clone()
    hits[frames[:, :1].expand(-1, hop)[domain], pos[domain]] = hit[domain]
    return hits, out


def _burst_level(rows: Tensor, bursts: Tensor, width: int, span: int) -> Tensor:
    """The robust local level of :func:`detect_clicks` (``_local_scale`` of ``rows`` over
    ``width`` sub-blocks a side, the larger) computed only around each burst, written
    into an ``(N, T)`` tensor (ones elsewhere)."""
    n, t = rows.shape
    reach = (width + 2) * _SUB
    start = (bursts[:, 1] - reach) // _SUB * _SUB  # aligned to the sub-block grid
    length = (span + 2 * reach) // _SUB * _SUB + 2 * _SUB
    idx = start[:, None] + torch.arange(length, device=rows.device)
    ok = (idx >= 0) & (idx < t)
    seg = torch.where(ok, rows[bursts[:, 0:1], idx.clamp(0, t - 1)], 0.0)
    before, after = _local_scale(seg, width)
    local = torch.maximum(before, after).repeat_interleave(_SUB, -1)[:, :length]
    out = torch.ones_like(rows)
    out[bursts[:, 0:1].expand(-1, length)[ok], idx[ok]] = local[ok]
    return out


def detect_clicks(
    x: Tensor,
    sample_rate: int,
    *,
    order: int = 32,
    hop_ms: float = 20.0,
    threshold: float = 5.0,
    z_threshold: float = 8.0,
    max_click_ms: float = 3.0,
    merge: int = 24,
    floor_db: float = -90.0,
    pad: int = 6,
    clamp: float = 3.0,
    periodic: float = 0.6,
    passes: int = 2,
    above_db: float | None = 3.0,
    explain_db: float | None = 10.0,
    loud_db: float | None = 12.0,
    onset_db: float | None = 20.0,
    stereo_taps: int | None = 4,
    z_strong: float | None = 16.0,
    threshold_strong: float = 4.0,
    z_reach: int | None = 8,
    arx_taps: int | None = 48,
) -> tuple[Tensor, Tensor, int]:
    """Flag clicks: short bursts that the AR model of their surroundings cannot predict,
    forwards or backwards, and that do not recur period after period.

    A sample is a candidate when ``min(|forward error|, |backward error|)`` exceeds
    ``threshold`` times the larger of two robust local scales of the prediction error
    (the median sub-block RMS over about 16 ms before it and over 16 ms after it) *and*
    its interpolation error (:func:`ar_residuals`, the matched filter for a click
    in an AR process, ``sqrt(sum a_k^2)`` times more sensitive than either one-sided
    error) exceeds ``z_threshold`` times its own robust local scale, taken the same way.
    The second test finds quiet clicks in tonal music that the first misses at a high
    threshold; the first localises the click and spares attacks. The two trade evidence:
    a sample whose interpolation error exceeds ``z_strong`` scales (twice the test) is a
    candidate at ``threshold_strong`` (a fifth less) on the first: a loud click in dense,
    nearly white music (the model predicts a few dB only) stands far out of the matched
    filter while its one-sided errors, spread over the burst, barely reach the threshold.
    In stereo (``C == 2``, ``z_reach`` not ``None``) a third rule lets the two tests meet
    on different samples: a sample is also a candidate when the first test holds on it
    and the second holds within ``z_reach`` samples of it, where the other channel's
    interpolation error stays under 4 of its robust scales (noise alone, see the stereo
    look below) within ``_PARTNER_REACH`` samples. The matched filter is matched to an
    impulse: over a noise burst its peak falls where the burst's samples add up in its
    kernel, not on the sample whose one-sided errors peak, and a burst whose own model
    is whitened by it (the model of its frame is fitted with the burst in it) may pass
    each test on some sample but both on none. An attack heard in both channels keeps
    the strict rule. Why this leaves percussion alone:

    * the *minimum* of the forward and backward errors is large only on the damaged
      samples themselves (a click spoils the forward prediction of the ``p`` samples
      after it and the backward prediction of the ``p`` before, never both);
    * the *larger* of the scales before and after means an onset is judged against the
      error level of the sound it starts: a hi-hat's noise or a snare's rattle is as
      unpredictable after its first sample as on it;
    * candidates closer than ``merge`` samples join into bursts, and a burst longer than
      ``max_click_ms`` is not a click;
    * a burst whose prediction error repeats one period earlier *and* one period later
      (1.5-20 ms, normalised correlation above ``periodic``) is the cusp of a buzzy or
      pulse-like waveform, not a click;
    * what the repair would remove (the burst minus its LSAR interpolation) must peak at
      least ``above_db`` over the programme's robust local level (the median RMS of
      0.7 ms sub-blocks over 8 ms before or after, the larger): a kick's or a slapped
      string's attack is unpredictable, but no louder than the note it starts;
    * the repair must explain the burst: the forward prediction error over every term
      the burst enters (the padded burst and the ``p`` samples after it) must fall by at
      least ``explain_db`` once the burst is interpolated. A click is added to music
      that goes on, so without it the error drops to the music's own; an attack starts a
      sound the model of the samples before it cannot predict, so interpolating the
      attack leaves most of the error. A burst whose removed part peaks ``loud_db`` or
      more over the programme's level is kept without this test (it is no attack: far
      louder than the music around it), so a loud click among others is not lost.
    * a burst after which the programme is ``onset_db`` louder than before it (10 ms each
      side, the burst repaired) starts a sound: a kick out of silence, whose body the
      model of the samples after it predicts well backwards, is no click (unless it is
      ``loud_db`` over the programme, as above: a loud click where the music starts).

    * stereo (``C == 2``, ``stereo_taps`` not ``None``): a burst vetoed by the last three
      tests gets a second look when the other channel shows nothing at the same place
      (its interpolation error under 4 robust scales, where noise over a 3 ms span
      reaches about 3.5): an attack sounds in both channels of a mix, a click in one.
      The burst is judged again by the same tests on the channel minus what the other
      channel predicts of it (the FIR of :func:`repair_clicks`), with AR models and the
      robust level of that residual, fitted with every burst interpolated; in a mix
      whose channels share most of their content a quiet click stands out there.
    * stereo (``C == 2``, ``arx_taps`` not ``None``), in the last pass, before all
      this: where the matched filter marks a sample and the other channel shows
      nothing, its 40 ms frame is
      judged with the joint (ARX) model of :func:`repair_clicks` (own past and the other
      channel at lags ``-arx_taps .. arx_taps``) where that predicts the frame better
      than the mono model by more than BIC's price of its extra coefficients: the
      candidate tests are made on its errors, and its candidates replace the mono
      rules' there (:func:`_arx_candidates`; where they join into a burst too long to
      be a click, the mono rules' stand). A click whitens the model of its own frame;
      the other channel, which predicts the music and not the click, does not. On
      independent channels the gate stays shut and the mono rules decide.

    The models are fitted on the signal clamped to ``clamp`` times its robust local level;
    with ``passes=2`` they are refitted on the signal with the first pass's clicks
    interpolated, and the detection is run again on the original; the bursts the first
    pass kept are judged again by the guards there whatever their candidate statistic
    (the refit moves a click near the threshold to either side of it by chance).

    Args:
        order: AR order. hop_ms: AR frame length (ms; the model is fitted on 2 hops).
        threshold, z_threshold: detection thresholds in local-scale units. floor_db: errors below this
            level (dBFS) never count. pad: samples added to each side of a burst (the
            edges of a burst are often below the threshold). above_db, explain_db,
            loud_db, onset_db: the last guards (``None`` turns one off).
        stereo_taps: half-length of the cross-channel FIR of the stereo look (``None``:
            channels judged apart).
        z_strong, threshold_strong: the second candidate rule (``None``: off).
        z_reach: the third (stereo) candidate rule's reach in samples (``None``: off).
        arx_taps: the joint model's lags of the other channel either side (``None``:
            the mono rules alone).

    Returns:
        ``(mask, coeffs, hop)``: ``mask (B, C, T)`` bool (detached), the AR filters
        ``(B, C, F, order + 1)`` used, and the frame length in samples.
    """
    rows, (b, c, t) = _rows(x, "detect_clicks")
    sr = check_sample_rate(sample_rate, "detect_clicks")
    hop = _hop(sr, hop_ms)
    width = max(4, int(round(0.016 * sr / _SUB)))
    max_len = max(1, int(round(max_click_ms * 1e-3 * sr)))
    guards = {"above_db": above_db, "explain_db": explain_db, "loud_db": loud_db,
              "onset_db": onset_db}
    with torch.no_grad():
        xd = x.detach()
        s_before, s_after = _local_scale(rows.detach(), width // 2)
        level = torch.maximum(s_before, s_after).repeat_interleave(_SUB, -1)[:, :t]
        fit_on, near, coeffs = xd, None, None
        kept = torch.zeros(b * c, t, dtype=torch.bool, device=x.device)
        limit = (clamp * level).reshape(b, c, t) + 1e-9
        # The joint-model look runs in the last pass only, on models refitted with the
        # earlier passes' clicks interpolated (it costs more than the rest of a pass at
        # dense clicks); a first pass that keeps nothing hands on to it unchanged.
        arx_on = arx_taps is not None and c == 2
        for step in range(passes):
            defer = arx_on and step < passes - 1
            if near is None or len(near):
                # Later passes refit only the frames whose windows the repairs changed.
                coeffs = ar_coefficients(fit_on, sr, order=order, hop=hop, limit=limit,
                                         frames=near, into=None if near is None else coeffs)
                fwd, bwd, z = (e.reshape(b * c, t) for e in ar_residuals(xd, coeffs, hop))
                stat = torch.minimum(fwd.abs(), bwd.abs())
                # The local scales of the two-sided error and of the interpolation error,
                # in one go.
                e_before, e_after = _local_scale(
                    torch.cat([(fwd.square() + bwd.square()).mul(0.5).sqrt(), z]), width)
            scales = torch.maximum(e_before, e_after)[..., None]  # (2N, nsb, 1)
            scale, z_scale = scales[: b * c], scales[b * c :]
            # Candidates: samples that neither direction predicts (the minimum error, which
            # localises a click and spares an attack) *and* that the interpolation error,
            # the matched filter for a click, marks. Compared sub-block by sub-block.
            nsb = scales.shape[1]
            grid = (b * c, nsb, _SUB)
            floor = 10.0 ** (floor_db / 20.0)
            sg = tnf.pad(stat, (0, nsb * _SUB - t)).reshape(grid)
            zg = tnf.pad(z.abs(), (0, nsb * _SUB - t)).reshape(grid)
            one_sided = sg > torch.clamp(threshold * scale, min=floor)
            z_ratio = (zg / z_scale.clamp(min=1e-30)).reshape(b * c, nsb * _SUB)
            flags = one_sided & (zg > z_threshold * z_scale)
            if c == 2 and (z_reach is not None or arx_taps is not None):
                alone_peak = _partner_peak(z_ratio)
            if z_reach is not None and c == 2:
                # The two tests on nearby samples, where the other channel shows nothing;
                # looked at only where the first test holds (few samples).
                flags |= _near_and_alone(one_sided.reshape(b * c, -1), z_ratio, z_reach,
                                         z_threshold, alone_peak).reshape(grid)
            if z_strong is not None:
                # Stronger evidence from the matched filter buys a laxer localisation test.
                flags |= (sg > torch.clamp(threshold_strong * scale, min=floor)) & (
                    zg > z_strong * z_scale)
            if arx_on and not defer:
                # Where the other channel predicts the music, a click in one channel
                # stands out of the joint model's innovation (see `_arx_candidates`).
                extra, domain = (tnf.pad(v, (0, nsb * _SUB - t)).reshape(grid) for v in _arx_candidates(
                    xd, torch.maximum(torch.minimum(fit_on, limit), -limit), fit_on,
                    z_ratio[:, :t], sr, arx_taps, threshold, z_threshold,
                    z_reach if z_reach is not None else 0, floor, width, alone_peak))
                joint = torch.where(domain, extra, flags).reshape(b * c, -1)
                # Where its candidates join into a burst too long to be a click (a loud
                # click in the other channel, spread by the cross filter), the mono
                # rules' candidates stand.
                long = _segments(runs(joint), merge + 1)
                long = long[(long[:, 2] - long[:, 1]) > max_len]
                back = _mask_from_runs(long, joint.shape, merge + 1, x.device).reshape(grid)
                flags = torch.where(back, flags, joint.reshape(grid))
            # A later pass judges again the bursts an earlier one kept, whatever their
            # candidate statistic now: its models are fitted with them interpolated, which
            # moves a click near the threshold by chance to either side of it; the guards,
            # not the threshold, decide what is a click.
            flags = flags.reshape(b * c, nsb * _SUB)[:, :t] | kept
            # Join candidates with at most `merge` samples between them into one burst.
            bursts = _segments(runs(flags), merge + 1)
            short = (bursts[:, 2] - bursts[:, 1]) <= max_len
            if step and not bool(short.all()):
                # Dense clicks: the candidates between two kept bursts can join them into
                # one burst too long to be a click. The kept bursts inside stay bursts
                # (where there are two or more, see `_keep_inside`).
                bursts = _keep_inside(bursts[short], bursts[~short], runs(kept), t)
            else:
                bursts = bursts[short]
            if len(bursts) and periodic < 1.0:
                bursts = bursts[_periodicity(fwd, bursts, sr) < periodic]
            mask = _mask_from_runs(bursts, (b * c, t), pad, x.device).reshape(b, c, t)
            if len(bursts) == 0:
                if defer:  # nothing to refit: the joint look on the same models
                    near = bursts[:, :2]
                    continue
                break
            repaired = lsar_interpolate(xd, mask, coeffs, hop)
            keep = _guards(xd.reshape(b * c, t), repaired.reshape(b * c, t), bursts, level,
                           coeffs.reshape(b * c, -1, order + 1), hop, pad, max_len, sr,
                           **guards)
            last = step == passes - 1 or not bool(keep.any())
            if stereo_taps is not None and c == 2 and last and not bool(keep.all()):
                # Vetoed bursts the other channel does not share (no candidate-level
                # interpolation error there): judged again on the cross-channel residual.
                z_ratio = z.abs() / z_scale[..., 0].repeat_interleave(_SUB, -1)[:, :t]
                span = max_len + 2 * pad
                idx = (bursts[:, 1:2] - pad + torch.arange(span, device=x.device)).clamp(0, t - 1)
                inside = idx < (bursts[:, 2:3] + pad)
                partner = bursts[:, 0:1] + 1 - 2 * (bursts[:, 0:1] % 2)
                alone = torch.where(inside, z_ratio[partner, idx], 0.0).amax(-1) < _NOISE_MAX
                keep |= _stereo_guards(xd, repaired, bursts, ~keep & alone, sr, order, hop, pad,
                                       max_len, width // 2, stereo_taps, **guards)
            bursts = bursts[keep]
            kept = _mask_from_runs(bursts, (b * c, t), 0, x.device)
            mask = _mask_from_runs(bursts, (b * c, t), pad, x.device).reshape(b, c, t)
            if len(bursts) == 0 and defer:
                near = bursts[:, :2]
                continue
            if len(bursts) == 0 or step == passes - 1:
                break
            # A loud click whitens the model of its frame (the clamp only limits it), which
            # hides quieter clicks nearby: refit on the signal with them interpolated.
            fit_on = torch.where(mask, repaired, xd)  # the bursts kept, not those vetoed
            near = _frames_near(bursts, hop, coeffs.shape[-2], pad)
    return mask, coeffs, hop


def declick(
    x: Tensor,
    sample_rate: int,
    *,
    order: int = 32,
    hop_ms: float = 20.0,
    threshold: float = 5.0,
    z_threshold: float = 8.0,
    max_click_ms: float = 3.0,
    merge: int = 24,
    pad: int = 6,
    passes: int = 2,
    above_db: float | None = 3.0,
    explain_db: float | None = 10.0,
    loud_db: float | None = 12.0,
    onset_db: float | None = 20.0,
    repair_order: int = 64,
    repair_hop_ms: float = 40.0,
    edge_sigma: float | None = 3.0,
    noisy: bool = True,
    stereo_taps: int | None = 4,
    repair_stereo_taps: int | None = 48,
    grow: int = 24,
) -> tuple[Tensor, Tensor]:
    """Find clicks (:func:`detect_clicks`) and repair them by LSAR interpolation.

    Each flagged span (the click widened by ``pad`` samples a side) is solved jointly by
    LSAR from the samples on both sides (:func:`lsar_interpolate`). The AR models used
    for the repair (order ``repair_order``, fitted on ``2 repair_hop_ms`` around each
    frame: at least 50 samples per coefficient keeps the fit's own error small) are fitted
    on the signal with the clicks already interpolated once, so a loud click does not bias
    the model that fills it in. The padding covers a click's quiet edges, but every
    sample interpolated that needed not be costs accuracy: padded end samples that the
    first repair leaves within ``edge_sigma`` innovation standard deviations are kept as
    observed (``None``: keep the whole padded span). With ``noisy`` the span's samples
    are read as signal plus a click of fitted variance rather than as missing, and a
    stereo click is repaired with a joint model of both channels where that predicts
    better (``repair_stereo_taps``: the other channel's lags either side; ``stereo_taps``
    is the detection's, see :func:`detect_clicks`), and spans grow over click edges the
    detection missed (``grow``): see :func:`repair_clicks`.

    Differentiable with respect to ``x`` (mask, AR models, filters and click variances
    fixed: the repair is linear). CUDA: yes.

    Shape:
        ``(B, C, T)`` -> ``(repaired (B, C, T), mask (B, C, T) bool)``.

    >>> x = torch.sin(torch.arange(4410.0) * 0.05).reshape(1, 1, -1) * 0.5
    >>> x[..., 2000] += 2.0
    >>> y, mask = declick(x, 44100)
    >>> bool(mask[0, 0, 2000]), float((y - torch.sin(torch.arange(4410.0) * 0.05) * 0.5).abs().max()) < 1e-3
    (True, True)
    """
    sr = check_sample_rate(sample_rate, "declick")
    mask, coeffs, hop = detect_clicks(
        x, sr, order=order, hop_ms=hop_ms, threshold=threshold, z_threshold=z_threshold,
        max_click_ms=max_click_ms,
        merge=merge, pad=pad, passes=passes, above_db=above_db, explain_db=explain_db,
        loud_db=loud_db, onset_db=onset_db, stereo_taps=stereo_taps,
    )
    return repair_clicks(x, mask, sr, coeffs=coeffs, hop=hop, order=repair_order,
                         hop_ms=repair_hop_ms, edge_sigma=edge_sigma, noisy=noisy,
                         stereo_taps=repair_stereo_taps, grow=grow)


def repair_clicks(
    x: Tensor,
    mask: Tensor,
    sample_rate: int,
    *,
    coeffs: Tensor | None = None,
    hop: int | None = None,
    order: int = 64,
    hop_ms: float = 40.0,
    edge_sigma: float | None = 3.0,
    noisy: bool = True,
    stereo_taps: int | None = 48,
    grow: int = 24,
) -> tuple[Tensor, Tensor]:
    """The repair step of :func:`declick` for a given mask.

    1. A first LSAR interpolation with ``coeffs`` (frame length ``hop``; by default
       order-32 models fitted on ``x`` itself, 20 ms frames).
    2. Models of order ``order`` refitted on it (frames of ``hop_ms``), the mask's ends
       tightened (``edge_sigma``, see :func:`declick`; repaired and tightened again until
       the mask holds, at most 4 rounds), then grown over the click edges the mask missed
       (up to ``grow`` samples a side per round, across short quiet stretches of the
       burst, :func:`_grow`: an edge sample left in the data pulls the whole
       interpolation after it, and a long noise burst is often flagged only around its
       peaks), and the repair proper: with ``noisy`` the
       flagged samples are read as the signal plus a click of unknown variance, fitted
       by EM per segment (:func:`lsar_interpolate` with ``innovation``), so a quiet
       click or a clean sample inside the span keeps what it tells; otherwise plain LSAR.
    3. Stereo (``C == 2``, ``stereo_taps`` not ``None``): a click is rarely in both
       channels at once, and the two channels of a mix share most of their content,
       often a few samples apart (a spaced pair, a delay, a widener). Per frame, a
       joint (ARX) model predicts each channel from its own past (order 32) and from
       the other channel's repair (step 2) at lags ``-stereo_taps .. stereo_taps``
       (:func:`_arx_filters`, fitted on step 2's repair over ``4 hop_ms``), and step 2
       is run again with it: the flagged samples minimise the joint model's errors
       (:func:`lsar_interpolate` with the other channel's part as ``drive``), the mask
       tightened and grown under it. It replaces step 2 where its innovation is the
       smaller (the conditional model predicts better); independent channels keep
       step 2. 48 taps (1.1 ms at 44.1 kHz) reach the inter-channel delays of common
       stereo set-ups, which a short filter misses.

    Differentiable w.r.t. ``x`` (linear once mask, models, filters and click variances
    are fixed).

    Shape:
        ``x (B, C, T)``, ``mask (B, C, T)`` -> ``(repaired (B, C, T), mask used)``.

    References:
        Godsill and Rayner (1998), ch. 5 (LSAR) and the Bayesian click model of their
        later chapters (corrupted samples as signal plus Gaussian noise); Dempster,
        Laird and Rubin, "Maximum likelihood from incomplete data via the EM
        algorithm", J. R. Stat. Soc. B, 1977; L. Ljung, *System Identification:
        Theory for the User*, 2nd ed., 1999, ch. 4 (ARX models and their least-squares
        fit).
    """
    sr = check_sample_rate(sample_rate, "repair_clicks")
    if mask.shape != x.shape:
        raise ValueError(f"repair_clicks: mask shape {tuple(mask.shape)} != audio {tuple(x.shape)}")
    if not bool(mask.any()):
        return x, mask
    with torch.no_grad():
        if coeffs is None or hop is None:
            hop = _hop(sr, 20.0)
            coeffs = ar_coefficients(x, sr, order=32, hop=hop)
        first = lsar_interpolate(x.detach(), mask, coeffs, hop)
        # Only the frames around the clicks are used by the repair: fit just those.
        rhop = _hop(sr, hop_ms)
        near = _frames_near(runs(mask), rhop, -(-x.shape[-1] // rhop), order)
    y, used, sigma = _repair(x, mask, first, sr, order, rhop, near, edge_sigma, noisy, grow)
    if stereo_taps is None or x.shape[1] != 2:
        return y, used
    with torch.no_grad():
        yd = y.detach()
        coeffs_s, taps = _arx_filters(yd, yd.flip(1), rhop, _ARX_ORDER, stereo_taps, near)
    drive = _fir_frames(y.flip(1), taps, rhop)  # from the other channel's repair (linear in x)
    ys, used_s, sigma_s = _repair(x, mask, first, sr, order, rhop, near, edge_sigma, noisy,
                                  grow, model=(coeffs_s, drive))
    use = (sigma_s < sigma).repeat_interleave(rhop, -1)[..., : x.shape[-1]]
    # Outside its mask each repair returns x exactly.
    return torch.where(use, ys, y), torch.where(use, used_s, used)


def _repair(
    x: Tensor, mask: Tensor, first: Tensor, sr: int, order: int, hop: int, near: Tensor,
    edge_sigma: float | None, noisy: bool, grow: int,
    model: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Step 2 of :func:`repair_clicks`: ``(repaired, mask used, innovation (B, C, F))``,
    the last the RMS prediction error of each frame (zero outside ``near``). With
    ``model`` (``(coeffs, drive)``: an ARX model and its known input, step 3) that model
    is used instead of AR models of order ``order`` fitted on ``first``, and ``first`` is
    recomputed with it."""
    drive = None if model is None else model[1]
    with torch.no_grad():
        xd = x.detach()
        dd = None if drive is None else drive.detach()
        # The masks below change a few spans at a time: each repair after the first
        # solves again only the segments a change reaches (`_lsar_update`, exact).
        solved: list[Tensor] = []

        def solve(m: Tensor) -> Tensor:
            y = (lsar_interpolate(xd, m, coeffs, hop, drive=dd) if not solved
                 else _lsar_update(xd, m, coeffs, hop, solved[0], solved[1], dd))
            solved[:] = [m, y]
            return y

        if model is None:
            coeffs = ar_coefficients(first, sr, order=order, hop=hop, frames=near)
        else:
            coeffs = model[0]
            first = solve(mask)
        last = first
        errors = _errors_cache(coeffs, hop, dd)
        if edge_sigma is not None:
            # A shorter span is repaired better, which shows more of its ends to agree
            # with the model: tighten, repair, tighten again, until the mask holds
            # (at most `_TIGHTEN` rounds).
            mask = _tighten(xd, first, mask, coeffs, hop, edge_sigma, dd, errors)
            for _ in range(_TIGHTEN):
                last = solve(mask)
                tighter = _tighten(xd, last, mask, coeffs, hop, edge_sigma, dd, errors)
                if torch.equal(tighter, mask):
                    break
                mask = tighter
        last = solve(mask)
        innovation = _innovation(last, mask, coeffs, hop, dd, errors)
        # Click edges the detection missed: grow, repair, grow again while the mask
        # changes (at most `_GROW` rounds).
        for _ in range(_GROW if grow else 0):
            grown = _grow(last, mask, coeffs, hop, innovation, _NOISE_MAX, grow, dd, errors)
            if torch.equal(grown, mask):
                break
            mask = grown
            last = solve(mask)
            innovation = _innovation(last, mask, coeffs, hop, dd, errors)
    y = lsar_interpolate(x, mask, coeffs, hop, innovation=innovation if noisy else None,
                         drive=drive)
    return y, mask, innovation


def _lsar_update(x: Tensor, mask: Tensor, coeffs: Tensor, hop: int, prev_mask: Tensor,
                 prev: Tensor, drive: Tensor | None = None) -> Tensor:
    """``lsar_interpolate(x, mask, coeffs, hop, drive=drive)`` given ``prev``, its result
    for ``prev_mask``: only the segments with a changed sample within ``p`` samples are
    solved again. The same result (to rounding: a segment solved in another batch may
    round differently): a segment's solution depends on the samples and the mask from
    ``p`` before it to ``p`` after it alone, and where those did not change, neither did
    the segment (its neighbours stay ``p`` or more away). ``(B, C, T)`` each."""
    b, c, t = x.shape
    p = coeffs.shape[-1] - 1
    changed = (mask != prev_mask).reshape(b * c, t)
    if not bool(changed.any()):
        return prev
    segs = _segments(runs(mask.reshape(b * c, 1, t)), p)
    count = tnf.pad(changed.to(torch.int32).cumsum(-1), (1, 0))
    lo, hi = (segs[:, 1] - p).clamp(min=0), (segs[:, 2] + p).clamp(max=t)
    touched = segs[(count[segs[:, 0], hi] - count[segs[:, 0], lo]) > 0]
    redo = (_mask_from_runs(touched, (b * c, t), 0, x.device) & mask.reshape(b * c, t)).reshape(b, c, t)
    fresh = lsar_interpolate(x, redo, coeffs, hop, drive=drive)
    # Samples no longer masked return to x; those solved again take the new solution.
    return torch.where(redo, fresh, torch.where(changed.reshape(b, c, t), x, prev))


def _cross_filters(x: Tensor, ref: Tensor, hop: int, q: int, frames: Tensor) -> Tensor:
    """Per frame, the two-sided FIR ``h`` (taps ``-q .. q``) that best predicts ``x`` from
    ``ref`` over the Hann-windowed two hops centred on the frame (the autocorrelation
    method, as :func:`ar_coefficients`; a -60 dB white floor keeps it well posed). Only
    the ``frames`` (``(K, 2)`` rows ``(batch * C + channel, frame)``) are fitted.

    Shape:
        ``x, ref (B, C, T)`` -> ``(B, C, F, 2q + 1)`` float64 (zeros outside ``frames``).
    """
    b, c, t = x.shape
    nf = -(-t // hop)
    half = hop // 2
    taps = 2 * q + 1

    def windows(v: Tensor) -> Tensor:
        vp = tnf.pad(v.reshape(b * c, t), (half, nf * hop - t + 2 * hop - half))
        return vp.unfold(-1, 2 * hop, hop)[:, :nf][frames[:, 0], frames[:, 1]]

    win = torch.hann_window(2 * hop, periodic=False, dtype=x.dtype, device=x.device)
    n_fft = 1 << math.ceil(math.log2(2 * hop + taps))
    fx = torch.fft.rfft(windows(x) * win, n_fft)
    fr = torch.fft.rfft(windows(ref) * win, n_fft)
    auto = torch.fft.irfft(fr.real.square() + fr.imag.square(), n_fft)[..., :taps].double()
    cross = torch.fft.irfft(fx * fr.conj(), n_fft).double()  # [k] = sum_n x[n] ref[n - k]
    cross = torch.cat([cross[..., n_fft - q :], cross[..., : q + 1]], -1)  # lags -q .. q
    lag = (torch.arange(taps, device=x.device)[:, None]
           - torch.arange(taps, device=x.device)[None]).abs()
    eye = torch.eye(taps, dtype=auto.dtype, device=x.device)
    normal = auto[..., lag] + eye * (auto[..., :1, None] * 1e-6 + 1e-20)
    out = torch.zeros(b * c, nf, taps, dtype=torch.float64, device=x.device)
    if len(frames):
        out[frames[:, 0], frames[:, 1]] = torch.linalg.solve(normal, cross[..., None])[..., 0]
    return out.reshape(b, c, nf, taps)


def _arx_filters(x: Tensor, ref: Tensor, hop: int, p: int, q: int,
                 frames: Tensor, mono: bool = False, both: bool = False) -> tuple[Tensor, ...]:
    """Per frame, the joint (ARX) predictor of ``x`` from its own ``p`` past samples and
    the ``2q + 1`` samples of ``ref`` around it: ``x[n] ~ -sum_k a[k] x[n - k] +
    sum_j h[j] ref[n - j]`` (``k = 1 .. p``, ``j = -q .. q``), least squares over the
    Hann-windowed ``_ARX_SPAN`` hops centred on the frame (the autocorrelation method,
    as :func:`ar_coefficients`, with its -60 dB white floor; longer than the AR fit's
    two hops, since the model has ``p + 2q`` coefficients). The error ``(a * x)[n] -
    (h * ref)[n]`` is what :func:`lsar_interpolate` minimises with ``drive = h * ref``
    (:func:`_fir_frames`). Only the ``frames`` (``(K, 2)`` rows ``(batch * C + channel,
    frame)``) are fitted; zeros elsewhere.

    With ``mono`` also the AR filter of order ``p`` fitted on the same windows (the
    model the ARX extends), next. With ``both`` also the backward model, last, which
    predicts ``x`` from its own ``p`` *next* samples, ``x[n] ~ -sum_k a[k] x[n + k] +
    sum_j h[j] ref[n + j]`` (the same fit on the time-reversed signals: the same
    autocorrelations, the cross-correlation at negated lags).

    Shape:
        ``x, ref (B, C, T)`` -> ``(a (B, C, F, p + 1), h (B, C, F, 2q + 1))``, float64.
    """
    b, c, t = x.shape
    nf = -(-t // hop)
    span = _ARX_SPAN * hop
    half = (span - hop) // 2
    taps = 2 * q + 1

    def windows(v: Tensor, part: Tensor) -> Tensor:
        vp = tnf.pad(v.reshape(b * c, t), (half, nf * hop - t + span - half))
        return vp.unfold(-1, span, hop)[:, :nf][part[:, 0], part[:, 1]]

    win = torch.hann_window(span, periodic=False, dtype=x.dtype, device=x.device)
    n_fft = 1 << math.ceil(math.log2(span + p + taps))
    dev = x.device
    i = torch.arange(1, p + 1, device=dev)
    j = torch.arange(-q, q + 1, device=dev)
    lags = torch.arange(-q - p, q + 1, device=dev)
    a = torch.zeros(b * c, nf, p + 1, dtype=torch.float64, device=dev)
    h = torch.zeros(b * c, nf, taps, dtype=torch.float64, device=dev)
    a0 = torch.zeros_like(a) if mono else a
    ab, hb = (torch.zeros_like(a), torch.zeros_like(h)) if both else (a, h)
    # In chunks of frames: the normal matrices, (p + 2q + 1)^2 each, add up at dense clicks.
    for lo in range(0, len(frames), _ARX_CHUNK):
        part = frames[lo : lo + _ARX_CHUNK]
        fx = torch.fft.rfft(windows(x, part) * win, n_fft)
        fr = torch.fft.rfft(windows(ref, part) * win, n_fft)
        rxx = torch.fft.irfft(fx.real.square() + fx.imag.square(), n_fft)[..., : p + 1].double()
        rrr = torch.fft.irfft(fr.real.square() + fr.imag.square(), n_fft)[..., :taps].double()
        # cross[k] = sum_n x[n] ref[n - k]; sum_n x[n - i] ref[n - j] = cross[j - i]
        cross = torch.fft.irfft(fx * fr.conj(), n_fft).double()
        # The normal matrix [[own, cross], [cross^T, other]]: the diagonal blocks (with
        # the floor) are the same forwards and backwards; only the cross blocks change.
        normal = rxx.new_empty(len(part), p + taps, p + taps)
        normal[:, :p, :p] = rxx[..., (i[:, None] - i[None]).abs()]
        normal[:, p:, p:] = rrr[..., (j[:, None] - j[None]).abs()]
        floor = torch.cat([rxx[..., :1].expand(-1, p), rrr[..., :1].expand(-1, taps)], -1) * 1e-6 + 1e-20
        normal.diagonal(dim1=-2, dim2=-1).add_(floor)
        for sign, (fa, fh) in ((1, (a, h)), (-1, (ab, hb)))[: 2 if both else 1]:
            cl = cross[..., (sign * lags) % n_fft]  # lags -q - p .. q (negated: backward)
            normal[:, :p, p:] = cl[..., j[None] - i[:, None] + q + p]
            normal[:, p:, :p] = normal[:, :p, p:].transpose(-1, -2)
            rhs = torch.cat([rxx[..., 1:], cl[..., j + q + p]], -1)
            w = _spd_solve(normal, rhs)
            fa[part[:, 0], part[:, 1]] = torch.cat([torch.ones_like(w[..., :1]), -w[..., :p]], -1)
            fh[part[:, 0], part[:, 1]] = w[..., p:]
        if mono:
            r0 = torch.cat([rxx[..., :1] * (1.0 + 1e-6) + 1e-20, rxx[..., 1:]], -1)
            a0[part[:, 0], part[:, 1]] = levinson(r0)
    out = [a.reshape(b, c, nf, p + 1), h.reshape(b, c, nf, taps)]
    out += [a0.reshape(b, c, nf, p + 1)] if mono else []
    out += [ab.reshape(b, c, nf, p + 1), hb.reshape(b, c, nf, taps)] if both else []
    return tuple(out)


def _spd_solve(mat: Tensor, rhs: Tensor) -> Tensor:
    """Solve ``mat w = rhs`` for a batch of symmetric positive definite ``(K, n, n)``
    matrices (``rhs (K, n)``) by Cholesky, half the cost of an LU solve; the matrices
    whose factorisation fails (not numerically positive definite) fall back to LU."""
    chol, info = torch.linalg.cholesky_ex(mat)
    # Two triangular solves: batched `cholesky_solve` copies the factors first, and cost
    # more than they do.
    w = torch.linalg.solve_triangular(chol, rhs[..., None], upper=False)
    w = torch.linalg.solve_triangular(chol.mT, w, upper=True)[..., 0]
    bad = (info != 0).nonzero()[:, 0]
    if len(bad):
        w[bad] = torch.linalg.solve(mat[bad], rhs[bad][..., None])[..., 0]
    return w


def _fir_frames(ref: Tensor, h: Tensor, hop: int) -> Tensor:
    """``y[n] = sum_k h_f[k] ref[n - k]`` (``k = -q .. q``) with ``f`` the frame of ``n``:
    ``ref (B, C, T)``, ``h (B, C, F, 2q + 1)`` -> ``(B, C, T)``. Linear in ``ref``."""
    b, c, t = ref.shape
    nf, taps = h.shape[-2], h.shape[-1]
    q = taps // 2
    xp = tnf.pad(ref.reshape(b * c, t), (q, nf * hop - t + q))
    seg = xp.unfold(-1, hop + 2 * q, hop)[:, :nf]  # (N, F, hop + 2q)
    n_fft = 1 << math.ceil(math.log2(hop + 4 * q + 1))
    filt = torch.fft.rfft(h.reshape(b * c, nf, taps).to(ref.dtype), n_fft)
    y = torch.fft.irfft(torch.fft.rfft(seg, n_fft) * filt, n_fft)[..., 2 * q : 2 * q + hop]
    return y.reshape(b * c, nf * hop)[:, :t].reshape(b, c, t)


def _innovation(x: Tensor, mask: Tensor, coeffs: Tensor, hop: int,
                drive: Tensor | None = None, errors=None) -> Tensor:
    """RMS forward prediction error per frame of ``x`` under its frame's model (minus
    ``drive``, as :func:`lsar_interpolate`), over the samples whose error terms no masked
    sample enters: ``(B, C, F)``. ``errors``: :func:`_errors_cache` of the same models."""
    b, c, t = x.shape
    p = coeffs.shape[-1] - 1
    frames = coeffs.shape[-2]
    errors = errors or _errors_cache(coeffs, hop, drive)
    fwd = errors(x, 0).reshape(b * c, t)
    # error terms n .. n + p see sample n: a masked sample spoils the p terms after it
    touched = tnf.max_pool1d(tnf.pad(mask.reshape(b * c, 1, t).to(x.dtype), (p, 0)), p + 1, 1)[:, 0] > 0
    w = (~touched).to(fwd.dtype)
    pad = frames * hop - t
    e2 = tnf.pad(fwd.square() * w, (0, pad)).reshape(b * c, frames, hop).sum(-1)
    n = tnf.pad(w, (0, pad)).reshape(b * c, frames, hop).sum(-1)
    return (e2 / n.clamp(min=1)).sqrt().reshape(b, c, frames)


def _grow(x: Tensor, mask: Tensor, coeffs: Tensor, hop: int, innovation: Tensor,
          kappa: float, reach: int, drive: Tensor | None = None, errors=None) -> Tensor:
    """Extend each masked run outwards (at most ``reach`` samples a side) over the samples
    whose interpolation error (:func:`ar_residuals`, the matched filter for an impulse,
    standard deviation ``sigma_e`` on a clean AR signal) in the repaired ``x`` exceeds
    ``kappa`` innovation standard deviations of their frame, up to the farthest such
    sample reached without crossing ``_GROW_GAP`` quiet samples in a row (a noise burst
    crosses zero): the parts of a click detection missed. ``errors``: as
    :func:`_innovation`."""
    b, c, t = x.shape
    errors = errors or _errors_cache(coeffs, hop, drive)
    z = errors(x, 2).reshape(b * c, t)
    sig = innovation.reshape(b * c, -1).repeat_interleave(hop, -1)[:, :t].to(z.dtype)
    big = (z.abs() > kappa * sig) & (sig > 0)
    r = runs(mask)
    ar = torch.arange(1, reach + 1, device=x.device)
    before = (r[:, 1:2] - ar).clamp(0, t - 1)
    after = (r[:, 2:3] - 1 + ar).clamp(0, t - 1)
    ok_b = big[r[:, 0:1], before] & (r[:, 1:2] - ar >= 0)
    ok_a = big[r[:, 0:1], after] & (r[:, 2:3] - 1 + ar < t)
    n_b, n_a = (_reach_with_gaps(ok, _GROW_GAP) for ok in (ok_b, ok_a))
    new = torch.stack([r[:, 0], r[:, 1] - n_b, r[:, 2] + n_a], -1)
    return _mask_from_runs(new, (b * c, t), 0, x.device).reshape(b, c, t) | mask


def _reach_with_gaps(ok: Tensor, gap: int) -> Tensor:
    """Per row of ``ok`` (``(K, R)``, samples outwards from a run's edge), how far the run
    extends: to just past the farthest ``True`` reached from the edge without crossing
    ``gap`` or more ``False`` in a row. ``(K,)`` int64."""
    k, r = ok.shape
    pos = torch.arange(r, device=ok.device)
    last = torch.where(ok, pos, -1).cummax(-1).values  # the last True at or before each
    broken = (pos - last) >= gap  # a gap of `gap` Falses ends at this sample
    first = torch.where(broken.any(-1), broken.to(torch.int8).argmax(-1), r)
    upto = last.gather(-1, (first - 1).clamp(min=0)[:, None])[:, 0]
    return torch.where(first > 0, upto + 1, 0).clamp(min=0)


def _tighten(
    x: Tensor, first: Tensor, mask: Tensor, coeffs: Tensor, hop: int, kappa: float,
    drive: Tensor | None = None, errors=None,
) -> Tensor:
    """Drop the samples at either end of each masked run that a first repair ``first``
    leaves within ``kappa`` innovation standard deviations of ``x`` (the RMS forward error
    of ``first`` over 256 samples either side of the run): they agree with the model, so
    they are kept as observed rather than interpolated. Interior samples stay masked.
    ``errors``: as :func:`_innovation`."""
    b, c, t = x.shape
    r = runs(mask)
    errors = errors or _errors_cache(coeffs, hop, drive)
    fwd = errors(first, 0).reshape(b * c, t)
    ctx = 256
    ar = torch.arange(ctx, device=x.device)
    pre = (r[:, 1:2] - ctx + ar).clamp(0, t - 1)
    post = (r[:, 2:3] + ar).clamp(0, t - 1)
    sigma = torch.cat([fwd[r[:, 0:1], pre], fwd[r[:, 0:1], post]], -1).square().mean(-1).sqrt()
    width = int((r[:, 2] - r[:, 1]).max())
    idx = (r[:, 1:2] + torch.arange(width, device=x.device)).clamp(max=t - 1)
    valid = idx < r[:, 2:3]
    resid = (x - first).reshape(b * c, t)[r[:, 0:1], idx].abs()
    above = valid & (resid > kappa * sigma[:, None])  # (K, width)
    has = above.any(-1)
    first_i = above.to(torch.int8).argmax(-1)
    last_i = width - 1 - above.flip(-1).to(torch.int8).argmax(-1)
    new = torch.stack([r[:, 0], r[:, 1] + first_i, r[:, 1] + last_i + 1], -1)
    new = torch.where(has[:, None], new, r)
    return _mask_from_runs(new, (b * c, t), 0, x.device).reshape(b, c, t)


def detect_clipping(
    x: Tensor, sample_rate: int, *, min_samples: int = 3, tolerance: float = 1e-6
) -> Tensor:
    """Flag clipped samples: samples at a channel's positive or negative rail (its maximum
    or minimum, within ``tolerance`` relative), where that rail holds at least
    ``min_samples`` samples, two of them consecutive (a spike in the histogram at the
    extreme value: unclipped music reaches its peak once, or twice in a row when quantised).

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)`` bool (detached).

    >>> x = torch.sin(torch.arange(2000.0) * 0.05).reshape(1, 1, -1)
    >>> int(detect_clipping(x.clamp(-0.8, 0.8), 44100).sum()) > 0, int(detect_clipping(x, 44100).sum())
    (True, 0)
    """
    rows, (b, c, t) = _rows(x, "detect_clipping")
    check_sample_rate(sample_rate, "detect_clipping")
    with torch.no_grad():
        xd = rows.detach()
        masks = []
        for sgn, rail in ((1.0, xd.amax(-1, keepdim=True)), (-1.0, -xd.amin(-1, keepdim=True))):
            at = (sgn * xd >= rail * (1.0 - tolerance)) & (rail > 0)
            pair = (at[:, 1:] & at[:, :-1]).any(-1, keepdim=True)
            clipped = pair & (at.sum(-1, keepdim=True) >= min_samples)
            masks.append(at & clipped)
        mask = masks[0] | masks[1]
    return mask.reshape(b, c, t)


def declip(
    x: Tensor,
    sample_rate: int,
    *,
    order: int = 48,
    hop_ms: float = 20.0,
    min_samples: int = 3,
    max_run_ms: float = 20.0,
) -> tuple[Tensor, Tensor]:
    """Find clipped runs (:func:`detect_clipping`) and rebuild them by LSAR constrained to
    lie beyond the clip level, so the repaired peaks rise above the rail.

    The AR models are fitted on the clipped signal, then refitted once on the first
    reconstruction. Runs longer than ``max_run_ms`` are left clipped.

    Differentiable with respect to ``x`` (mask, AR models and active set fixed). CUDA: yes.

    Shape:
        ``(B, C, T)`` -> ``(repaired (B, C, T), mask (B, C, T) bool)``.
    """
    sr = check_sample_rate(sample_rate, "declip")
    mask = detect_clipping(x, sr, min_samples=min_samples)
    if not bool(mask.any()):
        return x, mask
    hop = _hop(sr, hop_ms)
    span = max(8, int(round(max_run_ms * 1e-3 * sr)))
    with torch.no_grad():
        coeffs = ar_coefficients(x.detach(), sr, order=order, hop=hop)
        first = lsar_interpolate(x.detach(), mask, coeffs, hop, beyond=True, max_span=span,
                                 iterations=2)
        coeffs = ar_coefficients(first, sr, order=order, hop=hop)
    return lsar_interpolate(x, mask, coeffs, hop, beyond=True, max_span=span), mask


def remove_dc(x: Tensor, sample_rate: int) -> tuple[Tensor, Tensor]:
    """Subtract each channel's mean. Linear and differentiable w.r.t. ``x``; CUDA: yes.

    Shape:
        ``(B, C, T)`` -> ``(x - offset (B, C, T), offset (B, C, 1))``.

    >>> y, dc = remove_dc(torch.ones(1, 2, 8) * 0.1 + torch.tensor([1.0, -1.0] * 4), 44100)
    >>> y[0, 0, :2].tolist(), round(float(dc[0, 0, 0]), 3)
    ([1.0, -1.0], 0.1)
    """
    check_audio(x, "remove_dc")
    check_sample_rate(sample_rate, "remove_dc")
    offset = x.mean(-1, keepdim=True)
    return x - offset, offset


def defects(x: Tensor, sample_rate: int, *, max_listed: int = 1000) -> list[dict]:
    """Clicks and clipped runs per batch item, for reports: what :func:`declick` and
    :func:`declip` would repair.

    Returns, per item: ``{"clicks_per_minute", "clicks": [...], "clipped_runs": [...],
    "clipped_runs_count", "clicks_count"}``, each listed span ``{"channel", "time_s",
    "samples"}`` (at most ``max_listed`` of each, earliest first; the counts are complete).
    """
    sr = check_sample_rate(sample_rate, "defects")
    b, c, t = x.shape
    clicks, _, _ = detect_clicks(x, sr)
    clipped = detect_clipping(x, sr)
    out = []
    minutes = t / sr / 60.0
    for i in range(b):
        items = {}
        for key, mask in (("clicks", clicks[i : i + 1]), ("clipped_runs", clipped[i : i + 1])):
            found = sorted(spans(mask), key=lambda s: (s["start"], s["channel"]))
            items[key] = [
                {"channel": s["channel"], "time_s": round(s["start"] / sr, 6),
                 "samples": s["end"] - s["start"]}
                for s in found[:max_listed]
            ]
            items[f"{key}_count"] = len(found)
        out.append({
            "clicks_per_minute": round(items["clicks_count"] / minutes, 3) if minutes else 0.0,
            **items,
        })
    return out
