"""AR models per frame (autocorrelation method, Levinson-Durbin) and their prediction errors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tnf
from torch import Tensor

from diffmix.checks import check_sample_rate
from diffmix.functional.restoration._common import _frame_windows, _rows
from diffmix.functional.restoration.masks import _flagged


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
    # The error kept negated and with a trailing axis: k = acc / -err in one division,
    # and k broadcasts against `a` as it is (a sign flip is exact: the same values as
    # -acc / err). A few torch calls fewer a step: the loop runs p steps on small
    # batches, where each call's overhead is most of its cost.
    neg_err = -r[..., :1]
    rev = r.flip(-1)  # rev[..., p - m : p] is r[..., 1 : m + 1] reversed
    for m in range(1, p + 1):
        head = a[..., :m]
        k = (head * rev[..., p - m : p]).sum(-1, keepdim=True) / neg_err
        # The right side is a new tensor before it is added: no copy of `a` needed.
        a[..., 1 : m + 1].add_(k * head.flip(-1))
        neg_err = neg_err * (1.0 - k * k)
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
    _rows(x, "ar_coefficients")
    check_sample_rate(sample_rate, "ar_coefficients")
    return _ar_fit(x, order, hop, limit, frames, into)


def _ar_fit(x: Tensor, order: int, hop: int, limit: Tensor | None = None,
            frames: Tensor | None = None, into: Tensor | None = None) -> Tensor:
    """:func:`ar_coefficients` without its checks (no scan of ``x`` for non-finite
    samples), for this package's callers, which pass audio checked on the way in (or a
    repair of it). Arguments and shapes as there."""
    b, c, t = x.shape
    rows = x.reshape(b * c, t)
    subset = frames
    frames = -(-t // hop)
    half = hop // 2
    rows = rows.detach()
    lim = None if limit is None else limit.reshape(b * c, t)
    if subset is None:
        if lim is not None:
            rows = torch.clamp(rows, -lim, lim)  # (lim > 0: the same as min, then max)
        xp = tnf.pad(rows, (half, frames * hop - t + 2 * hop - half))
        seg = xp.unfold(-1, 2 * hop, hop)[:, :frames]  # (N, F, 2 hop)
    else:  # the frames' windows only, zero outside the signal (clamped as the whole)
        seg = _frame_windows(rows, subset, hop, half, 2 * hop)  # (K, 2 hop)
        if lim is not None:
            lw = _frame_windows(lim, subset, hop, half, 2 * hop)
            seg = torch.maximum(torch.minimum(seg, lw), -lw)
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
    _rows(x, "ar_residuals")
    return _residuals(x, coeffs, hop, drive, (0, 1, 2))


def _residuals(x: Tensor, coeffs: Tensor, hop: int, drive: Tensor | None,
               kinds: tuple[int, ...], frames: Tensor | None = None,
               prev: tuple[Tensor, ...] | None = None, inplace: bool = False,
               buffers: bool = False) -> tuple[Tensor, ...]:
    """:func:`ar_residuals`' errors of the given ``kinds`` only (0 forward, 1 backward,
    2 interpolation), in that order: the same values, without the others' transforms.
    With ``frames`` (``(K, 2)`` rows ``(batch * C + channel, frame)``) only those frames
    are computed and the rest copied from ``prev`` (the same errors of a signal that
    differs from ``x`` only where those frames' errors can see it). With ``inplace`` each
    ``prev`` is a frame buffer ``(B * C, F, hop)``, written in place, and the error
    returned is a view of it (no copy of the whole signal). With ``buffers`` the frame
    buffers themselves are returned (``(B * C, F, hop)``, contiguous; the errors are
    their first ``T`` samples a row), for a later ``inplace`` update."""
    b, c, t = x.shape
    rows = x.reshape(b * c, t)
    p = coeffs.shape[-1] - 1
    nf = coeffs.shape[-2]
    a = coeffs.reshape(b * c, nf, p + 1).to(rows.dtype)
    drows = None if drive is None else drive.reshape(b * c, t).to(rows.dtype)
    if frames is None:
        seg = tnf.pad(rows, (p, nf * hop - t + p)).unfold(-1, hop + 2 * p, hop)[:, :nf]  # (N, F, hop + 2p)
        dseg = None if drows is None else tnf.pad(drows, (p, nf * hop - t + p)).unfold(
            -1, hop + 2 * p, hop)[:, :nf]
    else:  # the frames' windows only, zero outside the signal (no padded copy of it)
        a = a[frames[:, 0], frames[:, 1]]
        seg = _frame_windows(rows, frames, hop, p, hop + 2 * p)
        dseg = None if drows is None else _frame_windows(drows, frames, hop, p, hop + 2 * p)
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
            full = prev[i] if inplace else tnf.pad(prev[i].reshape(b * c, t), (0, nf * hop - t)).reshape(
                b * c, nf, hop)
            full[frames[:, 0], frames[:, 1]] = e
            e = full
        out.append(e.contiguous() if buffers else e.reshape(b * c, nf * hop)[:, :t].reshape(b, c, t))
    return tuple(out)


def _errors_cache(coeffs: Tensor, hop: int, drive: Tensor | None, fitted: Tensor | None = None):
    """``errors(x, kind)``: :func:`_residuals`' error of one kind under fixed models,
    remembering the last signal of each kind: the same signal costs nothing, and one that
    changed in a few places costs the frames whose errors can see a change (a frame's
    errors read ``p`` samples beyond it either side). The repair's rounds change a few
    spans at a time. With ``fitted`` (``(K, 2)`` rows ``(batch * C + channel, frame)``:
    the frames whose models are not all zeros, and ``drive`` zero outside them) the first
    errors are computed there only and are zero elsewhere, as a zero model's forward and
    backward errors are (its interpolation error, 0 / 0, is left zero, not NaN); the
    errors are then kept in one buffer per kind, updated in place: an error returned is
    valid until the next call of its kind.

    ``errors.note(x, where)``: ``x`` equals a common base signal outside the samples
    ``where`` (``(K, 2)`` ``(row, sample)``). Between two noted signals the changes are
    then looked for at those samples only, not over the whole signal."""
    return _Errors(coeffs, hop, drive, fitted)


class _Errors:
    """The cache of :func:`_errors_cache`."""

    def __init__(self, coeffs: Tensor, hop: int, drive: Tensor | None, fitted: Tensor | None):
        self.coeffs, self.hop, self.drive, self.fitted = coeffs, hop, drive, fitted
        self.memo: dict[int, tuple[Tensor, Tensor, Tensor | None]] = {}
        self.notes: dict[int, tuple[Tensor, Tensor]] = {}

    def note(self, x: Tensor, where: Tensor) -> None:
        # Only the signals still remembered, and this one, keep their notes.
        keep = {id(m[0]) for m in self.memo.values()}
        self.notes = {k: v for k, v in self.notes.items() if k in keep}
        self.notes[id(x)] = (x, where)

    def _where(self, x: Tensor) -> Tensor | None:
        hit = self.notes.get(id(x))
        return hit[1] if hit is not None and hit[0] is x else None

    def __call__(self, x: Tensor, kind: int) -> Tensor:
        coeffs, hop, drive, fitted = self.coeffs, self.hop, self.drive, self.fitted
        p = coeffs.shape[-1] - 1
        nf = coeffs.shape[-2]
        hit = self.memo.get(kind)
        if hit is not None and hit[0] is x:
            return hit[1]
        b, c, t = x.shape
        buf = None if hit is None else hit[2]
        if hit is None and fitted is not None:
            buf = x.new_zeros(b * c, nf, hop)
            e = _residuals(x, coeffs, hop, drive, (kind,), fitted, (buf,), inplace=True)[0]
        elif hit is None:
            e = _residuals(x, coeffs, hop, drive, (kind,))[0]
        else:
            new, old = self._where(x), self._where(hit[0])
            if new is not None and old is not None:
                # Both equal the base outside their notes: they differ only there.
                key = torch.cat([new, old])
                key = torch.unique(key[:, 0] * t + key[:, 1])
                diff = x.reshape(-1)[key] != hit[0].reshape(-1)[key]
                key = key[diff]
                at = torch.stack([torch.div(key, t, rounding_mode="floor"), key % t], -1)
            else:
                at = _flagged((x != hit[0]).reshape(b * c, t))
            reach = -(-p // hop)
            f = (at[:, 1:2] // hop + torch.arange(-reach, reach + 1, device=x.device)).clamp(0, nf - 1)
            frames = _unique_pairs(at[:, :1].expand_as(f).reshape(-1), f.reshape(-1), nf)
            if len(frames) == 0:
                e = hit[1]
            elif buf is not None:
                e = _residuals(x, coeffs, hop, drive, (kind,), frames, (buf,), inplace=True)[0]
            else:
                e = _residuals(x, coeffs, hop, drive, (kind,), frames, (hit[1],))[0]
        self.memo[kind] = (x, e, buf)
        return e
