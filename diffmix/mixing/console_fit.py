"""The mix fit as a library call: closed-form start, gradient refinement, polish.

:func:`fit_console` takes a built console, the stems, a reference and typed options
(:class:`MixFitOptions`), and runs the stages in order, each reported in the returned
summary. The Hydra job (:mod:`diffmix.jobs.mix`) only turns its config into these
arguments and writes the files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffmix.bus_memo import remember_prefixes
from diffmix.checks import check_audio, check_multitrack, input_checks
from diffmix.console import Console
from diffmix.effects.gain import Pan, Width
from diffmix.fit import draw, excerpt_pool, excerpt_starts, fit
from diffmix.functional.loudness import integrated_loudness
from diffmix.losses import MRSTFTLoss
from diffmix.mixing.analysis import loudest_window
from diffmix.mixing.style_master import LIMITER, style_master
from diffmix.mixing.wiring import (
    compressor_refine,
    compressor_start,
    console_estimate,
    eq_band_start,
    eq_refine,
    hold_levels,
    initialise_console,
    master_compressor_start,
    placement_resolve,
    polish_levels,
    send_resolve,
    track_loudness,
)
from diffmix.objective import REFERENCE_TERMS, Objective

POLISH_CHUNK_S = 10.0
SIDE_TERMS = ("tone_side", "width", "correlation")


@dataclass
class MixFitOptions:
    """How :func:`fit_console` fits (the ``fit`` and ``loss`` groups of ``configs/mix.yaml``).

    Attributes:
        weights: objective term -> weight (``mrstft`` and :mod:`diffmix.objective` terms).
        params: parameter path patterns the gradient steps move.
        init: ``"nnls"`` (closed-form start) or ``"none"``.
        coherent: with ``aligned``, the closed form solves on complex spectra.
        polish: with ``aligned``, re-set each fader to the closed form's loudness.
        steps, excerpt_s, excerpts, pool, patience, seed: the gradient stage.
        hold_levels: after each refine stage and after the gradient steps, each track's
            fader is moved so its loudness (alone through the console, whole song) is what
            it was before that stage (:func:`~diffmix.mixing.wiring.hold_levels`); those
            stages keep their tone, dynamics and placement, the levels stay the closed-form
            stages'. Only after the closed-form start.
        hold_placement: after the coherent start, the gradient steps leave every pan and
            width where the closed-form stages put them: those measured each placement on
            the whole song, each band counted by how well the data show it, while Adam moves
            a parameter about ``lr`` a step however weakly the excerpts' loss determines it
            (a quiet track alike a loud one: BENCHMARKS.md, Mixing, session 18).
        prior, gain_staging: weights of the pull toward the start and of the clip penalty.
        mrstft: keyword arguments of :class:`~diffmix.losses.MRSTFTLoss`.
        aligned: the reference is a mix of these very stems.
        eq_bands: with the coherent start, set each strip EQ's band frequencies, gains and
            Qs from the tone the start measured for its stem
            (:func:`~diffmix.mixing.wiring.eq_band_start`); a judged stage.
        compressor_start: with the coherent start, start the master compressor from the
            gain the reference shows against the mix
            (:func:`~diffmix.mixing.wiring.master_compressor_start`), then each strip
            compressor from its own frame gains with the master's taken out
            (:func:`~diffmix.mixing.wiring.compressor_start`); two judged stages.
        placement: with the coherent start, re-solve each track's pan, width and fader on
            its strip's output (:func:`~diffmix.mixing.wiring.placement_resolve`), then,
            as a stage of its own, the send levels
            (:func:`~diffmix.mixing.wiring.send_resolve`).
        compressor_refine: with the coherent start, after the placement and sends, re-fit
            each strip compressor on its track's share of the reference at short frames,
            then the placement (:func:`~diffmix.mixing.wiring.compressor_refine`); judged.
        eq_refine: with the coherent start, after the compressor refine, re-measure each
            strip's tone on its output (dynamics included) and refit its EQ, then the
            placement (:func:`~diffmix.mixing.wiring.eq_refine`); a judged stage. Both
            refines cost an 8-stem fit about a third more time (BENCHMARKS.md, Mixing,
            sessions 12-13).
        refine_s: both refines fit on the reference's loudest this many seconds
            (:func:`~diffmix.mixing.analysis.loudest_window`; 0: the whole song); a song
            no longer than that is fitted whole.
        match_loudness: last, move every fader by one amount so the mix's integrated
            loudness is the reference's.

    Every stage is kept only where it lowers the objective on the full length
    (:class:`FullLengthJudge`); the summary lists each with its score before and after.
    """

    weights: dict[str, float]
    params: Sequence[str]
    init: str = "nnls"
    coherent: bool = True
    polish: bool = True
    steps: int = 40
    excerpt_s: float = 1.0
    excerpts: int = 1
    pool: int = 8
    patience: int = 12
    seed: int = 0
    prior: float = 0.1
    gain_staging: float = 0.1
    mrstft: dict[str, Any] = field(default_factory=dict)
    aligned: bool = True
    hold_levels: bool = True
    hold_placement: bool = True
    eq_bands: bool = True
    compressor_start: bool = True
    placement: bool = True
    compressor_refine: bool = True
    eq_refine: bool = True
    refine_s: float = 60.0
    match_loudness: bool = True


def equal_loudness_gains(stems: Tensor, sr: int, level_lufs: float = -30.0) -> Tensor:
    """Input gains (dB) that bring every stem of ``(1, N, C, T)`` to ``level_lufs``;
    silent stems get 0 dB."""
    lufs = integrated_loudness(stems[0], sr)
    gains = torch.where(torch.isfinite(lufs), level_lufs - lufs, torch.zeros_like(lufs))
    return gains.clamp(-60.0, 24.0)


def fit_console(
    console: Console,
    audio: Tensor,
    reference: Tensor | None,
    sample_rate: int,
    options: MixFitOptions,
    *,
    optimizer: Callable[[Sequence[Tensor]], torch.optim.Optimizer],
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    lag: int | None = None,
    checkpoint: Path | None = None,
    progress: bool = False,
    log_path: Path | None = None,
    tag: str = "mix",
) -> dict[str, Any] | None:
    """Fit ``console`` so that it mixes ``audio`` toward ``reference``.

    Args:
        console: a one-song :class:`~diffmix.console.Console` for the stems (modified).
        audio: ``(1, N, 2, T)`` stems on the console's device.
        reference: ``(1, 2, T')`` the reference mix, or None (equal loudness only).
        sample_rate: Hz.
        options: :class:`MixFitOptions`.
        optimizer, scheduler: factories (Hydra ``_partial_`` objects).
        lag: the reference's lag against the stems when already found (samples).
        checkpoint, progress, log_path, tag: passed to :func:`diffmix.fit.fit`.

    Returns:
        The fit summary for the report (the gradient stage's result, ``init`` and
        ``polish`` summaries), or None when nothing was fitted.
    """
    check_multitrack(audio, "fit_console", name="audio")
    if reference is not None:
        check_audio(reference, "fit_console", name="reference")
    # Checked once here: the per-effect NaN/Inf scans (a host sync each) stay off inside.
    # The stages and the judge render the strips on the whole song again and again, mostly
    # with the input gain, high-pass and EQ unchanged: those renders are kept
    # (diffmix.bus_memo; without a gradient, the same values give the same tensor), and so
    # are the master bus's lead stages on them (wiring's solves run those on each strip).
    with (input_checks(False), remember_prefixes(console.strip),
          remember_prefixes(console.master, inputs=1, of=console.strip)):
        sr = sample_rate
        console.load_values({"strip.input.gain_db": equal_loudness_gains(audio, sr).cpu()})
        mono_ref = reference is not None and bool(torch.equal(reference[:, 0], reference[:, 1]))
        weights = {k: float(v) for k, v in options.weights.items() if float(v) > 0}
        if mono_ref:
            weights = {k: v for k, v in weights.items() if k not in SIDE_TERMS}
        aligned = reference is not None and options.aligned
        if not aligned:
            weights.pop("mrstft", None)
        if reference is None:
            weights = {k: v for k, v in weights.items() if k not in REFERENCE_TERMS}
        judge = None
        if reference is not None:
            judge = FullLengthJudge(console, audio, reference, sr, weights, options)
        stages: list[dict[str, Any]] = []
        # Each track's loudness where the closed-form stages left it, once measured: every
        # held stage ends there or is reverted to a state that was there.
        levels: dict[str, Tensor] = {}
        init_report = None
        estimate = None
        # Another song's mix: no waveform in common, so its tone, width, dynamics and level
        # are set as features on the master bus (diffmix.mixing.style_master), each stage
        # judged; its limiter then holds the loudness, and no excerpt can show a loudness
        # range, so the gradient steps and the fader loudness stage are left out.
        toward_song = reference is not None and not aligned and LIMITER in console.master.effects
        if reference is not None and options.init == "nnls" and not aligned:
            init_report = style_master(
                console, audio, reference, sr,
                lambda name, run, required=False: judge.stage(  # type: ignore[union-attr]
                    name, run, stages, required=required),
            )
        elif reference is not None and options.init == "nnls":
            # The first stage: gains, pan, width and coarse tone in closed form
            # (diffmix.mixing.solvers), then each compressor from the gain the mix shows.
            t_init = time.perf_counter()
            estimate = console_estimate(
                console, audio, reference, sr, coherent=options.aligned and options.coherent, lag=lag
            )
            init_report = judge.stage(  # type: ignore[union-attr]
                "closed form",
                lambda: initialise_console(console, audio, reference, sr, estimate=estimate),
                stages,
            )
            if options.eq_bands and estimate.tone_db is not None and init_report.get("kept"):
                # The strip EQ's band frequencies, gains and Qs from the stem's measured tone
                # (the closed form fits only the gains, at the console's fixed frequencies);
                # on the closed form's levels, so only where that stage was kept.
                init_report["eq bands"] = judge.stage(  # type: ignore[union-attr]
                    "eq bands", lambda: eq_band_start(console, estimate, sr), stages
                )
            if estimate.frame_gain is not None and options.compressor_start:
                # The master compressor first (one gain curve on every track, read off the
                # reference against the mix), then each strip's from its own frame gains with
                # the master's taken out.
                init_report["master compressor"] = judge.stage(  # type: ignore[union-attr]
                    "master compressor",
                    lambda: master_compressor_start(console, audio, reference, sr),
                    stages,
                )
                init_report["compressor"] = judge.stage(  # type: ignore[union-attr]
                    "compressor start", lambda: compressor_start(console, audio, estimate, sr), stages
                )
            if estimate.coherent and options.placement:
                # Pan, width and fader again, on what the strips now make of the stems
                # (compressors included): the first solve's residual leaks into quiet tracks.
                init_report["placement"] = judge.stage(  # type: ignore[union-attr]
                    "placement", lambda: placement_resolve(console, audio, reference, sr, sends=False), stages
                )
                if console.sends:
                    # The send levels judged on their own: a reverb that takes up what the
                    # strips' dynamics miss must not cost the placement its place.
                    init_report["sends"] = judge.stage(  # type: ignore[union-attr]
                        "sends", lambda: send_resolve(console, audio, reference, sr), stages
                    )
            # The refine stages fit on the reference's loudest refine_s seconds (a song no
            # longer than that whole; judged on the whole song like every stage).
            a, b = loudest_window(reference[..., : audio.shape[-1]], sr, float(options.refine_s))
            part, part_ref = audio[..., a:b], reference[..., a:b]
            hold_refines = options.hold_levels and "strip.fader.gain_db" in console.named_values()
            if estimate.coherent and options.compressor_refine and estimate.frame_gain is not None:
                # Each compressor again, on its track's share of the reference at 6 ms
                # frames, with everything placed (the start read 93 ms frames of the stem).
                init_report["compressor refine"] = judge.stage(  # type: ignore[union-attr]
                    "compressor refine",
                    _holding(lambda: compressor_refine(console, part, part_ref, sr), console, audio, sr,
                             hold_refines, levels),
                    stages,
                )
            if estimate.coherent and options.eq_refine:
                # The tone again, on the strips' outputs with the dynamics as now set: the
                # closed form read a compressor's moving gain as tone.
                init_report["eq refine"] = judge.stage(  # type: ignore[union-attr]
                    "eq refine",
                    _holding(lambda: eq_refine(console, part, part_ref, sr), console, audio, sr,
                             hold_refines, levels),
                    stages,
                )
            init_report["seconds"] = round(time.perf_counter() - t_init, 3)
        fit_report: dict[str, Any] | None = None
        if reference is not None and weights and options.steps > 0 and not toward_song:
            ref = reference
            length_all = min(audio.shape[-1], ref.shape[-1]) if aligned else audio.shape[-1]
            length = min(length_all, int(round(options.excerpt_s * sr)))
            # Every term of the step's loss is the objective's: the features, the MR-STFT
            # against the aligned reference, and the clip penalty (gain staging).
            terms = dict(weights)
            if float(options.gain_staging):
                terms["gain_staging"] = float(options.gain_staging)
            mrstft = "mrstft" in terms

            def objective_for(piece: Tensor | None) -> Objective:
                return Objective(sr, terms, reference=piece if aligned and piece is not None else ref,
                                 mrstft=options.mrstft, mono=mono_ref).to(audio.device)

            pool = int(options.pool or 0)
            excerpts = excerpt_pool(length_all, length, pool) if pool else []
            # A fixed pool of excerpts spread over the song: each one's reference side (its
            # MR-STFT magnitudes, its features) is computed once instead of every step.
            cached = []
            for s0 in excerpts:
                piece = ref[..., s0 : s0 + length]
                obj = objective_for(piece)
                cached.append((obj, obj.mrstft_reference(piece) if mrstft else None))
            objective = None if pool else objective_for(None)
            params = console.select(list(options.params))
            frozen: list[Tensor] = []
            if options.hold_placement and estimate is not None and estimate.coherent:
                params, frozen = _without_placement(console, params)
            prior_w = float(options.prior)
            initial = {k: p.exact().to(audio.device) for k, p in console.named_values().items()}
            per_step = int(options.excerpts)

            def closure(step: int) -> tuple[Tensor, dict[str, float]]:
                total = audio.new_zeros(())
                terms_out: dict[str, float] = {}
                if pool:
                    picks = [(step * per_step + j) % len(excerpts) for j in range(per_step)]
                    windows = [(excerpts[i], *cached[i]) for i in picks]
                else:
                    starts = excerpt_starts(length_all, length, per_step, draw(int(options.seed), step))
                    windows = [(s0, objective, None) for s0 in starts]
                for s0, obj, ref_mags in windows:
                    y = console(audio[..., s0 : s0 + length])
                    if mrstft and ref_mags is None:
                        ref_mags = obj.mrstft_reference(ref[..., s0 : s0 + length])
                    loss, parts = obj(y, aligned_mags=ref_mags)
                    total = total + loss.mean()
                    for k, v in parts.items():
                        terms_out[k] = terms_out.get(k, 0.0) + float(v.detach().mean())
                if prior_w:
                    prior = console.prior(initial)
                    total = total + prior_w * prior
                    terms_out["prior"] = float(prior.detach())
                return total, terms_out

            before_fit = judge.console.snapshot() if judge is not None else None
            # The closed-form stages measured each track's level on the whole song; the
            # steps see 1 s excerpts through a console that cannot reproduce every render,
            # and trade a level for a tone there (BENCHMARKS.md, Mixing, session 15).
            hold = (estimate is not None and options.hold_levels
                    and "strip.fader.gain_db" in console.named_values())
            if hold and "want" not in levels:
                levels["want"] = track_loudness(console, audio, sr)
            held = levels.get("want") if hold else None
            try:
                result = fit(
                    params,
                    closure,
                    steps=int(options.steps),
                    optimizer=optimizer,
                    scheduler=scheduler,
                    patience=int(options.patience),
                    # With a fixed pool each step scores another excerpt: progress is judged on
                    # the mean over whole passes through the pool.
                    cycle=max(1, len(excerpts)),
                    checkpoint=checkpoint,
                    progress=progress,
                    log_path=log_path,
                    tag=tag,
                )
            finally:  # the held values are the console's again once the steps are done
                for raw in frozen:
                    raw.requires_grad_(True)
            fit_report = {k: v for k, v in vars(result).items() if k != "history"}
            if held is not None:
                fit_report["hold levels"] = hold_levels(console, audio, sr, held)
            if judge is not None and before_fit is not None:
                judge.judge("gradient steps", before_fit, stages)
            if estimate is not None and aligned and options.polish:
                # Each track's loudness back to the closed-form estimate, which sees quiet
                # tracks that the waveform loss trades away (diffmix.mixing.wiring). Measured
                # over the whole song (in chunks): a sparse track (a crash) may sound in none
                # of the excerpts.
                chunk = min(audio.shape[-1], int(POLISH_CHUNK_S * sr))
                fit_report["polish"] = judge.stage(  # type: ignore[union-attr]
                    "polish",
                    lambda: polish_levels(
                        console, audio, estimate, sr, starts=list(range(0, audio.shape[-1], chunk)),
                        length=chunk,
                    ),
                    stages,
                )
        if (judge is not None and options.match_loudness and not toward_song
                and "strip.fader.gain_db" in console.named_values()):
            fit_report = fit_report or {}
            # Where the reference is a mix of these stems (the coherent start held) its loudness
            # is a target in its own right (an MR-STFT optimum can sit a few tenths of a dB off
            # it): not judged, its score still reported. Toward a producer's render, which
            # carries its own processing, it is judged like any stage.
            required = estimate is not None and estimate.coherent
            fit_report["loudness"] = judge.stage(
                "loudness", lambda: match_loudness(console, audio, reference, sr), stages, required=required
            )
        if init_report is not None:
            fit_report = {**(fit_report or {}), "init": init_report}
        if stages:
            fit_report = {**(fit_report or {}), "stages": stages}
        return fit_report


def _without_placement(
    console: Console, params: list[torch.nn.Parameter]
) -> tuple[list[torch.nn.Parameter], list[Tensor]]:
    """``params`` less the strip's pan and width values, and those values, their gradients
    turned off for the steps (the caller turns them on again)."""
    names = {name for name, e in console.strip.effects.items() if isinstance(e, (Pan, Width))}
    held: list[Tensor] = []
    for key, value in console.named_values().items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "strip" and parts[1] in names:
            held.append(value.raw)
    frozen = [raw for raw in held if raw.requires_grad]
    for raw in frozen:
        raw.requires_grad_(False)
    return [p for p in params if not any(p is h for h in held)], frozen


def _holding(
    run: Callable[[], dict[str, Any]], console: Console, audio: Tensor, sample_rate: int, hold: bool,
    levels: dict[str, Tensor],
) -> Callable[[], dict[str, Any]]:
    """``run`` (a stage that fits tone or dynamics) followed by
    :func:`~diffmix.mixing.wiring.hold_levels` to each track's loudness over the whole
    song before it (``levels["want"]``, measured here the first time), when ``hold``; its
    report gains ``"hold levels"``."""
    if not hold:
        return run

    def held() -> dict[str, Any]:
        if "want" not in levels:
            levels["want"] = track_loudness(console, audio, sample_rate)
        report = run()
        report["hold levels"] = hold_levels(console, audio, sample_rate, levels["want"])
        return report

    return held


class FullLengthJudge:
    """Scores the console on the whole song and keeps a stage only if it lowers the score.

    The score is the fit's own objective (its weighted terms, MR-STFT included) on the
    full-length render against the whole reference, so a stage judged on excerpts or on
    a proxy (the closed form, the polish) cannot make the mix worse unnoticed.
    """

    def __init__(
        self,
        console: Console,
        audio: Tensor,
        reference: Tensor,
        sample_rate: int,
        weights: dict[str, float],
        options: MixFitOptions,
    ) -> None:
        self.console, self.audio, self.sample_rate = console, audio, sample_rate
        aligned = options.aligned
        n = min(audio.shape[-1], reference.shape[-1]) if aligned else audio.shape[-1]
        self.length = n
        self.reference = reference[..., :n] if aligned else reference
        features = {k: v for k, v in weights.items() if k != "mrstft"}
        self.objective = Objective(sample_rate, features, reference=self.reference) if features else None
        self.mrstft_w = weights.get("mrstft", 0.0)
        self.mrstft = (
            MRSTFTLoss(sample_rate, **dict(options.mrstft)).to(audio.device) if self.mrstft_w else None
        )
        # The reference side of the MR-STFT is fixed: its magnitudes once, not every score.
        self.ref_mags = self.mrstft.reference(self.reference) if self.mrstft is not None else None
        self.score_now: float | None = None

    def score(self) -> float:
        with torch.no_grad():
            y = self.console(self.audio[..., : self.length])
            total = 0.0
            if self.objective is not None:
                total += float(self.objective(y)[0].mean())
            if self.mrstft is not None and self.ref_mags is not None:
                total += self.mrstft_w * float(self.mrstft.distance(y, self.ref_mags).mean())
        return total

    def judge(
        self, name: str, before: dict[str, Tensor], stages: list[dict[str, Any]], required: bool = False
    ) -> bool:
        """Score the change since ``before``; revert it unless it lowered the score (or is
        ``required``)."""
        was = self.score_now if self.score_now is not None else self._score_of(before)
        got = self.score()
        kept = got < was or required
        if not kept:
            self.console.load_values(before)
        self.score_now = got if kept else was
        stages.append({"stage": name, "before": round(was, 5), "after": round(got, 5), "kept": kept})
        return kept

    def _score_of(self, values: dict[str, Tensor]) -> float:
        current = self.console.snapshot()
        self.console.load_values(values)
        s = self.score()
        self.console.load_values(current)
        return s

    def stage(
        self,
        name: str,
        run: Callable[[], dict[str, Any]],
        stages: list[dict[str, Any]],
        required: bool = False,
    ) -> dict[str, Any]:
        """Run one stage and keep it only if the full-length score went down (or it is
        ``required``)."""
        before = self.console.snapshot()
        if self.score_now is None:
            self.score_now = self.score()
        report = run()
        report["kept"] = self.judge(name, before, stages, required)
        return report


def match_loudness(console: Console, audio: Tensor, reference: Tensor, sample_rate: int) -> dict[str, Any]:
    """Put the mix's integrated loudness on the reference's.

    On the master bus's last stage when it is a :class:`~diffmix.effects.gain.Gain`
    (loudness is homogeneous in the level, so one step is exact); otherwise every fader by
    one amount, by secant steps (a master compressor passes only part of a fader move).
    """
    from diffmix.effects.gain import Gain

    target = float(integrated_loudness(reference.double(), sample_rate)[0])
    values = console.named_values()
    effects = list(console.master.effects.items())
    if effects and isinstance(effects[-1][1], Gain):
        param = values[f"master.{effects[-1][0]}.gain_db"]
        how = "the master bus's output gain"
        slope = 1.0
    else:
        param = values["strip.fader.gain_db"]
        how = "one gain on every fader"
        slope = 1.0
    moved, last = 0.0, None
    for _ in range(8):
        with torch.no_grad():
            got = float(integrated_loudness(console(audio).double(), sample_rate)[0])
        diff = target - got
        if not math.isfinite(diff) or abs(diff) < 0.005:
            break
        if last is not None and abs(last[1]) > 1e-6:
            slope = min(max((got - last[0]) / last[1], 0.05), 1.0)
        step = diff / slope
        now = param.exact().double()
        new = (now + step).clamp(param.spec.min, param.spec.max)
        param.set(new)
        taken = float((new - now).flatten()[0])
        moved += taken
        last = (got, taken)
    return {"method": how, "change_db": round(moved, 3)}
