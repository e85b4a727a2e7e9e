"""The loudness solve: each song's drive into the limiter, found in closed loop.

Loudness rises monotonically with the drive but flattens as the limiter works harder, so
each secant step divides the error by a secant estimate of the slope. One iteration
serves the in-memory master (:func:`solve_loudness`, several songs at once) and the
streamed one (:func:`solve`, each render one chunked pass); the drive's range is the
limiter's own ``gain_db`` range (its :class:`~diffmix.params.ParamSpec`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffmix.effects.dynamics import Limiter
from diffmix.errors import UserError
from diffmix.functional.loudness import integrated_loudness

_GAIN = next(s for s in Limiter.specs if s.name == "gain_db")
DRIVE_RANGE = (_GAIN.min, _GAIN.max)  # the stock limiter's drive range, dB (-24..48)

# A render at some drives: (its output, each song's loudness in LUFS, (S,) float64 on the CPU).
Measure = Callable[[Tensor], "tuple[Any, Tensor]"]
# (song index, limited) -> a lower target (LUFS) and why, for a song whose target the
# ceiling puts out of reach, or None (the solve then fails): :func:`reference_fallback`.
# Asked first with ``limited`` None; where that answer is none or out of reach too, asked
# with -inf (None: no limited loudness will do, and the solve fails), then with the
# loudness at which the limiter takes LIMITED_LU, which the solve measures.
Fallback = Callable[[int, "float | None"], "tuple[float, str] | None"]
# How much loudness a fallback's master may give to the limiter: past this, each dB of
# drive adds about half a dB of loudness or less (the limiter takes the rest).
LIMITED_LU = 2.0


@dataclass
class LoudnessSolve:
    """Result of the closed-loop loudness solve for one song."""

    drive_db: float
    achieved_lufs: float
    target_lufs: float
    iterations: int
    # Why the target is not the goal asked for (a reference's loudness out of reach under
    # the ceiling: see :func:`reference_fallback`); None when it is.
    fallback: str | None = None


def measure_lufs(y: Tensor, lengths: Sequence[int], sample_rate: int) -> Tensor:
    """Integrated loudness of each song over its own length, ``(S,)``."""
    return torch.stack(
        [integrated_loudness(y[i : i + 1, :, :n], sample_rate)[0] for i, n in enumerate(lengths)]
    )


def rough_lufs(y: Tensor, lengths: Sequence[int]) -> Tensor:
    """An ungated loudness estimate from the mean square, ``(S,)`` float64 on the CPU.

    Used where BS.1770's -70 LUFS absolute gate reads ``-inf`` although the audio is not
    silent: a quiet pre-limiter render, or a drive that left the song under the gate. The
    +3 dB is the stereo channel sum, -0.691 the standard's offset. Digital silence gives
    ``-inf``.
    """
    # the sum of squares accumulated in float64 without a float64 copy of the song
    power = torch.stack([torch.linalg.vector_norm(y[i, :, :n], dtype=torch.float64).square()
                         / max(n * y.shape[1], 1) for i, n in enumerate(lengths)])
    return (10 * torch.log10(power) - 0.691 + 3.0).cpu()


def solvable(lufs: Tensor, rough: Callable[[], Tensor], names: Sequence[str] | None = None) -> Tensor:
    """Gated loudness ``lufs`` where it is defined, else the ungated estimate ``rough()``;
    raises :class:`~diffmix.errors.UserError` on digital silence.

    (NaN or Inf audio is refused by the meters themselves with a ValueError.)
    """
    lufs = lufs.double().cpu()
    if torch.isfinite(lufs).all():
        return lufs
    estimate = rough().double().cpu()
    silent = ~torch.isfinite(lufs) & ~torch.isfinite(estimate)
    if silent.any():
        raise UserError(
            f"{_song(int(silent.nonzero()[0]), names)} is silent (digital silence): no gain can reach "
            "a loudness target"
        )
    # Gated out at this drive but not silent: the ungated estimate sits near or below the
    # gate, so the next secant step raises the drive rather than giving up.
    return torch.where(torch.isfinite(lufs), lufs, estimate)


def _song(i: int, names: Sequence[str] | None) -> str:
    """How messages name song ``i``: its name (the input file) when given."""
    return names[i] if names is not None else f"song {i}"


def solve_loudness(
    render: Callable[[Tensor], Tensor],
    lengths: Sequence[int],
    sample_rate: int,
    targets: Tensor,
    *,
    tolerance_lu: float = 0.02,
    max_iter: int = 12,
    drive_range: tuple[float, float] | None = None,
    start_db: Tensor | None = None,
    proxy: Callable[[Tensor], Tensor] | None = None,
    names: Sequence[str] | None = None,
    slope: Tensor | None = None,
    history: list[tuple[Tensor, Tensor]] | None = None,
    fallback: Fallback | None = None,
) -> tuple[Tensor, list[LoudnessSolve]]:
    """Find per-song drives (dB) for which ``render(drives)`` ``(S, C, T)`` measures
    ``targets`` (LUFS), each song over its own length in ``lengths``.

    A good ``start_db`` (the target minus the pre-limiter loudness) saves a render.
    ``proxy`` is an optional cheap renderer that tracks ``render`` closely (the smooth
    limiter without its final metered correction): the secant runs on it first, then
    ``render`` is called at its answer and the secant goes on with ``render`` only while
    the exact result is outside the tolerance, which usually means one exact render.
    ``drive_range`` defaults to ``render.drive_range`` (a
    :func:`~diffmix.mastering.render.render_with_drive` renderer's: its limiter's), else
    :data:`DRIVE_RANGE`. ``slope`` (LU per dB, one per song) is the first step's slope
    where the solve has no secant yet (default 1: no limiting), e.g. :func:`last_slope` of
    an earlier solve's ``history``, to which each measured ``(drives, LUFS)`` pair is
    appended. ``fallback`` gives a lower target for a song whose target the ceiling puts
    out of reach (:data:`Fallback`); the solve then goes on toward it, and where that is out
    of reach too, asks again with the loudness at which the limiter takes
    :data:`LIMITED_LU` (:func:`_limited`).

    Raises:
        UserError: when a target can't be reached (digital silence, or more loudness than
            the ceiling allows, with no fallback or the fallback out of reach too), naming
            the song by ``names[i]`` (else its index).
    """

    def metered(fn: Callable[[Tensor], Tensor]) -> Measure:
        def measure(drives: Tensor) -> tuple[Tensor, Tensor]:
            y = fn(drives)
            return y, solvable(measure_lufs(y, lengths, sample_rate), lambda: rough_lufs(y, lengths), names)

        return measure

    if drive_range is None:
        drive_range = getattr(render, "drive_range", DRIVE_RANGE)
    return solve(
        metered(render), targets, tolerance_lu=tolerance_lu, max_iter=max_iter, drive_range=drive_range,
        start_db=start_db, proxy=None if proxy is None else metered(proxy), names=names, slope=slope,
        history=history, fallback=fallback,
    )


def solve(
    measure: Measure,
    targets: Tensor,
    *,
    tolerance_lu: float = 0.02,
    max_iter: int = 12,
    drive_range: tuple[float, float] = DRIVE_RANGE,
    start_db: Tensor | None = None,
    proxy: Measure | None = None,
    names: Sequence[str] | None = None,
    slope: Tensor | None = None,
    history: list[tuple[Tensor, Tensor]] | None = None,
    fallback: Fallback | None = None,
) -> tuple[Any, list[LoudnessSolve]]:
    """The secant solve on any renderer: ``measure(drives (S,) dB) -> (output, LUFS (S,))``
    (see :func:`solvable` for a loudness the solve can step from). Returns the output at
    the solved drives and one :class:`LoudnessSolve` per song; as :func:`solve_loudness`."""
    lo, hi = drive_range
    targets = targets.double().cpu()
    drive = torch.zeros_like(targets) if start_db is None else start_db.double().cpu().clamp(lo, hi)
    iters = torch.zeros_like(targets)
    state = None
    if proxy is not None:
        # A quarter of the tolerance: the exact correction only ever lowers the level a
        # hair, so the exact render should land inside without another step.
        drive, _, _, state = _secant(proxy, targets, drive, tolerance_lu / 4, max_iter, (lo, hi),
                                     slope=slope, history=history)
    seen = history if history is not None else []  # every measured pair, for a fallback's bracket
    drive, y, lufs, _ = _secant(measure, targets, drive, tolerance_lu, max_iter, (lo, hi), state,
                                counter=iters, slope=slope, history=seen)
    err = (targets - lufs).abs()
    why: list[str | None] = [None] * len(targets)
    if fallback is not None:

        def ceiling_bound() -> list[bool]:  # each song: short of its target, and the ceiling is why
            slopes = last_slope(seen)
            return [bool(err[i] > tolerance_lu) and _reason(
                float(targets[i]), float(lufs[i]), float(drive[i]), (lo, hi),
                1.0 if slopes is None else float(slopes[i])) == "ceiling" for i in range(len(targets))]

        for i, bound in enumerate(ceiling_bound()):
            if not bound:
                continue
            lower = fallback(i, None)
            if lower is not None and lower[0] < float(targets[i]) - tolerance_lu:
                targets[i], why[i] = lower
        if any(w is not None for w in why):
            # From the measured pair nearest the new target, dB for dB, inside the bracket.
            near = torch.stack([(v - targets).abs() for _, v in seen]).argmin(0)
            d0 = torch.stack([d for d, _ in seen]).gather(0, near[None])[0]
            v0 = torch.stack([v for _, v in seen]).gather(0, near[None])[0]
            moved = torch.tensor([w is not None for w in why])
            drive = torch.where(moved, (d0 + targets - v0).clamp(lo, hi), drive)
            y = None  # replaced next: never two full-length renders alive at once
            drive, y, lufs, _ = _secant(measure, targets, drive, tolerance_lu, max_iter, (lo, hi),
                                        counter=iters, history=seen, bracket=True)
            err = (targets - lufs).abs()
        # Still short (no lower goal, or that one out of reach too), where the fallback would
        # take the limited loudness at all (asked with -inf: nothing is measured for a song
        # whose goal must stand, as a spec's).
        still = torch.tensor([bound and fallback(i, -math.inf) is not None
                              for i, bound in enumerate(ceiling_bound())])
        if still.any():
            y = None
            drive, y, limited = _limited(measure, drive, lufs, still, tolerance_lu, max_iter, (lo, hi), iters)
            for i in still.nonzero().view(-1).tolist():
                lower = fallback(i, float(limited[i]))
                if lower is not None and lower[0] < float(targets[i]) - tolerance_lu:
                    targets[i], why[i] = lower
            lufs = torch.where(still, limited, lufs)
            err = (targets - lufs).abs()
    if (err > tolerance_lu).any():
        i = int((err > tolerance_lu).nonzero()[0])
        raise UserError(_unreachable(float(targets[i]), float(lufs[i]), float(drive[i]), (lo, hi),
                                     _song(i, names), _slope_of(seen, i)))
    solves = [
        LoudnessSolve(float(d), float(v), float(t), int(k), w)
        for d, v, t, k, w in zip(drive, lufs, targets, iters, why, strict=True)
    ]
    return y, solves


def _limited(measure: Measure, drive: Tensor, lufs: Tensor, which: Tensor, tolerance_lu: float,
             max_iter: int, drive_range: tuple[float, float], counter: Tensor) -> tuple[Tensor, Any, Tensor]:
    """For the songs in ``which``, the drive at which the limiter takes :data:`LIMITED_LU`
    of loudness: the loudness then reads that much under the drive plus the song's linear
    loudness (its loudness less its drive at the range's bottom, where no song reaches the
    ceiling). Loudness less drive falls as the limiter works harder, so the secant solves
    it as it solves the loudness. The other songs stay at ``drive`` (reading ``lufs``).
    Returns the drives, the output there and the loudness."""
    lo, hi = drive_range
    probe = torch.where(which, torch.full_like(drive, lo), drive)
    _, quiet = measure(probe)
    counter += which.double()
    aim = torch.where(which, LIMITED_LU - (quiet - lo), drive - lufs)  # drive less loudness

    def taken(drives: Tensor) -> tuple[Any, Tensor]:
        y, v = measure(drives)
        return y, drives - v

    start = torch.where(which, drive - LIMITED_LU, drive)
    drive, y, gap, _ = _secant(taken, aim, start, tolerance_lu, max_iter, drive_range, counter=counter)
    return drive, y, drive - gap


def _slope_of(history: Sequence[tuple[Tensor, Tensor]], i: int) -> float:
    """Song ``i``'s last secant slope over ``history`` (:func:`last_slope`; 1 without one)."""
    slopes = last_slope(history)
    return 1.0 if slopes is None else float(slopes[i])


def _reason(target: float, lufs: float, drive: float, drive_range: tuple[float, float],
            slope: float = 1.0) -> str:
    """Why the solve stopped short of ``target``: ``"quiet"`` or ``"loud"`` at an end of
    the drive's range, else ``"ceiling"``; also the ceiling at the top of the range where
    the loudness had flattened there (its last secant ``slope`` under 0.5 LU per dB)."""
    lo, hi = drive_range
    if target > lufs and drive >= hi - 1e-6 and slope >= 0.5:
        return "quiet"
    if target < lufs and drive <= lo + 1e-6:
        return "loud"
    return "ceiling"


def _unreachable(target: float, lufs: float, drive: float, drive_range: tuple[float, float],
                 name: str, slope: float = 1.0) -> str:
    """Why the solve stopped short of ``target``: at an end of the drive's range (the input
    too quiet or too loud for it: loudness moves with the drive dB for dB until the limiter
    works, so the gap is the least the input must move), else the ceiling."""
    lo, hi = drive_range
    gap = target - lufs
    reason = _reason(target, lufs, drive, drive_range, slope)
    if reason == "quiet":
        return (f"cannot reach {target:g} LUFS ({name}): at the limiter's largest drive, {hi:+g} dB, it "
                f"reads {lufs:.2f} LUFS; the input is too quiet for the drive range: raise its level by "
                f"at least {gap:.1f} dB")
    if reason == "loud":
        return (f"cannot reach {target:g} LUFS ({name}): at the limiter's smallest drive, {lo:+g} dB, it "
                f"reads {lufs:.2f} LUFS; the input is too loud for the drive range: lower its level by "
                f"at least {-gap:.1f} dB")
    return (f"cannot reach {target:g} LUFS under the ceiling ({name}): the closest was {lufs:.2f} LUFS "
            f"at {drive:+.1f} dB drive; ask for less loudness (target.lufs) or a higher ceiling "
            "(target.true_peak_db)")


def _secant(
    measure: Measure,
    targets: Tensor,
    drive: Tensor,
    tolerance_lu: float,
    max_iter: int,
    drive_range: tuple[float, float],
    state: tuple[Tensor, Tensor] | None = None,
    counter: Tensor | None = None,
    slope: Tensor | None = None,
    history: list[tuple[Tensor, Tensor]] | None = None,
    bracket: bool = False,
) -> tuple[Tensor, Any, Tensor, tuple[Tensor, Tensor]]:
    """Secant steps on ``measure`` from ``drive``; ``state`` is a previous (drive, lufs) pair
    whose slope seeds the first step, else ``slope`` (LU per dB; default 1). Returns drive,
    output, loudness and the last pair; each measured pair is appended to ``history``.
    ``bracket``: every step stays between the highest drive measured under the target and
    the lowest measured over it (``history``'s pairs among them; loudness rises with the
    drive), halving that interval where a secant step would leave it: for a solve that
    starts where the limiter flattens the curve, on which clamped secant steps swing."""
    lo, hi = drive_range
    fallback = torch.ones_like(drive) if slope is None else slope.double().cpu().clamp(0.05, 1.0)
    low, high = torch.full_like(drive, lo), torch.full_like(drive, hi)  # the bracket

    def narrow(d: Tensor, v: Tensor) -> None:
        low.copy_(torch.where(v < targets, torch.maximum(low, d), low))
        high.copy_(torch.where(v > targets, torch.minimum(high, d), high))

    for d, v in (history or []) if bracket else []:
        narrow(d, v)
    y, lufs = measure(drive)
    if history is not None:
        history.append((drive.clone(), lufs.clone()))
    if bracket:
        narrow(drive, lufs)
    if counter is not None:
        counter += 1
    prev = state  # the last (drive, lufs) pair, None before the first step
    # Songs whose loudness stopped moving: a step of a dB or more, or one held at an end of
    # the range, that moved it by under a quarter of the tolerance (the limiter holds the
    # ceiling and more drive only flattens it, or the range allows no more).
    stalled = torch.zeros_like(targets, dtype=torch.bool)
    for _ in range(max_iter):
        err = targets - lufs
        if prev is not None:
            big = ((drive - prev[0]).abs() >= 1.0) | (drive <= lo) | (drive >= hi)
            stalled |= ((lufs - prev[1]).abs() < tolerance_lu / 4) & big
        open_ = (err.abs() > tolerance_lu) & ~stalled
        if not open_.any():
            break
        step_slope = fallback
        if prev is not None:
            prev_drive, prev_lufs = prev
            moved = (drive - prev_drive).abs() > 1e-9
            secant = (lufs - prev_lufs) / torch.where(moved, drive - prev_drive, torch.ones_like(drive))
            step_slope = torch.where(moved, secant.clamp(0.05, 1.0), step_slope)
        prev = (drive.clone(), lufs.clone())
        step = (drive + err / step_slope).clamp(lo, hi)
        if bracket:
            step = torch.where((step > low) & (step < high), step, (low + high) / 2)
        drive = torch.where(open_, step, drive)
        if counter is not None:
            counter += open_.double()
        y = None  # the last output, replaced next: never two full-length renders alive at once
        y, lufs = measure(drive)
        if history is not None:
            history.append((drive.clone(), lufs.clone()))
        if bracket:
            narrow(drive, lufs)
    return drive, y, lufs, (drive.clone(), lufs.clone())


def last_slope(history: Sequence[tuple[Tensor, Tensor]]) -> Tensor | None:
    """Each song's last secant slope (LU per dB, within the solve's 0.05..1) over a solve's
    ``history`` of measured ``(drives, LUFS)`` pairs; 1 where its drive never moved, None
    without two pairs."""
    if len(history) < 2:
        return None
    slope = torch.ones_like(history[-1][0])
    found = torch.zeros_like(slope, dtype=torch.bool)
    for (d0, l0), (d1, l1) in zip(reversed(history[:-1]), reversed(history[1:]), strict=True):
        moved = ~found & ((d1 - d0).abs() > 1e-9) & torch.isfinite(l1 - l0)
        step = (l1 - l0) / torch.where(moved, d1 - d0, torch.ones_like(d1))
        slope = torch.where(moved, step.clamp(0.05, 1.0), slope)
        found |= moved
    return slope


def reference_fallback(target: Mapping, reference: Tensor | None, sample_rate: int,
                       goal: float, limited: float | None = None) -> tuple[float, str] | None:
    """The lower goal for a master whose loudness ``goal`` is its reference's (no
    ``target.lufs``) and out of reach under the ceiling (``target.true_peak_db``): the
    reference's peak-to-loudness ratio (BS.1770 true peak less ``goal``) under the
    ceiling, as dense as the reference with its peaks at the ceiling; where that is no
    lower (a reference whose peaks sit under the ceiling: denser than the master can be
    made) or out of reach too, ``limited``, the loudness at which the limiter takes
    :data:`LIMITED_LU`. ``(LUFS, why)``; None for a spec's goal, without a ceiling, or
    where neither is lower than ``goal``."""
    from diffmix.functional.peaks import true_peak

    ceiling = target.get("true_peak_db")
    if target.get("lufs") is not None or reference is None or ceiling is None:
        return None
    peak_db = 20.0 * math.log10(max(float(true_peak(reference, sample_rate).amax()), 1e-12))
    plr = peak_db - goal
    lower = float(ceiling) - plr
    out = (f"the reference's {goal:.2f} LUFS is out of reach under the {float(ceiling):g} dBTP ceiling "
           f"(the reference peaks at {peak_db:+.2f} dBTP)")
    if limited is None:
        if not lower < goal:
            return None
        return lower, (f"{out}; aimed instead at its peak-to-loudness ratio, {plr:.2f} dB, under the "
                       f"ceiling: {lower:.2f} LUFS")
    if not limited < goal:
        return None
    return limited, (f"{out}, and so is its peak-to-loudness ratio, {plr:.2f} dB, under the ceiling "
                     f"({lower:.2f} LUFS); aimed instead at the loudness at which the limiter takes "
                     f"{LIMITED_LU:g} LU: {limited:.2f} LUFS")


def unmeasurable_reference(reference: Tensor, consequence: str) -> str:
    """Why a reference has no integrated loudness, for an error message: digital silence,
    or sound whose every 400 ms block is under BS.1770's -70 LUFS gate."""
    if not bool(reference.any()):
        return f"reference is silent: {consequence}"
    return (f"reference is too quiet to measure: every 400 ms block is under BS.1770's -70 LUFS gate, "
            f"so {consequence}; raise its level")


def loudness_goals(
    targets: Sequence[Mapping], references: Sequence[Tensor | None], sample_rate: int
) -> list[float | None]:
    """Each song's LUFS goal: its spec's, else its reference's loudness, else None."""
    goals: list[float | None] = []
    for target, ref in zip(targets, references, strict=True):
        if target.get("lufs") is not None:
            goals.append(float(target["lufs"]))
        elif ref is not None:
            value = float(integrated_loudness(ref, sample_rate)[0])
            if not math.isfinite(value):
                raise UserError(unmeasurable_reference(ref, "its loudness can't be matched"))
            goals.append(value)
        else:
            goals.append(None)
    return goals
