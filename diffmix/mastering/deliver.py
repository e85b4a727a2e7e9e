"""Delivering a master: the file the listener gets, checked against the ceiling on the
strict meter and re-limited if it crosses it (:func:`diffmix.delivery.relimit`, the one
re-limit loop), in memory or chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from diffmix.delivery import SUBTYPES, DeliveryReport, check_format, deliver, prepare, relimit
from diffmix.io import atomic_path
from diffmix.mastering.render import StreamRenderer
from diffmix.mastering.source import measure_file
from diffmix.report import peak_dbtp


@dataclass
class DeliveryOptions:
    """How a master is written (the jobs' ``delivery.*``): ``format`` wav | flac | aiff,
    ``bit_depth`` 16 | 24 | float, ``sample_rate`` (None keeps the working rate),
    ``dither`` (TPDF whenever the bit depth is reduced)."""

    format: str = "wav"
    bit_depth: str | int = 24
    sample_rate: int | None = None
    dither: bool = True

    def checked(self) -> tuple[str, str]:
        """``(format, bit depth)`` normalised; ValueError on a pair that can't be written."""
        return check_format(self.format, self.bit_depth)


def deliver_master(
    y: torch.Tensor, sample_rate: int, path: Path, options: DeliveryOptions, *, ceiling: float | None,
    goal: float | None, tolerance_lu: float, seed: int, protect: tuple[str, ...],
) -> DeliveryReport:
    """Deliver an in-memory master ``(C, T)`` to ``path`` (:func:`~diffmix.delivery.deliver`).

    The solve met ``goal`` within ``tolerance_lu``; dither and a last re-limit may add a
    few hundredths, never more (else nothing is written and a one-line error says why).
    """
    fmt, depth = options.checked()
    return deliver(
        y.cpu(), sample_rate, path, fmt=fmt, bit_depth=depth, target_rate=options.sample_rate,
        dither=bool(options.dither), ceiling_dbtp=ceiling, true_peak_db=peak_dbtp, seed=seed,
        protect=protect, lufs_goal=goal, lufs_tolerance=tolerance_lu + 0.03,
    )


def write_master(renderer: StreamRenderer, drive_db: float, path: Path, *, bit_depth: str,
                 dither: bool, seed: int, gain_db: float = 0.0) -> None:
    """Render at ``drive_db``, dither/quantise per chunk, write atomically to ``path``.

    Each chunk is dithered with its own generator, seeded by ``(seed, chunk)``:
    reproducible and independent."""
    sr = renderer.sr
    gain = 10.0 ** (gain_db / 20.0)
    with atomic_path(path) as tmp, sf.SoundFile(
        str(tmp), "w", samplerate=sr, channels=2, subtype=SUBTYPES[bit_depth]
    ) as fh:
        for k, (start, stop, y) in enumerate(renderer.limited(drive_db)):
            mid = y[0, :, renderer.left : renderer.left + stop - start].cpu() * gain
            chunk_seed = int(np.random.SeedSequence([int(seed), k]).generate_state(1)[0])
            q, _, _ = prepare(mid, sr, bit_depth=bit_depth, dither=dither, seed=chunk_seed)
            fh.write(q.numpy().T)


def deliver_stream(
    renderer: StreamRenderer, drive_db: float, path: Path, options: DeliveryOptions, *,
    ceiling: float | None, seed: int, chunk_s: float,
) -> tuple[DeliveryReport, dict[str, Any]]:
    """Deliver a streamed master at ``drive_db`` to ``path``: written, then metered in
    chunks on the strict meter (the ceiling on every usual meter) and re-limited until it
    holds ``ceiling``. Returns the delivery's report and the written file's measurements
    (:func:`~diffmix.mastering.source.measure_file`)."""
    fmt, depth = options.checked()

    def attempt(gain_db: float) -> tuple[float, dict[str, Any]]:
        write_master(renderer, drive_db, path, bit_depth=depth, dither=bool(options.dither), seed=seed,
                     gain_db=gain_db)
        after = measure_file(path, chunk_s=chunk_s, strict=True)
        return after["true_peak_dbtp"], after

    relimit_db, tp, after = relimit(attempt, ceiling)
    report = DeliveryReport(
        path=str(path), format=fmt, bit_depth=depth, sample_rate=renderer.sr,
        dithered=bool(options.dither) and depth != "float", true_peak_dbtp=tp, ceiling_dbtp=ceiling,
        relimited=relimit_db < 0, relimit_gain_db=relimit_db,
    )
    return report, after
