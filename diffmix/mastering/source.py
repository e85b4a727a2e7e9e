"""Where the mastering pipeline reads its signal, and how it meters one in chunks.

A song is read through one interface: ``x[..., a:b]`` gives samples ``[a, b)`` as a
``(1, 2, b - a)`` tensor. An in-memory song is a tensor; a song on disk is a
:class:`DiskAudio`, which reads only the slice asked for, so a fit draws the same excerpts
from either (:func:`~diffmix.mastering.fit.song_excerpts`) and a long file is mastered in
bounded memory (:mod:`diffmix.mastering.render`: :class:`~diffmix.mastering.render.StreamRenderer`).

:func:`measure_file` meters a file chunk by chunk with :class:`~diffmix.report.ChunkMeter`,
the meter whose one-chunk case is :func:`~diffmix.report.summary`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from diffmix.checks import all_finite
from diffmix.functional.loudness import block_samples
from diffmix.io import AudioFileError
from diffmix.report import meter_chunks

# Left context in time constants of the slowest attack/release: exp(-12) ~ 6e-6.
_TIME_CONSTANTS = 12.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _load_malloc_trim()


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), once per chunk.

    Chunk buffers (tens of MB, sizes varying with the context and the last chunk) raise
    glibc's dynamic mmap threshold, after which they come from the heap and fragment it:
    measured, the resident set then grew by ~100 MB per 10 minutes of audio per pass.
    Trimming after each chunk keeps it flat (a fraction of a millisecond per chunk).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


# --------------------------------------------------------------------------- reading
class DiskAudio:
    """A mix on disk that reads like a ``(1, 2, T)`` float32 tensor, one slice at a time.

    Mono is duplicated to both channels (as :func:`diffmix.inputs.load_mix` does). Reads
    outside ``[0, T)`` are digital silence. Every read is checked for NaN/Inf.

    Args:
        path: any file soundfile can read.
        device: where slices are returned.

    >>> import tempfile, soundfile as sf, numpy as np
    >>> p = tempfile.mkdtemp() + "/a.wav"; sf.write(p, np.zeros((100, 2), "float32"), 48000)
    >>> DiskAudio(p).read(-10, 20).shape
    torch.Size([1, 2, 30])
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise AudioFileError(f"{self.path}: file not found")
        try:
            info = sf.info(str(self.path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioFileError(f"{self.path}: cannot read audio ({exc})") from exc
        if info.channels > 2:
            raise AudioFileError(f"{self.path}: {info.channels} channels; input must be mono or stereo")
        if info.frames == 0:
            raise AudioFileError(f"{self.path}: file is empty (0 samples)")
        self.sample_rate = int(info.samplerate)
        self.frames = int(info.frames)
        self.channels = int(info.channels)
        self.device = torch.device(device)
        self.shape = (1, 2, self.frames)

    def read(self, start: int, stop: int) -> Tensor:
        """Samples ``[start, stop)`` as ``(1, 2, stop - start)``, silence outside the file."""
        n = stop - start
        lo, hi = max(start, 0), min(stop, self.frames)
        out = np.zeros((2, max(n, 0)), dtype=np.float32)
        if hi > lo:
            try:
                with sf.SoundFile(str(self.path)) as f:
                    f.seek(lo)
                    data = f.read(hi - lo, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise AudioFileError(
                    f"{self.path}: cannot read samples {lo}..{hi} of the {self.frames} its header "
                    f"declares ({' '.join(str(exc).split())}); is the file cut short?"
                ) from exc
            if data.shape[0] < hi - lo:
                raise AudioFileError(
                    f"{self.path}: truncated: its header declares {self.frames} samples but "
                    f"reading stopped at {lo + data.shape[0]}"
                )
            if not all_finite(data):
                raise AudioFileError(f"{self.path}: audio contains NaN or Inf (near sample {lo})")
            out[:, lo - start : lo - start + data.shape[0]] = data.T  # mono broadcasts
        return torch.from_numpy(out).unsqueeze(0).to(self.device)

    def __getitem__(self, key: Any) -> Tensor:
        # song_excerpts slices x[..., a:b]; nothing else is supported.
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] is Ellipsis
                and isinstance(key[1], slice) and key[1].step in (None, 1)):
            raise TypeError(f"DiskAudio supports only x[..., a:b], got {key!r}")
        start, stop, _ = key[1].indices(self.frames)
        return self.read(start, max(start, stop))


class CacheFile:
    """A float32 ``(C, T)`` signal in a temporary file, written in order, read anywhere."""

    def __init__(self, folder: Path, channels: int, frames: int) -> None:
        fd, name = tempfile.mkstemp(prefix=".stream.", suffix=".partial.f32", dir=folder)
        self.path = Path(name)
        self.fh = os.fdopen(fd, "w+b")
        self.channels, self.frames = channels, frames

    def append(self, x: Tensor) -> None:
        self.fh.write(x.detach().to("cpu", torch.float32).numpy().T.tobytes())

    def read(self, start: int, stop: int, device: torch.device) -> Tensor:
        """``(1, C, stop - start)``, silence outside ``[0, frames)``."""
        lo, hi = max(start, 0), min(stop, self.frames)
        out = np.zeros((self.channels, stop - start), dtype=np.float32)
        if hi > lo:
            self.fh.flush()
            self.fh.seek(lo * self.channels * 4)
            data = np.fromfile(self.fh, dtype=np.float32, count=(hi - lo) * self.channels)
            out[:, lo - start : hi - start] = data.reshape(hi - lo, self.channels).T
        return torch.from_numpy(out).unsqueeze(0).to(device)

    def close(self) -> None:
        self.fh.close()
        self.path.unlink(missing_ok=True)


def chunk_bounds(frames: int, sample_rate: int, chunk_s: float) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks, each a whole number of 100 ms hops."""
    hop = block_samples(sample_rate)[0]
    size = max(1, round(chunk_s * sample_rate / hop)) * hop
    for start in range(0, frames, size):
        yield start, min(start + size, frames)


def measure_file(path: str | Path, *, chunk_s: float = 30.0, strict: bool = False) -> dict[str, float]:
    """A file's :meth:`~diffmix.report.ChunkMeter.summary` (the report's measurements, as
    :func:`~diffmix.report.summary` gives for a tensor), metered in chunks.

    Memory stays at one chunk however long the file is. Same figures as
    :func:`~diffmix.functional.loudness.integrated_loudness`,
    :func:`~diffmix.functional.loudness.loudness_range` and
    :func:`~diffmix.functional.peaks.true_peak` on the whole file (to ~1e-9 LU); with
    ``strict``, the true peak is :func:`~diffmix.functional.peaks.strict_true_peak`'s.
    """
    src = DiskAudio(path)
    return meter_chunks(src.read, src.frames, src.sample_rate, 2, chunk_s=chunk_s, strict=strict,
                        after_chunk=release_memory)
