"""Job glue for mastering one song or a group of songs: fit, solve, deliver, report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from diffmix.config import instantiate, save_preset
from diffmix.console import Bus
from diffmix.delivery import check_format, deliver
from diffmix.errors import UserError
from diffmix.features import spectral_errors
from diffmix.functional.loudness import short_term_loudness
from diffmix.io import read_audio
from diffmix.jobs._common import peak_dbtp
from diffmix.jobs._common import summary as measure
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


def chain_for(cfg: DictConfig, sample_rate: int, songs: int) -> Bus:
    OmegaConf.update(cfg, "sample_rate", sample_rate, force_add=True)
    effects = instantiate(cfg.chain, _convert_="all", where="chain")
    return Bus(sample_rate, effects, items=songs)


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
    weights = available_weights(cfg.loss.weights, reference=references is not None, target=target)
    fit_report = None
    if weights and int(cfg.fit.steps) > 0:
        sr = chain.sample_rate
        device = next(chain.parameters()).device
        objective = Objective(sr, weights, reference=references, target=target).to(device)
        scheduler = instantiate(cfg.scheduler, where="scheduler") if cfg.get("scheduler") else None
        result = fit_chain(
            chain, audios, keys, objective, params=list(cfg.fit.params),
            steps=int(cfg.fit.steps), excerpt_s=float(cfg.fit.excerpt_s),
            optimizer=instantiate(cfg.optim, where="optim"), scheduler=scheduler,
            seed=int(cfg.seed), patience=int(cfg.fit.patience),
            prior_weight=float(cfg.loss.get("prior", 0.0)), progress=bool(cfg.progress),
        )
        fit_report = {k: v for k, v in vars(result).items() if k != "history"}
    for stage, amount in (cfg.get("amount") or {}).items():
        if stage in chain.effects:
            chain.set_amount(stage, float(amount))
    return fit_report


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
    fmt, depth = check_format(cfg.delivery.format, cfg.delivery.bit_depth)
    device = songs[0].audio.device
    chain = chain_for(cfg, sr, len(songs)).to(device)
    has_ref = [s.reference is not None for s in songs]
    if len(set(has_ref)) > 1:
        raise ValueError("master_group: songs with and without references can't share a group")
    fit_report = fit_stage(
        cfg, chain, [s.audio for s in songs], [s.key for s in songs],
        [s.reference for s in songs] if has_ref[0] else None, songs[0].target,
    )
    clock("fit")
    x, lengths = pad_batch([s.audio for s in songs])
    render = render_with_drive(chain, x)
    clock("render_chain")
    goals = loudness_goals([s.target for s in songs], [s.reference for s in songs], sr)
    if any(g is None for g in goals):
        y, solves = render(torch.zeros(len(songs), dtype=torch.float64)), [None] * len(songs)
    else:
        targets = torch.tensor(goals, dtype=torch.float64)
        pre = measure_lufs(render.pre, lengths, sr).double().cpu()  # type: ignore[attr-defined]
        # A pre-limiter level under the -70 LUFS gate (but not silence) starts from its RMS.
        rough = rough_lufs(render.pre, lengths).clamp_min(-300.0)  # type: ignore[attr-defined]
        start = torch.where(torch.isfinite(pre), targets - pre, targets - rough)
        y, solves = solve_loudness(
            render, lengths, sr, targets, tolerance_lu=float(cfg.tolerance_lu), start_db=start,
            proxy=render.proxy,  # type: ignore[attr-defined]
        )
    clock("loudness_solve")
    reports = []
    for i, song in enumerate(songs):
        yi = y[i : i + 1, :, : lengths[i]]
        ceiling = song.target.get("true_peak_db")
        delivery = deliver(
            yi[0].cpu(), sr, song.out / f"{song.stem}.{fmt}", fmt=fmt, bit_depth=depth,
            target_rate=cfg.delivery.sample_rate, dither=bool(cfg.delivery.dither),
            ceiling_dbtp=ceiling,
            true_peak_db=peak_dbtp,
            seed=int(cfg.seed), protect=song.protect,
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
        if song.reference is not None:
            report["reference"] = measure(song.reference.double().cpu(), sr)
            report["spectral_error"] = {
                "before": spectral_errors(song.audio.cpu(), song.reference.cpu(), sr),
                "after": spectral_errors(yi.cpu(), song.reference.cpu(), sr),
            }
        clock("measure")
        preset = chain_for(cfg, sr, 1)
        preset.load_values({k: v.exact()[i : i + 1] for k, v in chain.named_values().items()})
        save_preset(preset, song.out / f"{song.stem}_preset.yaml")
        report["params"] = preset.preset()
        report["outputs"]["preset"] = str(song.out / f"{song.stem}_preset.yaml")
        if cfg.get("plot"):
            curves = {"input": song.audio.cpu(), "master": yi.cpu()}
            st = {k: short_term_loudness(v, sr)[0] for k, v in curves.items()}
            if song.reference is not None:
                curves["reference"] = song.reference.cpu()
            gr = gain_reduction_db(render.pre[i : i + 1, :, : lengths[i]].cpu(), yi.cpu(), sr)  # type: ignore[attr-defined]
            report["outputs"]["plot"] = str(
                plot(song.out / f"{song.stem}.png", sr, curves=curves, short_term=st,
                     gain_reduction=gr, title=song.stem)
            )
            clock("plot")
        report["runtime_s"] = round((time.perf_counter() - t0) / len(songs), 3)
        report["timings_s"] = dict(clock.spent)  # for the whole group, per stage
        write_json(song.out / f"{song.stem}_report.json", report)
        report["outputs"]["report"] = str(song.out / f"{song.stem}_report.json")
        reports.append(report)
    return reports
