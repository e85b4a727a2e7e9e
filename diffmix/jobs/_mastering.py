"""Job glue for mastering one song or a group of songs: fit, solve, deliver, report."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf

from diffmix.checks import MAX_SAMPLE_RATE
from diffmix.config import instantiate, save_preset
from diffmix.console import Bus
from diffmix.delivery import check_format, deliver
from diffmix.errors import UserError
from diffmix.features import spectral_errors
from diffmix.functional.loudness import short_term_loudness
from diffmix.io import check_outputs, read_audio
from diffmix.jobs._common import listening_report, peak_dbtp
from diffmix.jobs._common import summary as measure
from diffmix.listen import Take, job_warnings
from diffmix.mastering import (
    available_weights,
    fit_chain,
    loudness_goals,
    measure_lufs,
    pad_batch,
    render_with_drive,
    rough_lufs,
    solve_loudness,
)
from diffmix.objective import Objective
from diffmix.report import gain_reduction_db, plot, write_json

MIN_SECONDS = 1.0
MIN_JOB_RATE = 22050  # the default chain's EQ bands and filters need this much bandwidth


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
    """One song to master: ``audio`` and ``reference`` are ``(1, 2, T)``."""

    key: str
    audio: torch.Tensor
    out: Path
    stem: str
    reference: torch.Tensor | None = None
    target: dict[str, Any] = field(default_factory=dict)
    protect: tuple[str, ...] = ()
    polish: dict[str, Any] | None = None  # what the polish stage repaired (None: stage off)


MATCH = "match"  # the chain's reference-matching EQ stage (absent without a reference)


def chain_for(cfg: DictConfig, sample_rate: int, songs: int, *, match: bool = False) -> Bus:
    """The configured master chain for ``songs`` items, led by ``cfg.match_eq`` (as stage
    ``match``) when ``match`` is true and the config has one.

    A match EQ has nothing to match without a reference, so it is left out rather than
    run neutral (and the streaming path, whose chunks carry no right-hand context for its
    zero-phase FIR, leaves it out too).
    """
    OmegaConf.update(cfg, "sample_rate", sample_rate, force_add=True)
    effects = instantiate(cfg.chain, _convert_="all", where="chain")
    if match and cfg.get("match_eq"):
        effects = {MATCH: instantiate(cfg.match_eq, _convert_="all", where="match_eq"), **effects}
    return Bus(sample_rate, effects, items=songs)


@torch.no_grad()
def refine_match(chain: Bus, y: torch.Tensor, lengths: list[int], references: list[torch.Tensor]) -> None:
    """Add to each song's match-EQ gains what its rendered master ``y`` still misses."""
    from diffmix.effects.match_eq import MatchEQ
    from diffmix.functional.match_eq import match_gains

    stage = cast(MatchEQ, chain.effects[MATCH])
    params = chain.named_values()
    keys = ("mid_gain_db", "side_gain_db")
    rows = {k: params[f"{MATCH}.{k}"].exact().clone() for k in keys}
    wide = (-120.0, 120.0)  # a correction; the sum is clipped to the parameters' ranges
    for i, (n, reference) in enumerate(zip(lengths, references, strict=True)):
        dm, ds = match_gains(
            y[i : i + 1, :, :n],
            reference.to(y.device),
            stage.sample_rate,
            stage.centres_hz,
            mid_range_db=wide,
            side_range_db=wide,
        )
        rows["mid_gain_db"][i] += dm[0].double().cpu()
        rows["side_gain_db"][i] += ds[0].double().cpu()
    chain.load_values(
        {
            f"{MATCH}.{k}": v.clamp(params[f"{MATCH}.{k}"].spec.min, params[f"{MATCH}.{k}"].spec.max)
            for k, v in rows.items()
        }
    )


@torch.no_grad()
def init_match(chain: Bus, audios: list, references: list[torch.Tensor]) -> None:
    """Set each song's match-EQ gains in closed form from its input and its reference.

    Each song gets its own single-item :class:`~diffmix.effects.match_eq.MatchEQ` with the
    chain's options (so songs of different lengths never share a padded spectrum); its
    gains become that song's row of the chain's parameters.
    """
    from diffmix.effects.match_eq import MatchEQ

    stage = cast(MatchEQ, chain.effects[MATCH])
    node = {
        k: v for k, v in stage.preset().items() if k not in ("_target_", "mix", "mid_gain_db", "side_gain_db")
    }
    rows: dict[str, list[torch.Tensor]] = {"mid_gain_db": [], "side_gain_db": []}
    for audio, reference in zip(audios, references, strict=True):
        single = MatchEQ(**node).to(audio.device)
        mid, side = single.match(audio, reference.to(audio.device))
        rows["mid_gain_db"].append(mid.double().cpu())
        rows["side_gain_db"].append(side.double().cpu())
    chain.load_values({f"{MATCH}.{k}": torch.stack(v) for k, v in rows.items()})


def fit_stage(
    cfg: DictConfig,
    chain: Bus,
    audios: list,
    keys: list[str],
    references: list[torch.Tensor] | None,
    target: dict[str, Any],
) -> dict[str, Any] | None:
    """Fit ``chain`` to what the config matches (if anything), then apply ``amount.*``.

    ``audios`` are ``(1, 2, T)`` tensors or anything sliced like them (the streaming path
    passes files on disk). Returns the fit's summary for the report, or None.
    """
    steps = cfg.fit.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UserError(f"fit.steps must be a whole number >= 0 (0: no fit), got {steps!r}")
    weights = available_weights(cfg.loss.weights, reference=references is not None, target=target)
    fit_report = None
    if references is not None and MATCH in chain.effects:
        init_match(chain, audios, references)
    init = cfg.fit.get("init", "default")
    if init not in ("default", "learned"):
        raise UserError(f"fit.init must be default or learned, got {init!r}")
    if init == "learned":  # the fit (or, with fit.steps=0, the master) starts from the prediction
        from diffmix.learned import apply_prediction

        apply_prediction(chain, audios, references, target, cfg.get("model"))
    if weights and int(cfg.fit.steps) > 0:
        sr = chain.sample_rate
        device = next(chain.parameters()).device
        objective = Objective(sr, weights, reference=references, target=target).to(device)
        scheduler = instantiate(cfg.scheduler, where="scheduler") if cfg.get("scheduler") else None
        result = fit_chain(
            chain,
            audios,
            keys,
            objective,
            params=list(cfg.fit.params),
            steps=int(cfg.fit.steps),
            excerpt_s=float(cfg.fit.excerpt_s),
            optimizer=instantiate(cfg.optim, where="optim"),
            scheduler=scheduler,
            seed=int(cfg.seed),
            patience=int(cfg.fit.patience),
            prior_weight=float(cfg.loss.get("prior", 0.0)),
            progress=bool(cfg.progress),
        )
        fit_report = {k: v for k, v in vars(result).items() if k != "history"}
    for stage, amount in (cfg.get("amount") or {}).items():
        if stage in chain.effects:
            chain.set_amount(stage, float(amount))
    return fit_report


def polish_mode(cfg: DictConfig) -> str:
    """``cfg.polish`` as ``"off"`` or ``"auto"`` (ValueError otherwise)."""
    value = cfg.get("polish", False)
    if value in (False, None, "off", "none", "false"):
        return "off"
    if value in (True, "auto", "true"):
        return "auto"
    raise ValueError(f"polish must be auto or off, got {value!r}")


DC_LIMIT = 1e-3  # polish=auto removes a DC offset only above -60 dBFS


def polish_auto(audio: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The ``polish=auto`` stage before the chain: repair the clipped runs and clicks that
    analysis finds, and a DC offset above :data:`DC_LIMIT`; returns ``(audio, report)``."""
    from diffmix.polish import polish

    dc = bool(audio.mean(-1).abs().amax() > DC_LIMIT)
    with torch.no_grad():
        out, report = polish(audio, sample_rate, dc=dc)
    return out, report


def master_group(cfg: DictConfig, songs: list[Song], sample_rate: int) -> list[dict[str, Any]]:
    """Master ``songs`` together (one optimiser, per-song parameters); returns their reports.

    Songs in a group must agree on whether they have a reference and on the fit terms.
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
            f"{songs[0].protect[0] if songs[0].protect else songs[0].key}: {sr} Hz is below "
            f"the {MIN_JOB_RATE} Hz the mastering chain is designed for (supported: "
            f"{MIN_JOB_RATE} to {MAX_SAMPLE_RATE} Hz); pass delivery.sample_rate=44100 to "
            "master it at 44.1 kHz"
        )
    if sr > MAX_SAMPLE_RATE:
        raise UserError(f"{songs[0].key}: {sr} Hz is above the supported {MAX_SAMPLE_RATE} Hz")
    fmt, depth = check_format(cfg.delivery.format, cfg.delivery.bit_depth)
    for song in songs:  # the preset, reports and plot may not overwrite an input either
        check_outputs(tuple(song.out / f"{song.stem}{s}" for s in (
            f".{fmt}", "_preset.yaml", "_report.json", "_report.html", ".png")), song.protect)
    if polish_mode(cfg) == "auto":
        for s in songs:
            s.audio, s.polish = polish_auto(s.audio, sr)
    device = songs[0].audio.device
    has_ref = [s.reference is not None for s in songs]
    if len(set(has_ref)) > 1:
        raise ValueError("master_group: songs with and without references can't share a group")
    references = [s.reference for s in songs if s.reference is not None]  # every song's, or none
    match = has_ref[0] and bool(cfg.get("match_eq", False))
    chain = chain_for(cfg, sr, len(songs), match=match).to(device)
    fit_report = fit_stage(
        cfg,
        chain,
        [s.audio for s in songs],
        [s.key for s in songs],
        references if has_ref[0] else None,
        songs[0].target,
    )
    clock("fit")
    x, lengths = pad_batch([s.audio for s in songs])
    goals = loudness_goals([s.target for s in songs], [s.reference for s in songs], sr)

    def render_and_solve(start: torch.Tensor | None = None):  # noqa: ANN202
        render = render_with_drive(chain, x)
        clock("render_chain")
        if any(g is None for g in goals):
            return render, render(torch.zeros(len(songs), dtype=torch.float64)), [None] * len(songs)
        targets = torch.tensor(goals, dtype=torch.float64)
        if start is None:
            pre = measure_lufs(render.pre, lengths, sr).double().cpu()  # type: ignore[attr-defined]
            # A pre-limiter level under the -70 LUFS gate (but not silence) starts from its RMS.
            rough = rough_lufs(render.pre, lengths).clamp_min(-300.0)  # type: ignore[attr-defined]
            start = torch.where(torch.isfinite(pre), targets - pre, targets - rough)
        y, solves = solve_loudness(
            render,
            lengths,
            sr,
            targets,
            tolerance_lu=float(cfg.tolerance_lu),
            start_db=start,
            proxy=render.proxy,  # type: ignore[attr-defined]
            names=[str(s.protect[0]) if s.protect else s.key for s in songs],
        )
        return render, y, solves

    render, y, solves = render_and_solve()
    if match:
        # The fit matched excerpts through the smooth limiter; the delivered tone is the
        # whole song's through the exact one. Measure that, fold what is left into the
        # match EQ, and render and solve again (from the last drives).
        for _ in range(int(cfg.get("match_refine", 2))):
            refine_match(chain, y, lengths, references)
            clock("loudness_solve")
            last = None if solves[0] is None else torch.tensor([s.drive_db for s in solves])
            render, y, solves = render_and_solve(last)
    clock("loudness_solve")
    # The plot (spectra, short-term loudness, matplotlib) needs only the rendered master, so
    # it is drawn on a worker thread while the main one dithers, writes and measures: the
    # torch and numba work on both sides releases the GIL.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffmix-plot") if cfg.get("plot") else None
    plots = (
        []
        if pool is None
        else [
            pool.submit(
                _draw, song, y[i : i + 1, :, : lengths[i]], render.pre[i : i + 1, :, : lengths[i]], sr
            )  # type: ignore[attr-defined]
            for i, song in enumerate(songs)
        ]
    )
    try:
        return _deliver_and_report(
            cfg, songs, y, lengths, goals, solves, fit_report, chain, plots, clock, t0, fmt, depth,
            render.pre,  # type: ignore[attr-defined]
        )
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _draw(song: Song, yi: torch.Tensor, pre: torch.Tensor, sr: int) -> str:
    curves = {"input": song.audio.cpu(), "master": yi.cpu()}
    st = {k: short_term_loudness(v, sr)[0] for k, v in curves.items()}
    if song.reference is not None:
        curves["reference"] = song.reference.cpu()
    gr = gain_reduction_db(pre.cpu(), yi.cpu(), sr)
    return str(
        plot(
            song.out / f"{song.stem}.png",
            sr,
            curves=curves,
            short_term=st,
            gain_reduction=gr,
            title=song.stem,
        )
    )


def _deliver_and_report(
    cfg,
    songs,
    y,
    lengths,
    goals,
    solves,
    fit_report,
    chain,
    plots,
    clock,
    t0,  # noqa: ANN001, ANN202, PLR0913
    fmt,
    depth,
    pre,
):
    sr = chain.sample_rate
    reports = []
    for i, song in enumerate(songs):
        yi = y[i : i + 1, :, : lengths[i]]
        ceiling = song.target.get("true_peak_db")
        delivery = deliver(
            yi[0].cpu(),
            sr,
            song.out / f"{song.stem}.{fmt}",
            fmt=fmt,
            bit_depth=depth,
            target_rate=cfg.delivery.sample_rate,
            dither=bool(cfg.delivery.dither),
            ceiling_dbtp=ceiling,
            true_peak_db=peak_dbtp,
            seed=int(cfg.seed),
            protect=song.protect,
            # The solve met the goal within its tolerance; dither and a last re-limit may
            # add a few hundredths, never more (else deliver refuses, in one line).
            lufs_goal=goals[i],
            lufs_tolerance=float(cfg.tolerance_lu) + 0.03,
        )
        clock("deliver")
        written, wrate = read_audio(delivery.path)
        after = measure(written.unsqueeze(0).double(), wrate)
        goal = goals[i]
        report: dict[str, Any] = {
            "job": "master",
            "id": song.key,
            "outputs": {"audio": delivery.path},
            "target": song.target,
            "achieved": {
                "lufs": after["integrated_lufs"],
                "true_peak_dbtp": after["true_peak_dbtp"],
                "lra_lu": after["lra_lu"],
                "lufs_error_lu": None if goal is None else after["integrated_lufs"] - goal,
                "under_ceiling": ceiling is None or after["true_peak_dbtp"] <= ceiling,
            },
            "before": measure(song.audio[..., : lengths[i]].double().cpu(), sr),
            "after": after,
            "loudness_solve": vars(solves[i]) if solves[i] else None,
            "delivery": delivery.as_dict(),
            "fit": fit_report,
        }
        if song.polish is not None:
            report["polish"] = song.polish
        if song.reference is not None:
            report["reference"] = measure(song.reference.double().cpu(), sr)
            report["spectral_error"] = {
                "before": spectral_errors(song.audio.cpu(), song.reference.cpu(), sr),
                "after": spectral_errors(yi.cpu(), song.reference.cpu(), sr),
            }
        clock("measure")
        preset = chain_for(cfg, sr, 1, match=MATCH in chain.effects)
        preset.load_values({k: v.exact()[i : i + 1] for k, v in chain.named_values().items()})
        save_preset(preset, song.out / f"{song.stem}_preset.yaml")
        report["params"] = preset.preset()
        report["outputs"]["preset"] = str(song.out / f"{song.stem}_preset.yaml")
        if plots:
            report["outputs"]["plot"] = plots[i].result()
            clock("plot")
        before = song.audio[..., : lengths[i]].cpu()
        report["qc"] = job_warnings(after, written, wrate, song.target, song.target.get("name"))
        takes = [Take("input", before), Take("result", yi.cpu(), Path(delivery.path))]
        if song.reference is not None:
            takes.append(Take("reference", song.reference.cpu()))
        page = listening_report(
            cfg, song.out / f"{song.stem}_report.html", title=song.stem, sample_rate=sr, takes=takes,
            job="master", target=song.target, achieved=report["achieved"],
            measures={"input": report["before"], "result": after,
                      **({"reference": report["reference"]} if "reference" in report else {})},
            params=report["params"], gain_reduction=(pre[i : i + 1, :, : lengths[i]], yi),
            warnings=report["qc"],
        )
        if page:
            report["outputs"]["listening_report"] = page
        clock("listening_report")
        report["runtime_s"] = round((time.perf_counter() - t0) / len(songs), 3)
        report["timings_s"] = dict(clock.spent)  # for the whole group, per stage
        write_json(song.out / f"{song.stem}_report.json", report)
        report["outputs"]["report"] = str(song.out / f"{song.stem}_report.json")
        reports.append(report)
    return reports
