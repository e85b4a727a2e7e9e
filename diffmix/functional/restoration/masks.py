"""Runs of flagged samples: masks to ``(row, start, end)`` spans and back."""

from __future__ import annotations

import torch
from torch import Tensor


def runs(mask: Tensor) -> Tensor:
    """Runs of ``True`` along time: ``(K, 3)`` int64 rows ``(row, start, end)`` with
    ``end`` exclusive and ``row = batch * C + channel``, sorted by row then start.

    >>> runs(torch.tensor([[[False, True, True, False, True]]])).tolist()
    [[0, 1, 3], [0, 4, 5]]
    """
    # One scan for the flagged samples (few), in row-major order; a run starts where a
    # sample does not follow the previous one in the same row.
    at = _flagged(mask.reshape(-1, mask.shape[-1]))
    if len(at) == 0:
        return at.new_zeros(0, 3)
    row, col = at[:, 0], at[:, 1]
    new = torch.ones(len(at), dtype=torch.bool, device=at.device)
    new[1:] = (row[1:] != row[:-1]) | (col[1:] != col[:-1] + 1)
    first = new.nonzero()[:, 0]
    last = torch.cat([first[1:], first.new_tensor([len(at)])]) - 1
    return torch.stack([row[first], col[first], col[last] + 1], -1)


def _flagged(mask: Tensor) -> Tensor:
    """``mask.nonzero()`` of an ``(N, T)`` bool mask with few ``True``: ``(K, 2)`` int64
    ``(row, sample)``, row-major. The scan reads eight samples per 64-bit word, so it
    costs an eighth of ``nonzero`` over a long, sparse mask."""
    n, t = mask.shape
    flat = mask.contiguous().reshape(-1)
    extra = -flat.numel() % 8
    if extra or flat.storage_offset() % 8:
        flat = torch.cat([flat, flat.new_zeros(extra)])
    hit = flat.view(torch.int64).nonzero()[:, 0]
    pos = (hit[:, None] * 8 + torch.arange(8, device=mask.device)).reshape(-1)
    pos = pos[flat[pos]]
    return torch.stack([torch.div(pos, t, rounding_mode="floor"), pos % t], -1)


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


def _positions(r: Tensor) -> Tensor:
    """The samples of the runs ``r`` (``(K, 3)`` row, start, end): ``(S, 2)`` int64
    ``(row, sample)``, run by run. Costs the runs' length, not ``T``."""
    size = r[:, 2] - r[:, 1]
    pos = torch.arange(int(size.sum()), device=r.device) - torch.repeat_interleave(
        size.cumsum(0) - size - r[:, 1], size)
    return torch.stack([torch.repeat_interleave(r[:, 0], size), pos], -1)


def _union(r: Tensor, t: int) -> Tensor:
    """The runs of the union of the runs ``r`` (``(K, 3)``, in any order, which may
    overlap or touch) in a signal of ``t`` samples: as :func:`runs` of their mask
    (sorted, disjoint, maximal), without the mask."""
    if len(r) == 0:
        return r
    r = r[torch.argsort(r[:, 0] * (t + 1) + r[:, 1])]
    start = r[:, 0] * (t + 1) + r[:, 1]
    # The farthest end so far; a row's keys all lie below the next row's.
    reach = (r[:, 0] * (t + 1) + r[:, 2]).cummax(0).values
    new = torch.ones(len(r), dtype=torch.bool, device=r.device)
    new[1:] = start[1:] > reach[:-1]
    first = new.nonzero()[:, 0]
    last = torch.cat([first[1:] - 1, first.new_tensor([len(r) - 1])])
    return torch.stack([r[first, 0], r[first, 1], reach[last] - r[first, 0] * (t + 1)], -1)


def _changed(r: Tensor, old: Tensor, t: int) -> Tensor:
    """The samples inside exactly one of the canonical run lists ``r`` and ``old``
    (:func:`runs` of two masks of ``t`` samples a row): ``(K, 2)`` ``(row, sample)``,
    row-major, as ``_flagged(mask != old_mask)``."""
    key = torch.cat([_positions(r), _positions(old)])
    key, count = torch.unique(key[:, 0] * t + key[:, 1], return_counts=True)
    key = key[count == 1]
    return torch.stack([torch.div(key, t, rounding_mode="floor"), key % t], -1)


def _segments(r: Tensor, gap: int) -> Tensor:
    """Merge runs of the same row closer than ``gap`` samples: ``(S, 3)`` (row, start, end)."""
    if len(r) == 0:
        return r
    new = torch.ones(len(r), dtype=torch.bool, device=r.device)
    new[1:] = (r[1:, 0] != r[:-1, 0]) | (r[1:, 1] - r[:-1, 2] >= gap)
    first = new.nonzero()[:, 0]
    last = torch.cat([first[1:] - 1, first.new_tensor([len(r) - 1])])
    return torch.stack([r[first, 0], r[first, 1], r[last, 2]], -1)


def _split_long(long: Tensor, r: Tensor, gap: int, max_len: int, loud: Tensor) -> tuple[Tensor, Tensor]:
    """Split bursts too long to be a click that hold two or more loud clicks: the runs
    ``r`` (``(K, 3)``, sorted) inside each of the ``long`` bursts (``(L, 3)``, sorted,
    the runs merged at a gap larger than ``gap``) merged again at ``gap``; a long burst
    is split when every piece is then at most ``max_len`` samples, two pieces (no more)
    hold a ``loud`` sample (``(N, T)`` bool), and the burst spans at most two clicks and
    a gap (``2 max_len + gap``). Two loud clicks a few dozen samples apart bridge into
    one burst through the error each spreads after it; an attack's long run of
    candidates does not break into short loud pieces, nor a rattle (a woodblock's) into
    exactly two. Returns ``(pieces (J, 3),
    which long bursts were split (L,) bool)``."""
    split = torch.zeros(len(long), dtype=torch.bool, device=long.device)
    if len(long) == 0 or len(r) == 0:
        return long[:0], split
    t = loud.shape[-1]
    key = long[:, 0] * (t + 1) + long[:, 1]
    i = torch.searchsorted(key, r[:, 0] * (t + 1) + r[:, 1], right=True) - 1
    j = i.clamp(min=0)
    inside = (i >= 0) & (long[j, 0] == r[:, 0]) & (long[j, 2] >= r[:, 2])
    pieces = _segments(r[inside], gap)
    owner = torch.searchsorted(key, pieces[:, 0] * (t + 1) + pieces[:, 1], right=True) - 1
    length = pieces[:, 2] - pieces[:, 1]
    idx = pieces[:, 1:2] + torch.arange(max_len, device=long.device)
    hot = (loud[pieces[:, 0:1], idx.clamp(max=t - 1)] & (idx < pieces[:, 2:3])).any(-1)
    too_long = torch.zeros(len(long), dtype=torch.long, device=long.device)
    too_long.index_add_(0, owner, (length > max_len).long())
    count = torch.zeros(len(long), dtype=torch.long, device=long.device)
    count.index_add_(0, owner, hot.long())
    split = (too_long == 0) & (count == 2) & (long[:, 2] - long[:, 1] <= 2 * max_len + gap)
    return pieces[split[owner]], split


def _apart(r: Tensor, flags: Tensor, gap: int) -> Tensor:
    """The runs ``r`` (``(K, 3)``) with no ``flags`` sample (``(N, T)`` bool) within
    ``gap`` samples of them."""
    return r[~_touch(r, flags, gap)]


def _touch(r: Tensor, flags: Tensor, gap: int) -> Tensor:
    """Which runs ``r`` (``(K, 3)``) have a ``flags`` sample (``(N, T)`` bool) within
    ``gap`` samples of them: ``(K,)`` bool."""
    if len(r) == 0:
        return torch.zeros(0, dtype=torch.bool, device=r.device)
    t = flags.shape[-1]
    idx = r[:, 1:2] - gap + torch.arange(int((r[:, 2] - r[:, 1]).max()) + 2 * gap, device=r.device)
    ok = (idx >= 0) & (idx < r[:, 2:3] + gap)
    return (flags[r[:, 0:1], idx.clamp(0, t - 1)] & ok).any(-1)
