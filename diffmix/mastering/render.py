"""Rendering a fitted chain at any limiter drive: the whole song at once, or in chunks.

In memory (:func:`render_with_drive`), the effects before the limiter run once and each
drive costs the limiter alone (through the limiter's own cheap drive renders). Streamed
(:class:`StreamRenderer`), the pre-limiter render is written chunk by chunk into a float32
cache file on disk; each chunk is rendered with *left context* (the EQ's impulse tail, and
twelve time constants of the slowest attack/release in the chain, so the recursive state
has converged to ~1e-5 of its level) and *right context* for lookahead, and only its
middle is kept. Before sample 0 and after the end, context is digital silence, which is
exactly what the in-memory render sees (every effect starts from rest; lookahead pads with
zeros). Each drive is then one chunked pass of the limiter over the cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from diffmix.console import Bus
from diffmix.mastering.chain import LIMITER, LimiterStage
from diffmix.mastering.source import CacheFile, DiskAudio, chunk_bounds, release_memory
from diffmix.report import PEAK_CONTEXT, ChunkMeter

# Left context in time constants of the slowest attack/release: exp(-12) ~ 6e-6.
_TIME_CONSTANTS = 12.0


def render_with_drive(bus: Bus, x: Tensor, limiter: str = LIMITER) -> Callable[[Tensor], Tensor]:
    """A ``drives (S,) -> output (S, C, T)`` renderer; what precedes the limiter runs once.

    The renderer carries ``pre`` (the pre-limiter signal, for the gain-reduction plot and
    the solve's start), ``proxy`` (the smooth limiter's cheap render, or None) and
    ``drive_range`` (the limiter's drive range, dB).
    """
    stage = LimiterStage(bus, limiter)
    pre = stage.before(x)
    fast = stage.drive_renders(pre)

    def render(drives: Tensor) -> Tensor:
        stage.set_drive(drives)
        with torch.no_grad():
            return fast[1](drives) if fast is not None else stage.after(pre)

    render.pre = pre  # type: ignore[attr-defined]
    render.proxy = None if fast is None else fast[0]  # type: ignore[attr-defined]
    render.drive_range = stage.drive_range  # type: ignore[attr-defined]
    return render


def context_samples(bus: Bus, sample_rate: int, context_s: float) -> int:
    """Left context: ``context_s`` plus twelve of the slowest attack/release time constants."""
    slowest_ms = 0.0
    for key, p in bus.named_values().items():
        if key.endswith(("attack_ms", "release_ms")):
            slowest_ms = max(slowest_ms, float(p.exact().detach().max()))
    seconds = context_s + _TIME_CONSTANTS * slowest_ms / 1000.0
    return max(ChunkMeter.warmup(sample_rate), int(math.ceil(seconds * sample_rate)))


class StreamRenderer:
    """Chunked render of a mastering chain over a file, pre-limiter stage cached on disk.

    Args:
        bus: the fitted chain's :class:`~diffmix.console.Bus` for one song; its last effects
            from ``limiter`` on are re-run for each drive.
        source: the input.
        folder: where the cache file lives (beside the output: never a RAM-backed /tmp).
        chunk_s: chunk length in seconds.
        context_s: base left context in seconds (see :func:`context_samples`).
        right_s: right context for lookahead, seconds.
    """

    def __init__(self, bus: Bus, source: DiskAudio, folder: Path, *, chunk_s: float,
                 context_s: float, right_s: float = 0.1, limiter: str = LIMITER) -> None:
        self.stage = LimiterStage(bus, limiter)
        self.src, self.sr = source, source.sample_rate
        self.chunk_s = chunk_s
        self.left = context_samples(bus, self.sr, context_s)
        self.right = max(PEAK_CONTEXT, int(math.ceil(right_s * self.sr)))
        self.device = source.device
        self.passes = 0
        self.cache = CacheFile(folder, 2, source.frames)
        try:
            for start, stop in self.chunks():
                y = self.stage.before(source.read(start - self.left, stop + self.right))
                self.cache.append(y[..., self.left : self.left + stop - start])
                del y
                release_memory()
        except BaseException:
            self.cache.close()
            raise

    @property
    def drive_range(self) -> tuple[float, float]:
        return self.stage.drive_range

    def chunks(self) -> Iterator[tuple[int, int]]:
        return chunk_bounds(self.src.frames, self.sr, self.chunk_s)

    def limited(self, drive_db: float) -> Iterator[tuple[int, int, Tensor]]:
        """``(start, stop, y)`` per chunk: the limiter (and what follows) at ``drive_db``,
        ``y`` holding ``self.left`` samples of context before the chunk and
        ``self.right`` after it."""
        self.stage.set_drive(torch.tensor([float(drive_db)], dtype=torch.float64))
        self.passes += 1
        for start, stop in self.chunks():
            y = self.stage.after(self.cache.read(start - self.left, stop + self.right, self.device))
            yield start, stop, y
            del y
            release_memory()

    def middles(self, drive_db: float) -> Iterator[Tensor]:
        """The master at ``drive_db`` chunk by chunk, ``(C, n)`` without context."""
        for start, stop, y in self.limited(drive_db):
            yield y[0, :, self.left : self.left + stop - start]

    def meter(self, drive_db: float) -> ChunkMeter:
        """The master at ``drive_db``, metered (loudness, true peak) chunk by chunk."""
        meter = ChunkMeter(self.sr, 2)
        for start, stop, y in self.limited(drive_db):
            meter.add(y, self.left, stop - start)
        return meter

    def close(self) -> None:
        self.cache.close()
