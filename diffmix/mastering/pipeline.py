"""Mastering one song or a group of songs: fit, solve, deliver, report.

:func:`master_group` masters songs held in memory together (one optimiser, per-song
parameters); :func:`master_file` masters one file of any length in bounded memory, chunk
by chunk, with the same fit, loudness solve, delivery and report: each song is delivered
and measured by one path (:func:`~diffmix.mastering.deliver.deliver_chunks`), for which an
in-memory song is a single chunk. Both take typed
arguments: a :class:`~diffmix.mastering.chain.ChainSpec`, :class:`~diffmix.mastering.fit.FitOptions`
and :class:`MasterOptions`; the jobs build them from their configs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffmix.checks import MAX_SAMPLE_RATE
from diffmix.config import save_preset
from diffmix.console import Bus
from diffmix.effects.match_eq import N_FFT
from diffmix.errors import UserError
from diffmix.features import SIDE_FLOOR_DB, audible_side_mid_db, spectral_errors
from diffmix.functional.spectrum import mid_side_psd
from diffmix.io import check_outputs
from diffmix.listen import Take, gain_reduction_series, job_warnings, prepare_take, write_listening_report
from diffmix.mastering.chain import MATCH, ChainSpec
from diffmix.mastering.deliver import DeliveryOptions, deliver_chunks
from diffmix.mastering.fit import (
    FitOptions,
    Start,
    fit_stage,
    match_start,
    pad_batch,
    reference_levels,
    refine_match,
    trim_side,
)
from diffmix.mastering.loudness import (
    last_slope,
    loudness_goals,
    measure_lufs,
    reference_fallback,
    rough_lufs,
    solvable,
    solve,
    solve_loudness,
)
from diffmix.mastering.render import StreamRenderer, render_with_drive, smooth_render
from diffmix.mastering.report import draw, finish, master_report
from diffmix.mastering.source import DiskAudio, measure_file, release_memory
from diffmix.report import summary as measure

log = logging.getLogger(__name__)

MIN_SECONDS = 1.0
MIN_JOB_RATE = 22050  # the default chain's EQ bands and filters need this much bandwidth
DC_LIMIT = 1e-3  # polish=auto removes a DC offset only above -60 dBFS


@dataclass
class MasterOptions:
    """How songs are mastered beyond the chain and the fit (the master job's options).

    Args:
        tolerance_lu: the loudness solve stops within this of the target.
        match_refine: with a match EQ, passes that fold the whole master's remaining tone
            error into it.
        polish: ``"off"`` or ``"auto"`` (repair clicks, clipped runs and DC before the chain).
        plot: also write a PNG of the plots (in memory only).
        report: write the HTML listening report.
        seed: the dither's.
        delivery: how the master is written.
        chunk_s, context_s: the streamed master's chunk and base left context, seconds.
    """

    tolerance_lu: float = 0.02
    match_refine: int = 2
    polish: str = "off"
    plot: bool = False
    report: bool = True
    seed: int = 0
    delivery: DeliveryOptions = field(default_factory=DeliveryOptions)
    chunk_s: float = 30.0
    context_s: float = 2.0

    def __post_init__(self) -> None:
        if self.polish not in ("off", "auto"):
            raise ValueError(f"polish must be auto or off, got {self.polish!r}")


class _Clock:
    """Seconds spent per stage, for the report's ``timings_s``."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.spent: dict[str, float] = {}

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.spent[stage] = round(self.spent.get(stage, 0.0) + now - self.last, 3)
        self.last = now


@dataclass
class Song:
    """One song to master: ``audio`` and ``reference`` are ``(1, 2, T)``; ``protect``: files
    no output may overwrite, the song's own input first (messages name the song by it)."""

    key: str
    audio: torch.Tensor
    out: Path
    stem: str
    reference: torch.Tensor | None = None
    target: dict[str, Any] = field(default_factory=dict)
    protect: tuple[str, ...] = ()
    polish: dict[str, Any] | None = None  # what the polish stage repaired (None: stage off)

    @property
    def name(self) -> str:
        """How messages name the song: its input file, else its key."""
        return str(self.protect[0]) if self.protect else self.key


def polish_auto(audio: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The ``polish=auto`` stage before the chain: repair the clipped runs and clicks that
    analysis finds, and a DC offset above :data:`DC_LIMIT`; returns ``(audio, report)``."""
    from diffmix.polish import polish

    dc = bool(audio.mean(-1).abs().amax() > DC_LIMIT)
    with torch.no_grad():
        out, report = polish(audio, sample_rate, dc=dc)
    return out, report


def _check_has_mid(song: Song) -> None:
    """Refuse a reference match for a song with no mid at all (its channels cancel: one
    polarity inverted). Every stage is linear in mid and side, so none can make a mid, and
    a match that sets the side against the reference's mid would cut the whole song (the
    side) to nothing; mastered to a spec alone, it is only made loud."""
    psd = mid_side_psd(song.audio, N_FFT)  # measured once per signal: the match EQ reads it too
    mid, side = (float(v) for v in psd[0].sum(-1))
    if side > 0 and mid <= 10.0 ** (SIDE_FLOOR_DB / 10.0) * side:
        raise UserError(
            f"{song.name}: its channels cancel (no mid: one channel's "
            "polarity is inverted), so no chain can match a reference's tone or width to it; flip "
            "one channel's polarity first"
        )


def _save_preset(bus: Bus, path: Path) -> dict[str, Any]:
    save_preset(bus, path)
    return bus.preset()


def master_group(
    songs: list[Song], sample_rate: int, spec: ChainSpec, fit: FitOptions, options: MasterOptions,
    *, start: Start = match_start,
) -> list[dict[str, Any]]:
    """Master ``songs`` together (one optimiser, per-song parameters); returns their reports.

    Songs in a group must agree on whether they have a reference and on the fit terms.
    ``start`` sets where the fit starts (:func:`~diffmix.mastering.fit.fit_stage`).
    """
    t0 = time.perf_counter()
    clock = _Clock()
    sr = sample_rate
    for s in songs:
        if s.audio.shape[-1] < MIN_SECONDS * sr:
            raise UserError(
                f"{s.key}: input is too short to master ({s.audio.shape[-1] / sr:.2f} s; "
                f"need at least {MIN_SECONDS:g} s)"
            )
    if sr < MIN_JOB_RATE:
        raise UserError(
            f"{songs[0].name}: {sr} Hz is below "
            f"the {MIN_JOB_RATE} Hz the mastering chain is designed for (supported: "
            f"{MIN_JOB_RATE} to {MAX_SAMPLE_RATE} Hz); pass delivery.sample_rate=44100 to "
            "master it at 44.1 kHz"
        )
    if sr > MAX_SAMPLE_RATE:
        raise UserError(f"{songs[0].key}: {sr} Hz is above the supported {MAX_SAMPLE_RATE} Hz")
    fmt, _ = options.delivery.checked()
    for song in songs:  # the preset, reports and plot may not overwrite an input either
        check_outputs(tuple(song.out / f"{song.stem}{s}" for s in (
            f".{fmt}", "_preset.yaml", "_report.json", "_report.html", ".png")), song.protect)
    if options.polish == "auto":
        for s in songs:
            peak = float(s.audio.abs().amax())
            s.audio, s.polish = polish_auto(s.audio, sr)
            # A constant: its DC offset was all there was (what is left is rounding, -120 dB down).
            if peak > 0 and float(s.audio.abs().amax()) <= 1e-6 * peak:
                raise UserError(f"{s.name}: nothing is left once polish removes its DC offset (the input "
                                "is a constant): there is no sound to master")
    for s in songs:
        if s.reference is not None:
            _check_has_mid(s)
    # What depends on the inputs alone (their report measurements, their drawing on the
    # listening page and its preview) is measured on a worker thread while the main one
    # fits and renders, and the plot drawn there after it: the chain's recursions leave a
    # core free, and the torch and numba work on both sides releases the GIL.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffmix-worker")
    try:
        # A group's pages (their previews: ~15 MB a song) are prepared song by song at
        # delivery instead, so a batch never holds all of them.
        page = options.report and len(songs) == 1
        inputs = [pool.submit(_measure_input, s, sr, page) for s in songs]
        return _master(songs, sr, spec, fit, options, start, pool, inputs, t0, clock)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _measure_input(song: Song, sr: int, page: bool) -> dict[str, Any]:
    """What the report shows of the song's input and reference, which the master does not
    change: their measurements (``before``, ``reference``), the input's tone error against
    the reference (``error_before``), and with ``page`` the listening page's takes
    (``takes``: label -> :class:`~diffmix.listen.PreparedTake`; previews are written with
    the page, once the master is delivered)."""
    out: dict[str, Any] = {"before": measure(song.audio, sr), "takes": {}}
    if song.reference is not None:
        out["reference"] = measure(song.reference, sr)
        out["error_before"] = spectral_errors(song.audio.cpu(), song.reference.cpu(), sr)
    if page:
        for label, audio in (("input", song.audio), ("reference", song.reference)):
            if audio is not None:
                lufs = out["before" if label == "input" else "reference"]["integrated_lufs"]
                out["takes"][label] = prepare_take(Take(label, audio.cpu()), _page(song), sr, lufs)
    return out


def _page(song: Song) -> Path:
    return song.out / f"{song.stem}_report.html"


def _delivered_path(out: Path, stem: str, options: MasterOptions) -> Path:
    return out / f"{stem}.{options.delivery.checked()[0]}"


def _drives(solves: Sequence[Any]) -> torch.Tensor:
    """Each song's solved limiter drive, dB (0 where no loudness was solved), float64."""
    return torch.tensor([0.0 if s is None else s.drive_db for s in solves], dtype=torch.float64)


# At most this many closed-loop side trims after the last refine pass (each a render and a
# loudness solve, only for a master whose side/mid misses its reference's by more than
# :data:`~diffmix.mastering.fit.SIDE_MID_TOLERANCE_DB`).
SIDE_TRIMS = 2


def _master(songs: list[Song], sr: int, spec: ChainSpec, fit: FitOptions, options: MasterOptions,
            start: Start, pool: ThreadPoolExecutor, inputs: list[Future], t0: float,
            clock: _Clock) -> list[dict[str, Any]]:
    """:func:`master_group` after its checks, with the inputs measured on ``pool``."""
    device = songs[0].audio.device
    has_ref = [s.reference is not None for s in songs]
    if len(set(has_ref)) > 1:
        raise ValueError("master_group: songs with and without references can't share a group")
    references = [s.reference for s in songs if s.reference is not None]  # every song's, or none
    match = has_ref[0] and bool(spec.match_eq)
    bus = spec.build(len(songs), match=match).to(device)
    fit_report = fit_stage(
        bus, [s.audio for s in songs], [s.key for s in songs], references if has_ref[0] else None,
        songs[0].target, fit, start=start,
    )
    release_memory()  # the fit's freed buffers, held by the heap: the renders' peak comes next
    clock("fit")
    x, lengths = pad_batch([s.audio for s in songs])
    goals = loudness_goals([s.target for s in songs], [s.reference for s in songs], sr)
    # Why a song's goal moved (a reference's loudness out of reach under the ceiling: the
    # first solve that finds it so aims lower, and every later one starts from there).
    moved: list[str | None] = [None] * len(songs)
    names = [s.name for s in songs]

    def fallback(i: int, limited: float | None) -> tuple[float, str] | None:
        goal = goals[i]
        return None if goal is None else reference_fallback(songs[i].target, songs[i].reference, sr, goal,
                                                            limited)

    def render_and_solve(start_db: torch.Tensor | None = None, exact: bool = True,  # noqa: ANN202
                         slope: torch.Tensor | None = None, history: list | None = None):
        """The chain rendered and its drives solved; ``exact=False`` solves on the smooth
        limiter alone where it has one (a render whose tone is measured, not delivered);
        ``slope`` and ``history`` as :func:`~diffmix.mastering.loudness.solve_loudness`'s."""
        render = render_with_drive(bus, x, exact=exact)
        clock("render_chain")
        if any(g is None for g in goals):
            return render, render(torch.zeros(len(songs), dtype=torch.float64)), [None] * len(songs)
        targets = torch.tensor(goals, dtype=torch.float64)
        if start_db is None:
            pre = measure_lufs(render.pre, lengths, sr).double().cpu()  # type: ignore[attr-defined]
            start_db = targets - pre
            if not torch.isfinite(pre).all():
                # A pre-limiter level under the -70 LUFS gate (but not silence) starts from its RMS.
                rough = rough_lufs(render.pre, lengths).clamp_min(-300.0)  # type: ignore[attr-defined]
                start_db = torch.where(torch.isfinite(pre), start_db, targets - rough)
        proxy = render.proxy  # type: ignore[attr-defined]
        y, solves = solve_loudness(
            render if exact or proxy is None else proxy, lengths, sr, targets,
            tolerance_lu=float(options.tolerance_lu), start_db=start_db, proxy=proxy if exact else None,
            drive_range=render.drive_range,  # type: ignore[attr-defined]
            names=names, slope=slope, history=history, fallback=fallback,
        )
        for i, solved in enumerate(solves):
            if solved.fallback is not None:
                log.warning("%s: %s", names[i], solved.fallback)
                goals[i], moved[i] = solved.target_lufs, solved.fallback
            elif moved[i] is not None:
                solves[i] = dataclasses.replace(solved, fallback=moved[i])
        return render, y, solves

    passes = int(options.match_refine) if match else 0
    # With refine passes to come, the first master is only measured for its tone: the smooth
    # limiter's (the exact correction moves a band by < 0.01 dB) at drives solved on it.
    history: list = []  # the first solve's (drives, LUFS): its slope starts the last one
    render, y, solves = render_and_solve(exact=not passes, history=history)
    if passes:
        # The fit matched excerpts; the delivered tone is the whole song's. Measure it, fold
        # what is left into the match EQ, and render again: between passes at the solved
        # drives through the smooth limiter (the tone is the same; the drives barely move),
        # after the last one exactly, solving the loudness again from those drives.
        last = _drives(solves)
        ref_db = reference_levels(bus, references)
        # With width matched, each pass also lands the side/mid on the reference's.
        ratios = (None if not fit.weights.get("width") else
                  [float(audible_side_mid_db(mid_side_psd(r, N_FFT), sr, N_FFT)[0]) for r in references])
        del render  # its pre-limiter signal and buffers: each pass renders afresh
        aims = None  # the side/mid each pass aimed at: the next pass reads the chain's bias off it
        for k in range(passes):
            aims = refine_match(bus, y, lengths, references, ref_db, ratios, aims)
            del y  # measured: the next render may take its memory
            if k < passes - 1:
                y = smooth_render(bus, x, last)
        clock("loudness_solve")
        release_memory()
        render, y, solves = render_and_solve(None if solves[0] is None else last, slope=last_slope(history))
        widths = ratios or []  # each reference's side/mid, where width is matched
        for _ in range(SIDE_TRIMS if widths else 0):
            if not trim_side(bus, y, lengths, widths):
                break
            # The chain after the EQ (a limiter ducking on the mid's bass) moved the width past
            # the last pass's aim: trimmed as this master shows it, rendered and solved again.
            last = _drives(solves)
            del render, y
            release_memory()
            render, y, solves = render_and_solve(None if solves[0] is None else last,
                                                 slope=last_slope(history))
    clock("loudness_solve")
    pre = render.pre  # type: ignore[attr-defined]
    # Each master's strict true peak, as the limiter's correction metered (or bounded) it: delivery
    # bounds the stored samples' from it instead of metering them again (float32 renders).
    peaks = render.strict_peak()  # type: ignore[attr-defined]
    peaks = [None] * len(songs) if peaks is None or y.dtype != torch.float32 else peaks.tolist()
    del render  # its drive renders' buffers: the pre-limiter signal alone is kept, for the worker
    # The plot (spectra, short-term loudness, matplotlib) and the page's gain-reduction curve
    # need only the rendered master: they are drawn on the worker while the main thread
    # dithers, writes and measures; then the pre-limiter signal is released.
    plots = [
        pool.submit(draw, song.out / f"{song.stem}.png", song.stem, sr, song.audio,
                    y[i : i + 1, :, : lengths[i]], pre[i : i + 1, :, : lengths[i]], song.reference)
        for i, song in enumerate(songs)
    ] if options.plot else []
    reductions = [
        pool.submit(gain_reduction_series, pre[i : i + 1, :, : lengths[i]], y[i : i + 1, :, : lengths[i]], sr)
        for i in range(len(songs))
    ] if options.report else [None] * len(songs)
    del pre
    release_memory()
    # The master's tone error against its reference, measured on the worker while the main
    # thread delivers (the report's ``spectral_error.after``).
    errors = [
        pool.submit(spectral_errors, y[i : i + 1, :, : lengths[i]].cpu(), song.reference.cpu(), sr)
        if song.reference is not None else None
        for i, song in enumerate(songs)
    ]
    # The master's page drawing (its loudness is filled in once the file is measured).
    drawings = [
        pool.submit(prepare_take, Take("result", y[i : i + 1, :, : lengths[i]].cpu(),
                                       _delivered_path(song.out, song.stem, options)),
                    _page(song), sr, math.nan)
        for i, song in enumerate(songs)
    ] if options.report else [None] * len(songs)
    reports = []
    for i, song in enumerate(songs):
        report = _deliver_song(
            song, i, y[i : i + 1, :, : lengths[i]], sr, goals[i], solves[i], fit_report, bus, spec,
            options, plots, inputs[i], drawings[i], reductions[i], clock, peaks[i], errors[i],
        )
        # timings_s: for the whole group, per stage
        reports.append(finish(report, song.out / f"{song.stem}_report.json", t0, len(songs), clock.spent))
    return reports


def _deliver_song(song: Song, i: int, yi: torch.Tensor, sr: int, goal: float | None,
                  solve: Any, fit_report: dict[str, Any] | None, bus: Bus, spec: ChainSpec,
                  options: MasterOptions, plots: list, measured: Future, drawing: Future | None,
                  reduction: Future | None, clock: _Clock, render_peak: float | None,
                  error: Future | None) -> dict[str, Any]:
    """Deliver song ``i`` of the group (one chunk) and build its report (all but the runtime);
    ``measured``: :func:`_measure_input`'s result for it, ``drawing`` the master's prepared
    page take, ``reduction`` its limiter's gain-reduction curve, ``error`` its tone error
    against the reference (None without one), all to come;
    ``render_peak``: ``yi``'s strict true peak where the render metered it."""
    report, path = _deliver(
        song.key, song.out, song.stem, song.target, goal, solve, fit_report, options,
        lambda: iter([yi[0]]), sr, before=lambda: measured.result()["before"],
        protect=song.protect, render_peak=render_peak,
    )
    clock("deliver")
    inputs = measured.result()
    if song.polish is not None:
        report["polish"] = song.polish
    if song.reference is not None and error is not None:
        report["reference"] = inputs["reference"]
        report["spectral_error"] = {
            "before": inputs["error_before"],
            "after": error.result(),
        }
    preset = spec.build(1, match=MATCH in bus.effects)
    preset.load_values({k: v.exact()[i : i + 1] for k, v in bus.named_values().items()})
    _finish_song(report, preset, song.out, song.stem, song.target)
    clock("measure")
    if plots:
        report["outputs"]["plot"] = plots[i].result()
        clock("plot")
    if options.report:
        takes = [Take("input", song.audio.cpu()), Take("result", yi.cpu(), path)]
        if song.reference is not None:
            takes.append(Take("reference", song.reference.cpu()))
        result = drawing.result() if drawing is not None else None
        ready = dict(inputs["takes"])
        if result is not None:
            drawn = dataclasses.replace(result.drawn, lufs=float(report["after"]["integrated_lufs"]))
            ready["result"] = dataclasses.replace(result, drawn=drawn)
        _listening_report(report, song.out, song.stem, song.target, takes, sr, job="master",
                          gain_reduction=reduction.result() if reduction is not None else None, ready=ready)
    clock("listening_report")
    return report


def _deliver(key: str, out: Path, stem: str, target: dict[str, Any], goal: float | None, solve: Any,
             fit_report: dict[str, Any] | None, options: MasterOptions,
             chunks: Callable[[], Iterable[torch.Tensor]], sr: int, *, before: Callable[[], dict[str, Any]],
             protect: tuple[str, ...], render_peak: float | None = None) -> tuple[dict[str, Any], Path]:
    """Deliver one master from its chunks and start its report: ``(report, written path)``."""
    path = _delivered_path(out, stem, options)
    delivery, after = deliver_chunks(
        chunks, sr, path, options.delivery, ceiling=target.get("true_peak_db"), seed=int(options.seed),
        goal=goal, tolerance_lu=float(options.tolerance_lu), protect=protect, render_peak=render_peak,
    )
    report = master_report(key, target, goal, before=before(), after=after,
                           solve=vars(solve) if solve else None, delivery=delivery.as_dict(), fit=fit_report)
    return report, path


def _finish_song(report: dict[str, Any], preset: Bus, out: Path, stem: str, target: dict[str, Any]) -> None:
    """Save the preset and add it and the QC findings to ``report``."""
    preset_path = out / f"{stem}_preset.yaml"
    report["params"] = _save_preset(preset, preset_path)
    report["outputs"]["preset"] = str(preset_path)
    report["qc"] = job_warnings(report["after"], Path(report["outputs"]["audio"]),
                                int(report["delivery"]["sample_rate"]), target, target.get("name"))
    fallback = (report.get("loudness_solve") or {}).get("fallback")
    if fallback:  # the loudness aimed at is not the reference's: said first, on the page too
        report["qc"].insert(0, f"Loudness: {fallback}.")


def _listening_report(report: dict[str, Any], out: Path, stem: str, target: dict[str, Any], takes: list[Take],
                      sr: int, *, job: str, gain_reduction: tuple[list[float], list[float]] | None = None,
                      notes: Sequence[str] = (), ready: dict[str, Any] | None = None) -> None:
    """Write the HTML listening report of one master (``takes`` at ``sr``) and link it."""
    measures = {"input": report["before"], "result": report["after"],
                **({"reference": report["reference"]} if "reference" in report else {})}
    page = write_listening_report(
        out / f"{stem}_report.html", title=stem, sample_rate=sr,
        takes=takes, job=job, target=target, achieved=report["achieved"], measures=measures,
        params=report["params"], gain_reduction=gain_reduction, warnings=report["qc"], notes=list(notes),
        ready=ready,
    )
    report["outputs"]["listening_report"] = str(page)


def master_file(
    input: str | Path, out: Path, stem: str, spec: ChainSpec, fit: FitOptions,  # noqa: A002
    options: MasterOptions, *, reference: torch.Tensor | None = None, target: dict[str, Any] | None = None,
    protect: tuple[str, ...] = (), device: torch.device | str = "cpu", start: Start = match_start,
) -> dict[str, Any]:
    """Master one file in bounded memory; writes the master, preset and report.

    The same fit, loudness solve, delivery and report as :func:`master_group`, chunked
    (``options.chunk_s``, ``options.context_s``): the fit reads its excerpts from disk, the
    pre-limiter render is cached on disk beside the output, each drive of the solve is one
    chunked pass of the limiter, and the delivered file is metered in chunks. Agreement
    with the in-memory master (float output, no dither, 5 s chunks): max abs difference 5e-7
    of full scale (float32 rounding) and the same loudness (``tests/test_streaming.py``).
    One exception: the limiter's last-resort whole-item scaling (pathological input, after
    four metered passes) acts per chunk here. No match EQ and no plot (each would need the
    whole signal); ``spec.sample_rate`` must be the file's.
    """
    t0 = time.perf_counter()
    target = dict(target or {})
    chunk_s, context_s = float(options.chunk_s), float(options.context_s)
    options.delivery.checked()  # a format that can't be written fails before any work
    src = DiskAudio(input, device)
    sr = src.sample_rate
    if options.delivery.sample_rate and int(options.delivery.sample_rate) != sr:
        raise UserError("streaming: delivery.sample_rate conversion is not supported; use stream=false")
    if src.frames < MIN_SECONDS * sr:
        raise UserError(f"{stem}: input is too short to master ({src.frames / sr:.2f} s)")
    if options.plot:
        log.info("streaming: no plot for a streamed master (it would need the whole signal)")
    bus = spec.build(1).to(device)
    fit_report = fit_stage(bus, [src], [stem], [reference] if reference is not None else None, target,
                           fit, start=start)
    (goal,) = loudness_goals([target], [reference], sr)
    renderer = StreamRenderer(bus, src, out, chunk_s=chunk_s, context_s=context_s)
    try:
        solved, drive = None, 0.0
        if goal is not None:
            aim = goal  # the goal asked for (the solve may move ``goal`` to a fallback)

            def metered(drives: torch.Tensor) -> tuple[None, torch.Tensor]:
                meter = renderer.meter(float(drives[0]))
                lufs = torch.tensor([meter.integrated_lufs()], dtype=torch.float64)
                return None, solvable(lufs, lambda: torch.tensor([meter.rough_lufs()]), [str(input)])

            _, (solved,) = solve(
                metered, torch.tensor([goal], dtype=torch.float64), tolerance_lu=float(options.tolerance_lu),
                drive_range=renderer.drive_range, names=[str(input)],  # named as in memory: by its file
                fallback=lambda _, limited: reference_fallback(target, reference, sr, aim, limited),
            )
            drive = solved.drive_db
            if solved.fallback is not None:
                log.warning("%s: %s", input, solved.fallback)
                goal = solved.target_lufs
        report, path = _deliver(
            stem, out, stem, target, goal, solved, fit_report, options, lambda: renderer.middles(drive), sr,
            before=lambda: measure_file(input, chunk_s=chunk_s), protect=protect,
        )
        passes, left = renderer.passes, renderer.left
    finally:
        renderer.close()
    _finish_song(report, bus, out, stem, target)
    report["streaming"] = {"chunk_s": chunk_s, "left_context_s": left / sr, "limiter_passes": passes}
    if options.report:
        # Read back in chunks like everything here; the input is played where it lies.
        takes = [Take("input", None, Path(input)), Take("result", None, path)]
        if reference is not None:
            takes.append(Take("reference", reference.cpu()))
        _listening_report(report, out, stem, target, takes, sr, job="master (streamed)", notes=[
            "Streamed in chunks: the limiter's gain reduction is not drawn, and the input plays "
            "from its own location."])
    return finish(report, out / f"{stem}_report.json", t0)
