"""The click detector's tests: robust local scales, periodicity, the last guards and the stereo look."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as tnf
from torch import Tensor

from diffmix.functional.restoration._common import (
    _NOISE_MAX,
    _PARTNER_REACH,
    _PERIOD_DB,
    _SUB,
    _frame_windows,
)
from diffmix.functional.restoration.ar import _ar_fit, _frames_near, _residuals, _unique_pairs
from diffmix.functional.restoration.arx import _cross_filters, _fir_frames
from diffmix.functional.restoration.lsar import _lsar
from diffmix.functional.restoration.masks import _flagged, _mask_from_runs


def _local_scale(v: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Robust local RMS of ``v`` (N, T) on a grid of ``_SUB``-sample sub-blocks: the
    median of the sub-block RMS over the ``width`` (rounded down to a multiple of 4)
    sub-blocks before and after each one (excluding it). Returns ``(before, after)``, each ``(N, nsb)``."""
    return _scales_of(_block_rms(v), width)[:2]


def _block_rms(v: Tensor) -> Tensor:
    """RMS of each ``_SUB``-sample sub-block of ``v`` (N, T), the last one zero-padded:
    ``(N, nsb)``."""
    n, t = v.shape
    nsb = -(-t // _SUB)
    # The whole sub-blocks read in place; only the last, partial one is padded.
    sq = v.square()
    whole = t // _SUB * _SUB
    ms = sq[:, :whole].reshape(n, -1, _SUB).mean(-1)
    if whole < t:
        ms = torch.cat([ms, tnf.pad(sq[:, whole:], (0, nsb * _SUB - t)).mean(-1, keepdim=True)], -1)
    return ms.sqrt()


def _scales_of(ms: Tensor, width: int, memo: tuple[Tensor, Tensor] | None = None
               ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """:func:`_local_scale` from the sub-block RMS ``ms`` (N, nsb): ``(before, after,
    memo)``. ``memo``, from an earlier call with the same shape and ``width``: only the
    medians of the windows that see a changed sub-block are taken again (a refit changes
    a few frames; the medians, exact order statistics, come out the same)."""
    n, nsb = ms.shape
    # Medians on a grid of `stride` sub-blocks (sorting every window costs more than the
    # rest of the detector), each window shifted to end (start) just before (after) the
    # first (last) sub-block of its grid cell.
    # The width is a whole number of cells, so the window after a cell is the window
    # before the cell `width / stride + 1` cells later: one median per cell serves both.
    stride = 4
    width = max(stride, width // stride * stride)
    cells = -(-nsb // stride)
    padded = tnf.pad(ms[:, None], (width, width + cells * stride - nsb + stride), mode="replicate")[:, 0]
    windows = padded.unfold(-1, width, stride)
    if memo is None:
        # The lower median, as `median` gives it.
        med = _kth_smallest(windows, (width + 1) // 2)
    else:
        at = _flagged(padded != memo[0])  # (row, padded position) of each change
        # window j reads positions stride j .. stride j + width - 1
        j = (torch.div(at[:, 1:2], stride, rounding_mode="floor")
             - torch.arange(width // stride, device=ms.device))
        j = _unique_pairs(at[:, :1].expand_as(j).reshape(-1),
                          j.reshape(-1).clamp(0, windows.shape[1] - 1), windows.shape[1])
        med = memo[1].clone()
        med[j[:, 0], j[:, 1]] = _kth_smallest(windows[j[:, 0], j[:, 1]], (width + 1) // 2)
    later = width // stride + 1
    before, after = med[:, :cells], med[:, later : later + cells]
    return (before.repeat_interleave(stride, -1)[:, :nsb],
            after.repeat_interleave(stride, -1)[:, :nsb], (padded, med))


def _kth_smallest(v: Tensor, k: int) -> Tensor:
    """The ``k``-th smallest (from 1) of ``v`` (``(..., n)``) along its last axis, as
    ``v.kthvalue(k, -1).values`` (an order statistic: the same value whichever way it
    is found). On the CPU by numpy's introselect, several times faster than
    ``kthvalue`` over the detector's many short windows. ``(...,)``."""
    if v.device.type != "cpu":
        return v.kthvalue(k, -1).values
    return torch.from_numpy(np.partition(v.detach().numpy(), k - 1, axis=-1)[..., k - 1])


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
    centre = (bursts[:, 1] + bursts[:, 2]) // 2
    # The bursts' regions, zero outside the signal (read in place: no padded copy of it).
    region = _frame_windows(res, torch.stack([bursts[:, 0], centre], -1), 1, lmax + half, 2 * lmax + n)
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


def _padded(bursts: Tensor, pad: int, max_len: int, t: int) -> tuple[Tensor, Tensor]:
    """The samples of each padded burst of ``bursts`` (``(K, 3)``) on a fixed grid of
    ``max_len + 2 pad``: their indices (clamped into ``0 .. t - 1``) and which of them lie
    inside it, ``(K, max_len + 2 pad)`` each."""
    idx = (bursts[:, 1:2] - pad + torch.arange(max_len + 2 * pad, device=bursts.device)).clamp(0, t - 1)
    return idx, idx < (bursts[:, 2:3] + pad)


def _removed_peak(x: Tensor, repaired: Tensor, bursts: Tensor, level: Tensor, pad: int,
                  max_len: int) -> Tensor:
    """What the repair would remove (``x`` minus ``repaired``, ``(N, T)`` each) over each
    padded burst of ``bursts`` (``(K, 3)``), its peak over the programme's robust local
    ``level`` (``(N, T)``), read at the bursts only (the whole signal's ratio costs more
    than the rest of the tests). ``(K,)``."""
    idx, inside = _padded(bursts, pad, max_len, x.shape[-1])
    at = (bursts[:, 0:1], idx)
    removed = (x[at] - repaired[at]).abs() / level[at].clamp(min=1e-9)
    return torch.where(inside, removed, 0.0).amax(-1)


def _guards(
    x: Tensor, repaired: Tensor, bursts: Tensor, level: Tensor, coeffs: Tensor, hop: int,
    pad: int, max_len: int, sr: int, *, above_db: float | None, explain_db: float | None,
    loud_db: float | None, onset_db: float | None,
) -> Tensor:
    """The last tests of :func:`detect_clicks` (see there): which ``bursts`` (``(K, 3)``)
    are clicks, given the rows ``x`` and their repair ``repaired`` ``(N, T)``, the
    programme's robust local level ``(N, T)`` and the AR models ``(N, F, p + 1)``."""
    peak = _removed_peak(x, repaired, bursts, level, pad, max_len)
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
        # on.
        keep &= ~_starts(repaired, bursts, pad, sr, onset_db) | loud
    return keep


# A burst whose samples correlate with the other channel's at least this much (normalised,
# either sign) is the sound both channels carry, not a click on one of them.
FOLLOWS = 0.9


def _starts(rows: Tensor, bursts: Tensor, pad: int, sr: int, onset_db: float) -> Tensor:
    """Whether a sound starts at each of ``bursts`` (``(K, 3)``) in ``rows`` ``(N, T)``:
    the level over the 10 ms after the padded burst is ``onset_db`` over the level over
    the 10 ms before it. ``(K,)`` bool."""
    t = rows.shape[-1]
    near = int(round(0.010 * sr))
    ar = torch.arange(near, device=rows.device)
    pre = (bursts[:, 1:2] - pad - near + ar).clamp(0, t - 1)
    post = (bursts[:, 2:3] + pad + ar).clamp(0, t - 1)
    e_pre = rows[bursts[:, 0:1], pre].square().mean(-1)
    e_post = rows[bursts[:, 0:1], post].square().mean(-1)
    return e_post > e_pre * 10.0 ** (onset_db / 10.0)


def _excerpt(bursts: Tensor, hop: int, t: int, near: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Where the stereo looks read: the frames (hops of a signal of ``t`` samples) around
    each burst's own, sorted (``(F',)``), their samples in order (``(T',)``: index a signal
    with them for its excerpt, the last frame partial where the signal's is), ``bursts``
    (``(K, 3)``) in the excerpt's samples, and each burst's shift (``(K,)``: its start in
    the signal less its start in the excerpt, for grids anchored to the signal). The looks
    fit models on the frames whose windows come within ``near`` samples of a burst
    (:func:`_frames_near`: at most ``1 + ceil(near / hop)`` frames beyond its own), and
    three either side of those (the whitening of :func:`_shared_guards`), each on two hops
    centred on the frame (half a hop further, past the ``p`` samples of history of each
    error). The frames are cut whole and kept in order, so on the excerpt the looks give
    what they give on the whole signal."""
    reach = 5 + -(-near // hop)
    nf = -(-t // hop)
    steps = torch.arange(-reach, reach + 1, device=bursts.device)
    first, last = bursts[:, 1] // hop, (bursts[:, 2] - 1) // hop
    span = int((last - first).max()) if len(bursts) else 0
    f = (first[:, None] + torch.arange(span + 1, device=bursts.device)).clamp(max=last[:, None])
    need = torch.unique((f[..., None] + steps).clamp(0, nf - 1))
    samples = (need[:, None] * hop + torch.arange(hop, device=bursts.device)).reshape(-1)
    samples = samples[samples < t]
    at = torch.full((nf,), -1, dtype=torch.long, device=bursts.device)
    at[need] = torch.arange(len(need), device=bursts.device)
    moved = bursts.clone()
    moved[:, 1] = at[first] * hop + bursts[:, 1] % hop
    moved[:, 2] = moved[:, 1] + (bursts[:, 2] - bursts[:, 1])
    return need, samples, moved, bursts[:, 1] - moved[:, 1]


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
    # (on the frames it reads only: see `_excerpt`)
    _, at, cand, shift = _excerpt(bursts[vetoed], hop, t, order + taps + pad)
    x, repaired, t = x[..., at], repaired[..., at], len(at)
    frames = -(-t // hop)
    near = _frames_near(cand, hop, frames, order + taps + pad)
    # The signal with every burst interpolated: the filters and models see no burst.
    clean = repaired
    other = clean.flip(1)
    h = _cross_filters(clean, other, hop, taps, near)
    pred = _fir_frames(other, h, hop, near)
    resid = (x - pred).reshape(b * c, t)
    resid_clean = (clean - pred)
    coeffs = _ar_fit(resid_clean, order, hop, frames=near)
    mask = _mask_from_runs(cand, (b * c, t), pad, x.device).reshape(b, c, t)
    rep = _lsar(resid.reshape(b, c, t), mask, coeffs, hop).reshape(b * c, t)
    level = _burst_level(resid, cand, width, max_len + 2 * pad, shift)
    ok = _guards(resid, rep, cand, level, coeffs.reshape(b * c, frames, order + 1), hop, pad,
                 max_len, sr, **guards)
    onset_db = guards.get("onset_db")
    if onset_db is not None:
        # The residual's level says how well the channels cancel, not whether a sound
        # starts: where one starts in both channels at once (a kick out of silence,
        # slightly different in each) and the burst is that sound (its samples follow
        # the other channel's there), it is the attack, whatever its residual reads. A
        # click on it is not: where the channels carry the sound alike, a click with a
        # quarter of the sound's energy over the burst, or more, reads under 1 / sqrt(1.25).
        rows, db = clean.reshape(b * c, t), float(onset_db)
        partner = cand.clone()
        partner[:, 0] = cand[:, 0] + 1 - 2 * (cand[:, 0] % 2)  # the other channel's row
        idx, inside = _padded(cand, pad, max_len, t)
        flat = x.reshape(b * c, t)
        u = torch.where(inside, flat[cand[:, 0:1], idx], 0.0).double()
        v = torch.where(inside, flat[partner[:, 0:1], idx], 0.0).double()
        follows = (u * v).sum(-1).abs() >= FOLLOWS * (u.square().sum(-1) * v.square().sum(-1)).sqrt()
        ok &= ~(_starts(rows, cand, pad, sr, db) & _starts(rows, partner, pad, sr, db) & follows)
    out = torch.zeros_like(judge)
    out[vetoed[ok]] = True
    return out


def _tls_gains(x: Tensor, ref: Tensor, hop: int, frames: Tensor | None = None) -> Tensor:
    """Per frame, the gain ``g`` of the total-least-squares line ``x = g ref`` over the
    Hann-windowed two hops centred on the frame (the windows of :func:`_cross_filters`):
    the principal axis of the two signals' covariance. Least squares, which takes ``ref``
    as exact, shrinks the gain by the share of ``ref`` that ``x`` does not share (noise,
    the side of a near-mono mix), and every sound common to both channels then leaks
    into ``x - g ref`` in proportion; the principal axis does not. Zero where the line
    does not lower the energy of ``x`` (channels that share little: the other channel
    explains nothing; :func:`_shared_guards` does not look there). With ``frames``
    (``(K, 2)`` rows ``(batch * C + channel, frame)``) those only, zero elsewhere.
    ``x, ref (B, C, T)`` -> ``(B * C, F)``."""
    b, c, t = x.shape
    nf = -(-t // hop)
    half = hop // 2
    win = torch.hann_window(2 * hop, periodic=False, dtype=x.dtype, device=x.device)

    def windows(v: Tensor) -> Tensor:
        if frames is not None:  # (theirs only: no padded copy of the signal)
            return _frame_windows(v.reshape(b * c, t), frames, hop, half, 2 * hop) * win
        vp = tnf.pad(v.reshape(b * c, t), (half, nf * hop - t + 2 * hop - half))
        return vp.unfold(-1, 2 * hop, hop)[:, :nf] * win

    wx, wr = windows(x), windows(ref)
    sxx, srr, sxr = ((u * v).sum(-1).double() for u, v in ((wx, wx), (wr, wr), (wx, wr)))
    tiny = torch.where(sxr < 0, -1e-30, 1e-30).to(sxr.dtype)
    g = (sxx - srr + ((sxx - srr).square() + 4.0 * sxr.square()).sqrt()) / (
        2.0 * torch.where(sxr.abs() > 1e-30, sxr, tiny))
    lowers = sxx - 2.0 * g * sxr + g.square() * srr < sxx
    g = torch.where(lowers, g, 0.0).to(x.dtype)
    if frames is None:
        return g
    out = x.new_zeros(b * c, nf)
    out[frames[:, 0], frames[:, 1]] = g
    return out


def _widen(frames: Tensor, k: int, nf: int) -> Tensor:
    """``frames`` (``(K, 2)`` rows ``(row, frame)``) and the ``k`` frames either side of
    each (of ``nf``): ``(J, 2)``, unique, sorted."""
    f = (frames[:, 1:2] + torch.arange(-k, k + 1, device=frames.device)).clamp(0, nf - 1)
    return _unique_pairs(frames[:, :1].expand_as(f).reshape(-1), f.reshape(-1), nf)


def _shared_guards(
    x: Tensor, repaired: Tensor, bursts: Tensor, judge: Tensor, level: Tensor, coeffs: Tensor,
    sr: int, order: int, hop: int, pad: int, max_len: int, width: int, reach: int, *,
    above_db: float | None, explain_db: float | None, loud_db: float | None,
    onset_db: float | None,
) -> Tensor:
    """Second look, in stereo, at the bursts the guards vetoed that the other channel
    shares (``judge``, ``(K,)`` bool of ``bursts`` ``(K, 3)``): one click in both channels.
    Its amplitude and sign in each channel have nothing to do with how the music is spread
    over the two, so where the music is near-mono the channel minus the other channel
    times their relation (:func:`_tls_gains`, fitted on ``repaired``, the signal with every
    burst interpolated, whole and at its AR prediction error, and applied to ``x`` as it
    is, the other channel's burst in it)
    keeps the click and loses most of the music; a sound in both channels, spread as the
    music is, cancels with it. There the burst is judged by the guards of
    :func:`_guards` with AR models and the robust level of that residual (fitted on
    ``repaired``'s), but for ``loud_db`` (the residual's level measures how well the two
    channels cancel, not how loud the music is), and

    * it must stand out of its own channel: what the repair of the channel (models
      ``coeffs``, ``(B, C, F, p + 1)``) removes peaks ``above_db`` over the programme's
      ``level`` (``(B * C, T)``), as the guards ask of every click;
    * the other channel must explain less of it than of the music: its peak over the
      residual's level exceeds that over the programme's by ``above_db`` more (a sound
      spread as the music is, and left over by an imperfect relation, stands out of the
      residual no more than out of the channel).

    ``reach``: as :func:`_stereo_guards`' ``taps``, the margin of frames refitted. Returns
    ``(K,)`` bool: rescued bursts. Off where ``above_db`` is ``None``."""
    b, c, t = x.shape
    out = torch.zeros_like(judge)
    vetoed = judge.nonzero()[:, 0]
    if len(vetoed) == 0 or above_db is None:
        return out
    # (on the frames it reads only: see `_excerpt`)
    need, at, cand, shift = _excerpt(bursts[vetoed], hop, t, order + reach + pad)
    x, repaired, level, coeffs = x[..., at], repaired[..., at], level[:, at], coeffs[:, :, need]
    t = len(at)
    frames = -(-t // hop)
    near = _frames_near(cand, hop, frames, order + reach + pad)
    mask = _mask_from_runs(cand, (b * c, t), pad, x.device).reshape(b, c, t)
    rows = x.reshape(b * c, t)
    mono = _lsar(x, mask, coeffs, hop).reshape(b * c, t)
    own = _removed_peak(rows, mono, cand, level, pad, max_len)
    step = 10.0 ** (above_db / 20.0)
    ok = own >= step
    # The relation weighed two ways: over the whole band (by energy: the bass weighs
    # most) and at the AR models' prediction error (the innovation, where a click and an
    # attack lie). A click's relation is
    # the music's in neither; a sound of the music left over by one imperfect estimate is
    # cancelled by the other. The burst must stand out of both residuals.
    # (fitted on the signal with every burst interpolated, these over their spans here)
    clean = torch.where(mask, mono.reshape(b, c, t), repaired)
    # (the relation on the frames whose residual the tests read, two either side of
    # `near`, each from the windows of its neighbours: the whitened signal three
    # either side)
    around = _widen(near, 2, frames)
    wide = _widen(near, 3, frames)
    white = _ar_fit(clean, order, hop, frames=wide)
    pairs = [(clean, clean.flip(1)),
             tuple(_residuals(v, white, hop, None, (0,), wide,
                              (x.new_zeros(b * c, frames, hop),), inplace=True)[0]
                   for v in (clean, clean.flip(1)))]
    idx, inside = _padded(cand, pad, max_len, t)
    for fit_x, fit_ref in pairs:
        gain = _tls_gains(fit_x, fit_ref, hop, around).repeat_interleave(hop, -1)[:, :t]
        # Where the other channel shares nothing with this one (see `_tls_gains`) the
        # music is no near-mono mix: no second look there.
        ok &= ~(inside & (gain[cand[:, 0:1], idx] == 0.0)).any(-1)
        gain = gain.reshape(b, c, t)
        resid = x - gain * x.flip(1)
        rc = _ar_fit(clean - gain * clean.flip(1), order, hop, frames=near)
        rep = _lsar(resid, mask, rc, hop).reshape(b * c, t)
        resid = resid.reshape(b * c, t)
        rl = _burst_level(resid, cand, width, max_len + 2 * pad, shift)
        rc = rc.reshape(b * c, frames, order + 1)
        ok &= _guards(resid, rep, cand, rl, rc, hop, pad, max_len, sr, above_db=above_db,
                      explain_db=explain_db, loud_db=None, onset_db=onset_db)
        ok &= _removed_peak(resid, rep, cand, rl, pad, max_len) >= own * step
    out[vetoed[ok]] = True
    return out


def _grown(bursts: Tensor, which: Tensor, extra: Tensor | None, reach: int, max_len: int,
           t: int) -> Tensor:
    """``bursts`` (``(K, 3)``), each of ``which`` (``(K,)`` bool) stretched over the
    samples ``extra`` (``(J, 2)`` rows ``(row, sample)``, sorted) of its row that lie
    less than ``reach`` samples from it, where the result is no longer than ``max_len``;
    the rest as they are. ``(K, 3)``."""
    out = bursts.clone()
    if extra is None or len(extra) == 0 or not bool(which.any()):
        return out
    w = t + 2 * reach + 2
    key = extra[:, 0] * w + extra[:, 1] + reach + 1
    sel = which.nonzero()[:, 0]
    bb = bursts[sel]
    lo = torch.searchsorted(key, bb[:, 0] * w + bb[:, 1] + 1)
    hi = torch.searchsorted(key, bb[:, 0] * w + bb[:, 2] + 2 * reach + 1)
    has = hi > lo
    first = extra[lo.clamp(max=len(extra) - 1), 1]
    last = extra[(hi - 1).clamp(min=0), 1] + 1
    start = torch.where(has, torch.minimum(bb[:, 1], first), bb[:, 1])
    end = torch.where(has, torch.maximum(bb[:, 2], last), bb[:, 2])
    fits = (end - start) <= max_len
    out[sel, 1] = torch.where(fits, start, bb[:, 1])
    out[sel, 2] = torch.where(fits, end, bb[:, 2])
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


def _near(cand: Tensor, z_ratio: Tensor, reach: int, z_threshold: float) -> Tensor:
    """The samples ``cand`` (``(N, T)`` bool: the one-sided test holds) whose row's
    ``z_ratio`` (``(N, T)``, interpolation error over its robust scale) exceeds
    ``z_threshold`` within ``reach`` samples: ``(K, 2)`` rows ``(row, sample)``, sorted.
    Looked at only where the first test holds (few samples)."""
    t = cand.shape[-1]
    at = _flagged(cand)  # as `nonzero`, row-major; a scan of 8 samples a word
    if len(at) == 0:
        return at
    pos = (at[:, 1:2] + torch.arange(-reach, reach + 1, device=cand.device)).clamp(0, t - 1)
    return at[z_ratio[at[:, :1], pos].amax(-1) > z_threshold]


def _near_and_alone(near: Tensor, partner: Tensor) -> Tensor:
    """The stereo candidate rule of :func:`detect_clicks`: of the samples ``near``
    (:func:`_near`, rows ``batch * 2 + channel``), those where the other channel's
    ``z_ratio`` stays under ``_NOISE_MAX`` within ``_PARTNER_REACH`` samples
    (``partner``, ``(N, T)``: :func:`_partner_peak`). ``(N, T)`` bool."""
    out = torch.zeros(partner.shape, dtype=torch.bool, device=partner.device)
    ok = near[partner[near[:, 0], near[:, 1]] < _NOISE_MAX]
    out[ok[:, 0], ok[:, 1]] = True
    return out


def _bracketed(fwd_hit: Tensor, bwd_hit: Tensor, reach: int) -> Tensor:
    """The one-sided test of :func:`detect_clicks` stretched over a burst: the samples
    ``n`` with a forward break (``fwd_hit``, ``(N, T)`` bool) at most ``reach`` samples
    before or on them and a backward break (``bwd_hit``) on or at most ``reach`` after.
    A burst ``s .. e`` spoils the forward prediction from ``s`` on (its first sample has
    a clean past) and the backward one up to ``e`` (its last has a clean future), but
    inside it each direction predicts the burst partly from itself, so the two breaks need
    not fall on one sample; with ``reach`` 0 this is the per-sample test. An attack
    breaks them the other way round (backwards before its onset, forwards from it on).
    ``(N, T)`` bool."""
    if reach == 0:
        return fwd_hit & bwd_hit
    # The breaks are few: each marks the `reach + 1` samples it covers (a running count
    # over the whole signal cost more than the rest of the rule).
    return _spread(fwd_hit, 0, reach) & _spread(bwd_hit, -reach, 0)


def _spread(hit: Tensor, lo: int, hi: int) -> Tensor:
    """``(N, T)`` bool: the samples ``n`` with a ``hit`` (``(N, T)`` bool, sparse) at
    ``n - hi .. n - lo``, i.e. each hit at ``j`` marks ``j + lo .. j + hi`` (inside the
    signal). Costs the hits, not ``T``."""
    t = hit.shape[-1]
    out = torch.zeros_like(hit)
    at = _flagged(hit)
    if len(at):
        pos = at[:, 1:2] + torch.arange(lo, hi + 1, device=hit.device)
        ok = (pos >= 0) & (pos < t)
        out[at[:, :1].expand_as(pos)[ok], pos[ok]] = True
    return out


def _near_both(near: Tensor, shape: tuple[int, int], tol: int) -> Tensor:
    """The joint stereo candidate rule of :func:`detect_clicks`: of the samples ``near``
    (:func:`_near`: the one-sided test holds and the matched filter within reach; rows
    ``batch * 2 + channel`` of an ``(N, T)`` grid ``shape``), those where the other
    channel has such a sample within ``tol`` samples. ``(K, 2)`` rows ``(row, sample)``,
    sorted."""
    if len(near) == 0:
        return near
    t = shape[-1]
    marks = torch.zeros(shape, dtype=torch.bool, device=near.device)
    marks[near[:, 0], near[:, 1]] = True
    partner = near[:, :1] + 1 - 2 * (near[:, :1] % 2)
    pos = (near[:, 1:2] + torch.arange(-tol, tol + 1, device=near.device)).clamp(0, t - 1)
    return near[marks[partner, pos].any(-1)]


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


def _burst_level(rows: Tensor, bursts: Tensor, width: int, span: int, shift: Tensor | None = None
                 ) -> Tensor:
    """The robust local level of :func:`detect_clicks` (``_local_scale`` of ``rows`` over
    ``width`` sub-blocks a side, the larger) computed only around each burst, written
    into an ``(N, T)`` tensor (ones elsewhere). Where two bursts' windows overlap, their
    levels differ (each median grid starts at its own window, and its ends are padded), and
    the larger stands: a write order would let the thread schedule choose. ``shift``
    (``(K,)``): where ``rows`` is an excerpt (:func:`_excerpt`), each burst's start in the
    whole signal less its start here; the sub-blocks lie on the whole signal's grid."""
    n, t = rows.shape
    reach = (width + 2) * _SUB
    at = bursts[:, 1] if shift is None else bursts[:, 1] + shift
    start = (at - reach) // _SUB * _SUB - (at - bursts[:, 1])  # on the sub-block grid
    length = (span + 2 * reach) // _SUB * _SUB + 2 * _SUB
    idx = start[:, None] + torch.arange(length, device=rows.device)
    ok = (idx >= 0) & (idx < t)
    seg = torch.where(ok, rows[bursts[:, 0:1], idx.clamp(0, t - 1)], 0.0)
    before, after = _local_scale(seg, width)
    local = torch.maximum(before, after).repeat_interleave(_SUB, -1)[:, :length]
    flat = (bursts[:, 0:1] * t + idx)[ok]
    return rows.new_ones(n * t).scatter_reduce_(
        0, flat, local[ok], reduce="amax", include_self=False).view(n, t)


def _trim_quiet_ends(
    x: Tensor, repaired: Tensor, bursts: Tensor, flags: Tensor, level: Tensor, above_db: float,
    pad: int,
) -> Tensor:
    """Trim each burst (``(K, 3)``) to its pieces (its candidates, ``flags (N, T)``, with
    at most ``pad`` samples between them) that hold a sample the repair ``repaired``
    removes at least ``above_db`` over the programme's ``level`` (the ``above_db`` guard
    of :func:`_guards`, read per piece). Candidates merged in from the music beside a
    click (edges of its own that the model cannot predict either), more than ``pad``
    samples from it, are no louder than the music, and each one interpolated lengthens
    the gap the click's repair must bridge; a click's own quiet parts lie within ``pad``
    samples of its loud ones. A burst with no loud piece is left as it is. ``(K, 3)``."""
    if len(bursts) == 0:
        return bursts
    t = x.shape[-1]
    width = int((bursts[:, 2] - bursts[:, 1]).max())
    idx = (bursts[:, 1:2] + torch.arange(width, device=x.device)).clamp(max=t - 1)
    at = (bursts[:, 0:1], idx)
    cand = flags[at] & (idx < bursts[:, 2:3])
    loud = cand & ((x[at] - repaired[at]).abs() >= 10.0 ** (above_db / 20.0) * level[at])
    # Pieces: candidates with at most `pad` samples between them (the padding reaches
    # that far past a click's candidates anyway); a piece is loud if any sample is.
    pos = torch.arange(width, device=x.device)
    prev = torch.where(cand, pos, -1).cummax(-1).values
    nxt = torch.where(cand, pos, width).flip(-1).cummin(-1).values.flip(-1)
    cand = cand | ((prev >= 0) & (nxt < width) & (nxt - prev - 1 <= pad))
    start = cand.clone()
    start[:, 1:] &= ~cand[:, :-1]
    rid = torch.where(cand, start.long().cumsum(-1), 0)
    has = torch.zeros(len(bursts), width + 1, dtype=torch.long, device=x.device)
    has.scatter_reduce_(1, rid, loud.long(), "amax")
    keep = has.gather(1, rid).bool() & cand
    any_ = keep.any(-1)
    first = keep.to(torch.int8).argmax(-1)
    last = width - 1 - keep.flip(-1).to(torch.int8).argmax(-1)
    new = torch.stack([bursts[:, 0], bursts[:, 1] + first, bursts[:, 1] + last + 1], -1)
    return torch.where(any_[:, None], new, bursts)
