"""Clipping (detection and constrained LSAR), DC offset, and the defects report."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffmix.checks import check_audio, check_sample_rate
from diffmix.functional.restoration._common import _hop, _rows
from diffmix.functional.restoration.ar import ar_coefficients
from diffmix.functional.restoration.lsar import lsar_interpolate
from diffmix.functional.restoration.masks import spans
from diffmix.functional.restoration.repair import declick


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
    """Clicks and clipped runs per batch item, for reports: what the repair job
    (:func:`diffmix.polish.polish`) repairs, found in its order: each channel's mean
    removed (:func:`remove_dc`), clipped runs found and rebuilt (:func:`declip`), then
    clicks found and repaired on that (:func:`declick`: its spans are the detected ones
    grown over missed edges and trimmed of kept ones). A DC offset or a clipped peak
    moves the click detector's borderline decisions, so a report that detected on the
    raw signal would list clicks the repair does not find.

    Returns, per item: ``{"clicks_per_minute", "clicks": [...], "clipped_runs": [...],
    "clipped_runs_count", "clicks_count"}``, each listed span ``{"channel", "time_s",
    "samples"}`` (at most ``max_listed`` of each, earliest first; the counts are complete).
    """
    sr = check_sample_rate(sample_rate, "defects")
    b, c, t = x.shape
    declipped, clipped = declip(remove_dc(x, sr)[0], sr)
    clicks = declick(declipped, sr)[1]
    out = []
    minutes = t / sr / 60.0
    for i in range(b):
        items: dict[str, Any] = {}
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
