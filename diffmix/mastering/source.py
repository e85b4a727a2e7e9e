"""Where the mastering pipeline reads its signal, and how it meters one in chunks.

A song is read through one interface: ``x[..., a:b]`` gives samples ``[a, b)`` as a
``(1, 2, b - a)`` tensor. An in-memory song is a tensor; a song on disk is a
:class:`DiskAudio`, which reads only the slice asked for, so a fit draws the same excerpts
from either (:func:`~diffmix.mastering.fit.song_excerpts`) and a long file is mastered in
bounded memory (:mod:`diffmix.mastering.render`: :class:`~diffmix.mastering.render.StreamRenderer`).

:class:`ChunkMeter` meters a signal fed chunk by chunk (the gated loudness is
:class:`~diffmix.functional.loudness.GatedMeter`'s, the same meter as the whole-signal
one); :func:`measure_file` meters a file that way.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from diffmix.errors import UserError
from diffmix.functional.loudness import GatedMeter, block_samples
from diffmix.functional.peaks import oversample, oversampling_factor, strict_envelope
from diffmix.io import AudioFileError

# True-peak context either side of a chunk: more than half the interpolation filter.
_PEAK_CONTEXT = 256
# The strict meter's reach (peaks.strict_envelope: its ideal interpolation's FFT blocks and
# every FIR upsampler), so a chunk read with this much context meters as the whole file does.
_STRICT_CONTEXT = 4096
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
            if not np.isfinite(data).all():
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


# --------------------------------------------------------------------------- metering
class ChunkMeter:
    """Integrated loudness, loudness range and true peak of a long signal fed chunk by chunk.

    Feed each chunk with ``left`` samples of the signal before it (at least
    :meth:`warmup` of them, zeros before the start) and ``_PEAK_CONTEXT`` after it
    (``_STRICT_CONTEXT`` each side with ``strict``). Chunks must start on multiples of the
    100 ms gating hop. Loudness is :class:`~diffmix.functional.loudness.GatedMeter`'s;
    ``strict`` meters the true peak on :func:`~diffmix.functional.peaks.strict_envelope`
    (every usual meter): the delivery ceiling's check.
    """

    def __init__(self, sample_rate: int, channels: int, *, strict: bool = False) -> None:
        self.sr, self.channels, self.strict = sample_rate, channels, strict
        self.gated = GatedMeter(sample_rate, channels)
        self.peak = 0.0
        self.sample_peak = 0.0
        self.square_sum = 0.0  # for the ungated estimate (rough_lufs)
        self.samples = 0

    @staticmethod
    def warmup(sample_rate: int) -> int:
        """Left context the meter needs, in samples (a whole number of meter units)."""
        return max(_PEAK_CONTEXT, GatedMeter.warmup(sample_rate))

    def add(self, y: Tensor, left: int, n: int) -> None:
        """Meter ``y[..., left : left + n]`` of ``y`` ``(1, C, left + n + right)``."""
        w = self.warmup(self.sr)
        if left < w or y.shape[-1] < left + n + _PEAK_CONTEXT:
            raise ValueError(f"ChunkMeter: need {w} samples before and {_PEAK_CONTEXT} after a chunk")
        y = y.detach()
        self.gated.add(y, left, n)
        if self.strict:
            q = _STRICT_CONTEXT
            if left < q or y.shape[-1] < left + n + q:
                raise ValueError(f"ChunkMeter: the strict meter needs {q} samples each side of a chunk")
            level = strict_envelope(y[..., left - q : left + n + q], self.sr)
            self.peak = max(self.peak, float(level[..., q : q + n].amax()))
        else:
            f = oversampling_factor(self.sr)
            p = _PEAK_CONTEXT
            over = oversample(y[..., left - p : left + n + p], self.sr)
            self.peak = max(self.peak, float(over[..., p * f : (p + n) * f].abs().amax()))
        mid = y[..., left : left + n]
        self.sample_peak = max(self.sample_peak, float(mid.abs().amax()))
        self.square_sum += float(mid.double().square().sum())
        self.samples += mid.numel()

    def integrated_lufs(self) -> float:
        """BS.1770 gated loudness over every block of every chunk (global gating)."""
        try:
            return self.gated.integrated_lufs()
        except ValueError:
            raise UserError("streaming: audio shorter than one 400 ms gating block") from None

    def loudness_range(self) -> float:
        """EBU Tech 3342 loudness range (LU) over every chunk."""
        return self.gated.loudness_range()

    def rough_lufs(self) -> float:
        """The ungated estimate of :func:`~diffmix.mastering.loudness.rough_lufs`:
        the mean square over every channel and sample, ``-inf`` for digital silence."""
        power = self.square_sum / max(self.samples, 1)
        return 10 * math.log10(power) - 0.691 + 3.0 if power > 0 else -math.inf

    def true_peak_dbtp(self) -> float:
        return 20.0 * math.log10(max(self.peak, 1e-12))


def chunk_bounds(frames: int, sample_rate: int, chunk_s: float) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks, each a whole number of 100 ms hops."""
    hop = block_samples(sample_rate)[0]
    size = max(1, round(chunk_s * sample_rate / hop)) * hop
    for start in range(0, frames, size):
        yield start, min(start + size, frames)


def measure_file(path: str | Path, *, chunk_s: float = 30.0, strict: bool = False) -> dict[str, float]:
    """Integrated loudness (LUFS), loudness range (LU), true peak (dBTP) and sample peak
    (dBFS) of a file, in chunks.

    Memory stays at one chunk however long the file is. Same figures as
    :func:`~diffmix.functional.loudness.integrated_loudness`,
    :func:`~diffmix.functional.loudness.loudness_range` and
    :func:`~diffmix.functional.peaks.true_peak` on the whole file (to ~1e-9 LU); with
    ``strict``, the true peak is :func:`~diffmix.functional.peaks.strict_true_peak`'s.
    """
    src = DiskAudio(path)
    meter = ChunkMeter(src.sample_rate, 2, strict=strict)
    w = ChunkMeter.warmup(src.sample_rate)
    right = _PEAK_CONTEXT
    if strict:
        w, right = max(w, _STRICT_CONTEXT), _STRICT_CONTEXT
    for start, stop in chunk_bounds(src.frames, src.sample_rate, chunk_s):
        meter.add(src.read(start - w, stop + right), w, stop - start)
        release_memory()
    return {
        "integrated_lufs": meter.integrated_lufs(),
        "lra_lu": meter.loudness_range(),
        "true_peak_dbtp": meter.true_peak_dbtp(),
        "sample_peak_dbfs": 20.0 * math.log10(max(meter.sample_peak, 1e-12)),
        "seconds": src.frames / src.sample_rate,
    }


