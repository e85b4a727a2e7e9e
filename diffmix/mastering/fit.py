"""The mastering fit: tone, width and dynamics fitted on excerpts of each song.

Several songs are fitted at once: the chain runs in a :class:`~diffmix.console.Bus` with one
parameter set per song and one optimiser over them all. Each step renders one excerpt of
every song from a fixed pool spread evenly over it (:func:`~diffmix.fit.excerpt_pool`),
in turn, and the plateau is judged on the mean loss over one pass through the pool: what
the fit sees, and so when it stops, depends on the audio alone, never on a file's name.
Every song's loss is its own, so a song's result is the same in a batch as alone (up to
floating-point summation order). The limiter runs in its smooth
mode; its drive is set afterwards by the loudness solve (:mod:`diffmix.mastering.loudness`).

Where the fit starts is one argument of :func:`fit_stage` (``start``): by default the
match EQ's closed-form gains (:func:`match_start`). After the steps, with a reference, the
compressor is set on each whole song (:mod:`diffmix.mastering.song_dynamics`): an excerpt's
loudness spread is not its song's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from diffmix.console import Bus, matching, prior, select
from diffmix.effects.dynamics import set_exact
from diffmix.errors import UserError
from diffmix.fit import FitResult, draw, excerpt_pool, excerpt_starts, fit
from diffmix.functional.filters import fixed_input_spectra
from diffmix.mastering.chain import MATCH
from diffmix.mastering.song_dynamics import COMP, fit_song_dynamics
from diffmix.objective import REFERENCE_TERMS, Objective

# Where a fit starts: sets the chain's values from (bus, audios, references or None, target).
Start = Callable[[Bus, Sequence[Any], "Sequence[Tensor] | None", Mapping[str, Any]], None]


@dataclass
class FitOptions:
    """What the fit matches and how long it runs (the master job's ``fit.*``, ``loss.*``,
    ``optim``, ``scheduler`` and ``amount.*``).

    Args:
        steps: optimiser steps (0: no fit).
        excerpt_s: excerpt length, seconds.
        pool: excerpts per song in the fixed pool the steps cycle through (0: a fresh
            random excerpt each step, drawn from ``seed``).
        patience: steps without the mean loss over one pass through the pool improving
            on its best by ``min_delta`` (relative) before stopping.
        min_delta: the relative improvement that counts (0.005: a pass must gain 0.5 %).
        params: globs of ``"<effect>.<param>"`` names to fit.
        weights: objective term -> weight (terms with nothing to compare are dropped,
            :func:`available_weights`).
        prior_weight: scales :func:`~diffmix.console.prior` (keeps settings near the start).
        optimizer: ``params -> torch.optim.Optimizer``; default Adam at lr 0.05
            (:class:`diffmix.optim.Adam`).
        scheduler: ``optimizer -> LR scheduler``, or None.
        seed: excerpt draws when ``pool`` is 0.
        progress: show a progress bar.
        amount: stage -> 0..1, how much of its fitted change to keep.
        song_dynamics: with a reference, the dynamics term and steps to run, after the
            steps set the compressor on each whole song (:mod:`diffmix.mastering.song_dynamics`).
    """

    steps: int = 120
    excerpt_s: float = 8.0
    pool: int = 8
    patience: int = 16
    min_delta: float = 0.005
    params: Sequence[str] = ()
    weights: Mapping[str, float] = field(default_factory=dict)
    prior_weight: float = 0.0
    optimizer: Callable | None = None
    scheduler: Callable | None = None
    seed: int = 0
    progress: bool = True
    amount: Mapping[str, float] = field(default_factory=dict)
    song_dynamics: bool = True


def pad_batch(xs: Sequence[Tensor]) -> tuple[Tensor, list[int]]:
    """Stack ``(1, C, T_i)`` songs into ``(S, C, max T)`` with zeros; returns the lengths.
    One song is returned as it is (not a copy: callers only read it)."""
    lengths = [int(x.shape[-1]) for x in xs]
    if len(xs) == 1:
        return xs[0], lengths
    out = xs[0].new_zeros((len(xs), xs[0].shape[1], max(lengths)))
    for i, x in enumerate(xs):
        out[i, :, : lengths[i]] = x[0]
    return out, lengths


def song_excerpts(xs: Sequence[Any], length: int, step: int, *, pool: int = 8, seed: int = 0) -> Tensor:
    """Step ``step``'s excerpt of ``length`` samples from each song: number ``step % pool``
    of its :func:`~diffmix.fit.excerpt_pool`, or with ``pool`` 0 a random one drawn from
    ``(seed, step)``. Depends on the songs' audio and lengths only.

    A song is a ``(1, 2, T)`` tensor or anything sliced like one
    (:class:`~diffmix.mastering.source.DiskAudio`). A song shorter than ``length`` is
    zero-padded (the loudness gate ignores the padding and the tone features are level-free).
    """
    out = []
    for x in xs:
        if pool:
            starts = excerpt_pool(x.shape[-1], length, pool)
            start = starts[step % len(starts)]
        else:
            start = excerpt_starts(x.shape[-1], length, 1, draw(seed, step))[0]
        crop = x[..., start : start + length]
        out.append(torch.nn.functional.pad(crop, (0, length - crop.shape[-1])))
    return torch.cat(out)


def fit_chain(
    bus: Bus,
    xs: Sequence[Any],
    keys: Sequence[str],
    objective: Objective,
    *,
    params: Sequence[str],
    steps: int,
    excerpt_s: float,
    optimizer: Callable,
    pool: int = 8,
    scheduler: Callable | None = None,
    seed: int = 0,
    patience: int = 50,
    min_delta: float = 1e-4,
    prior_weight: float = 0.0,
    progress: bool = True,
    checkpoint=None,  # noqa: ANN001
    log_path=None,  # noqa: ANN001
) -> FitResult:
    """Fit the parameters of ``bus`` (one set per song) matching the glob ``params``.

    ``prior_weight`` scales :func:`~diffmix.console.prior`, which keeps the settings near
    where they started: the matching terms are level-free, so without it nothing stops a
    compressor running to its extremes while the tone still matches.

    The loss is the *sum* over songs, so each song's gradient is its own. The fit renders
    the chain up to the limiter only: the limiter's drive is set afterwards by the loudness
    solve, and at the fit's 0 dB drive it would cost time and change nothing the terms see.
    """
    chosen = select(bus.named_values(), params)
    if not chosen or steps == 0:
        return FitResult(0, math.nan, math.nan, "nothing to fit", 0.0)
    length = int(round(excerpt_s * bus.sample_rate))
    set_exact(bus, False)
    initial = {k: p.exact() for k, p in bus.named_values().items()}

    def closure(step: int):  # noqa: ANN202
        batch = song_excerpts(xs, length, step, pool=pool, seed=seed)
        loss, terms = objective(bus(batch, until="limiter", fuse=True))
        total = loss.sum()
        logged = {k: float(v.detach().mean()) for k, v in terms.items()}
        if prior_weight:
            # Per song: the prior is a mean over parameter entries, so scale by the songs.
            reg = prior(bus.named_values(), initial) * len(keys)
            total = total + prior_weight * reg
            logged["prior"] = float(reg.detach())
        return total, logged

    try:
        # the match EQ's excerpts are fixed: each one's spectrum is taken once, not per step
        with fixed_input_spectra():
            return fit(
                chosen,
                closure,
                steps=steps,
                optimizer=optimizer,
                scheduler=scheduler,
                patience=patience,
                min_delta=min_delta,
                cycle=max(int(pool), 1),
                progress=progress,
                checkpoint=checkpoint,
                log_path=log_path,
                tag="master:" + "|".join(keys),
            )
    finally:
        set_exact(bus, True)


def available_weights(weights: Mapping[str, float], *, reference: bool, target: Mapping) -> dict[str, float]:
    """Drop terms with nothing to compare against, and those met exactly elsewhere."""
    out = {}
    for k, v in weights.items():
        if k in REFERENCE_TERMS and not reference:
            continue
        if k == "spec_lra" and target.get("lra") is None:
            continue
        if k == "spec_plr" and target.get("plr") is None:
            continue
        if k in ("spec_lufs", "spec_true_peak", "loudness", "mrstft"):
            # Loudness and the ceiling are met exactly by the solve and the limiter; a
            # master's reference is another song, so there is no waveform to align.
            continue
        out[k] = float(v)
    return {k: v for k, v in out.items() if v > 0}


@torch.no_grad()
def init_match(bus: Bus, audios: Sequence[Any], references: Sequence[Tensor]) -> None:
    """Set each song's match-EQ gains in closed form from its input and its reference.

    Each song gets its own single-item :class:`~diffmix.effects.match_eq.MatchEQ` with the
    chain's options (so songs of different lengths never share a padded spectrum); its
    gains become that song's row of the chain's parameters.
    """
    from diffmix.effects.match_eq import MatchEQ

    stage = cast(MatchEQ, bus.effects[MATCH])
    node = {
        k: v for k, v in stage.preset().items() if k not in ("_target_", "mix", "mid_gain_db", "side_gain_db")
    }
    rows: dict[str, list[Tensor]] = {"mid_gain_db": [], "side_gain_db": []}
    for audio, reference in zip(audios, references, strict=True):
        single = MatchEQ(**node).to(audio.device)
        mid, side = single.match(audio, reference.to(audio.device))
        rows["mid_gain_db"].append(mid.double().cpu())
        rows["side_gain_db"].append(side.double().cpu())
    bus.load_values({f"{MATCH}.{k}": torch.stack(v) for k, v in rows.items()})


@torch.no_grad()
def reference_levels(bus: Bus, references: Sequence[Tensor]) -> list[Tensor]:
    """Each reference's mid and side band levels as the match stage measures them
    (:func:`~diffmix.functional.match_eq.band_levels_db`), for :func:`refine_match`'s passes."""
    from diffmix.effects.match_eq import MatchEQ
    from diffmix.functional.match_eq import signal_band_levels_db

    stage = cast(MatchEQ, bus.effects[MATCH])
    return [signal_band_levels_db(r, stage.sample_rate, stage.centres_hz) for r in references]


@torch.no_grad()
def refine_match(bus: Bus, y: Tensor, lengths: Sequence[int], references: Sequence[Tensor],
                 reference_db: Sequence[Tensor] | None = None,
                 side_mid_db: Sequence[float] | None = None,
                 predicted_db: Sequence[float] | None = None) -> list[float] | None:
    """Add to each song's match-EQ gains what its rendered master ``y`` still misses;
    ``reference_db``: :func:`reference_levels`, where already measured.

    With ``side_mid_db`` (each reference's side/mid ratio over the audible band, dB:
    :func:`~diffmix.features.audible_side_mid_db`) the side gains then move together by
    the one offset that puts the master's ratio there, predicted from ``y``'s spectrum
    and the change of the EQ's response (:func:`side_trim_db`): the width lands on the
    reference's whatever the tone fold did to the balance of the loudest bands (a chain
    that gives a boosted bass band back only in part, a reference whose tone no smooth
    curve reaches). The chain after the EQ moves the ratio too (a limiter ducking on the
    mid's bass peaks widens the master), so with ``predicted_db``, the ratio each song's
    last pass aimed at (what that pass returned), a pass aims past the reference by what
    ``y`` reads over that aim. Returns each song's aim (with ``side_mid_db``), else None."""
    from diffmix.effects.match_eq import N_FFT, MatchEQ
    from diffmix.features import audible_side_mid_db
    from diffmix.functional.gain import mid_side
    from diffmix.functional.match_eq import match_gains, psd_band_levels_db
    from diffmix.functional.spectrum import welch_psd

    stage = cast(MatchEQ, bus.effects[MATCH])
    params = bus.named_values()
    keys = ("mid_gain_db", "side_gain_db")
    rows = {k: params[f"{MATCH}.{k}"].exact().clone() for k in keys}
    lo = {k: params[f"{MATCH}.{k}"].spec.min for k in keys}
    hi = {k: params[f"{MATCH}.{k}"].spec.max for k in keys}
    wide = (-120.0, 120.0)  # a correction; the sum is clipped to the parameters' ranges
    aims: list[float] = []
    shifts: list[float] = []
    for i, (n, reference) in enumerate(zip(lengths, references, strict=True)):
        yi = y[i : i + 1, :, :n]
        # The master's spectrum in its own float32, as every analysis of a song is taken
        # (levels within 1e-5 dB of a float64 analysis); a fresh one, as each pass renders anew.
        psd = welch_psd(yi, N_FFT, pre=mid_side)
        dm, ds = match_gains(
            yi,
            reference.to(y.device),
            stage.sample_rate,
            stage.centres_hz,
            mid_range_db=wide,
            side_range_db=wide,
            reference_db=None if reference_db is None else reference_db[i],
            x_db=psd_band_levels_db(psd, stage.sample_rate, stage.centres_hz, N_FFT),
        )
        old = {k: rows[k][i].double().cpu() for k in keys}
        new = {k: old[k] + d[0].double().cpu() for k, d in zip(keys, (dm, ds), strict=True)}
        # Where a band would leave its range (a side far under the reference's at the
        # spectrum's ends), every gain moves together as far as keeps them all inside: the
        # tone is level-free. The compressor's threshold moves with them and its makeup
        # back, so what reaches the limiter differs only in that band.
        below = max(float((lo[k] - new[k]).max()) for k in keys)
        above = min(float((hi[k] - new[k]).min()) for k in keys)
        shift = min(max(0.0, below), above) if below <= above else 0.0
        new = {k: (v + shift).clamp(lo[k], hi[k]) for k, v in new.items()}
        shifts.append(shift)
        if side_mid_db is not None:
            target = side_mid_db[i]
            if predicted_db is not None:  # what the chain after the EQ did to the last pass's aim
                target -= float(audible_side_mid_db(psd, stage.sample_rate, N_FFT)[0]) - predicted_db[i]
            new["side_gain_db"] = (new["side_gain_db"] + side_trim_db(
                psd[0].double().cpu(), old, new, stage.centres_hz, stage.sample_rate, stage.n_fir, N_FFT,
                target,
            )).clamp(lo["side_gain_db"], hi["side_gain_db"])
            aims.append(target)
        for k in keys:
            rows[k][i] = new[k].to(rows[k])
    bus.load_values({f"{MATCH}.{k}": v for k, v in rows.items()})
    if any(shifts):
        # The compressor works as before on the shifted signal and gives the level back.
        for name, sign in (("threshold_db", 1.0), ("makeup_db", -1.0)):
            if f"{COMP}.{name}" not in params:
                continue
            param = params[f"{COMP}.{name}"]
            now = param.exact()
            moved = now.reshape(-1) + sign * torch.tensor(shifts, dtype=now.dtype)[: now.numel()]
            moved = moved.reshape(now.shape).clamp(param.spec.min, param.spec.max)
            bus.load_values({f"{COMP}.{name}": moved})
    return aims if side_mid_db is not None else None


# How far a delivered master's side/mid (audible band, dB) may sit from its reference's
# before the side gains are trimmed once more and the master rendered again.
SIDE_MID_TOLERANCE_DB = 0.05


@torch.no_grad()
def trim_side(bus: Bus, y: Tensor, lengths: Sequence[int], side_mid_db: Sequence[float],
              tolerance_db: float = SIDE_MID_TOLERANCE_DB) -> bool:
    """Move the match-EQ side gains of each song whose rendered master ``y`` misses its
    reference's side/mid over the audible band (``side_mid_db``, dB) by more than
    ``tolerance_db`` by the one offset that puts it there (:func:`side_trim_db`, with the
    chain after the EQ as ``y`` shows it). Whether any song moved (then render again): not
    one whose side gains already sit at their range's end that way, nor a mono master."""
    from diffmix.effects.match_eq import N_FFT, MatchEQ
    from diffmix.features import audible_side_mid_db
    from diffmix.functional.gain import mid_side
    from diffmix.functional.spectrum import welch_psd

    stage = cast(MatchEQ, bus.effects[MATCH])
    params = bus.named_values()
    mid, side = (params[f"{MATCH}.{k}"] for k in ("mid_gain_db", "side_gain_db"))
    rows = side.exact().clone()
    moved = False
    for i, n in enumerate(lengths):
        psd = welch_psd(y[i : i + 1, :, :n], N_FFT, pre=mid_side)
        if abs(float(audible_side_mid_db(psd, stage.sample_rate, N_FFT)[0]) - side_mid_db[i]) <= tolerance_db:
            continue
        gains = {"mid_gain_db": mid.exact()[i].double().cpu(), "side_gain_db": rows[i].double().cpu()}
        offset = side_trim_db(psd[0].double().cpu(), gains, gains, stage.centres_hz, stage.sample_rate,
                              stage.n_fir, N_FFT, side_mid_db[i])
        trimmed = (rows[i] + offset).clamp(side.spec.min, side.spec.max)
        if (trimmed - rows[i]).abs().max() > 1e-3:  # at a range's end (a mono reference), or mono: none
            rows[i], moved = trimmed, True
    if moved:
        bus.load_values({f"{MATCH}.side_gain_db": rows})
    return moved


def side_trim_db(psd: Tensor, old: Mapping[str, Tensor], new: Mapping[str, Tensor], centres_hz: Tensor,
                 sample_rate: int, n_fir: int, n_fft: int, target_db: float, iterations: int = 4) -> float:
    """The offset (dB) on every side gain of a match EQ that moves from gains ``old`` to
    ``new`` (``{"mid_gain_db", "side_gain_db"}``, ``(bands,)``) for which a signal with mid
    and side spectra ``psd`` ``(2, bins)`` (rendered at ``old``) reads ``target_db`` of
    side/mid over the audible band. Each bin's power moves by the change of the FIR's power
    response there (:func:`~diffmix.functional.match_eq.response`, ``n_fir`` taps); an
    offset moves the side curve by the interpolation's row sum (1 from the first band's
    lower edge up, its taper below), so the ratio is monotone in it and a few Newton steps
    solve it. Float64; exact for the EQ alone up to the spectral estimate's smoothing."""
    from diffmix.features import audible_mask
    from diffmix.functional.match_eq import interpolation, response

    mask = audible_mask(sample_rate, n_fft)

    def power(g: Tensor) -> Tensor:  # the FIR's power response on the spectrum's grid
        return response(g, centres_hz, sample_rate, n_fir, n_fft).square().clamp_min(1e-30)

    moved = {k: power(new[k]) / power(old[k]) for k in new}
    mid = (psd[0] * moved["mid_gain_db"] * mask).sum()
    side = psd[1] * moved["side_gain_db"] * mask
    reach = interpolation(centres_hz, sample_rate, n_fft).sum(1)  # (bins,)
    if not (mid > 0 and side.sum() > 0):
        return 0.0  # silence or mono: no ratio to set
    offset = torch.zeros((), dtype=torch.float64)
    for _ in range(iterations):
        p = side * torch.pow(10.0, offset * reach / 10.0)
        miss = target_db - 10.0 * torch.log10(p.sum() / mid)
        offset = offset + miss / ((p * reach).sum() / p.sum()).clamp_min(0.05)
    return float(offset)


@torch.no_grad()
def side_width_db(side_db: Tensor, lo_db: float, hi_db: float, width_max: float) -> Tensor:
    """The broadband side/mid change (dB) a width stage takes off side gains that a match
    EQ cannot reach: ``side_db`` ``(S, bands)`` are the gains each song's side needs; the
    shift ``s`` minimises what ``clip(side_db - s, lo_db, hi_db)`` still misses (squared dB,
    summed over bands), for ``s`` between ``-(hi_db - lo_db)`` and ``20 log10(width_max)``,
    and of the best shifts, the nearest to 0 (no clipping: 0). ``(S,)`` dB, float64."""
    top = 20.0 * math.log10(width_max)
    # a 0.01 dB grid of whole hundredths, so 0 is on it exactly
    shifts = torch.arange(-round(100 * (hi_db - lo_db)), math.floor(100 * top) + 1, dtype=torch.float64) / 100
    shifts = torch.cat([shifts, shifts.new_tensor([top])])  # and the width's whole reach
    g = side_db.double().unsqueeze(1) - shifts.view(1, -1, 1)  # (S, shifts, bands)
    miss = (g - g.clamp(lo_db, hi_db)).square().sum(-1)
    best = miss.amin(-1, keepdim=True)
    # ties within a thousandth of a dB^2: the shift nearest 0 (the width left at 1)
    near = torch.where(miss <= best + 1e-3, shifts.abs().view(1, -1), torch.full_like(miss, math.inf))
    return shifts[near.argmin(-1)]


@torch.no_grad()
def fold_side_into_width(bus: Bus, audios: Sequence[Any], references: Sequence[Tensor]) -> None:
    """Set the width stage in closed form, with the match EQ's side gains.

    The match EQ's side gains carry each band's side/mid balance, but only up to their
    range (+24 dB): a narrow mix matched to a wide reference needs more in many bands, and
    clipped gains leave the side's shape and level wrong. A level-compensated width ``w``
    moves every band's side/mid by ``20 log10 w`` dB, so the broadband part of the excess
    goes to the width (:func:`side_width_db`) and the side gains keep the rest; with no
    clipping the width is 1. The compressor is linked and the EQ the same on mid and side,
    so nothing else in the chain changes side/mid. One row per song. Call it once, on the
    closed-form gains of :func:`init_match` (they are the side's need at width 1).
    """
    from diffmix.effects.match_eq import SIDE_MIN_DB, MatchEQ
    from diffmix.functional.match_eq import match_gains

    params = bus.named_values()
    side_p, width_p = params[f"{MATCH}.side_gain_db"], params["width.width"]
    stage = cast(MatchEQ, bus.effects[MATCH])
    mid = params[f"{MATCH}.mid_gain_db"].exact()  # (S, bands): the refined closed-form gains
    side = side_p.exact().clone()
    hi = float(side_p.spec.max)
    rows = []
    for i, (audio, reference) in enumerate(zip(audios, references, strict=True)):
        # The song itself where it is a tensor: its band levels, measured by the closed form
        # just before (init_match), are then read from the memo, not measured again.
        x = audio if isinstance(audio, Tensor) else torch.as_tensor(audio[..., :])
        m, s = match_gains(x, reference.to(x.device), bus.sample_rate, stage.centres_hz,
                           mid_range_db=(-240.0, 240.0), side_range_db=(-240.0, 240.0))
        # Unclipped gains with the mid at its level-keeping offset; the start shifted mid and
        # side together to fit their ranges (match_gains): the side needed beside that mid.
        shift = (m[0].double().cpu() - mid[i]).median()
        rows.append(torch.where(side[i] >= hi - 1e-6, s[0].double().cpu() - shift, side[i]))
    need = torch.stack(rows)
    shift = side_width_db(need, max(SIDE_MIN_DB, float(side_p.spec.min)), hi, float(width_p.spec.max))
    bus.load_values({
        f"{MATCH}.side_gain_db": (need - shift.unsqueeze(-1)).clamp(float(side_p.spec.min), hi),
        "width.width": torch.pow(10.0, shift / 20.0).clamp(float(width_p.spec.min), float(width_p.spec.max))
        .reshape(width_p.exact().shape),
    })


def match_start(bus: Bus, audios: Sequence[Any], references: Sequence[Tensor] | None,
                target: Mapping[str, Any] | None = None) -> None:
    """The default start of the fit: with references and a ``match`` stage, its gains in
    closed form (:func:`init_match`) and the width with them (:func:`fold_side_into_width`);
    otherwise the chain's configured values."""
    if references is not None and MATCH in bus.effects:
        init_match(bus, audios, references)
        if "width" in bus.effects:
            fold_side_into_width(bus, audios, references)


def fit_stage(
    bus: Bus,
    audios: Sequence[Any],
    keys: Sequence[str],
    references: Sequence[Tensor] | None,
    target: Mapping[str, Any],
    options: FitOptions,
    *,
    start: Start = match_start,
) -> dict[str, Any] | None:
    """Start ``bus`` (``start``), fit it to what ``options`` match (if anything), then
    apply ``options.amount``.

    ``audios`` are ``(1, 2, T)`` tensors or anything sliced like them (the streamed master
    passes files on disk). Returns the fit's summary for the report, or None.
    """
    steps = options.steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UserError(f"fit.steps must be a whole number >= 0 (0: no fit), got {steps!r}")
    weights = available_weights(options.weights, reference=references is not None, target=target)
    fit_report: dict[str, Any] | None = None
    start(bus, audios, references, target)
    initial = {k: p.exact() for k, p in bus.named_values().items()}
    if weights and steps > 0:
        sr = bus.sample_rate
        device = next(bus.parameters()).device
        objective = Objective(sr, weights, reference=references, target=target).to(device)
        optimizer = options.optimizer
        if optimizer is None:
            from functools import partial

            from diffmix.optim import Adam

            optimizer = partial(Adam, lr=0.05)
        result = fit_chain(
            bus,
            audios,
            keys,
            objective,
            params=list(options.params),
            steps=steps,
            excerpt_s=float(options.excerpt_s),
            pool=int(options.pool),
            optimizer=optimizer,
            scheduler=options.scheduler,
            seed=int(options.seed),
            patience=int(options.patience),
            min_delta=float(options.min_delta),
            prior_weight=float(options.prior_weight),
            progress=bool(options.progress),
        )
        fit_report = {k: v for k, v in vars(result).items() if k != "history"}
    if options.song_dynamics and steps > 0 and references is not None and weights.get("dynamics"):
        # The steps' excerpts misjudge the song's loudness spread: the compressor is set on
        # each whole song, from where the steps left it.
        fitted = matching(bus.named_values(), options.params)
        ref = objective.ref  # the references' dynamics, as the steps compared them
        targets = [(ref["dynamics"][i : i + 1].double().cpu(), ref["crest"][i : i + 1].double().cpu())
                   for i in range(len(keys))]
        song = fit_song_dynamics(bus, audios, references, keys, fitted=fitted, initial=initial,
                                 prior_weight=float(options.prior_weight), weight=weights["dynamics"],
                                 targets=targets)
        fit_report = {**(fit_report or {}), "song_dynamics": song}
    for stage, amount in options.amount.items():
        if stage in bus.effects:
            bus.set_amount(stage, float(amount))
    return fit_report
