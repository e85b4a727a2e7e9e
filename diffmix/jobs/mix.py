"""Mix stems toward a reference mix: fit the console, write the mix, preset and report.

Options: ``stems`` (folder, glob or list; required), ``reference`` (a mix), ``aligned``
(the reference is a mix of these very stems, so waveforms can be compared with the
MR-STFT term), ``console.*`` (strips, groups, sends, master), ``fit.*``, ``loss.weights``,
``resample`` (false: stems at another rate are an error), ``align_ms``, ``delivery.*``,
``out``.

A reference rendered from these stems often carries its renderer's latency (tens of
samples). With ``align_ms`` > 0 (default 50) and ``aligned``, that lag is found by a
coherence-weighted cross-correlation (:func:`diffmix.mixing.analysis.estimate_delay`, within
+-``align_ms``: every frequency weighs alike, so a filter's phase on a loud bass cannot pull it,
to a fraction of a sample) and the console's ``offset_samples`` moves the mix onto the
reference's timeline to the nearest sample; from a quarter sample off (``FRACTION_MOVED``) the
fit compares it with the reference moved by the rest
(:func:`diffmix.functional.delay.fractional_shift`), so it compares like with like, and the
written mix lines up with the reference within half a sample.

The fit is :func:`diffmix.mixing.fit_console` (toward a mix of these stems: closed-form
start with pan, width, the strip EQ's bands and compressors, the placement re-solve on the strips' outputs,
the send levels, gradient steps, polish, loudness; toward another song, ``aligned=false``: the
master bus, which gains the ``toward_song`` effects (:func:`toward_song_master`), set toward
the song's features by :mod:`diffmix.mixing.style_master`; each stage kept only where it
lowers the objective on the full length); this module turns the config into its arguments
(:func:`fit_options`) and writes the mix, the preset and the report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from diffmix.config import instantiate, save_preset
from diffmix.console import Console
from diffmix.delivery import check_format, deliver
from diffmix.errors import UserError
from diffmix.features import spectral_errors
from diffmix.functional.delay import fractional_shift
from diffmix.functional.loudness import integrated_loudness
from diffmix.inputs import load_mix, load_stems
from diffmix.jobs._common import listening_report, output_dir, peak_dbtp, pick_device, to_dict
from diffmix.jobs._common import summary as measure
from diffmix.listen import Take, job_warnings
from diffmix.mastering import set_exact
from diffmix.mastering.loudness import unmeasurable_reference
from diffmix.mixing.analysis import estimate_delay
from diffmix.mixing.console_fit import MixFitOptions, equal_loudness_gains, fit_console
from diffmix.report import write_json

MIN_SECONDS = 1.0
# The reference is moved by the fraction of a sample its lag has over the console's whole
# offset only from a quarter sample on: on a realisable setting (a whole-sample lag) the
# strips' filters and compressors turn the phase and pull the coherence's peak by up to
# ~0.1 sample (|0.00-0.098| on 15 hidden renders: 5 seeds on each shared song), which the console
# reproduces unmoved; two shared producer renders lag by 19.5 samples.
FRACTION_MOVED = 0.25
__all__ = ["build_console", "equal_loudness_gains", "fit_options", "run", "toward_song_master"]


def fit_options(cfg: DictConfig) -> MixFitOptions:
    """The ``fit`` and ``loss`` groups of the config as :class:`MixFitOptions`."""
    weights = {k: float(v) for k, v in cfg.loss.weights.items()}
    if cfg.get("reference") and not bool(cfg.aligned) and cfg.get("toward_song"):
        # Toward another song its dynamics are matched too: judged on them by default.
        weights.setdefault("dynamics", float(cfg.toward_song.get("dynamics_weight", 0.0)))
    return MixFitOptions(
        weights=weights,
        params=[str(p) for p in cfg.fit.params],
        init=str(cfg.fit.get("init", "nnls")),
        coherent=bool(cfg.fit.get("coherent", True)),
        polish=bool(cfg.fit.get("polish", True)),
        steps=int(cfg.fit.steps),
        excerpt_s=float(cfg.fit.excerpt_s),
        excerpts=int(cfg.fit.excerpts),
        pool=int(cfg.fit.get("pool", 0) or 0),
        patience=int(cfg.fit.patience),
        hold_levels=bool(cfg.fit.get("hold_levels", True)),
        hold_placement=bool(cfg.fit.get("hold_placement", True)),
        seed=int(cfg.seed),
        prior=float(cfg.loss.get("prior", 0.0)),
        gain_staging=float(cfg.loss.get("gain_staging", 0.0)),
        mrstft=dict(to_dict(cfg.loss.mrstft)),
        aligned=bool(cfg.aligned),
        eq_bands=bool(cfg.fit.get("eq_bands", True)),
        compressor_start=bool(cfg.fit.get("compressor_start", True)),
        placement=bool(cfg.fit.get("placement", True)),
        compressor_refine=bool(cfg.fit.get("compressor_refine", False)),
        eq_refine=bool(cfg.fit.get("eq_refine", False)),
        refine_s=float(cfg.fit.get("refine_s", 60.0) or 0.0),
        match_loudness=bool(cfg.fit.get("match_loudness", True)),
    )


def build_console(
    cfg: DictConfig, sr: int, names: list[str], mono: list[bool], offset_samples: int = 0
) -> Console:
    OmegaConf.update(cfg, "sample_rate", sr, force_add=True)
    node = to_dict(cfg.console)
    node.update(tracks=len(names), track_names=names, mono=mono, offset_samples=offset_samples)
    if cfg.get("reference") and not bool(cfg.aligned) and cfg.get("toward_song"):
        node["master"] = toward_song_master(node.get("master") or {}, to_dict(cfg.toward_song))
    return instantiate(OmegaConf.create(node), _convert_="all", where="console")


def toward_song_master(master: dict, style: dict) -> dict:
    """The master bus toward another song: ``style["before"]``'s effects, the console's
    own master effects, then ``style["after"]``'s (:mod:`diffmix.mixing.style_master`)."""
    before, after = dict(style.get("before") or {}), dict(style.get("after") or {})
    clash = sorted((set(before) | set(after)) & set(master))
    if clash:
        raise UserError(f"toward_song: the console's master bus already has effect(s) {clash}")
    return {**before, **master, **after}


def run(cfg: DictConfig) -> int:
    t0 = time.perf_counter()
    device = pick_device(str(cfg.device))
    stems = load_stems(cfg.stems, resample_mismatched=bool(cfg.resample))
    sr = stems.sample_rate
    if not bool(stems.audio.any()):
        raise UserError("stems: every stem is digital silence: there is nothing to mix")
    if stems.audio.shape[-1] < MIN_SECONDS * sr:
        raise UserError(
            f"stems are too short to fit ({stems.audio.shape[-1] / sr:.2f} s; need {MIN_SECONDS:g} s)"
        )
    fmt, depth = check_format(cfg.delivery.format, cfg.delivery.bit_depth)
    reference = None
    if cfg.get("reference"):
        reference, _ = load_mix(cfg.reference, sr, what="reference")
        if not torch.isfinite(integrated_loudness(reference, sr)).all():
            raise UserError(unmeasurable_reference(reference, "there is nothing to match"))
    align_ms = float(cfg.get("align_ms") or 0.0)
    if not 0.0 <= align_ms <= 1000.0:
        raise UserError(f"align_ms must be between 0 and 1000 ms, got {align_ms:g}")
    offset, lag, delay, target = 0, None, 0.0, reference
    if reference is not None and bool(cfg.aligned) and align_ms > 0:
        delay = round(estimate_delay(stems.audio[0].sum(0), reference[0], int(align_ms * 1e-3 * sr)), 2)
        offset = lag = round(delay)
        if abs(delay - offset) >= FRACTION_MOVED:
            # The console moves the mix by whole samples; the fit compares it with the
            # reference moved by the rest (a renderer's half-sample latency otherwise turns
            # each band's phase across the band and biases every coherent estimate).
            target = fractional_shift(reference, offset - delay)
    console = build_console(cfg, sr, stems.names, stems.mono, offset).to(device)
    audio = stems.audio.to(device)
    out = output_dir(cfg)
    fit_report = fit_console(
        console,
        audio,
        None if target is None else target.to(device),
        sr,
        fit_options(cfg),
        optimizer=instantiate(cfg.optim, where="optim"),
        scheduler=instantiate(cfg.scheduler, where="scheduler") if cfg.get("scheduler") else None,
        lag=lag,  # already found for the alignment: not a second cross-correlation
        checkpoint=Path(cfg.checkpoint) if cfg.get("checkpoint") else None,
        progress=bool(cfg.progress),
        log_path=out / "fit_log.jsonl",
        tag="mix:" + ",".join(stems.names),
    )
    with torch.no_grad():
        set_exact(console, True)
        mix = console(audio)
    peak = float(mix.abs().max())
    if peak > 1.0:  # keep the written mix unclipped: lower it, and say so
        mix = mix / peak * 10 ** (-0.1 / 20)
    stem = cfg.get("output_name") or "mix"
    protect = tuple(str(p) for p in stems.paths) + ((str(cfg.reference),) if cfg.get("reference") else ())
    delivery = deliver(
        mix[0].cpu(),
        sr,
        out / f"{stem}.{fmt}",
        fmt=fmt,
        bit_depth=depth,
        target_rate=cfg.delivery.sample_rate,
        dither=bool(cfg.delivery.dither),
        true_peak_db=peak_dbtp,  # no ceiling: the written mix's true peak, for the report
        seed=int(cfg.seed),
        protect=protect,
    )
    save_preset(console, out / f"{stem}_preset.yaml")
    report: dict[str, Any] = {
        "job": "mix",
        "stems": stems.names,
        "outputs": {"audio": delivery.path, "preset": str(out / f"{stem}_preset.yaml")},
        "mix": measure(mix, sr),
        "normalised_down_db": None if peak <= 1.0 else -20 * float(torch.log10(torch.tensor(peak))) - 0.1,
        "fit": fit_report,
        "alignment": {
            "offset_samples": offset,
            "offset_ms": round(1e3 * offset / sr, 3),
            "delay_samples": delay,
            "fraction_moved": target is not reference,
        },
        "params": console.preset(),
        "delivery": delivery.as_dict(),
    }
    if reference is not None:
        report["reference"] = measure(reference, sr)
        report["spectral_error"] = spectral_errors(mix.cpu(), reference.cpu(), sr)
    report["qc"] = job_warnings(report["mix"], mix.cpu(), sr)
    # "stems": the stems as given, summed at unity (lowered only if that would clip).
    summed = stems.audio.sum(1).cpu()
    summed = summed / max(1.0, float(summed.abs().max()) / 0.99)
    takes = [Take("stems", summed), Take("result", mix.cpu(), Path(delivery.path))]
    if reference is not None:
        takes.append(Take("reference", reference.cpu()))
    page = listening_report(
        cfg, out / f"{stem}_report.html", title=stem, sample_rate=sr, takes=takes, job="mix",
        measures={"result": report["mix"],
                  **({"reference": report["reference"]} if reference is not None else {})},
        params=report["params"], warnings=report["qc"],
        notes=[f"{len(stems.names)} stems: " + ", ".join(stems.names)],
    )
    if page:
        report["outputs"]["listening_report"] = page
    report["runtime_s"] = round(time.perf_counter() - t0, 3)
    write_json(out / f"{stem}_report.json", report)
    print(f"mix: {delivery.path}  ({report['runtime_s']:.1f} s)")
    return 0
