"""Shared helpers for the job tests: synthetic audio files and running the CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]


def music(seconds: float, sr: int = 44100, seed: int = 0, level: float = 0.25) -> np.ndarray:
    """Stereo music-like test audio: a pulsing chord plus filtered noise, ``(T, 2)``."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * sr)
    t = torch.arange(n, dtype=torch.float64) / sr
    chord = sum(torch.sin(2 * math.pi * f * t) for f in (110.0, 220.0 * 1.26, 330.0, 880.0))
    pulse = 0.4 + 0.6 * (torch.sin(2 * math.pi * 2.0 * t) > 0).double()
    noise = torch.randn(2, n, generator=g, dtype=torch.float64)
    noise = noise - torch.roll(noise, 1, -1) * 0.5
    x = level * (0.2 * chord * pulse + 0.05 * noise)
    return x.T.numpy().astype(np.float32)


def write(path: Path, audio: np.ndarray, sr: int = 44100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sr, subtype="FLOAT")
    return path


def run_cli(
    *args: str, cwd: Path, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "diffmix.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
