"""Loading the jobs' inputs: stem sets, mixes and references, with their policies.

- Stems of different lengths are zero-padded to the longest, with a warning.
- A stem at another sample rate is resampled (with a message), or refused when
  ``resample=False``.
- Mono and stereo stems mix freely; mono stems are flagged for the mono pan law.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from diffmix._compat import import_torchaudio
from diffmix.console import as_stereo_stems
from diffmix.io import AudioFileError, read_audio

log = logging.getLogger("diffmix")

AUDIO_SUFFIXES = (".wav", ".flac", ".aiff", ".aif", ".ogg", ".mp3")


@dataclass
class StemSet:
    """Stems ready for the console: ``audio`` is ``(1, N, 2, T)``."""

    audio: Tensor
    names: list[str]
    mono: list[bool]
    sample_rate: int
    paths: list[Path]


def resample(x: Tensor, orig: int, new: int) -> Tensor:
    """Band-limited resampling of ``(..., time)`` audio (torchaudio's sinc resampler)."""
    if orig == new:
        return x
    ta = import_torchaudio()
    return ta.functional.resample(x, orig, new)


def expand_paths(spec: str | Sequence[str], what: str) -> list[Path]:
    """A folder, a glob or a list of files -> sorted audio file paths."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    paths: list[Path] = []
    for item in items:
        p = Path(str(item))
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in AUDIO_SUFFIXES)
        elif any(ch in str(item) for ch in "*?["):
            paths += sorted(Path(q) for q in glob.glob(str(item)))
        else:
            paths.append(p)
    if not paths:
        raise AudioFileError(f"{what}: no audio files found in {spec!r}")
    return paths


def load_stems(
    spec: str | Sequence[str],
    *,
    sample_rate: int | None = None,
    resample_mismatched: bool = True,
) -> StemSet:
    """Read a stem set (folder, glob or list) into one ``(1, N, 2, T)`` tensor.

    Args:
        sample_rate: the working rate; default the first stem's rate.
        resample_mismatched: resample stems at other rates (True) or refuse them.
    """
    paths = expand_paths(spec, "stems")
    loaded = [read_audio(p) for p in paths]
    rate = int(sample_rate or loaded[0][1])
    audio = []
    for path, (x, sr) in zip(paths, loaded, strict=True):
        if x.shape[0] > 2:
            raise AudioFileError(f"{path}: {x.shape[0]} channels; stems must be mono or stereo")
        if sr != rate:
            if not resample_mismatched:
                raise AudioFileError(
                    f"{path}: sample rate {sr} Hz differs from {rate} Hz (resample=false)"
                )
            log.warning("%s: resampling %d Hz -> %d Hz", path.name, sr, rate)
            x = resample(x, sr, rate)
        audio.append(x)
    longest = max(x.shape[-1] for x in audio)
    padded = []
    for path, x in zip(paths, audio, strict=True):
        if x.shape[-1] < longest:
            log.warning(
                "%s: %d samples shorter than the longest stem; padded with silence",
                path.name, longest - x.shape[-1],
            )
            x = torch.nn.functional.pad(x, (0, longest - x.shape[-1]))
        padded.append(x)
    stems, mono = as_stereo_stems(padded)
    return StemSet(stems, [p.stem for p in paths], mono, rate, paths)


def load_mix(path: str | Path, sample_rate: int | None = None, what: str = "input") -> tuple[Tensor, int]:
    """A mix or reference as stereo ``(1, 2, T)``; mono is duplicated, resampled if asked."""
    x, sr = read_audio(path)
    if x.shape[0] > 2:
        raise AudioFileError(f"{path}: {x.shape[0]} channels; {what} must be mono or stereo")
    if x.shape[0] == 1:
        log.info("%s is mono: using it on both channels", what)
        x = x.expand(2, -1).clone()
    if sample_rate is not None and sr != sample_rate:
        log.info("%s: resampling %d Hz -> %d Hz", what, sr, sample_rate)
        x, sr = resample(x, sr, sample_rate), sample_rate
    return x.unsqueeze(0), int(sr)
