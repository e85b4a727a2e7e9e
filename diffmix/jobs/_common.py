"""Helpers shared by the CLI jobs: the output folder, the device, option checks, a
report's headline measurements (:func:`summary`), the delivery check's true peak and the
listening report switch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf


def to_dict(node: Any) -> dict[str, Any]:
    """A resolved config mapping as a plain ``dict``."""
    return cast(dict, OmegaConf.to_container(node, resolve=True))


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
    Silence reads ``-inf`` (written to JSON as the string ``"-inf"``). The full analysis
    (series, spectra, per-band stereo) is the ``analyze`` job's.
    """
    from diffmix.functional.analysis import side_mid_ratio_db, stereo_correlation
    from diffmix.functional.loudness import integrated_loudness, loudness_range, short_term_loudness
    from diffmix.functional.peaks import peak_ratio_db, true_peak

    def rel(peak: float, level: float) -> float:  # PLR and PSR, as the meters define them
        return float(peak_ratio_db(torch.tensor(peak, dtype=torch.float64),
                                   torch.tensor(level, dtype=torch.float64)))

    with torch.no_grad():
        lufs = float(integrated_loudness(x, sample_rate)[0])
        tp = 20.0 * math.log10(max(float(true_peak(x, sample_rate).amax()), 1e-300))
        sp = 20.0 * math.log10(max(float(x.abs().amax()), 1e-300))
        st_max = float(short_term_loudness(x, sample_rate).amax())
        out = {
            "integrated_lufs": lufs,
            "lra_lu": float(loudness_range(x, sample_rate)[0]),
            "true_peak_dbtp": tp if tp > -300 else -math.inf,
            "sample_peak_dbfs": sp if sp > -300 else -math.inf,
            "plr_db": rel(tp, lufs),
            "psr_db": rel(tp, st_max),
            "max_short_term_lufs": st_max,
        }
        if x.shape[1] == 2:
            out["correlation"] = float(stereo_correlation(x, sample_rate)[0])
            out["side_mid_db"] = float(side_mid_ratio_db(x, sample_rate)[0])
    return out


def peak_dbtp(x: torch.Tensor, sample_rate: int) -> float:
    """The highest true peak over items and channels, dBTP, on the strict meter (BS.1770
    Annex 2, the common 4x/8x upsamplers and ideal 8x interpolation): the delivery check's."""
    from diffmix.functional.peaks import strict_true_peak

    return 20.0 * math.log10(max(float(strict_true_peak(x, sample_rate).amax()), 1e-12))


def listening_report(cfg: DictConfig, path: Path, **kwargs: Any) -> str | None:
    """Write the job's HTML listening report (:mod:`diffmix.listen`) unless ``report=false``.

    Returns the page's path as a string, or None when turned off.
    """
    if not bool(cfg.get("report", True)):
        return None
    from diffmix.listen import write_listening_report

    return str(write_listening_report(path, **kwargs))
