"""Mastering: fit a chain to references and/or loudness specs, then hit each target exactly.

Several songs are mastered at once: the chain is a :class:`~diffmix.console.Bus` with one
parameter set per song and one optimiser over them all. Every song's excerpts are drawn
from ``(seed, song id, step)`` and its loss is its own, so a song's result is the same in
a batch as alone (up to floating-point summation order).

1. **Fit** (optional): tone, width and dynamics parameters are fitted on random excerpts
   against the objective's terms, with the limiter in its smooth mode.
2. **Loudness solve**: on the full-length render, each song's drive into the true-peak
   limiter is adjusted in closed loop (secant steps) until its integrated loudness is
   within ``tolerance_lu`` of its target; the limiter runs in its exact mode, so the
   ceiling holds.

The chain's last effect is named ``limiter`` and has a ``gain_db`` drive parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from diffmix.console import Bus, prior, select
from diffmix.effects.base import Effect
from diffmix.errors import UserError
from diffmix.fit import FitResult, draw, excerpt_starts, fit
from diffmix.functional.loudness import integrated_loudness
from diffmix.objective import REFERENCE_TERMS, Objective


@dataclass
class LoudnessSolve:
    """Result of the closed-loop loudness solve for one song."""

    drive_db: float
    achieved_lufs: float
    target_lufs: float
    iterations: int


def set_exact(module: torch.nn.Module, exact: bool) -> None:
    """Switch every effect with an exact/smooth render (the limiter) to ``exact``."""
    for m in module.modules():
        options = getattr(m, "_options", None)
        if isinstance(options, dict) and isinstance(options.get("exact"), bool):
            options["exact"] = exact


def pad_batch(xs: Sequence[Tensor]) -> tuple[Tensor, list[int]]:
    """Stack ``(1, C, T_i)`` songs into ``(S, C, max T)`` with zeros; returns the lengths."""
    lengths = [int(x.shape[-1]) for x in xs]
    longest = max(lengths)
    return torch.cat([torch.nn.functional.pad(x, (0, longest - x.shape[-1])) for x in xs]), lengths


def song_excerpts(xs: Sequence[Tensor], keys: Sequence[str], length: int, seed: int, step: int) -> Tensor:
    """One excerpt of ``length`` samples per song, drawn from ``(seed, key, step)``.

    A song shorter than ``length`` is zero-padded (the loudness gate ignores the padding
    and the tone features are level-free).
    """
    out = []
    for x, key in zip(xs, keys, strict=True):
        start = excerpt_starts(x.shape[-1], length, 1, draw(seed, step, key))[0]
        crop = x[..., start : start + length]
        out.append(torch.nn.functional.pad(crop, (0, length - crop.shape[-1])))
    return torch.cat(out)


def fit_chain(
    chain: Bus,
    xs: Sequence[Tensor],
    keys: Sequence[str],
    objective: Objective,
    *,
    params: Sequence[str],
    steps: int,
    excerpt_s: float,
    optimizer: Callable,
    scheduler: Callable | None = None,
    seed: int = 0,
    patience: int = 50,
    prior_weight: float = 0.0,
    progress: bool = True,
    checkpoint=None,  # noqa: ANN001
    log_path=None,  # noqa: ANN001
) -> FitResult:
    """Fit the parameters of ``chain`` (one set per song) matching the glob ``params``.

    ``prior_weight`` scales :func:`~diffmix.console.prior`, which keeps the settings near
    where they started: the matching terms are level-free, so without it nothing stops a
    compressor running to its extremes while the tone still matches.

    The loss is the *sum* over songs, so each song's gradient is its own. The fit renders
    the chain up to the limiter only: the limiter's drive is set afterwards by the loudness
    solve, and at the fit's 0 dB drive it would cost time and change nothing the terms see.
    """
    chosen = select(chain.named_values(), params)
    if not chosen or steps == 0:
        return FitResult(0, math.nan, math.nan, "nothing to fit", 0.0)
    length = int(round(excerpt_s * chain.sample_rate))
    set_exact(chain, False)
    initial = {k: p.exact() for k, p in chain.named_values().items()}

    def closure(step: int):  # noqa: ANN202
        batch = song_excerpts(xs, keys, length, seed, step)
        loss, terms = objective(chain(batch, until="limiter"))
        total = loss.sum()
        logged = {k: float(v.detach().mean()) for k, v in terms.items()}
        if prior_weight:
            # Per song: the prior is a mean over parameter entries, so scale by the songs.
            reg = prior(chain.named_values(), initial) * len(keys)
            total = total + prior_weight * reg
            logged["prior"] = float(reg.detach())
        return total, logged

    try:
        return fit(
            chosen,
            closure,
            steps=steps,
            optimizer=optimizer,
            scheduler=scheduler,
            patience=patience,
            progress=progress,
            checkpoint=checkpoint,
            log_path=log_path,
            tag="master:" + "|".join(keys),
        )
    finally:
        set_exact(chain, True)


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
    power = torch.stack([y[i, :, :n].double().square().mean() for i, n in enumerate(lengths)])
    return (10 * torch.log10(power) - 0.691 + 3.0).cpu()


def _loudness_for_solve(
    y: Tensor, lengths: Sequence[int], sample_rate: int, names: Sequence[str] | None = None
) -> Tensor:
    """Gated loudness where it is defined, else the ungated estimate; raises on silence.

    (NaN or Inf audio is refused by the meter itself with a ValueError.)
    """
    lufs = measure_lufs(y, lengths, sample_rate).double().cpu()
    if torch.isfinite(lufs).all():
        return lufs
    rough = rough_lufs(y, lengths)
    silent = ~torch.isfinite(lufs) & ~torch.isfinite(rough)
    if silent.any():
        raise UserError(
            f"{_song(int(silent.nonzero()[0]), names)} is silent (digital silence): no gain can reach "
            "a loudness target"
        )
    # Gated out at this drive but not silent: the ungated estimate sits near or below the
    # gate, so the next secant step raises the drive rather than giving up.
    return torch.where(torch.isfinite(lufs), lufs, rough)


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
    drive_range: tuple[float, float] = (-24.0, 48.0),
    start_db: Tensor | None = None,
    proxy: Callable[[Tensor], Tensor] | None = None,
    names: Sequence[str] | None = None,
) -> tuple[Tensor, list[LoudnessSolve]]:
    """Find per-song drives (dB) for which ``render(drives)`` measures ``targets`` (LUFS).

    Loudness rises monotonically with the drive but flattens as the limiter works
    harder, so each step divides the error by a secant estimate of the slope. A good
    ``start_db`` (the target minus the pre-limiter loudness) saves a render.

    ``proxy`` is an optional cheap renderer that tracks ``render`` closely (the smooth
    limiter without its final metered correction): the secant runs on it first, then
    ``render`` is called at its answer and the secant goes on with ``render`` only while
    the exact result is outside the tolerance, which usually means one exact render.

    Raises:
        UserError: when a target can't be reached (digital silence, or more loudness than
            the ceiling allows), naming the song by ``names[i]`` (else its index).
    """
    lo, hi = drive_range
    targets = targets.double().cpu()
    drive = torch.zeros_like(targets) if start_db is None else start_db.double().cpu().clamp(lo, hi)
    iters = torch.zeros_like(targets)
    state = None
    if proxy is not None:
        # A quarter of the tolerance: the exact correction only ever lowers the level a
        # hair, so the exact render should land inside without another step.
        drive, _, _, state = _secant(
            proxy, lengths, sample_rate, targets, drive, tolerance_lu / 4, max_iter, (lo, hi),
            names=names,
        )
    drive, y, lufs, _ = _secant(
        render, lengths, sample_rate, targets, drive, tolerance_lu, max_iter, (lo, hi), state, counter=iters,
        names=names,
    )
    err = (targets - lufs).abs()
    if (err > tolerance_lu).any():
        i = int((err > tolerance_lu).nonzero()[0])
        raise UserError(
            f"cannot reach {float(targets[i]):g} LUFS under the ceiling ({_song(i, names)}): the closest "
            f"was {float(lufs[i]):.2f} LUFS at {float(drive[i]):+.1f} dB drive"
        )
    solves = [
        LoudnessSolve(float(d), float(v), float(t), int(k))
        for d, v, t, k in zip(drive, lufs, targets, iters, strict=True)
    ]
    return y, solves


def _secant(
    render: Callable[[Tensor], Tensor],
    lengths: Sequence[int],
    sample_rate: int,
    targets: Tensor,
    drive: Tensor,
    tolerance_lu: float,
    max_iter: int,
    drive_range: tuple[float, float],
    state: tuple[Tensor, Tensor] | None = None,
    counter: Tensor | None = None,
    names: Sequence[str] | None = None,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor]]:
    """Secant steps on ``render`` from ``drive``; ``state`` is a previous (drive, lufs) pair
    whose slope seeds the first step. Returns drive, output, loudness and the last pair."""
    lo, hi = drive_range
    y = render(drive)
    lufs = _loudness_for_solve(y, lengths, sample_rate, names)
    if counter is not None:
        counter += 1
    prev = state  # the last (drive, lufs) pair, None before the first step
    for _ in range(max_iter):
        err = targets - lufs
        open_ = err.abs() > tolerance_lu
        if not open_.any():
            break
        slope = torch.ones_like(drive)
        if prev is not None:
            prev_drive, prev_lufs = prev
            moved = (drive - prev_drive).abs() > 1e-9
            secant = (lufs - prev_lufs) / torch.where(moved, drive - prev_drive, torch.ones_like(drive))
            slope = torch.where(moved, secant.clamp(0.05, 1.0), slope)
        prev = (drive.clone(), lufs.clone())
        drive = torch.where(open_, (drive + err / slope).clamp(lo, hi), drive)
        if counter is not None:
            counter += open_.double()
        y = render(drive)
        lufs = _loudness_for_solve(y, lengths, sample_rate, names)
    return drive, y, lufs, (drive.clone(), lufs.clone())


def render_with_drive(chain: Bus, x: Tensor, limiter: str = "limiter") -> Callable[[Tensor], Tensor]:
    """A ``drives (S,) -> output (S, C, T)`` renderer; what precedes the limiter runs once."""
    names = list(chain.effects)
    if limiter not in names:
        raise ValueError(f"master chain needs an effect named {limiter!r}; it has {names}")
    idx = names.index(limiter)
    set_exact(chain, True)
    with torch.no_grad():
        pre = x
        for name in names[:idx]:
            pre = chain.effects[name](pre)
    # The limiter stage is an Effect: its drive is set through load_values (gain_db).
    lim = cast(Effect, chain.effects[limiter])
    post = [chain.effects[n] for n in names[idx + 1 :]]

    fast = _smooth_limiter_proxy(lim, pre, post)

    def render(drives: Tensor) -> Tensor:
        lim.load_values({"gain_db": drives.detach().cpu().double()})  # the preset keeps it
        with torch.no_grad():
            if fast is not None:
                return fast[1](drives)
            y = lim(pre)
            for effect in post:
                y = effect(y)
        return y

    render.pre = pre  # type: ignore[attr-defined]  # for the gain-reduction plot and the start
    render.proxy = None if fast is None else fast[0]  # type: ignore[attr-defined]
    return render


def _smooth_limiter_proxy(
    lim: torch.nn.Module, pre: Tensor, post: Sequence
) -> tuple[Callable, Callable] | None:
    """Cheap ``drives -> output`` renders of :class:`~diffmix.effects.dynamics.Limiter`:
    ``(smooth, exact)``.

    The limiter's level detector is linear in its drive (the true-peak envelope of
    ``g · x`` is ``g`` times that of ``x``), so the envelope is metered once here and
    every drive after that costs one gain ramp (the limiter's own ``limiter_gain``:
    lookahead minimum, moving average, release smoother). ``smooth`` leaves out the
    limiter's final metered correction, which only ever lowers the level a hair; ``exact``
    is ``smooth`` times that correction (the limiter's own ``limiter_correction``, which
    meters the very output it returns, so the ceiling holds exactly as in the limiter). It
    equals ``Limiter.forward`` to float rounding and costs one ramp and one true-peak read
    instead of a second envelope. None when the limiter isn't the stock one or effects
    follow it.
    """
    from diffmix.effects.dynamics import Limiter
    from diffmix.functional import dynamics as D
    from diffmix.functional import limiter as L
    from diffmix.functional.peaks import strict_envelope

    if type(lim) is not Limiter or post:
        return None
    sr = lim.sample_rate
    opts = lim._options
    lookahead = D._lookahead_samples(float(opts["lookahead_ms"]), sr, "Limiter")
    with torch.no_grad():
        ceiling = torch.exp(lim.p("ceiling_db").detach() / D._DB_PER_NEPER).reshape(-1, 1, 1)
        target = (ceiling * (1.0 - L._LIMIT_MARGIN)).to(pre.dtype)
        release = D.ms_to_pole(lim.p("release_ms").detach(), sr).reshape(-1).to(pre.dtype)
        release = release.expand(pre.shape[0]).contiguous()
    cache: list[Tensor] = []

    def proxy(drives: Tensor) -> Tensor:
        g = torch.pow(10.0, drives.to(pre.device, torch.float64) / 20.0).to(pre.dtype).view(-1, 1, 1)
        with torch.no_grad():
            if not cache:  # metered on first use: a job without a loudness goal never pays
                level = L.limiter_envelope(pre, sr, true_peak=bool(opts["true_peak"]))
                if opts["true_peak"] and opts["exact"] and opts.get("strict"):  # as the limiter does
                    strict = strict_envelope(pre, sr, meter=False).unsqueeze(1).to(level)
                    level = torch.maximum(level, strict)
                cache.append(level)
            level = cache[0]
            required = torch.minimum(target / (g * level).clamp_min(1e-30), torch.ones_like(level))
            return pre * (g * L.limiter_gain(required, lookahead, release))

    def exact(drives: Tensor) -> Tensor:
        y = proxy(drives)
        if not (opts["true_peak"] and opts["exact"]):
            return y  # sample-peak mode: the smooth gain already holds the ceiling
        with torch.no_grad():
            return y * L.limiter_correction(
                y, sr, target, ceiling.to(pre.dtype), lookahead, release.view(-1, 1, 1),
                strict=bool(opts.get("strict")),
            )

    return proxy, exact


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
                raise UserError("reference is silent: its loudness can't be matched")
            goals.append(value)
        else:
            goals.append(None)
    return goals


def available_weights(weights: Mapping[str, float], *, reference: bool, target: Mapping) -> dict[str, float]:
    """Drop terms with nothing to compare against, and those met exactly elsewhere."""
    out = {}
    for k, v in weights.items():
        if k in REFERENCE_TERMS and not reference:
            continue
        if k == "spec_lra" and target.get("lra") is None:
            continue
        if k == "spec_plr" and target.get("plr") is None:
            continue
        if k in ("spec_lufs", "spec_true_peak", "loudness", "mrstft"):
            # Loudness and the ceiling are met exactly by the solve and the limiter; a
            # master's reference is another song, so there is no waveform to align.
            continue
        out[k] = float(v)
    return {k: v for k, v in out.items() if v > 0}
