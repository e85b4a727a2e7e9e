"""Helpers shared by the CLI jobs: the output folder, the device, option checks and the
listening report switch (a report's headline measurements, :func:`~diffmix.report.summary`
and :func:`~diffmix.report.peak_dbtp`, are re-exported from :mod:`diffmix.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf

from diffmix.report import peak_dbtp, summary

__all__ = ["listening_report", "output_dir", "peak_dbtp", "pick_device", "positive", "summary", "to_dict"]


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


def listening_report(cfg: DictConfig, path: Path, **kwargs: Any) -> str | None:
    """Write the job's HTML listening report (:mod:`diffmix.listen`) unless ``report=false``.

    Returns the page's path as a string, or None when turned off.
    """
    if not bool(cfg.get("report", True)):
        return None
    from diffmix.listen import write_listening_report

    return str(write_listening_report(path, **kwargs))
