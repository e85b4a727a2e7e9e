"""Shared data for the product benchmarks: the shared multitracks, synthetic songs, meters
and a CLI runner.

The shared sets live in ``../shared/data/multitrack/<song>/`` (20 s excerpts, stems plus
the producer's ``mix.flac``); every loader returns nothing when they are absent, and the
benchmarks fall back to synthetic material.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[2]
# ../shared beside the checkout; DIFFMIX_SHARED points elsewhere (e.g. from a worktree).
SHARED = Path(os.environ.get("DIFFMIX_SHARED", ROOT.parent / "shared")) / "data" / "multitrack"
SR = 44100


# Released, mastered music outside the shared set, where installed (Debian's
# warzone2100-music, GPL-2+, and singularity-music, CC BY-SA; `apt-get install` them) or
# in DIFFMIX_BENCH_MUSIC (folders of audio files, os.pathsep-separated). Evaluation only.
MUSIC = os.environ.get("DIFFMIX_BENCH_MUSIC",
                       "/usr/share/games/warzone2100/music:/usr/share/games/singularity/music")


def released_music() -> list[Path]:
    """Every audio file under :data:`MUSIC`, sorted."""
    return sorted(f for folder in MUSIC.split(os.pathsep) if Path(folder).is_dir()
                  for f in Path(folder).rglob("*") if f.suffix.lower() in (".ogg", ".opus", ".flac", ".wav"))


def music_seed(part: str) -> int:
    """The seed of a draw from :func:`released_music`: ``DIFFMIX_BENCH_MUSIC_SEED``, else a
    fresh one; printed, so a run can be repeated."""
    seed = int(os.environ.get("DIFFMIX_BENCH_MUSIC_SEED", np.random.SeedSequence().entropy % 100000))
    print(f"{part}: seed {seed}", file=sys.stderr)
    return seed


def shared_sets() -> list[Path]:
    """Folders of the shared multitracks (each with ``stems/`` and ``mix.flac``)."""
    if not SHARED.is_dir():
        return []
    return sorted(p for p in SHARED.iterdir() if (p / "mix.flac").exists() and (p / "stems").is_dir())


def read(path: Path) -> tuple[np.ndarray, int]:
    """``(channels, time)`` float64 and the sample rate."""
    data, sr = sf.read(str(path), dtype="float64", always_2d=True)
    return np.ascontiguousarray(data.T), int(sr)


def write(path: Path, audio: np.ndarray, sr: int, subtype: str = "PCM_24") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(audio, dtype=np.float64).T, sr, subtype=subtype)
    return path


def loop_to(audio: np.ndarray, samples: int) -> np.ndarray:
    """Repeat ``audio`` (channels, time) to exactly ``samples`` samples."""
    reps = math.ceil(samples / audio.shape[-1])
    return np.tile(audio, (1, reps))[:, :samples]


def synthetic_song(
    seconds: float, seed: int, *, level_db: float = -20.0, dynamic: bool = False
) -> np.ndarray:
    """A stereo song-like signal ``(2, T)``: bass line, chords, drums and a wide pad.

    ``dynamic`` makes a quiet verse and a loud chorus (a 12 dB step), to exercise the gate.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    beat = 60.0 / (100 + 40 * rng.random())
    root = 40 + 20 * rng.random()
    bass = 0.5 * np.sin(2 * np.pi * root * t) * (0.6 + 0.4 * np.cos(2 * np.pi * t / beat))
    chord = sum(0.15 * np.sin(2 * np.pi * root * 4 * r * t + rng.random() * 6) for r in (1.0, 1.26, 1.5))
    phase = (t % beat) / beat
    kick = np.exp(-phase * 30) * np.sin(2 * np.pi * 55 * t * (1 + np.exp(-phase * 40)))
    hat = np.exp(-((t + beat / 2) % (beat / 2)) / beat * 60) * rng.standard_normal(n) * 0.2
    pad_l, pad_r = (np.convolve(rng.standard_normal(n), np.ones(64) / 64, "same") * 0.6 for _ in range(2))
    mid = bass + chord + kick + hat
    x = np.stack([mid + pad_l, mid + pad_r])
    if dynamic:
        x *= np.where(t < seconds / 2, 10 ** (-12 / 20), 1.0)
    rms = np.sqrt(np.mean(x**2))
    return x * 10 ** (level_db / 20) / rms


def measure(audio: np.ndarray, sr: int) -> dict[str, float]:
    """Integrated loudness (diffmix and pyloudnorm) and true peak (diffmix, dBTP)."""
    import pyloudnorm

    from diffmix.functional.loudness import integrated_loudness
    from diffmix.functional.peaks import true_peak

    x = torch.from_numpy(np.ascontiguousarray(audio)).unsqueeze(0)
    tp = float(true_peak(x, sr).amax())
    return {
        "lufs": float(integrated_loudness(x, sr)[0]),
        "lufs_pyln": float(pyloudnorm.Meter(sr).integrated_loudness(audio.T)),
        "tp_dbtp": 20 * math.log10(max(tp, 1e-12)),
    }


def cli(job: str, *overrides: str, timeout: float = 900) -> float:
    """Run ``diffmix <job> overrides...`` as a subprocess from this checkout; wall seconds.

    Raises RuntimeError with the tail of stderr when the job fails.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "diffmix.cli", job, *overrides, "progress=false"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"diffmix {job} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return took
