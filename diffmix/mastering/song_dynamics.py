"""The compressor set on the whole song (``fit.song_dynamics``).

The fit's steps see excerpts, and an excerpt's short-term loudness spread is not its song's
(BENCHMARKS.md, profile notes), so they leave the compressor near its start. The chain's
compressor is feed-forward, peak-detecting and stereo-linked: its output is ``g(t) p(t)``,
one gain for both channels, and a channel matrix after it (the width) commutes with that
gain. :class:`SongModel` keeps, per hop of a few samples, what the dynamics terms need of
the compressor's input ``p``: the linked detector's peak, and the K-weighted energy, the
energy and the peak of what reaches the limiter at unit gain. The gain is the
compressor's own kernel run at the hop rate on the detector's peaks; the terms (short-term
loudness quantiles about the integrated loudness, crest factor) follow from ``g²`` times
those sums, for a whole song in milliseconds. :func:`fit_song_dynamics` searches thresholds
and ratios on a coarse model, refines the setting by gradient steps on a finer one, and keeps
it where the finest says it lowers the dynamics term with the fit's prior.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from diffmix.console import Bus, range_change
from diffmix.effects.dynamics import Compressor
from diffmix.functional.dynamics import compressor
from diffmix.functional.loudness import (
    ABSOLUTE_GATE_LUFS,
    RELATIVE_GATE_LU,
    _energy_windows,
    _gated_loudness,
    _kfilter_numpy,
    _to_lufs,
    block_samples,
    meter_unit,
)
from diffmix.mastering.source import release_memory
from diffmix.objective import dynamics_distance, dynamics_features, profile_about
from diffmix.optim import Adam
from diffmix.params import BoundedParam

# Hop lengths (ms) of the three models: the grid's, the gradient steps', the judge's (the
# finest resolves an attack inside a hop; accuracy: BENCHMARKS.md, profile notes, session 31).
HOPS_MS = (1.0, 0.5, 0.16)
THRESHOLDS_DB = (-6.0, -12.0, -18.0, -24.0, -30.0, -36.0, -42.0, -48.0)
RATIOS = (1.25, 1.6, 2.2, 3.2, 5.0)
STEPS = 30
LR = 0.1
COMP = "comp"  # the mastering chain's compressor stage
_COMP_PARAMS = ("threshold_db", "ratio", "knee_db", "attack_ms", "release_ms", "makeup_db", "mix")
LIMITER = "limiter"


def hops(sample_rate: int) -> tuple[int, int, int]:
    """The models' hops in samples, coarse to fine: each a divisor of the meters' unit (so
    units are whole hops) and a multiple of the finest (so the coarser models are sums of it)."""
    unit = meter_unit(sample_rate)
    divisors = [d for d in range(1, unit + 1) if unit % d == 0]
    fine = max([d for d in divisors if d <= HOPS_MS[2] * sample_rate / 1000.0] or [1])
    pick = [min((d for d in divisors if d % fine == 0), key=lambda d: abs(d - ms * sample_rate / 1000.0))
            for ms in HOPS_MS[:2]]
    return pick[0], pick[1], fine


@dataclass(frozen=True)
class SongModel:
    """One song's compressor input and what follows it, summed per hop (float32 unless noted).

    Attributes:
        sample_rate: Hz of the song.
        hop: samples per hop.
        detector: ``(1, 1, n)`` the linked detector's peak per hop (the compressor's input).
        k_energy: ``(1, 1, n)`` float64, K-weighted energy per hop after the compressor, summed
            over the channels (BS.1770's weights for stereo are 1 and 1).
        energy: ``(1, n)`` float64, energy per hop over the channels after the compressor.
        peak: ``(1, n)`` largest magnitude per hop over the channels after the compressor.
        samples: the length measured (whole meter units), samples.
        channels: the output's channels.
    """

    sample_rate: int
    hop: int
    detector: Tensor
    k_energy: Tensor
    energy: Tensor
    peak: Tensor
    samples: int
    channels: int = 2

    @classmethod
    @torch.no_grad()
    def measure(cls, pre: Tensor, after: Tensor | None, sample_rate: int, hop: int, link: str) -> SongModel:
        """From the compressor's input ``pre`` ``(1, C, T)``, the channel matrix ``after``
        ``(1, C, C)`` between it and the limiter (None: none), at ``hop`` samples; on the CPU.

        What follows the compressor is never rendered: its energies are the input's, per
        pair of channels, weighed by ``after``'s Gram matrix (the K-weighting is linear), so
        the model holds one full-length temporary at a time."""
        unit = meter_unit(sample_rate)
        t = pre.shape[-1] // unit * unit
        n, c = t // hop, pre.shape[1]
        rows = pre[0, :, :t].float().cpu()  # the model runs on the CPU whatever renders the chain
        w = torch.eye(c) if after is None else after[0].float().cpu()
        gram = (w.T @ w).double()

        def hop_max(v: Tensor) -> Tensor:
            return v.reshape(n, hop).amax(-1)

        def hop_energy(v: Tensor) -> Tensor:  # no full-length square
            return torch.linalg.vector_norm(v.reshape(n, hop), dim=-1).double().square()

        def k_energy(v: Tensor) -> Tensor:
            e, _ = _kfilter_numpy(np.ascontiguousarray(v.numpy())[None], sample_rate, hop, False)
            return torch.from_numpy(e[0])

        if link == "max":
            detector = torch.stack([hop_max(r.abs()) for r in rows]).amax(0)
        else:  # the channels' mean power per sample, its peak per hop
            detector = hop_max(rows.square().mean(0)).sqrt()
        k_own = [k_energy(r) for r in rows]
        own = [hop_energy(r) for r in rows]
        k_total = torch.zeros(n, dtype=torch.float64)
        total = torch.zeros(n, dtype=torch.float64)
        for i in range(c):
            k_total += gram[i, i] * k_own[i]
            total += gram[i, i] * own[i]
            for j in range(i + 1, c):
                if gram[i, j] == 0:
                    continue
                both = rows[i] + rows[j]  # the cross terms, from the pair's sum
                k_total += gram[i, j] * (k_energy(both) - k_own[i] - k_own[j])
                total += gram[i, j] * (hop_energy(both) - own[i] - own[j])
                del both
        peak = torch.stack([hop_max((w[ch] @ rows).abs_() if after is not None else rows[ch].abs())
                            for ch in range(c)]).amax(0)
        return cls(sample_rate, hop, detector.reshape(1, 1, n), k_total.reshape(1, 1, n),
                   total.reshape(1, n), peak.reshape(1, n), t, c)

    def coarser(self, factor: int) -> SongModel:
        """The same song at ``factor`` times the hop (``factor`` divides the hop count)."""
        n = self.detector.shape[-1] // factor

        def fold(v: Tensor, how: str) -> Tensor:
            parts = v.reshape(*v.shape[:-1], n, factor)
            return parts.amax(-1) if how == "max" else parts.sum(-1)

        return SongModel(self.sample_rate, self.hop * factor, fold(self.detector, "max"),
                         fold(self.k_energy, "sum"), fold(self.energy, "sum"), fold(self.peak, "max"),
                         self.samples, self.channels)

    def gain(self, values: Mapping[str, Tensor]) -> Tensor:
        """The compressor's gain per hop ``(1, n)`` at ``values`` (its parameters by name)."""
        ones = torch.ones_like(self.detector)
        v = {k: values[k].to(ones.dtype) for k in _COMP_PARAMS}
        return compressor(ones, self.sample_rate // self.hop, sidechain=self.detector, link="none",
                          threshold_db=v["threshold_db"], ratio=v["ratio"], knee_db=v["knee_db"],
                          attack_ms=v["attack_ms"], release_ms=v["release_ms"], makeup_db=v["makeup_db"],
                          mix=v["mix"])[:, 0]

    def terms(self, values: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The output's short-term loudness quantiles about its integrated loudness ``(1, 4)``
        LU (:func:`~diffmix.objective.dynamics_profile`) and crest factor ``(1,)`` dB at
        ``values``. Differentiable in them."""
        g = self.gain(values)
        g2 = g.double().square()
        unit = meter_unit(self.sample_rate)
        per = unit // self.hop
        energy = (self.k_energy * g2[:, None]).reshape(*self.k_energy.shape[:2], -1, per).sum(-1)
        hop, block, window = block_samples(self.sample_rate)
        w = torch.ones(energy.shape[1], dtype=torch.float64)
        blocks = _energy_windows(energy, block, block // unit, hop // unit, w)
        short = _to_lufs(_energy_windows(energy, window, window // unit, 1, w))
        profile = profile_about(_gated_loudness(blocks, ABSOLUTE_GATE_LUFS, RELATIVE_GATE_LU), short)
        # The peak sample's gain lies between its hop's and the hop before's (an attack inside
        # the hop): their geometric mean.
        before = torch.nn.functional.pad(g, (1, 0), value=1.0)[..., :-1]
        peak = ((g * before).sqrt() * self.peak).amax(-1).double()
        values_n = self.energy.new_tensor(self.samples * self.channels)  # the crest factor's mean square
        rms = ((g2 * self.energy).sum(-1) / values_n).sqrt()
        return profile, 20.0 * torch.log10(peak.clamp_min(1e-12) / rms.clamp_min(1e-12))


def _term(model: SongModel, values: Mapping[str, Tensor], target: tuple[Tensor, Tensor]) -> Tensor:
    return dynamics_distance(*model.terms(values), target)  # the objective's


def not_applicable(bus: Bus) -> str | None:
    """Why the song model can't stand for ``bus``'s compressor, or None."""
    names = list(bus.effects)
    if COMP not in names or LIMITER not in names or names.index(COMP) > names.index(LIMITER):
        return f"the chain has no {COMP!r} stage before its {LIMITER!r}"
    comp = bus.effects[COMP]
    if not isinstance(comp, Compressor):
        return f"{COMP!r} is not a Compressor"
    opts = comp.options
    if opts["detector"] != "peak" or opts["lookahead_ms"] or opts["link"] == "none":
        return "the compressor is not a linked peak detector without lookahead"
    for name in names[names.index(COMP) + 1 : names.index(LIMITER)]:
        if not hasattr(bus.effects[name], "channel_matrix"):
            return f"{name!r} between the compressor and the limiter is not a channel matrix"
    return None


def fit_song_dynamics(
    bus: Bus,
    audios: Sequence[Any],
    references: Sequence[Tensor],
    keys: Sequence[str],
    *,
    fitted: Sequence[str],
    initial: Mapping[str, Tensor],
    prior_weight: float,
    weight: float,
    targets: Sequence[tuple[Tensor, Tensor]] | None = None,
) -> dict[str, Any]:
    """Set each song's compressor on its whole song (see the module notes).

    Args:
        bus: the mastering chain, one parameter set per song, at its start or fitted.
        audios: ``(1, 2, T)`` songs. references: each song's reference. keys: song names.
        fitted: the chain's parameter keys the fit moves; only the compressor's among them
            move here (none: nothing is done).
        initial: every fitted key's value at the fit's start (the prior's anchor).
        prior_weight: the fit's prior scale; a key weighs ``1 / len(fitted)`` of it, as in
            the steps' :func:`~diffmix.console.prior`.
        weight: the objective's dynamics weight.
        targets: each reference's :func:`~diffmix.objective.dynamics_features` (float64, on
            the CPU), where the fit's objective has measured them (else measured here).

    Returns:
        ``{"seconds", "songs": {key: {"term_before", "term_after", "kept"}}}`` (terms
        weighted, with the prior, on the finest model), or ``{"skipped": why}``.
    """
    why = not_applicable(bus)
    if why is None and not all(isinstance(a, Tensor) for a in audios):
        why = "the songs are read from disk in chunks (a streamed master)"
    names = [k.split(".", 1)[1] for k in fitted if k.startswith(COMP + ".")]
    if why is None and not names:
        why = f"fit.params moves none of {COMP!r}'s parameters"
    if why is not None:
        return {"skipped": why}
    t0 = time.perf_counter()
    sr = bus.sample_rate
    comp = cast(Compressor, bus.effects[COMP])
    link = str(comp.options["link"])
    effects = list(bus.effects)
    between = effects[effects.index(COMP) + 1 : effects.index(LIMITER)]
    coarse_hop, mid_hop, fine_hop = hops(sr)
    values = {k: _bounded(comp, k).exact().detach() for k in comp.params}  # (items,) or scalar each
    from diffmix.mastering.fit import pad_batch  # (fit.py runs this stage)

    release_memory()  # the steps' freed buffers: the renders below come on top of what is held
    x, lengths = pad_batch(list(audios))
    with torch.no_grad():
        pres = bus(x, until=COMP, fuse=True)  # every song up to the compressor, at its settings
        matrix = None
        for name in between:
            m = cast(Any, bus.effects[name]).channel_matrix(pres)
            matrix = m if matrix is None else m @ matrix
    del x
    fines = []
    for i in range(len(audios)):
        m = None if matrix is None else matrix[i : i + 1] if matrix.shape[0] > 1 else matrix
        fines.append(SongModel.measure(pres[i : i + 1, :, : lengths[i]], m, sr, fine_hop, link))
    del pres
    release_memory()
    out: dict[str, Any] = {}
    for i, (reference, key) in enumerate(zip(references, keys, strict=True)):
        fine = fines[i]
        models = (fine.coarser(coarse_hop // fine_hop), fine.coarser(mid_hop // fine_hop), fine)
        if targets is None:
            profile, crest = dynamics_features(reference.cpu(), sr)
            target = (profile.double(), crest.double())
        else:
            target = targets[i]
        mine = {k: _item(v, i) for k, v in values.items()}
        anchor = {k: _item(initial[f"{COMP}.{k}"], i) for k in names}
        result = _fit_one(models, mine, names, anchor, target, comp, prior_weight / len(fitted), weight)
        if result["kept"]:
            for k in names:
                values[k] = _set_item(values[k], i, result["values"][k])
        out[key] = {k: v for k, v in result.items() if k != "values"}
    comp.load_values({k: values[k] for k in names})
    return {"seconds": round(time.perf_counter() - t0, 3), "songs": out}


def _bounded(effect: Compressor, name: str) -> BoundedParam:
    return cast(BoundedParam, effect.params[name])


def _item(v: Tensor, i: int) -> Tensor:
    flat = v.reshape(-1)
    return flat[i if flat.numel() > 1 else 0].reshape(1).double()


def _set_item(v: Tensor, i: int, new: float) -> Tensor:
    v = v.clone()
    if v.numel() > 1:
        v.view(-1)[i] = new
    else:
        v.fill_(new)
    return v


def _fit_one(models: tuple[SongModel, SongModel, SongModel], start: Mapping[str, Tensor],
             names: Sequence[str], anchor: Mapping[str, Tensor], target: tuple[Tensor, Tensor],
             template: Compressor, prior_scale: float, weight: float) -> dict[str, Any]:
    """Grid on the coarse model, Adam on the middle one, the judge on the fine one."""
    coarse, middle, fine = models
    specs = {k: _bounded(template, k).spec for k in names}

    def prior(vals: Mapping[str, Tensor]) -> Tensor:  # the steps' prior over these keys
        changes = torch.cat([range_change(specs[k], vals[k].double(), anchor[k]).reshape(-1) for k in names])
        return prior_scale * changes.square().sum()

    def loss(model: SongModel, vals: Mapping[str, Tensor]) -> Tensor:
        return weight * _term(model, vals, target).sum() + prior(vals)

    with torch.no_grad():
        before = float(loss(fine, start))
        best = (float(loss(coarse, start)), dict(start))
        if "threshold_db" in names and "ratio" in names:
            for thr, ratio in itertools.product(THRESHOLDS_DB, RATIOS):
                trial = {**start, "threshold_db": start["threshold_db"].new_tensor([thr]),
                         "ratio": start["ratio"].new_tensor([ratio])}
                value = float(loss(coarse, trial))
                if value < best[0]:
                    best = (value, trial)
    module = Compressor(middle.sample_rate // middle.hop)
    module.load_values({k: v.reshape(()) if v.numel() == 1 else v for k, v in best[1].items()})
    raws = [_bounded(module, k).raw for k in names]
    for k in module.params:
        _bounded(module, k).raw.requires_grad_(k in names)
    opt = Adam(raws, lr=LR)
    found = (math.inf, dict(best[1]))
    for _ in range(STEPS):
        opt.zero_grad()
        vals = {**start, **{k: module.p(k).reshape(1) for k in names}}
        step_loss = loss(middle, vals)
        if float(step_loss.detach()) < found[0]:
            found = (float(step_loss.detach()), {k: v.detach().double() for k, v in vals.items()})
        step_loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(loss(fine, found[1]))
    kept = after < before
    return {"term_before": round(before, 4), "term_after": round(after if kept else before, 4), "kept": kept,
            "values": {k: float(found[1][k]) for k in names}}
