"""Apply a saved preset to new audio, without fitting.

Options: ``preset`` (a YAML preset written by mix, master or save_preset; required),
``input`` (a mix for a chain preset, or a stem folder/glob for a console preset;
required), ``delivery.*``, ``output_name``, ``out``. Writes the audio and a JSON report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from diffmix.config import load_preset
from diffmix.console import Console
from diffmix.delivery import check_format, deliver
from diffmix.errors import UserError
from diffmix.inputs import load_mix, load_stems
from diffmix.io import check_outputs
from diffmix.jobs._common import listening_report, output_dir, peak_dbtp, pick_device, summary
from diffmix.listen import Take, job_warnings
from diffmix.mastering import set_exact
from diffmix.report import write_json


def run(cfg: DictConfig) -> int:
    t0 = time.perf_counter()
    device = pick_device(str(cfg.device))
    fmt, depth = check_format(cfg.delivery.format, cfg.delivery.bit_depth)
    out_cfg = Path(str(cfg.out)) if cfg.get("out") else None
    stem = cfg.get("output_name") or f"{Path(str(cfg.input)).stem}_render"
    if out_cfg is not None:  # every output checked against every input before any work
        check_outputs(tuple(out_cfg / f"{stem}{s}" for s in (f".{fmt}", "_report.json", "_report.html")),
                      (str(cfg.preset), str(cfg.input)))
    model = load_preset(str(cfg.preset))
    protect: tuple[str, ...] = (str(cfg.preset),)
    if isinstance(model, Console):
        stems = load_stems(cfg.input, sample_rate=model.sample_rate)
        if len(stems.names) != model.tracks:
            raise UserError(
                f"preset is a console for {model.tracks} tracks, but {cfg.input} has "
                f"{len(stems.names)} stems"
            )
        for effect in model.strip.effects.values():
            if hasattr(effect, "mono_items"):
                effect.mono_items = torch.tensor(stems.mono)
        x, protect = stems.audio, protect + tuple(str(p) for p in stems.paths)
    else:
        x, _ = load_mix(cfg.input, model.sample_rate, what="input")
        protect = protect + (str(cfg.input),)
    sr = model.sample_rate
    model = model.to(device)
    set_exact(model, True)
    with torch.no_grad():
        y = model(x.to(device)).cpu()
    out = output_dir(cfg)
    check_outputs((out / f"{stem}.{fmt}", out / f"{stem}_report.json", out / f"{stem}_report.html"), protect)
    delivery = deliver(
        y[0], sr, out / f"{stem}.{fmt}", fmt=fmt, bit_depth=depth,
        target_rate=cfg.delivery.sample_rate, dither=bool(cfg.delivery.dither),
        true_peak_db=peak_dbtp, seed=int(cfg.seed), protect=protect,  # no ceiling: reported only
    )
    report: dict[str, Any] = {
        "job": "render",
        "preset": str(cfg.preset),
        "outputs": {"audio": delivery.path},
        "output": summary(y.double(), sr),
        "delivery": delivery.as_dict(),
    }
    report["qc"] = job_warnings(report["output"], y, sr)
    source = (x.sum(1) if x.dim() == 4 else x).cpu()  # a console's stems, summed at unity
    source = source / max(1.0, float(source.abs().max()) / 0.99)  # lowered only if that would clip
    page = listening_report(
        cfg, out / f"{stem}_report.html", title=stem, sample_rate=sr, job="render",
        takes=[Take("stems" if x.dim() == 4 else "input", source),
               Take("result", y, Path(delivery.path))],
        measures={"result": report["output"]}, params=model.preset(), warnings=report["qc"],
        notes=[f"preset: {cfg.preset}"],
    )
    if page:
        report["outputs"]["listening_report"] = page
    report["runtime_s"] = round(time.perf_counter() - t0, 3)
    write_json(out / f"{stem}_report.json", report)
    print(f"render: {delivery.path}  ({report['runtime_s']:.1f} s)")
    return 0
