"""Helpers shared by the CLI jobs."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig


def output_dir(cfg: DictConfig) -> Path:
    """``cfg.out`` if given, else Hydra's run directory (else the working directory)."""
    if cfg.get("out"):
        path = Path(str(cfg.out))
    else:
        try:
            from hydra.core.hydra_config import HydraConfig

            path = Path(HydraConfig.get().runtime.output_dir)
        except ValueError:  # not running under Hydra
            path = Path.cwd()
    path.mkdir(parents=True, exist_ok=True)
    return path


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for but no CUDA device is available")
    return torch.device(name)


def positive(cfg: DictConfig, key: str, *, integer: bool = False) -> float:
    """``cfg[key]`` as a positive number, or ValueError naming the key."""
    value = cfg.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if ok and integer and int(value) != value:
        ok = False
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{key} must be {kind}, got {value!r}")
    return int(value) if integer else float(value)


def summary(x: torch.Tensor, sample_rate: int) -> dict:
    """The headline measurements of ``(1, C, T)`` audio for a job report.

    Loudness in LUFS, LRA in LU, peaks in dBTP/dBFS (max over channels), ratios in dB.
    Silence reads ``-inf`` (written to JSON as the string ``"-inf"``).
    """
    from diffmix.functional.analysis import analyze

    r = analyze(x, sample_rate)
    out = {
        "integrated_lufs": float(r["integrated_lufs"][0]),
        "lra_lu": float(r["loudness_range_lu"][0]),
        "true_peak_dbtp": float(r["true_peak_dbtp"][0].amax()),
        "sample_peak_dbfs": float(r["sample_peak_dbfs"][0].amax()),
        "plr_db": float(r["plr_db"][0]),
        "psr_db": float(r["psr_db"][0]),
        "max_short_term_lufs": float(r["short_term_lufs"][0].amax()),
        "clipped_samples": int(r["clipped_samples"][0].sum()),
        "dc_offset": [float(v) for v in r["dc_offset"][0]],
    }
    if r["correlation"] is not None:
        out["correlation"] = float(r["correlation"][0])
        out["side_mid_db"] = float(r["side_mid_db"][0])
    return out


def peak_dbtp(x: torch.Tensor, sample_rate: int) -> float:
    """The highest true peak over items and channels, dBTP (the delivery check's meter)."""
    from diffmix.functional.peaks import true_peak

    return 20.0 * math.log10(max(float(true_peak(x, sample_rate).amax()), 1e-12))
