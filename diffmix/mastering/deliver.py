"""Delivering a master: the file the listener gets, written chunk by chunk (an in-memory
master is one chunk), checked against the ceiling on the strict meter and re-limited if it
crosses it (:func:`diffmix.delivery.relimit`, the one re-limit loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from torch import Tensor

from diffmix.checks import all_finite
from diffmix.delivery import (
    FORMATS,
    SUBTYPES,
    DeliveryReport,
    check_format,
    prepare,
    quantised_peak_bound,
    relimit,
)
from diffmix.errors import UserError
from diffmix.io import AudioFileError, atomic_path
from diffmix.report import SequentialMeter

_WRITE_FRAMES = 1 << 16  # frames per write call


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


def write_chunks(chunks: Iterable[Tensor], path: Path, sample_rate: int, *, fmt: str, bit_depth: str,
                 dither: bool, seed: int, gain_db: float = 0.0,
                 target_rate: int | None = None,
                 true_peak: float | None = None) -> tuple[int, dict[str, Any]]:
    """Write ``(C, n)`` chunks (converted to ``target_rate``, dithered and quantised, as
    :func:`~diffmix.delivery.prepare` does) to ``path``; returns the written rate and the
    written samples' :meth:`~diffmix.report.ChunkMeter.summary` on the strict meter,
    metered as they are written (exactly the file's samples: 16/24-bit steps and float32
    are what it stores and reads back). ``true_peak``: the strict true peak the written
    samples are known not to exceed (linear, :func:`~diffmix.delivery.quantised_peak_bound`);
    then it is the summary's, and the strict meter does not run.

    Chunk ``k`` is dithered with its own generator, seeded by ``seed`` for the first and
    by ``(seed, k)`` after it: reproducible and independent. Rate conversion needs the
    whole signal, so it takes one chunk. NaN or Inf is refused."""
    gain = 10.0 ** (gain_db / 20.0)
    fh, meter, rate = None, None, sample_rate
    try:
        for k, y in enumerate(chunks):
            if k and target_rate:
                raise ValueError("delivery: sample-rate conversion needs the whole signal in one chunk")
            chunk_seed = seed if k == 0 else int(np.random.SeedSequence([int(seed), k]).generate_state(1)[0])
            y = y.cpu()
            stored, rate, _ = prepare(y if gain == 1.0 else y * gain, sample_rate, bit_depth=bit_depth,
                                      target_rate=target_rate, dither=dither, seed=chunk_seed)
            data = stored.numpy().T
            if not all_finite(data):
                raise ValueError(f"{path}: refusing to write audio that contains NaN or Inf")
            if fh is None:
                fh = sf.SoundFile(str(path), "w", samplerate=rate, channels=data.shape[1],
                                  format=FORMATS[fmt], subtype=SUBTYPES[bit_depth])
                meter = SequentialMeter(rate, 2, strict=True, true_peak=true_peak is None)
            for a in range(0, data.shape[0], _WRITE_FRAMES):  # no interleaved copy of the whole chunk
                fh.write(data[a : a + _WRITE_FRAMES])
            meter.push(stored if stored.shape[0] == 2 else stored.expand(2, -1))  # type: ignore[union-attr]
    except (sf.LibsndfileError, RuntimeError) as exc:  # libsndfile hides the errno
        reason = " ".join(str(exc).split())
        raise AudioFileError(f"{path}: cannot write audio ({reason}); is the disk full?") from exc
    finally:
        if fh is not None:
            fh.close()
    if meter is None:
        raise ValueError(f"{path}: nothing to write (no samples)")
    if true_peak is not None:
        meter.meter.peak = true_peak
    return rate, meter.summary()


def deliver_chunks(
    chunks: Callable[[], Iterable[Tensor]], sample_rate: int, path: Path, options: DeliveryOptions, *,
    ceiling: float | None, seed: int, goal: float | None = None, tolerance_lu: float = 0.02,
    protect: tuple[str | Path, ...] = (), render_peak: float | None = None,
) -> tuple[DeliveryReport, dict[str, Any]]:
    """Deliver a master given as ``(C, n)`` chunks (``chunks()`` yields them afresh for
    each attempt; an in-memory master is one chunk) to ``path``.

    Each attempt is written beside ``path``, metered in chunks on the strict meter (the
    ceiling holds on every usual meter) and re-limited until it holds ``ceiling``
    (:func:`~diffmix.delivery.relimit`). ``render_peak``: the chunks' own strict true
    peak, or a bound on it (linear, float32 samples, as the limiter's correction gives
    it); where the bound it gives the stored samples (:func:`~diffmix.delivery.quantised_peak_bound`)
    holds ``ceiling``, that bound is the report's true peak and the written samples are
    not metered again (24-bit and float files; 16-bit steps are too coarse for it). The
    solve met ``goal`` within ``tolerance_lu``;
    dither and a last re-limit may add a few hundredths, never more, else nothing is
    written and a one-line error says why. Only then does the file replace ``path``.
    Returns the delivery's report and the written samples' measurements
    (:func:`write_chunks`: the schema of :func:`~diffmix.report.summary`).
    """
    fmt, depth = options.checked()
    for other in protect:
        if Path(other).exists() and path.exists() and path.samefile(other):
            raise AudioFileError(f"{path}: refusing to overwrite an input file")
    rate, metered = sample_rate, True
    with atomic_path(path) as tmp:
        def attempt(gain_db: float) -> tuple[float, dict[str, Any]]:
            nonlocal rate, metered
            known = None
            same_rate = not (options.sample_rate and int(options.sample_rate) != sample_rate)
            if render_peak is not None and same_rate:
                bound = quantised_peak_bound(render_peak, sample_rate, bit_depth=depth,
                                             dither=bool(options.dither), gain=10.0 ** (gain_db / 20.0))
                if ceiling is None or 20.0 * math.log10(max(bound, 1e-300)) <= ceiling:
                    known = bound
            metered = known is None
            rate, after = write_chunks(chunks(), tmp, sample_rate, fmt=fmt, bit_depth=depth,
                                       dither=bool(options.dither), seed=seed, gain_db=gain_db,
                                       target_rate=options.sample_rate, true_peak=known)
            return after["true_peak_dbtp"], after

        relimit_db, tp, after = relimit(attempt, ceiling)
        lufs = after["integrated_lufs"]
        if goal is not None and not abs(lufs - goal) <= tolerance_lu + 0.03:
            raise UserError(
                f"delivery: {path.name} would measure {lufs:.2f} LUFS at {rate} Hz, {lufs - goal:+.2f} LU "
                f"off the {goal:g} LUFS target (re-limited by {relimit_db:.2f} dB to hold {ceiling} dBTP); "
                "nothing was written"
            )
    report = DeliveryReport(
        path=str(path), format=fmt, bit_depth=depth, sample_rate=rate,
        dithered=bool(options.dither) and depth != "float", true_peak_dbtp=tp, ceiling_dbtp=ceiling,
        relimited=relimit_db < 0, relimit_gain_db=relimit_db,
        true_peak_from="metered" if metered else "bound",
    )
    return report, after
