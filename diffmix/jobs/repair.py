"""Repair a file: remove DC, rebuild clipped runs and remove clicks (``clicks``, ``clipping``, ``dc``).

Options: ``input`` (required), ``clicks``, ``clipping``, ``dc`` (true/false, default
true), ``difference`` (true: also write ``<name>_removed.wav``, the input minus the
output, so that removed + output = input exactly), ``output_name``, ``out``, ``device``.
Writes ``<name>.wav`` (32-bit float: repaired peaks may rise above the clip level) and
``<name>_report.json`` listing every repaired span (channel, samples, time).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from omegaconf import DictConfig, OmegaConf

from diffmix.io import read_audio, write_audio
from diffmix.jobs._common import listening_report, output_dir, pick_device, summary
from diffmix.listen import Take, job_warnings
from diffmix.polish import polish
from diffmix.report import write_json


def _flag(cfg: DictConfig, key: str) -> bool:
    value = cfg.get(key)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def run(cfg: DictConfig) -> int:
    t0 = time.perf_counter()
    if OmegaConf.is_missing(cfg, "input") or not cfg.get("input"):
        raise ValueError("input=<audio file> is required")
    stages = {key: _flag(cfg, key) for key in ("clicks", "clipping", "dc")}
    difference = _flag(cfg, "difference")
    device = pick_device(str(cfg.get("device", "auto")))
    path = Path(str(cfg.input))
    audio, sr = read_audio(path)
    if sf.info(str(path)).subtype == "DOUBLE":  # keep every bit for the exact difference
        audio = torch.from_numpy(np.ascontiguousarray(sf.read(str(path), always_2d=True)[0].T))
    with torch.no_grad():
        y, found = polish(audio[None].to(device, torch.float32), sr, **stages)
    out = output_dir(cfg)
    stem = cfg.get("output_name") or f"{path.stem}_repaired"
    audio_path = write_audio(out / f"{stem}.wav", y[0].cpu(), sr, subtype="FLOAT",
                             protect=(str(path),))
    outputs = {"audio": str(audio_path)}
    if difference:
        # The difference is taken from the file as written (float32) and stored in
        # float64, where input - output is exact, so removed + output = input bit for bit.
        written = torch.from_numpy(sf.read(str(audio_path), dtype="float64", always_2d=True)[0].T)
        removed = audio.to(torch.float64) - written
        diff_path = out / f"{stem}_removed.wav"
        with _atomic(diff_path, path) as tmp:
            sf.write(str(tmp), removed.numpy().T, sr, subtype="DOUBLE", format="WAV")
        outputs["difference"] = str(diff_path)
    report = {
        "job": "repair",
        "input": str(path),
        "sample_rate": sr,
        "channels": int(audio.shape[0]),
        "duration_s": round(audio.shape[-1] / sr, 6),
        "stages": stages,
        "outputs": outputs,
        "repairs": found,
    }
    after = summary(y.cpu().double(), sr)
    report["qc"] = job_warnings(after, y.cpu(), sr)
    page = listening_report(
        cfg, out / f"{stem}_report.html", title=stem, sample_rate=sr, job="repair",
        takes=[Take("input", audio.float()), Take("result", y[0].cpu(), Path(audio_path))],
        measures={"input": summary(audio[None].double(), sr), "result": after},
        warnings=report["qc"],
        notes=["Repaired: " + _done(found)],
    )
    if page:
        outputs["listening_report"] = page
    report["runtime_s"] = round(time.perf_counter() - t0, 3)
    report_path = write_report(out, stem, report)
    print(f"repair: {audio_path}  ({_done(found)}; report {report_path}, {report['runtime_s']:.1f} s)")
    return 0


def _done(found: dict[str, Any]) -> str:
    """What the stages that ran did, in a few words: each count, and the DC offset removed."""
    said = [f"{k} {v['count']}" for k, v in found.items() if "count" in v]
    if "dc" in found:
        worst = max(abs(v) for v in found["dc"]["offset_per_channel"])
        said.append(f"DC offset removed (up to {20 * math.log10(worst):.1f} dBFS)" if worst > 0
                    else "no DC offset")
    return ", ".join(said) or "nothing: every stage is off, the output is the input"


def write_report(out: Path, stem: str, report: dict[str, Any]) -> Path:
    """Write the job's report(s); the one place a listening report can hook in."""
    return write_json(out / f"{stem}_report.json", report)


def _atomic(target: Path, source: Path):  # noqa: ANN202
    from diffmix.io import AudioFileError, atomic_path

    if target.exists() and source.exists() and target.samefile(source):
        raise AudioFileError(f"{target}: refusing to overwrite an input file")
    return atomic_path(target)
