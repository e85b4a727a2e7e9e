"""Mix stems toward a reference mix: fit the console, write the mix, preset and report.

Options: ``stems`` (folder, glob or list; required), ``reference`` (a mix), ``aligned``
(the reference is a mix of these very stems, so waveforms can be compared with the
MR-STFT term), ``console.*`` (strips, groups, sends, master), ``fit.*``, ``loss.weights``,
``resample`` (false: stems at another rate are an error), ``align_ms``, ``delivery.*``,
``out``.

A reference rendered from these stems often carries its renderer's latency (tens of
samples). With ``align_ms`` > 0 (default 50) and ``aligned``, that lag is found by
cross-correlation (:func:`diffmix.mix_init.estimate_lag`, within +-``align_ms``) and the
console's ``offset_samples`` moves the mix onto the reference's timeline: the fit then
compares like with like, and the written mix lines up with the reference sample for sample.

The fit has three stages. ``fit.init=nnls`` (default) first sets every track's input gain
and strip EQ in closed form from the audio (:mod:`diffmix.mix_init`: after aligning the
two, least squares of the reference on the stems per band, on complex spectra when the
reference is a mix of these stems (``aligned`` and ``fit.coherent``), else non-negative
on band powers), so quiet tracks start where they belong; then ``fit.steps`` gradient
steps refine the whole console on ``fit.excerpt_s`` excerpts drawn from a fixed pool of
``fit.pool`` (whose reference magnitudes and features are computed once); last, with the
coherent start, ``fit.polish`` re-sets each fader so the track's loudness is the closed
form's (the waveform loss trades quiet tracks' levels away). ``fit.init=none`` starts
from equal loudness.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from diffmix.config import instantiate, save_preset
from diffmix.console import Console
from diffmix.delivery import check_format, deliver
from diffmix.errors import UserError
from diffmix.features import spectral_errors
from diffmix.fit import draw, excerpt_starts, fit
from diffmix.functional.loudness import integrated_loudness
from diffmix.inputs import load_mix, load_stems
from diffmix.jobs._common import listening_report, output_dir, pick_device, to_dict
from diffmix.jobs._common import summary as measure
from diffmix.listen import Take, job_warnings
from diffmix.losses import MRSTFTLoss
from diffmix.mastering import set_exact
from diffmix.mix_init import console_estimate, estimate_lag, initialise_console, polish_levels
from diffmix.objective import REFERENCE_TERMS, Objective
from diffmix.report import write_json

MIN_SECONDS = 1.0
POLISH_CHUNK_S = 10.0
SIDE_TERMS = ("tone_side", "width", "correlation")


def equal_loudness_gains(stems: torch.Tensor, sr: int, level_lufs: float = -30.0) -> torch.Tensor:
    """Input gains (dB) that bring every stem to ``level_lufs``; silent stems get 0 dB."""
    lufs = integrated_loudness(stems[0], sr)
    gains = torch.where(torch.isfinite(lufs), level_lufs - lufs, torch.zeros_like(lufs))
    return gains.clamp(-60.0, 24.0)


def _excerpt_pool(length_all: int, length: int, count: int) -> list[int]:
    """``count`` excerpt starts spread evenly over the song (the same every run)."""
    if length >= length_all:
        return [0]
    return sorted({int(round(v)) for v in torch.linspace(0, length_all - length, count).tolist()})


def build_console(
    cfg: DictConfig, sr: int, names: list[str], mono: list[bool], offset_samples: int = 0
) -> Console:
    OmegaConf.update(cfg, "sample_rate", sr, force_add=True)
    node = to_dict(cfg.console)
    node.update(tracks=len(names), track_names=names, mono=mono, offset_samples=offset_samples)
    return instantiate(OmegaConf.create(node), _convert_="all", where="console")


def run(cfg: DictConfig) -> int:
    t0 = time.perf_counter()
    device = pick_device(str(cfg.device))
    stems = load_stems(cfg.stems, resample_mismatched=bool(cfg.resample))
    sr = stems.sample_rate
    if stems.audio.shape[-1] < MIN_SECONDS * sr:
        raise UserError(
            f"stems are too short to fit ({stems.audio.shape[-1] / sr:.2f} s; need {MIN_SECONDS:g} s)"
        )
    fmt, depth = check_format(cfg.delivery.format, cfg.delivery.bit_depth)
    reference = None
    mono_ref = False
    if cfg.get("reference"):
        reference, _ = load_mix(cfg.reference, sr, what="reference")
        mono_ref = bool(torch.equal(reference[:, 0], reference[:, 1]))
        if not torch.isfinite(integrated_loudness(reference, sr)).all():
            raise UserError("reference is silent: there is nothing to match")
    align_ms = float(cfg.get("align_ms") or 0.0)
    if not 0.0 <= align_ms <= 1000.0:
        raise UserError(f"align_ms must be between 0 and 1000 ms, got {align_ms:g}")
    offset, lag = 0, None
    if reference is not None and bool(cfg.aligned) and align_ms > 0:
        offset = lag = estimate_lag(stems.audio[0].sum(0), reference[0], int(align_ms * 1e-3 * sr))
    console = build_console(cfg, sr, stems.names, stems.mono, offset).to(device)
    audio = stems.audio.to(device)
    start = equal_loudness_gains(audio, sr)
    console.load_values({"strip.input.gain_db": start.cpu()})
    init_report = None
    estimate = None
    if reference is not None and str(cfg.fit.get("init", "nnls")) == "nnls":
        # The first stage: gains and coarse tone in closed form (see diffmix.mix_init).
        t_init = time.perf_counter()
        estimate = console_estimate(
            console,
            audio,
            reference.to(device),
            sr,
            coherent=bool(cfg.aligned) and bool(cfg.fit.get("coherent", True)),
            lag=lag,  # already found for the alignment: not a second cross-correlation
        )
        init_report = initialise_console(console, audio, reference.to(device), sr, estimate=estimate)
        init_report["seconds"] = round(time.perf_counter() - t_init, 3)
    weights = {k: float(v) for k, v in cfg.loss.weights.items() if float(v) > 0}
    if mono_ref:
        weights = {k: v for k, v in weights.items() if k not in SIDE_TERMS}
    aligned = reference is not None and bool(cfg.aligned)
    if not aligned:
        weights.pop("mrstft", None)
    if reference is None:
        weights = {k: v for k, v in weights.items() if k not in REFERENCE_TERMS}
    fit_report = None
    if reference is not None and weights and cfg.fit.steps > 0:
        ref = reference.to(device)
        length_all = min(audio.shape[-1], ref.shape[-1]) if aligned else audio.shape[-1]
        length = min(length_all, int(round(float(cfg.fit.excerpt_s) * sr)))
        features = {k: v for k, v in weights.items() if k != "mrstft"}
        mrstft = MRSTFTLoss(sr, **dict(cfg.loss.mrstft)).to(device) if "mrstft" in weights else None
        pool = int(cfg.fit.get("pool", 0) or 0)
        excerpts = _excerpt_pool(length_all, length, pool) if pool else []
        # A fixed pool of excerpts spread over the song: each one's reference side (its
        # MR-STFT magnitudes, its features) is computed once instead of every step.
        cached = []
        for s0 in excerpts:
            piece = ref[..., s0 : s0 + length]
            cached.append(
                (
                    Objective(sr, features, reference=piece if aligned else ref).to(device)
                    if features
                    else None,
                    mrstft.reference(piece.mean(1, keepdim=True) if mono_ref else piece) if mrstft else None,
                )
            )
        objective = None
        if not pool and features:
            objective = Objective(sr, features, reference=ref).to(device)
        params = console.select(list(cfg.fit.params))
        prior_w = float(cfg.loss.get("prior", 0.0))
        staging_w = float(cfg.loss.get("gain_staging", 0.0))
        initial = {k: p.exact().to(device) for k, p in console.named_values().items()}
        per_step = int(cfg.fit.excerpts)

        def closure(step: int):  # noqa: ANN202
            total = audio.new_zeros(())
            terms: dict[str, float] = {}
            if pool:
                picks = [(step * per_step + j) % len(excerpts) for j in range(per_step)]
                windows = [(excerpts[i], *cached[i]) for i in picks]
            else:
                starts = excerpt_starts(length_all, length, per_step, draw(int(cfg.seed), step))
                windows = [(s0, objective, None) for s0 in starts]
            for s0, obj, ref_mags in windows:
                y = console(audio[..., s0 : s0 + length])
                loss, parts = obj(y) if obj is not None else (y.new_zeros(y.shape[0]), {})
                if mrstft is not None:
                    a = y.mean(1, keepdim=True) if mono_ref else y
                    if ref_mags is None:
                        b = ref[..., s0 : s0 + length]
                        ref_mags = mrstft.reference(b.mean(1, keepdim=True) if mono_ref else b)
                    parts["mrstft"] = mrstft.distance(a, ref_mags)
                    loss = loss + weights["mrstft"] * parts["mrstft"]
                if staging_w:
                    peak_db = 20 * torch.log10(y.abs().amax().clamp_min(1e-9))
                    parts["gain_staging"] = torch.relu(peak_db).square().view(1)
                    loss = loss + staging_w * parts["gain_staging"]
                total = total + loss.mean()
                for k, v in parts.items():
                    terms[k] = terms.get(k, 0.0) + float(v.detach().mean())
            if prior_w:
                prior = console.prior(initial)
                total = total + prior_w * prior
                terms["prior"] = float(prior.detach())
            return total, terms

        scheduler = instantiate(cfg.scheduler, where="scheduler") if cfg.get("scheduler") else None
        out = output_dir(cfg)
        result = fit(
            params,
            closure,
            steps=int(cfg.fit.steps),
            optimizer=instantiate(cfg.optim, where="optim"),
            scheduler=scheduler,
            patience=int(cfg.fit.patience),
            # With a fixed pool each step scores another excerpt: progress is judged on the
            # mean over whole passes through the pool.
            cycle=max(1, len(excerpts)),
            checkpoint=Path(cfg.checkpoint) if cfg.get("checkpoint") else None,
            progress=bool(cfg.progress),
            log_path=out / "fit_log.jsonl",
            tag="mix:" + ",".join(stems.names),
        )
        fit_report = {k: v for k, v in vars(result).items() if k != "history"}
        if estimate is not None and aligned and bool(cfg.fit.get("polish", True)):
            # The last stage: each track's loudness back to the closed-form estimate, which
            # sees quiet tracks that the waveform loss trades away (diffmix.mix_init).
            # Measured over the whole song (in chunks): a sparse track (a crash) may sound in
            # none of the excerpts.
            chunk = min(audio.shape[-1], int(POLISH_CHUNK_S * sr))
            fit_report["polish"] = polish_levels(
                console, audio, estimate, sr, starts=list(range(0, audio.shape[-1], chunk)), length=chunk
            )
    if init_report is not None:
        fit_report = {**(fit_report or {}), "init": init_report}
    out = output_dir(cfg)
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
        seed=int(cfg.seed),
        protect=protect,
    )
    save_preset(console, out / f"{stem}_preset.yaml")
    report = {
        "job": "mix",
        "stems": stems.names,
        "outputs": {"audio": delivery.path, "preset": str(out / f"{stem}_preset.yaml")},
        "mix": measure(mix.cpu().double(), sr),
        "normalised_down_db": None if peak <= 1.0 else -20 * float(torch.log10(torch.tensor(peak))) - 0.1,
        "fit": fit_report,
        "alignment": {"offset_samples": offset, "offset_ms": round(1e3 * offset / sr, 3)},
        "params": console.preset(),
        "delivery": delivery.as_dict(),
    }
    if reference is not None:
        report["reference"] = measure(reference.double(), sr)
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
