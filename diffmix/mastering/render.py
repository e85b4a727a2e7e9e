"""Rendering a fitted chain at any limiter drive, chunk by chunk: an in-memory song is
the one-chunk case.

:class:`StreamRenderer` renders what precedes the limiter once and each drive costs the
limiter (and what follows) alone. Over a file (:class:`~diffmix.mastering.source.DiskAudio`)
the pre-limiter render is written chunk by chunk into a float32 cache file on disk; each
chunk is rendered with *left context* (the EQ's impulse tail, and twelve time constants
of the slowest attack/release in the chain, so the recursive state has converged to ~1e-5
of its level) and *right context* for lookahead, and only its middle is kept. Before
sample 0 and after the end, context is digital silence, which is exactly what the
in-memory render sees (every effect starts from rest; lookahead pads with zeros). Over an
in-memory batch of songs (a tensor) the whole signal is the one chunk: no context, no
cache file, and each drive goes through the limiter's own cheap drive renders
(:meth:`~diffmix.mastering.chain.LimiterStage.drive_renders`).
:func:`render_with_drive` is that one-chunk renderer as a ``drives -> output`` function.
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


def render_with_drive(bus: Bus, x: Tensor, limiter: str = LIMITER, *,
                      exact: bool = True) -> Callable[[Tensor], Tensor]:
    """A ``drives (S,) -> output (S, C, T)`` renderer of the in-memory batch ``x``: the
    one-chunk :class:`StreamRenderer`; what precedes the limiter runs once.

    The renderer carries ``pre`` (the pre-limiter signal, for the gain-reduction plot and
    the solve's start), ``proxy`` (the smooth limiter's cheap render, or None) and
    ``drive_range`` (the limiter's drive range, dB), and ``strict_peak()``: the last
    output's strict true peak per song, ``(S,)`` linear, where the limiter's strict
    correction metered it (or bounded it, a song the limiter left at rest; else None).
    ``exact=False`` renders the limiter in its smooth mode (as :func:`smooth_render`): no
    metered correction and no strict level, for a render whose tone is measured, not
    delivered.
    """
    renderer = StreamRenderer(bus, x, limiter=limiter, exact=exact)

    def render(drives: Tensor) -> Tensor:
        ((_, _, y),) = renderer.limited(drives)
        return y

    render.strict_peak = renderer.strict_peak  # type: ignore[attr-defined]

    render.pre = renderer.pre  # type: ignore[attr-defined]
    render.proxy = renderer.proxy  # type: ignore[attr-defined]
    render.drive_range = renderer.drive_range  # type: ignore[attr-defined]
    return render


@torch.no_grad()
def smooth_render(bus: Bus, x: Tensor, drives: Tensor, limiter: str = LIMITER) -> Tensor:
    """The chain over ``x`` ``(S, C, T)`` at ``drives`` (dB, one per song) with the limiter
    in its smooth mode (the fit's: no metered correction, which only lowers a few peaks a
    hair): the tone a match-refine pass measures, at a fraction of an exact render's cost."""
    stage = LimiterStage(bus, limiter)
    stage.set_drive(drives)
    with stage.smooth():
        return stage.after(stage.before(x))


def context_samples(bus: Bus, sample_rate: int, context_s: float) -> int:
    """Left context: ``context_s`` plus twelve of the slowest attack/release time constants."""
    slowest_ms = 0.0
    for key, p in bus.named_values().items():
        if key.endswith(("attack_ms", "release_ms")):
            slowest_ms = max(slowest_ms, float(p.exact().detach().max()))
    seconds = context_s + _TIME_CONSTANTS * slowest_ms / 1000.0
    return max(ChunkMeter.warmup(sample_rate), int(math.ceil(seconds * sample_rate)))


class StreamRenderer:
    """Chunked render of a mastering chain, pre-limiter stage cached (on disk for a file).

    Args:
        bus: the fitted chain's :class:`~diffmix.console.Bus`; its last effects from
            ``limiter`` on are re-run for each drive.
        source: the input: a file (one song), or an in-memory ``(S, C, T)`` batch, which is
            rendered as one chunk (no context, no cache file, ``chunk_s`` unused).
        folder: where a file's cache lives (beside the output: never a RAM-backed /tmp).
        chunk_s: chunk length in seconds.
        context_s: base left context in seconds (see :func:`context_samples`).
        right_s: right context for lookahead, seconds.
    """

    def __init__(self, bus: Bus, source: DiskAudio | Tensor, folder: Path | None = None, *,
                 chunk_s: float = 30.0, context_s: float = 2.0, right_s: float = 0.1,
                 limiter: str = LIMITER, exact: bool = True) -> None:
        self.stage = LimiterStage(bus, limiter)
        if not exact and not isinstance(source, Tensor):
            raise ValueError("StreamRenderer: a smooth (exact=False) render is for in-memory songs")
        self.src, self.chunk_s, self.passes = source, chunk_s, 0
        self.cache: CacheFile | None = None
        self.proxy: Callable[[Tensor], Tensor] | None = None
        if isinstance(source, Tensor):  # in memory: the one-chunk case
            self.sr, self.device, self.frames = bus.sample_rate, source.device, source.shape[-1]
            self.left = self.right = 0
            with torch.no_grad():  # a render: no graph holding every stage's intermediates
                self.pre = self.stage.before(source)
            if exact:
                fast = self.stage.drive_renders(self.pre)
            else:  # the drive renders read the limiter's mode once, when made
                with self.stage.smooth():
                    fast = self.stage.drive_renders(self.pre)
                if fast is None:
                    raise ValueError("StreamRenderer: a smooth render needs the stock limiter last")
            self._fast = None if fast is None else fast[1]
            self.proxy = None if fast is None else fast[0]
            return
        self.sr, self.device, self.frames = source.sample_rate, source.device, source.frames
        self.left = context_samples(bus, self.sr, context_s)
        self.right = max(PEAK_CONTEXT, int(math.ceil(right_s * self.sr)))
        if folder is None:
            raise ValueError("StreamRenderer: a file's pre-limiter cache needs a folder")
        self.cache = CacheFile(folder, 2, source.frames)
        try:
            for start, stop in self.chunks():
                with torch.no_grad():
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

    def strict_peak(self) -> Tensor | None:
        """The last in-memory render's strict true peak per song, ``(S,)`` linear, where the
        limiter's correction metered (or bounded) it; else None."""
        return getattr(self._fast, "strict_peak", lambda: None)() if self.cache is None else None

    def chunks(self) -> Iterator[tuple[int, int]]:
        if self.cache is None:
            return iter([(0, self.frames)])
        return chunk_bounds(self.frames, self.sr, self.chunk_s)

    def limited(self, drive_db: float | Tensor) -> Iterator[tuple[int, int, Tensor]]:
        """``(start, stop, y)`` per chunk: the limiter (and what follows) at ``drive_db``
        (one per song, dB), ``y`` holding ``self.left`` samples of context before the chunk
        and ``self.right`` after it."""
        drives = torch.as_tensor(drive_db, dtype=torch.float64).reshape(-1)
        self.stage.set_drive(drives)
        self.passes += 1
        if self.cache is None:
            with torch.no_grad():
                y = self._fast(drives) if self._fast is not None else self.stage.after(self.pre)
            yield 0, self.frames, y
            return
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
        if self.cache is not None:
            self.cache.close()
