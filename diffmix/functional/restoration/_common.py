"""Shared constants and checks of the restoration package."""

from __future__ import annotations

import torch
from torch import Tensor

from diffmix.checks import check_audio

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
# Clicks a second a channel (the mono rules' bursts in the first pass of `detect_clicks`)
# beyond which its joint-model look runs in the last pass only. Measured on the bench's
# mixes: 45-50 at 50 clicks/s, 11-23 at 10/s, up to 18 on the clean mixes (attacks).
_DENSE = 35.0
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


def _frame_windows(rows: Tensor, frames: Tensor, hop: int, lead: int, width: int) -> Tensor:
    """``rows[r, f hop - lead : f hop - lead + width]`` for each ``(r, f)`` of ``frames``
    (``(K, 2)``), zero (``False``) outside the signal: ``(K, width)``. The windows inside
    the signal are read through a strided view (one copy, no index arrays), the few at
    its ends by index: a subset of frames costs its windows, not a padded copy of
    ``rows`` (``(N, T)``)."""
    n, t = rows.shape
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    step = rows.stride(0) if n > 1 else t  # rows read in place (a slice of a longer buffer too)
    f0 = -(-lead // hop)  # the first frame whose window starts inside
    f1 = (t - width + lead) // hop  # the last whose window ends inside
    inner = (frames[:, 1] >= f0) & (frames[:, 1] <= f1)
    view = None
    if f1 >= f0:
        # Row i of `view` holds the `width` samples from storage sample i on: a window is
        # one row, picked by `index_select` (a row copy each, several times cheaper than
        # advanced indexing of a (row, frame) view).
        view = rows.as_strided(((n - 1) * step + t - width + 1, width), (1, 1))
        starts = frames[:, 0] * step + frames[:, 1] * hop - lead
        if bool(inner.all()):
            return view.index_select(0, starts)
    out = rows.new_zeros(len(frames), width)
    if view is not None:
        out[inner] = view.index_select(0, starts[inner])
    edge = frames[~inner]
    idx = edge[:, 1:2] * hop - lead + torch.arange(width, device=rows.device)
    ok = (idx >= 0) & (idx < t)
    out[~inner] = torch.where(ok, rows[edge[:, :1], idx.clamp(0, t - 1)], rows.new_zeros(()))
    return out


def _toeplitz(first: Tensor, n: int) -> Tensor:
    """The symmetric Toeplitz matrices ``T[a, b] = first[..., |a - b|]`` (``a, b < n``)
    of the rows of ``first`` (``(K, >= n)``): ``(K, n, n)``, read through a strided view
    (the rows of a Hankel view of the mirrored first row, reversed), a copy rather than
    an index array's gather."""
    v = torch.cat([first[..., 1:n].flip(-1), first[..., :n]], -1)  # v[m] = first[|m - n + 1|]
    return v.as_strided((len(v), n, n), (v.stride(0), 1, 1)).flip(-2)
