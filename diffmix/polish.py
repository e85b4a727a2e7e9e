"""Polishing: DC removal, declipping and declicking in one call, with a report of every
repaired span. Used by the ``repair`` job and by ``master``'s optional ``polish`` stage.

The order is DC, then clipping, then clicks: the rails of clipped runs are found on the
centred signal, and a clipped peak is never mistaken for a click.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from diffmix.checks import check_audio, check_sample_rate
from diffmix.functional.restoration import declick, declip, remove_dc, spans


def _listed(mask: Tensor, sample_rate: int) -> list[dict]:
    found = sorted(spans(mask), key=lambda s: (s["batch"], s["start"], s["channel"]))
    return [
        {"channel": s["channel"], "start": s["start"], "end": s["end"],
         "time_s": round(s["start"] / sample_rate, 6), "samples": s["end"] - s["start"]}
        for s in found
    ]


def polish(
    x: Tensor, sample_rate: int, *, clicks: bool = True, clipping: bool = True, dc: bool = True
) -> tuple[Tensor, dict[str, Any]]:
    """Repair ``(1, C, T)`` audio; returns ``(repaired, report)``.

    The report holds, for each stage that ran, what it changed: ``dc`` (the offset removed
    per channel), ``clipping`` and ``clicks`` (``count`` and ``spans``: channel, first
    sample, end sample (exclusive), start time in s, length in samples). Differentiable
    w.r.t. ``x`` (masks fixed; see :mod:`diffmix.functional.restoration`).
    """
    check_audio(x, "polish")
    sr = check_sample_rate(sample_rate, "polish")
    if x.shape[0] != 1:
        raise ValueError(f"polish: one item at a time, got a batch of {x.shape[0]}")
    report: dict[str, Any] = {}
    y = x
    if dc:
        y, offset = remove_dc(y, sr)
        report["dc"] = {"offset_per_channel": [round(float(v), 9) for v in offset[0, :, 0]]}
    if clipping:
        y, mask = declip(y, sr)
        listed = _listed(mask, sr)
        report["clipping"] = {"count": len(listed), "samples": int(mask.sum()), "spans": listed}
    if clicks:
        y, mask = declick(y, sr)
        listed = _listed(mask, sr)
        minutes = x.shape[-1] / sr / 60.0
        report["clicks"] = {"count": len(listed), "per_minute": round(len(listed) / minutes, 3),
                            "samples": int(mask.sum()), "spans": listed}
    return y, report
