"""Console wiring for the mix fit: the closed-form estimate as the console's strips see
the stems, written onto the console (input gains, strip EQ), and the fader polish.

Everything here reads and writes the console through its public surface
(:meth:`~diffmix.console.Console.named_values`, :meth:`~diffmix.console.Console.load_values`,
``mono``, ``track_names``, :meth:`~diffmix.console.Console.solo`).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from diffmix.effects.eq import ParametricEQ
from diffmix.mixing.analysis import band_edges, band_powers, k_weight_power
from diffmix.mixing.solvers import MixEstimate, estimate_mix, fit_eq_gains

if TYPE_CHECKING:
    from diffmix.console import Console



def _strip_scale(console: Console, stems: Tensor) -> Tensor:
    """``(N, 1, 1)``: a mono source carried as two channels reaches the mix through the
    pan law (at the centre each side gets cos(pi/4) of it), which the estimate must see."""
    mono = torch.tensor(list(console.mono))
    return torch.where(mono, math.sqrt(0.5), 1.0).to(stems.dtype).to(stems.device).view(-1, 1, 1)


def console_estimate(
    console: Console,
    stems: Tensor,
    reference: Tensor,
    sample_rate: int,
    *,
    coherent: bool = False,
    lag: int | None = None,
) -> MixEstimate:
    """:func:`estimate_mix` of ``(1, N, C, T)`` stems as the console's strips receive them
    against a ``(1, 2, T')`` reference."""
    return estimate_mix(
        stems[0] * _strip_scale(console, stems), reference[0], sample_rate, coherent=coherent, lag=lag
    )


def initialise_console(
    console: Console,
    stems: Tensor,
    reference: Tensor,
    sample_rate: int,
    *,
    gain: str = "strip.input.gain_db",
    eq: str = "eq",
    coherent: bool = False,
    estimate: MixEstimate | None = None,
) -> dict[str, object]:
    """Set a console's per-track input gains and strip EQ gains from :func:`estimate_mix`.

    Args:
        console: a :class:`~diffmix.console.Console` whose strip has a gain stage
            (``gain``, a parameter path) and optionally a parametric EQ (effect ``eq``); a
            strip without the gain stage is left as it is.
        stems: ``(1, N, 2, T)`` as given to the console.
        reference: ``(1, 2, T')`` the reference mix.
        sample_rate: Hz.
        coherent: the reference is a mix of these very stems: solve on complex spectra
            (see :func:`estimate_mix`).
        estimate: a :func:`console_estimate` already made (then ``reference`` is unused).

    Returns:
        A summary for the report: the gains set (dB), how much of the reference they
        explain, and the seconds taken.
    """
    t0 = time.perf_counter()
    values = console.named_values()
    if gain not in values:
        return {"method": "none", "reason": f"the strip has no {gain}"}
    est = estimate if estimate is not None else console_estimate(
        console, stems, reference, sample_rate, coherent=coherent
    )
    update = {gain: est.gain_db.to(torch.float64).cpu()}
    effect = console.strip.effects[eq] if eq in console.strip.effects else None
    if isinstance(effect, ParametricEQ):
        freq = values[f"strip.{eq}.freq_hz"].exact().double()
        q = values[f"strip.{eq}.q"].exact().double()
        lo, hi = values[f"strip.{eq}.gain_db"].spec.min, values[f"strip.{eq}.gain_db"].spec.max
        g = fit_eq_gains(
            est,
            effect.bands,
            freq.to(est.centres_hz.device),
            q.to(est.centres_hz.device),
            sample_rate,
            limit_db=min(12.0, -lo, hi),
        )
        update[f"strip.{eq}.gain_db"] = g.cpu().view(values[f"strip.{eq}.gain_db"].exact().shape)
    console.load_values(update)
    return {
        "method": "nnls",
        "spectra": "complex" if est.coherent else "power",
        "incoherent": [console.track_names[k] for k in est.incoherent]
        if hasattr(console, "track_names")
        else est.incoherent,
        "explained": round(est.explained, 4),
        "lag_samples": est.lag,
        "gain_db": [round(float(v), 2) for v in est.gain_db],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def polish_levels(
    console: Console,
    stems: Tensor,
    estimate: MixEstimate,
    sample_rate: int,
    *,
    starts: list[int],
    length: int,
    fader: str = "strip.fader.gain_db",
    limit_db: float = 12.0,
) -> dict[str, object]:
    """After the gradient fit, set each track's loudness back to the closed-form estimate.

    A waveform loss barely sees a track 20 LU under the lead: the gradient fit trades its
    level (through its EQ as much as its gain) for small gains elsewhere, while the
    closed-form estimate resolves it (see :func:`estimate_mix` with ``coherent``). So the
    gradient fit keeps what it is good at (tone, dynamics, pan, width) and the level of
    each track's contribution is re-set on its fader (after the compressor, so the change
    is exactly a gain on the strip): the K-weighted energy of the track rendered alone
    through the fitted console, master included, is brought to the K-weighted energy the
    estimate predicts for it (the stem's band energies times its band gains) on the same
    excerpts.

    Args:
        console: the fitted :class:`~diffmix.console.Console` (its strip has ``fader``).
        stems: ``(1, N, C, T)`` as given to the console.
        estimate: from :func:`estimate_mix` on these stems (as they reach the strip).
        sample_rate: Hz.
        starts, length: the excerpts (samples) on which both energies are measured.
        limit_db: no fader moves by more than this.

    Returns:
        A summary for the report: each fader's change (dB) and the seconds taken.
    """
    t0 = time.perf_counter()
    values = console.named_values()
    if fader not in values:
        return {"method": "none", "reason": f"the strip has no {fader}"}
    edges = band_edges(sample_rate)
    kw = torch.as_tensor(k_weight_power(np.sqrt(edges[:-1] * edges[1:]), sample_rate))
    scale = _strip_scale(console, stems)
    gains = 10 ** (estimate.band_db.double().cpu() / 10)  # power gains per band
    want = torch.zeros(stems.shape[1], dtype=torch.float64)
    have = torch.zeros_like(want)
    with torch.no_grad():
        for s0 in starts:
            piece = stems[..., s0 : s0 + length]
            e_in = band_powers(piece[0] * scale, sample_rate, edges).sum(dim=(1, 3)).cpu()  # (N, nb)
            e_out = band_powers(console.solo(piece), sample_rate, edges).sum(dim=(1, 3)).cpu()
            want += (e_in * gains * kw).sum(1)
            have += (e_out * kw).sum(1)
    live = (want > 0) & (have > 0)
    change = torch.where(live, 10 * torch.log10(want / have.clamp_min(1e-30)), torch.zeros_like(want))
    change = change.clamp(-limit_db, limit_db)
    spec = values[fader].spec
    now = values[fader].exact().double().cpu()
    moved = (now + change.view_as(now)).clamp(spec.min, spec.max)
    console.load_values({fader: moved})
    return {
        "method": "closed-form loudness per track, on the fader",
        "change_db": [round(float(v), 2) for v in change],
        "seconds": round(time.perf_counter() - t0, 3),
    }
