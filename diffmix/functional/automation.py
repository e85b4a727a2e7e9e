"""Volume automation: a gain curve in dB drawn smoothly through breakpoints.

The breakpoint times are fixed (an arrangement decision); the gains are what an optimiser
fits. The curve is built for all samples at once: each sample's segment index and
interpolation weight depend only on the times, and the gains enter through one gather,
so there is no per-sample loop and the gradient w.r.t. every breakpoint gain is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from diffmix.checks import check_choice
from diffmix.functional.gain import db_to_amp
from diffmix.params import ParamValue, broadcast_param

CURVES = ("cosine", "linear")


def check_times(times_s: Sequence[float], effect: str = "volume_automation") -> list[float]:
    """Validate breakpoint times: finite, >= 0, strictly increasing, at least one."""
    if isinstance(times_s, (str, bytes)) or not isinstance(times_s, Sequence) or len(times_s) == 0:
        raise ValueError(f"{effect}: times_s must be a non-empty list of seconds, got {times_s!r}")
    out = []
    for t in times_s:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"{effect}: breakpoint times must be finite seconds >= 0, got {t!r}")
        out.append(float(t))
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"{effect}: breakpoint times must be strictly increasing, got {out}")
    return out


def automation_weights(
    times_s: Sequence[float], n_samples: int, sample_rate: int, *, curve: str = "cosine", device=None
) -> tuple[Tensor, Tensor]:
    """Segment index ``k`` and weight ``w`` per sample: ``g(t) = g_k + w (g_{k+1} - g_k)``.

    Before the first breakpoint ``k = 0, w = 0`` and after the last ``k = n - 2, w = 1``
    (with one breakpoint, ``k = 0, w = 0`` throughout): the gain is held outside.

    Returns:
        ``(index, weight)``, each ``(n_samples,)``; ``weight`` is float64.
    """
    check_choice(curve, CURVES, "volume_automation", "curve")
    times = torch.tensor(times_s, dtype=torch.float64, device=device)
    t = torch.arange(n_samples, dtype=torch.float64, device=device) / sample_rate
    if len(times_s) == 1:
        zeros = torch.zeros(n_samples, dtype=torch.float64, device=device)
        return zeros.long(), zeros
    k = (torch.searchsorted(times, t, right=True) - 1).clamp(0, len(times_s) - 2)
    start, end = times[k], times[k + 1]
    u = ((t - start) / (end - start)).clamp(0.0, 1.0)
    # Raised cosine: zero slope at every breakpoint, so the curve is C1 and never overshoots.
    w = 0.5 - 0.5 * torch.cos(math.pi * u) if curve == "cosine" else u
    return k, w


def gain_curve_db(
    gains_db: Tensor, times_s: Sequence[float], n_samples: int, sample_rate: int, *, curve: str = "cosine"
) -> Tensor:
    """The gain curve in dB, ``(..., n_points)`` -> ``(..., n_samples)``.

    >>> g = gain_curve_db(torch.tensor([0.0, -12.0]), [0.0, 1.0], 5, 4)
    >>> [round(v, 3) for v in g.tolist()]
    [0.0, -1.757, -6.0, -10.243, -12.0]
    """
    k, w = automation_weights(times_s, n_samples, sample_rate, curve=curve, device=gains_db.device)
    w = w.to(gains_db.dtype)
    lo = gains_db[..., k]
    if len(times_s) == 1:
        return lo
    hi = gains_db[..., k + 1]
    return lo + w * (hi - lo)


def volume_automation(
    x: Tensor,
    sample_rate: int,
    *,
    times_s: Sequence[float],
    gain_db: ParamValue,
    curve: str = "cosine",
    amount: ParamValue = 1.0,
) -> Tensor:
    """Apply a gain curve through breakpoints ``(times_s[i], gain_db[..., i])``.

    Args:
        x: ``(B, C, T)`` audio.
        sample_rate: Hz.
        times_s: breakpoint times in seconds from the start, strictly increasing (fixed).
        gain_db: breakpoint gains in dB: ``(n_points,)``, ``(B, n_points)`` or
            ``(B, C, n_points)``.
        curve: ``"cosine"`` (default: raised-cosine segments, smooth with zero slope at
            each breakpoint) or ``"linear"`` (straight lines in dB).
        amount: depth, 0 (flat, unity gain) to 1 (the full curve); scales the dB curve.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Returns:
        ``x`` times ``10^(amount * g(t) / 20)``, the gain held flat before the first and
        after the last breakpoint.

    Differentiable in ``x``, ``gain_db`` and ``amount``. CUDA: yes.

    >>> y = volume_automation(torch.ones(1, 1, 5), 4, times_s=[0.0, 1.0], gain_db=[0.0, -20.0],
    ...                       curve="linear")
    >>> [round(v, 4) for v in y.flatten().tolist()]
    [1.0, 0.5623, 0.3162, 0.1778, 0.1]
    """
    times = check_times(times_s)
    check_choice(curve, CURVES, "volume_automation", "curve")
    t = gain_db if isinstance(gain_db, Tensor) else torch.as_tensor(gain_db, dtype=torch.float64)
    g = broadcast_param(t, x, name="gain_db", effect="volume_automation", trailing=1)
    if g.shape[-1] != len(times):
        raise ValueError(
            f"volume_automation: {len(times)} breakpoint times but gain_db has {g.shape[-1]} values"
        )
    depth = broadcast_param(amount, x, name="amount", effect="volume_automation").unsqueeze(-1)
    curve_db = gain_curve_db(g, times, x.shape[-1], sample_rate, curve=curve)
    return x * db_to_amp(depth * curve_db)
