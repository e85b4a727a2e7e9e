"""Delivery: sample-rate conversion, TPDF dither, quantisation and atomic writing.

The final true-peak check runs on the *quantised* signal, the one the listener gets. If
it exceeds the ceiling, the signal is re-limited (gain lowered by the overshoot) and
requantised until it holds; the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

from diffmix.inputs import resample
from diffmix.io import write_audio

FORMATS = {"wav": "WAV", "flac": "FLAC", "aiff": "AIFF"}
SUBTYPES = {"16": "PCM_16", "24": "PCM_24", "float": "FLOAT"}
# FLAC has no float samples.
_ALLOWED = {("flac", "float")}


@dataclass
class DeliveryReport:
    """What delivery did to the audio, for the job's JSON report."""

    path: str
    format: str
    bit_depth: str
    sample_rate: int
    dithered: bool
    true_peak_dbtp: float
    ceiling_dbtp: float | None
    relimited: bool
    relimit_gain_db: float
    # "metered": the written samples on the strict meter; "bound": the render's strict
    # reading plus what storing can add (mastering.deliver.deliver_chunks), never below
    # the written samples' reading
    true_peak_from: str = "metered"

    def as_dict(self) -> dict:
        return asdict(self)


def check_format(fmt: str, bit_depth: str | int) -> tuple[str, str]:
    """Validate a (format, bit depth) pair; returns normalised strings."""
    fmt, depth = str(fmt).lower(), str(bit_depth).lower()
    if fmt not in FORMATS:
        raise ValueError(f"delivery: format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if depth not in SUBTYPES:
        raise ValueError(f"delivery: bit_depth must be 16, 24 or float, got {bit_depth!r}")
    if (fmt, depth) in _ALLOWED:
        raise ValueError("delivery: FLAC cannot hold float samples; use bit_depth=16 or 24")
    return fmt, depth


def tpdf_dither(x: Tensor, bits: int, generator: torch.Generator) -> Tensor:
    """Add triangular-PDF dither of ±1 LSB peak (the sum of two uniform ±½ LSB draws).

    The draws are taken a block of samples at a time (:func:`_noise_blocks`), so the same
    generator gives the same noise here and in :func:`prepare`."""
    out = torch.empty_like(x)
    for a, b, noise in _noise_blocks(x.shape, bits, generator):
        out[..., a:b] = noise.to(x.dtype).add_(x[..., a:b])
    return out


def _noise_blocks(shape: tuple[int, ...], bits: int, generator: torch.Generator):  # noqa: ANN202
    """``(start, stop, dither)`` for each block of :data:`_BLOCK` samples of a signal of
    ``shape`` ``(..., T)``: TPDF dither in LSBs of ``bits``, float64, from ``generator``'s
    float32 draws (2^-24 of an LSB is resolution enough for dither), block by block."""
    t = shape[-1]
    for a in range(0, t, _BLOCK):
        b = min(t, a + _BLOCK)
        u = torch.rand((2, *shape[:-1], b - a), generator=generator, dtype=torch.float32)
        yield a, b, torch.sub(u[0], u[1], out=u[0]).double().mul_(2.0 ** (1 - bits))


def quantise(x: Tensor, bits: int) -> Tensor:
    """Round to ``bits``-bit PCM steps, clamped to the representable range."""
    scale = 2.0 ** (bits - 1)
    return (x.double() * scale).round_().clamp_(-scale, scale - 1).div_(scale).to(x.dtype)


def prepare(
    audio: Tensor,
    sample_rate: int,
    *,
    bit_depth: str,
    target_rate: int | None = None,
    dither: bool = True,
    seed: int = 0,
) -> tuple[Tensor, int, bool]:
    """Convert the rate and quantise (with dither) as the file will store it.

    Returns:
        ``(audio, rate, dithered)`` with audio ``(channels, time)`` float32: the file's
        samples exactly (16/24-bit steps are float32 values). The same as
        ``quantise(tpdf_dither(audio.double(), ...))``, a block at a time (no full-length
        float64 copies).
    """
    x, rate = audio, int(sample_rate)
    if target_rate and int(target_rate) != rate:
        x, rate = resample(x.double(), rate, int(target_rate)), int(target_rate)
    if bit_depth == "float":
        return x.to(torch.float32), rate, False
    bits = int(bit_depth)
    out = torch.empty(x.shape, dtype=torch.float32)
    t = x.shape[-1]
    noise = _noise_blocks(tuple(x.shape), bits, torch.Generator().manual_seed(int(seed))) if dither else None
    for a in range(0, t, _BLOCK):
        b = min(t, a + _BLOCK)
        xb = x[..., a:b].double()
        if noise is not None:
            xb = next(noise)[2].add_(xb)
        out[..., a:b] = quantise(xb, bits)
    return out, rate, dither


_BLOCK = 1 << 16  # samples per block of the dither's draws and prepare's quantisation


def quantised_peak_bound(peak: float, sample_rate: int, *, bit_depth: str, dither: bool,
                         gain: float = 1.0) -> float:
    """An upper bound on the strict true peak (linear) of what :func:`prepare` stores
    from a float32 render whose own strict reading is ``peak`` (linear), scaled by
    ``gain``, at the same rate.

    Storing moves each sample by at most ``d``: half a step of rounding plus one of TPDF
    dither at ``bits`` bits, and float32's rounding of ``gain * peak`` where ``gain`` is not
    1 (nothing else for float32 samples stored as they are). The strict meter then moves by at
    most ``gain * d`` plus its float32 rounding (:func:`~diffmix.functional.peaks.strict_sensitivity`),
    so the stored signal reads at most ``gain * peak * (1 + rounding) + sensitivity * d``
    (at 24 bits, 4e-5 of the peak plus 1.3e-6 of full scale above the render's reading).
    Infinite where a sample could reach the clamp at full scale (the bound would not hold).
    """
    from diffmix.functional.peaks import strict_sensitivity

    sensitivity, rounding = strict_sensitivity(sample_rate)
    level = gain * peak
    if bit_depth == "float":
        moved = 0.0 if gain == 1.0 else level * 2.0 ** -24
    else:
        step = 2.0 ** (1 - int(bit_depth))
        # and float32's rounding of the scaled samples before they are quantised
        moved = (1.5 if dither else 0.5) * step + (0.0 if gain == 1.0 else level * 2.0 ** -24)
        if level + moved >= 1.0 - step:
            return math.inf
    return level * (1.0 + rounding) + sensitivity * moved


T = TypeVar("T")


def relimit(attempt: Callable[[float], tuple[float, T]], ceiling_dbtp: float | None,
            rounds: int = 8) -> tuple[float, float, T]:
    """The last re-limit: ``attempt(gain_db)`` delivers at that gain and returns ``(true
    peak dBTP of what it delivered, what it delivered)``; the gain starts at 0 dB and is
    lowered by each overshoot (plus 0.01 dB) until the true peak holds ``ceiling_dbtp``.

    Returns ``(gain_db, true_peak_dbtp, delivered)``. RuntimeError after ``rounds`` tries.
    """
    relimit_db = 0.0
    for _ in range(rounds):
        tp, delivered = attempt(relimit_db)
        if ceiling_dbtp is None or tp <= ceiling_dbtp:
            return relimit_db, tp, delivered
        # Lower by the overshoot plus one quantisation step's worth of margin.
        relimit_db -= (tp - ceiling_dbtp) + 0.01
    raise RuntimeError(  # pragma: no cover - eight rounds always suffice in practice
        f"delivery: could not bring the true peak under {ceiling_dbtp} dBTP"
    )


def deliver(
    audio: Tensor,
    sample_rate: int,
    path: str | Path,
    *,
    fmt: str = "wav",
    bit_depth: str | int = 24,
    target_rate: int | None = None,
    dither: bool = True,
    ceiling_dbtp: float | None = None,
    true_peak_db: Callable[[Tensor, int], float] | None = None,
    seed: int = 0,
    protect: tuple[str | Path, ...] = (),
    lufs_goal: float | None = None,
    lufs_tolerance: float = 0.05,
) -> DeliveryReport:
    """Convert, dither, quantise, check the true peak, re-limit if needed, write atomically.

    Args:
        audio: ``(channels, time)`` float audio.
        ceiling_dbtp: true-peak ceiling checked after conversion and quantisation.
        true_peak_db: ``(audio (1, C, T), rate) -> dBTP``; needed with a ceiling.
        protect: input paths that must never be overwritten.
        lufs_goal: integrated loudness the delivered samples must meet within
            ``lufs_tolerance`` LU after conversion and any re-limit; otherwise nothing is
            written and :class:`~diffmix.errors.UserError` says by how much it missed.
    """
    fmt, depth = check_format(fmt, bit_depth)
    if ceiling_dbtp is not None and true_peak_db is None:
        raise ValueError("delivery: a true-peak ceiling needs a true-peak meter")

    def attempt(relimit_db: float) -> tuple[float, tuple[Tensor, int, bool]]:
        gain = 10.0 ** (relimit_db / 20.0)
        out, rate, dithered = prepare(
            audio * gain, sample_rate, bit_depth=depth, target_rate=target_rate,
            dither=dither, seed=seed,
        )
        tp = float(true_peak_db(out.unsqueeze(0), rate)) if true_peak_db else float("nan")
        return tp, (out, rate, dithered)

    relimit_db, tp, (out, rate, dithered) = relimit(attempt, ceiling_dbtp)
    if lufs_goal is not None:
        from diffmix.errors import UserError
        from diffmix.functional.loudness import integrated_loudness

        lufs = float(integrated_loudness(out.unsqueeze(0), rate)[0])
        if not abs(lufs - lufs_goal) <= lufs_tolerance:
            raise UserError(
                f"delivery: {Path(path).name} would measure {lufs:.2f} LUFS at {rate} Hz, "
                f"{lufs - lufs_goal:+.2f} LU off the {lufs_goal:g} LUFS target (re-limited by "
                f"{relimit_db:.2f} dB to hold {ceiling_dbtp} dBTP); nothing was written"
            )
    written = write_audio(Path(path), out, rate, subtype=SUBTYPES[depth], protect=protect)
    return DeliveryReport(
        path=str(written), format=fmt, bit_depth=depth, sample_rate=rate, dithered=dithered,
        true_peak_dbtp=tp, ceiling_dbtp=ceiling_dbtp, relimited=relimit_db < 0,
        relimit_gain_db=relimit_db,
    )
