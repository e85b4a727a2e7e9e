"""The click detector's pair rule, stereo only: a click kept in one channel, the same
shape at the same samples in the other."""

from __future__ import annotations

import torch
from torch import Tensor

from diffmix.functional.restoration._common import _NOISE_MAX
from diffmix.functional.restoration.guards import _explained
from diffmix.functional.restoration.lsar import _lsar
from diffmix.functional.restoration.masks import _mask_from_runs, _touch

# Where the two channels' prediction errors around a burst correlate this much or more
# (near-mono material), a burst of the same shape in both is no evidence of a click: a
# stem's attack is in both as well.
_SAME = 0.9
# Shifts (samples) against which the shapes' match at the same samples is compared.
_LAGS = 8


def _partners(
    x: Tensor, bursts: Tensor, coeffs: Tensor, hop: int, level: Tensor, z_ratio: Tensor,
    fwd: Tensor, pad: int, max_len: int, min_sigma: float, above_db: float, explain_db: float,
) -> tuple[Tensor, Tensor | None]:
    """The other channel's bursts of :func:`detect_clicks`' pair rule.

    A scratch or a digital glitch puts one burst in both channels at the same samples;
    the second, quieter against its music, may fail the guards the first passed. Of the
    kept ``bursts`` (``(K, 3)`` rows ``(batch * 2 + channel, start, end)``), the same
    spans in the other channel (where it has no kept burst within ``pad``) are clicks
    when the removed part there (the channel minus its LSAR repair over the padded span,
    models ``coeffs`` ``(B, 2, F, p + 1)``, frame ``hop``) has the kept burst's shape:

    * their normalised correlation over the padded span is significant at
      ``min_sigma`` (Fisher's z) and larger than at any shift of 1-``_LAGS`` samples;
    * the two channels' forward errors ``fwd`` (``(2B, T)``) over 256 samples either
      side correlate under ``_SAME`` (elsewhere the channels carry the same music and
      a shared shape tells nothing);
    * it peaks ``above_db`` or more over the programme's robust level (``level``,
      ``(2B, T)``), the interpolation error there exceeds ``_NOISE_MAX`` robust scales
      (``z_ratio``, ``(2B, T)``) somewhere, and the repair explains ``explain_db`` or
      more of the forward error it enters (the guards' test, laxer).

    ``x`` ``(B, 2, T)``. Returns ``(new bursts (J, 3), the rows repaired over every
    span looked at (2B, T), or None when none was)``.
    """
    b, c, t = x.shape
    if len(bursts) == 0:
        return bursts, None
    partner = bursts[:, 0] + 1 - 2 * (bursts[:, 0] % 2)
    cand = torch.stack([partner, bursts[:, 1], bursts[:, 2]], -1)
    # Drop the spans the other channel already has a kept burst at (within `pad`).
    own = _mask_from_runs(bursts, (b * c, t), pad, x.device)
    span = max_len + 2 * pad
    idx = (cand[:, 1:2] - pad + torch.arange(span, device=x.device)).clamp(0, t - 1)
    inside = idx < (cand[:, 2:3] + pad)
    taken = (own[cand[:, 0:1], idx] & inside).any(-1)
    cand, idx, inside = cand[~taken], idx[~taken], inside[~taken]
    if len(cand) == 0:
        return cand, None
    mask = own | _mask_from_runs(cand, (b * c, t), pad, x.device)
    rep = _lsar(x, mask.reshape(b, c, t), coeffs, hop).reshape(b * c, t)
    rows = x.reshape(b * c, t)
    removed = rows - rep
    other = cand[:, 0:1] + 1 - 2 * (cand[:, 0:1] % 2)  # the kept burst's row
    mine = torch.where(inside, removed[cand[:, 0:1], idx], 0.0).double()
    peak = (mine.abs() / level[cand[:, 0:1], idx].double().clamp(min=1e-9)).amax(-1)
    # The matched filter marks something there (as `detect_clicks`' stereo look: noise
    # alone stays under `_NOISE_MAX` robust scales over a few milliseconds).
    marked = torch.where(inside, z_ratio[cand[:, 0:1], idx], 0.0).amax(-1) > _NOISE_MAX
    # The repair explains it in part (the forward error it enters falls).
    gain = _explained(rows, rep, cand, coeffs.reshape(b * c, -1, coeffs.shape[-1]), hop, pad,
                      max_len)
    aligned, bg, sig = _alike(removed, fwd, cand[:, 0:1], other, idx, inside,
                              cand[:, 1:2] - pad, cand[:, 2:3] + pad)
    ok = aligned & (bg.abs() < _SAME) & (sig >= min_sigma) & (peak >= 10.0 ** (above_db / 20.0)) & marked & (
        gain >= explain_db)
    return cand[ok], rep


def _alike(removed: Tensor, fwd: Tensor, row: Tensor, other: Tensor, idx: Tensor,
           inside: Tensor, start: Tensor, end: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """How alike the removed parts ``removed`` (``(N, T)``: a row minus its repair) of the
    rows ``row`` and ``other`` (``(K, 1)`` each) are at the samples ``idx`` (``(K, S)``,
    where ``inside``): ``(aligned, bg, sig)``, each ``(K,)``. ``aligned``: their
    normalised correlation at the same samples is larger in size than at any shift of
    1-``_LAGS`` samples (a click lands on the same samples in both channels; a sound
    reaches two microphones at different times); ``bg``: the correlation of the two
    rows' forward errors ``fwd`` over 256 samples either side of the span ``start ..
    end`` (``(K, 1)`` each); ``sig``: the correlation's significance in standard deviations
    (Fisher's z: ``atanh(ncc) sqrt(n - 3)`` is about a standard normal for ``n``
    independent samples of unrelated signals, so a short span needs more)."""
    t = removed.shape[-1]
    mine = torch.where(inside, removed[row, idx], 0.0).double()
    theirs = torch.where(inside, removed[other, idx], 0.0).double()
    ncc = _ncc(mine, theirs)
    ctx = 256
    ar = torch.arange(ctx, device=removed.device)
    around = torch.cat([start - ctx + ar, end + ar], -1).clamp(0, t - 1)
    bg = _ncc(fwd[row, around].double(), fwd[other, around].double())
    n = inside.sum(-1).double()
    sig = torch.atanh(ncc.abs().clamp(max=1 - 1e-12)) * (n - 3).clamp(min=1).sqrt()
    shifted = []
    for lag in (*range(-_LAGS, 0), *range(1, _LAGS + 1)):
        th = torch.where(inside, removed[other, (idx + lag).clamp(0, t - 1)], 0.0).double()
        shifted.append(_ncc(mine, th))
    aligned = ncc.abs() >= torch.stack(shifted, -1).abs().amax(-1)
    return aligned, bg, sig


def _ncc(a: Tensor, b: Tensor) -> Tensor:
    """Normalised correlation of the rows of ``a`` and ``b`` (``(K, N)`` -> ``(K,)``)."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-30)


def _coincident(x: Tensor, repaired: Tensor, bursts: Tensor, fwd: Tensor, pad: int,
                min_sigma: float) -> Tensor:
    """Which ``bursts`` (``(K, 3)`` rows ``(batch * 2 + channel, start, end)``) raised
    by :func:`detect_clicks`' joint rule alone, and kept by the guards, are one click at
    the same samples of both channels: the removed part (``x`` minus ``repaired``,
    ``(2B, T)`` each, every burst interpolated) over the padded burst has the same shape
    in the other channel at the same samples (:func:`_alike`: significant at
    ``min_sigma``, best without a shift). Unlike the pair rule this does not ask the
    channels' errors around it to differ (the guards have passed in this channel: this
    only checks that the other channel's candidate is the same event); ``fwd``
    (``(2B, T)``) is read by :func:`_alike` only. ``(K,)`` bool."""
    if len(bursts) == 0:
        return torch.zeros(0, dtype=torch.bool, device=x.device)
    t = x.shape[-1]
    span = int((bursts[:, 2] - bursts[:, 1]).max()) + 2 * pad
    idx = (bursts[:, 1:2] - pad + torch.arange(span, device=x.device)).clamp(0, t - 1)
    inside = idx < (bursts[:, 2:3] + pad)
    other = bursts[:, 0:1] + 1 - 2 * (bursts[:, 0:1] % 2)
    aligned, bg, sig = _alike(x - repaired, fwd, bursts[:, 0:1], other, idx, inside,
                              bursts[:, 1:2] - pad, bursts[:, 2:3] + pad)
    return aligned & (sig >= min_sigma)


def _in_both(bursts: Tensor, keep: Tensor, t: int, tol: int) -> Tensor:
    """Of the ``bursts`` (``(K, 3)`` rows ``(batch * 2 + channel, start, end)``, signals
    ``t`` samples long), those ``keep`` (``(K,)`` bool) where a kept burst of the other
    channel lies within ``tol`` samples: :func:`detect_clicks`' joint rule takes one
    click at the same samples of both channels as one event, which stands in both or in
    neither. ``(K,)`` bool."""
    if len(bursts) == 0:
        return keep
    n = int(bursts[:, 0].max()) // 2 * 2 + 2
    other = bursts.clone()
    other[:, 0] += 1 - 2 * (other[:, 0] % 2)
    return keep & _touch(other, _mask_from_runs(bursts[keep], (n, t), 0, bursts.device), tol)
