"""Mixing toward another song's mix (``aligned=false``) on the master bus: its tone and
width per band, its dynamics, its loudness and crest factor, each in closed form or by a
small search on the features of :mod:`diffmix.mixing.style`.

The stems keep their equal-loudness balance; what another song's mix shows (and what
:func:`~diffmix.mixing.style.style_distances` compares) is set on the master bus, whose
input is rendered once. The master bus for this mode (``configs/mix.yaml``,
``toward_song``) holds, around the console's own master effects::

    width -> match -> (console.master: eq, comp, gain) -> expander -> limiter -> ride

- **tone and width** (:func:`tone_width_stage`): a mid/side third-octave match EQ
  (:class:`~diffmix.effects.match_eq.MatchEQ`, closed form from the ratio of the two
  songs' smoothed mid and side spectra, refined on its own output). Matching the mid and
  the side shape per band also sets the side/mid ratio per band (the width). Where the
  side needs more than the EQ's +24 dB, the broadband ``width`` takes the rest.
- **dynamics** (:func:`dynamics_stage`): the loudness range and crest factor, from a grid
  of the master compressor (downward: less range, lower crest) and the expander (more
  range, higher crest), the nearest setting then refined on its threshold.
- **loudness range** (:func:`ride_stage`): what the dynamics left of the LRA, by a gain
  ride on the K-weighted short-term loudness (:class:`~diffmix.effects.dynamics.
  LoudnessRide`, the very windows the LRA measures): its range scale from the ratio of
  the two LRAs, then secant steps on the output's LRA.
- **loudness and crest** (:func:`level_stage`): the limiter's drive puts the integrated
  loudness on the reference's (the mastering loudness solve,
  :func:`~diffmix.mastering.loudness.solve_loudness`) and its ceiling, at most 0 dBTP,
  sets the peak, so the crest factor follows (secant steps on the ceiling).
- **tone refine** (:func:`refine_stage`): what the dynamics left of the tone, measured
  on the final output, folded into the match EQ.
- **loudness range trim** (:func:`lra_trim_stage`), last: the output's LRA landed on the
  reference's by the ride (the dynamics again first where the ride cannot reach it),
  every other feature held within its bar.

Each stage is run through the caller's judge (the fit's objective on the full length),
which keeps it only where it lowers the score; the trim is judged by the feature bars
instead (half the master input's distances), so the objective's light dynamics weight
cannot trade the loudness range away.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from itertools import pairwise
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from diffmix.effects.dynamics import Compressor, Expander, Limiter, LoudnessRide
from diffmix.effects.gain import Width
from diffmix.effects.match_eq import GAIN_MAX_DB, SIDE_MIN_DB, MatchEQ
from diffmix.errors import UserError
from diffmix.features import crest_factor_db
from diffmix.functional.dynamics import compressor, expander
from diffmix.functional.loudness import integrated_loudness, loudness_range
from diffmix.functional.match_eq import band_levels_db, match_gains
from diffmix.params import BoundedParam, ParamValue

if TYPE_CHECKING:
    from diffmix.console import Console

WIDTH, MATCH, COMP, EXPANDER, RIDE, LIMITER = "width", "match", "comp", "expander", "ride", "limiter"
# The master effects this mode adds around the console's own: before them, and after them.
BEFORE, AFTER = (WIDTH, MATCH), (EXPANDER, LIMITER, RIDE)
# stage(name, run, required=False): run it and judge it (kept whatever the score if required).
Stage = Callable[..., dict[str, Any]]


@torch.no_grad()
def master_input(console: Console, audio: Tensor) -> Tensor:
    """What the console sends into its master bus, ``(1, 2, T)``: the console rendered with
    the master bus empty (and no offset; the strips do not change in this mode)."""
    saved, offset = console.master.effects, console.offset_samples
    console.master.effects = torch.nn.ModuleDict()
    console.offset_samples = 0
    try:
        return console(audio)
    finally:
        console.master.effects, console.offset_samples = saved, offset


@torch.no_grad()
def _run(console: Console, x: Tensor, start: str | None = None, until: str | None = None) -> Tensor:
    """The master bus's effects from ``start`` (inclusive) to ``until`` (exclusive) on ``x``."""
    names = list(console.master.effects)
    i = 0 if start is None else names.index(start)
    j = len(names) if until is None else names.index(until)
    for name in names[i:j]:
        x = console.master.effects[name](x)
    return x


def _after(console: Console, name: str) -> str | None:
    names = list(console.master.effects)
    i = names.index(name) + 1
    return names[i] if i < len(names) else None


def _param(effect: torch.nn.Module, name: str) -> BoundedParam:
    return cast(BoundedParam, effect.params[name])  # type: ignore[index]


def _lufs(x: Tensor, sample_rate: int) -> float:
    return float(integrated_loudness(x.double(), sample_rate)[0])


@torch.no_grad()
def tone_width_stage(
    console: Console, pre: Tensor, reference: Tensor, sample_rate: int, *, refine: int = 2
) -> dict[str, Any]:
    """The master's match EQ set in closed form toward ``reference``'s mid and side
    third-octave shapes (:meth:`~diffmix.effects.match_eq.MatchEQ.match`); first, where the
    side needs more than the EQ's range gives, the master ``width`` by the rest (a width
    ``w`` moves side/mid by ``20 log10 w`` dB).

    ``pre``: the master bus's input ``(1, 2, T)``; ``reference``: ``(1, 2, T')``.
    """
    t0 = time.perf_counter()
    effects = console.master.effects
    eq = effects[MATCH] if MATCH in effects else None
    if not isinstance(eq, MatchEQ):
        return {"method": "none", "reason": f"the master bus has no MatchEQ {MATCH!r}"}
    out: dict[str, Any] = {"method": "mid/side third-octave match EQ on the master bus"}
    width = effects[WIDTH] if WIDTH in effects else None
    if isinstance(width, Width):
        # The side the bands still lack beyond the EQ's +24 dB (the most over the bands where
        # the reference's side is within 30 dB of its loudest): the width takes it broadband.
        spec = _param(width, "width").spec
        x = _run(console, pre, until=WIDTH)
        ref_side = band_levels_db(reference, sample_rate, eq.centres_hz)[0, 1]
        heard = (ref_side > ref_side.max() - 30.0).to(x.device)
        for _ in range(3):  # the width's level compensation moves the mid a little
            _, side = match_gains(width(x), reference, sample_rate, eq.centres_hz,
                                  mid_range_db=(-120.0, 120.0), side_range_db=(-120.0, 120.0))
            excess = float((side[0].double() - GAIN_MAX_DB)[heard].amax())
            now = float(width.p("width").detach().flatten()[0])
            if excess < 0.1 or now >= spec.max:
                break
            width.load_values({"width": torch.tensor([min(spec.max, now * 10 ** (excess / 20))],
                                                      dtype=torch.float64)})
        out["width"] = round(float(width.p("width").detach().flatten()[0]), 3)
    mid, side = eq.match(_run(console, pre, until=MATCH), reference.to(pre.dtype), refine=refine)
    out["mid_gain_db"] = [round(float(v), 2) for v in mid.flatten()]
    out["side_gain_db"] = [round(float(v), 2) for v in side.flatten()]
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _grid_scores(y: Tensor, sample_rate: int, lra_goal: float, crest_goal: float) -> Tensor:
    """How far each item of ``y`` ``(G, 2, T)`` is from the goals once the limiter has
    taken the crest down (it can lower a crest factor, never raise it), ``(G,)``: the
    LRA's squared distance plus the crest factor's squared shortfall. (What the limiter
    then does to the range is closed in a loop on the output, :func:`range_stage`.)"""
    y = y.double()
    short = (crest_goal - crest_factor_db(y)).clamp_min(0.0)
    return (loudness_range(y, sample_rate) - lra_goal).square() + short.square()


def _grid(kind: str, peak_db: float, attack_ms: float, release_ms: float) -> dict[str, Tensor]:
    """The search's settings for ``kind`` (``comp``/``expander``), flattened: threshold
    under the peak x ratio x timing. The compressor's timings: fast (2/100 ms, takes the
    crest down with the range), as configured, and a slow leveller (200/1500 ms, the
    range without the crest); the expander's as configured."""
    f64 = torch.float64
    if kind == COMP:
        thr = torch.arange(peak_db - 36.0, peak_db + 0.1, 4.0, dtype=f64)
        ratios = torch.tensor([1.5, 2.0, 3.0, 5.0, 10.0], dtype=f64)
        timings = torch.tensor([[2.0, 100.0], [attack_ms, release_ms], [200.0, 1500.0]], dtype=f64)
    else:
        thr = torch.arange(peak_db - 50.0, peak_db - 4.9, 5.0, dtype=f64)
        ratios = torch.tensor([1.25, 1.5, 2.0, 3.0, 4.0], dtype=f64)
        timings = torch.tensor([[attack_ms, release_ms]], dtype=f64)
    i, j, k = (v.reshape(-1) for v in torch.meshgrid(
        torch.arange(len(thr)), torch.arange(len(ratios)), torch.arange(len(timings)), indexing="ij"))
    return {"threshold_db": thr[i], "ratio": ratios[j], "attack_ms": timings[k, 0],
            "release_ms": timings[k, 1]}


def _render(kind: str, effect: Compressor | Expander, x: Tensor, settings: dict[str, Tensor],
            sample_rate: int, batch: int = 8) -> Tensor:
    """``x`` ``(1, 2, T)`` through ``effect``'s function at each of ``settings`` (per-item
    values by parameter name), its other settings kept: ``(G, 2, T)``."""
    v = {k: float(t.detach().flatten()[0]) for k, t in effect.values().items() if k not in settings}
    fn: Callable[..., Tensor] = compressor if kind == COMP else expander
    g = len(next(iter(settings.values())))
    out = []
    for i in range(0, g, batch):
        part = {k: t[i : i + batch].float() for k, t in settings.items()}
        n = len(next(iter(part.values())))
        out.append(fn(x.expand(n, -1, -1).float(), sample_rate, **part, **v, **effect.options))
    return torch.cat(out)


def _dynamics_effects(console: Console) -> list[tuple[str, Compressor | Expander]]:
    effects = console.master.effects
    return [(k, effects[k]) for k in (COMP, EXPANDER)  # type: ignore[misc]
            if k in effects and isinstance(effects[k], (Compressor, Expander))]


@torch.no_grad()
def dynamics_stage(
    console: Console, pre: Tensor, reference: Tensor, sample_rate: int, *, finalists: int = 4,
) -> dict[str, Any]:
    """The master compressor or the expander, whichever brings the loudness range and the
    crest factor of the master's output nearest the reference's (the other left neutral,
    ratio 1).

    A grid (:func:`_grid`) is scored on the master's signal before the limiter (LRA and
    crest are level-free; :func:`_grid_scores`), which keeps each character's (kind,
    ratio, timing) best threshold. The ``finalists`` best characters and "neither" are
    then rendered through the limiter at the reference's loudness and crest
    (:func:`level_stage`): limiting hard moves the range, so the output decides, by the
    squared distances of its LRA and crest factor.
    """
    t0 = time.perf_counter()
    kinds = _dynamics_effects(console)
    if not kinds:
        return {"method": "none", "reason": "the master bus has no compressor or expander"}
    ref = reference.double()
    lra_goal = float(loudness_range(ref, sample_rate)[0])
    crest_goal = float(crest_factor_db(ref)[0])
    keys = ("threshold_db", "ratio", "attack_ms", "release_ms")
    start = {name: {k: _param(e, k).exact().clone() for k in keys} for name, e in kinds}

    def neutral() -> None:
        for name, e in kinds:
            e.load_values({"ratio": torch.ones_like(start[name]["ratio"])})

    neutral()
    candidates: list[tuple[float, str, dict[str, float]]] = []
    try:
        for name, e in kinds:
            x = _run(console, pre, until=name)
            tail = _after(console, name)
            peak = 20 * math.log10(max(float(x.abs().max()), 1e-9))
            timing = (float(start[name][k].flatten()[0]) for k in ("attack_ms", "release_ms"))
            grid = _grid(name, peak, *timing)
            spec_t = _param(e, "threshold_db").spec
            grid["threshold_db"] = grid["threshold_db"].clamp(spec_t.min, spec_t.max)
            y = _render(name, e, x, grid, sample_rate)
            y = _run(console, y, start=tail, until=LIMITER) if tail and tail != LIMITER else y
            scores = _grid_scores(y, sample_rate, lra_goal, crest_goal)
            best: dict[tuple[float, ...], tuple[float, dict[str, float]]] = {}
            for i in range(len(scores)):
                setting = {k: float(v[i]) for k, v in grid.items()}
                character = (setting["ratio"], setting["attack_ms"], setting["release_ms"])
                if character not in best or float(scores[i]) < best[character][0]:
                    best[character] = (float(scores[i]), setting)
            candidates += [(score, name, setting) for score, setting in best.values()]
        candidates.sort(key=lambda c: c[0])
        finals = []
        for _, name, setting in [(0.0, "neither", {})] + candidates[:finalists]:
            neutral()
            if setting:
                dict(kinds)[name].load_values({k: torch.tensor([v], dtype=torch.float64)
                                               for k, v in setting.items()})
            level_stage(console, pre, reference, sample_rate)
            y = _run(console, pre).double()
            score = float((loudness_range(y, sample_rate)[0] - lra_goal) ** 2
                          + (crest_factor_db(y)[0] - crest_goal) ** 2)
            finals.append((score, name, setting))
    except BaseException:
        for name, e in kinds:
            values: dict[str, ParamValue] = dict(start[name])
            e.load_values(values)
        raise
    score, name, setting = min(finals, key=lambda c: c[0])
    neutral()
    if setting:
        dict(kinds)[name].load_values({k: torch.tensor([v], dtype=torch.float64) for k, v in setting.items()})
    return {"method": "master compressor / expander: a grid before the limiter, the finalists after it",
            "lra_goal": round(lra_goal, 3), "crest_goal": round(crest_goal, 3), "chosen": name,
            **{k: round(v, 2) for k, v in setting.items()},
            "finalists": [[n, round(sc, 3), *(round(v, 2) for v in st.values())] for sc, n, st in finals],
            "seconds": round(time.perf_counter() - t0, 3)}


@torch.no_grad()
def range_stage(console: Console, pre: Tensor, reference: Tensor, sample_rate: int, *,
                steps: int = 3) -> dict[str, Any]:
    """The working compressor's or expander's threshold by secant steps on the loudness
    range of the master's *output* (the limiter, at the reference's loudness and crest,
    moves the range too), the nearest kept. A lower threshold means less range for the
    compressor and for the expander alike."""
    t0 = time.perf_counter()
    active = [(n, e) for n, e in _dynamics_effects(console)
              if float(e.p("ratio").detach().flatten()[0]) > 1.0]
    if not active:
        return {"method": "none", "reason": "no master compressor or expander at work"}
    name, effect = active[0]
    goal = float(loudness_range(reference.double(), sample_rate)[0])
    spec = _param(effect, "threshold_db").spec

    def final(thr: float) -> float:
        effect.load_values({"threshold_db": torch.tensor([thr], dtype=torch.float64)})
        level_stage(console, pre, reference, sample_rate)
        return float(loudness_range(_run(console, pre).double(), sample_rate)[0]) - goal

    t_a = float(effect.p("threshold_db").detach().flatten()[0])
    tried = [(t_a, final(t_a))]
    t_b = min(spec.max, max(spec.min, t_a - 2.0 if tried[0][1] > 0 else t_a + 2.0))
    tried.append((t_b, final(t_b)))
    for _ in range(steps - 1):
        (ta, ea), (tb, eb) = tried[-2], tried[-1]
        if abs(eb) < 0.05 or abs(eb - ea) < 1e-3:
            break
        t_c = min(spec.max, max(spec.min, tb - eb * (tb - ta) / (eb - ea)))
        t_c = max(tb - 6.0, min(tb + 6.0, t_c))
        tried.append((t_c, final(t_c)))
    thr, err = min(tried, key=lambda te: abs(te[1]))
    if thr != tried[-1][0]:
        final(thr)
    return {"method": f"master {name} threshold by secant steps on the output's loudness range",
            "threshold_db": round(thr, 2), "lra_error": round(err, 3),
            "tried": [[round(t, 2), round(e, 3)] for t, e in tried],
            "seconds": round(time.perf_counter() - t0, 3)}


@torch.no_grad()
def ride_stage(console: Console, pre: Tensor, reference: Tensor, sample_rate: int, *,
               steps: int = 4, tolerance_lu: float = 0.02) -> dict[str, Any]:
    """The master's loudness ride (:class:`~diffmix.effects.dynamics.LoudnessRide`, after
    the limiter) set so the loudness range of the master's output, with the limiter at
    the reference's loudness and crest (:func:`level_stage`), is the reference's.

    The ride scales its input's short-term loudness range by about ``range_scale`` (exactly,
    were its gain constant over each 3 s window), so the first try is the ratio of the
    reference's LRA to the ride's input's; the second corrects it by the ratio the output
    then shows (the output's LRA taken as proportional to the scale), and secant steps on
    the output's LRA follow. The try nearest in LRA is kept, unless the start is nearer
    the reference in LRA and crest factor together (squared distances, as the dynamics
    stage's finalists): at the reference's loudness under a 0 dBTP ceiling, more range can
    cost crest.
    """
    t0 = time.perf_counter()
    ride = console.master.effects[RIDE] if RIDE in console.master.effects else None
    if not isinstance(ride, LoudnessRide):
        return {"method": "none", "reason": f"the master bus has no LoudnessRide {RIDE!r}"}
    ref = reference.double()
    goal = float(loudness_range(ref, sample_rate)[0])
    crest_goal = float(crest_factor_db(ref)[0])
    spec = _param(ride, "range_scale").spec
    start = float(ride.p("range_scale").detach().flatten()[0])
    into = float(loudness_range(_run(console, pre, until=RIDE).double(), sample_rate)[0])
    if into < 0.05:  # no range to scale (a steady or short signal)
        return {"method": "none", "reason": f"the ride's input has no loudness range ({into:.3f} LU)"}

    def clip(v: float) -> float:
        return min(spec.max, max(spec.min, v))

    def final(scale: float) -> tuple[float, float, float]:
        ride.load_values({"range_scale": torch.tensor([scale], dtype=torch.float64)})
        level_stage(console, pre, reference, sample_rate)
        y = _run(console, pre).double()
        return scale, float(loudness_range(y, sample_rate)[0]), float(crest_factor_db(y)[0])

    tried = [final(start), final(clip(start * goal / into))]
    if tried[-1][1] > 1e-6:
        tried.append(final(clip(tried[-1][0] * goal / tried[-1][1])))
    while len(tried) < steps + 1:
        (sa, ea, _), (sb, eb, _) = tried[-2:]
        ea, eb = ea - goal, eb - goal
        if abs(eb) < tolerance_lu or abs(eb - ea) < 1e-4 or sa == sb:
            break
        tried.append(final(clip(sb - eb * (sb - sa) / (eb - ea))))
    # The try nearest in LRA, unless the start is nearer in LRA and crest together (a
    # crest out of the limiter's reach must not pick among tries by its noise).
    scale, lra, crest = min(tried[1:], key=lambda t: abs(t[1] - goal))
    def distance(lra_: float, crest_: float) -> float:
        return (lra_ - goal) ** 2 + (crest_ - crest_goal) ** 2

    if distance(*tried[0][1:]) < distance(lra, crest):
        scale, lra, crest = tried[0]
    if scale != tried[-1][0]:
        final(scale)
    return {"method": "master loudness ride: range scale from the LRA ratio, secant steps on the "
                      "output's LRA; the try nearest in LRA kept (the start if nearer in LRA and crest)",
            "range_scale": round(scale, 4), "lra_goal": round(goal, 3), "lra_in": round(into, 3),
            "lra_out": round(lra, 3), "crest_goal": round(crest_goal, 3), "crest_out": round(crest, 3),
            "tried": [[round(s_, 4), round(e_, 3), round(c_, 3)] for s_, e_, c_ in tried],
            "seconds": round(time.perf_counter() - t0, 3)}


def _distances_of(y: Tensor, reference: Tensor, sample_rate: int) -> dict[str, float]:
    from diffmix.mixing.style import style_distances

    return style_distances(y.double(), reference, sample_rate)


def _distances(console: Console, pre: Tensor, reference: Tensor, sample_rate: int) -> dict[str, float]:
    return _distances_of(_run(console, pre), reference, sample_rate)


@torch.no_grad()
def equal_loudness_sum(audio: Tensor, sample_rate: int) -> Tensor:
    """The stems ``(1, N, C, T)`` each at -30 LUFS, summed: ``(1, C, T)``, the mix this
    mode starts from and is measured against (its feature distances, halved, are the bars)."""
    from diffmix.mixing.console_fit import equal_loudness_gains

    gains = equal_loudness_gains(audio, sample_rate).to(audio.device, torch.float64)
    return (audio[0].double() * 10 ** (gains.view(-1, 1, 1) / 20)).sum(0, keepdim=True)


@torch.no_grad()
def lra_trim_stage(console: Console, pre: Tensor, reference: Tensor, sample_rate: int, *,
                   base: Tensor | None = None, evals: int = 8) -> dict[str, Any]:
    """The last stage: the output's loudness range put on the reference's, the other
    features held to their bars.

    Every earlier stage moves the LRA of the output (a match EQ's low boost, the
    limiter re-levelled after a tone refine), so it is landed last, by the ride alone:
    its ``range_scale`` solved by bracketed secant steps (Illinois) on the output's LRA
    (each try re-levels the limiter, :func:`level_stage`; nothing after moves it), to
    within a quarter of how far ``base`` (the stems' equal-loudness sum,
    :func:`equal_loudness_sum`; default ``pre``) sits from the reference, 0.001-0.01 LU.
    Where the ride cannot bring it within its bar (half that distance; a range that moves
    inside the 3 s windows), the dynamics stage's compressor/expander search and the tone
    refine run again first
    (:func:`dynamics_stage`, :func:`range_stage`, :func:`refine_stage`), then the ride.

    A candidate replaces the stage's input only where it brings the LRA nearer and
    leaves every other feature distance (:func:`~diffmix.mixing.style.style_distances`)
    within its bar, half ``base``'s, or no further than it was: the feature bar
    judges this stage, not the fit's objective (which weighs the dynamics lightly and
    would trade the range for a hundredth of a dB of tone).
    """
    t0 = time.perf_counter()
    ride = console.master.effects[RIDE] if RIDE in console.master.effects else None
    if not isinstance(ride, LoudnessRide):
        return {"method": "none", "reason": f"the master bus has no LoudnessRide {RIDE!r}"}
    goal = float(loudness_range(reference.double(), sample_rate)[0])
    bars = {k: 0.5 * v for k, v in _distances_of(pre if base is None else base, reference,
                                                  sample_rate).items()}
    tolerance = min(0.01, max(0.001, 0.5 * bars["lra"]))
    spec = _param(ride, "range_scale").spec
    start = console.snapshot()
    was = _distances(console, pre, reference, sample_rate)
    out: dict[str, Any] = {
        "method": "the output's LRA by the ride's range scale (Illinois steps), the dynamics again "
                  "first where the ride cannot bring it within its bar; kept only with every other feature "
                  "within its bar or no further than it was",
        "lra_goal": round(goal, 3), "tolerance_lu": round(tolerance, 4),
        "lra_before": round(was["lra"], 4)}
    if was["lra"] <= tolerance:
        out.update(applied=False, reason="already within the tolerance",
                   seconds=round(time.perf_counter() - t0, 3))
        return out

    def over(d: dict[str, float]) -> list[str]:
        return [k for k in d if k != "lra" and d[k] > max(bars[k], was[k]) + 1e-9]

    def held(d: dict[str, float]) -> bool:
        return not over(d)

    def land() -> list[tuple[float, float]]:
        def lra(scale: float) -> float:
            ride.load_values({"range_scale": torch.tensor([scale], dtype=torch.float64)})
            level_stage(console, pre, reference, sample_rate)
            return float(loudness_range(_run(console, pre).double(), sample_rate)[0]) - goal

        def clip(v: float) -> float:
            return min(spec.max, max(spec.min, v))

        s0 = float(ride.p("range_scale").detach().flatten()[0])
        tried = [(s0, lra(s0))]
        into = float(loudness_range(_run(console, pre, until=RIDE).double(), sample_rate)[0])
        # The open-loop slope (the output's LRA about range_scale times the ride's input's)
        # overstates the closed loop's, so the first step falls short of the goal.
        s1 = clip(s0 - tried[0][1] / max(into, 0.05))
        if s1 != s0:
            tried.append((s1, lra(s1)))
        side = 0  # Illinois: which end was kept twice in a row
        while len(tried) < evals and abs(min(tried, key=lambda t: abs(t[1]))[1]) > tolerance:
            # A bracket: two tries next to each other in range_scale whose errors differ in
            # sign; the narrowest. (Not the low and high tries nearest the goal in error: the
            # LRA is not monotone in range_scale, and those two may bracket nothing, so the
            # next step lands on a try already made.)
            brackets = [(p, q) for p, q in pairwise(sorted(tried)) if p[1] * q[1] < 0]
            if brackets:  # regula falsi between its ends
                a, b = min(brackets, key=lambda pq: pq[1][0] - pq[0][0])
                if a[1] > 0:
                    a, b = b, a
                fa, fb = a[1], b[1]
                if side < 0:
                    fa *= 0.5
                elif side > 0:
                    fb *= 0.5
                s = a[0] - fa * (b[0] - a[0]) / (fb - fa)
            else:  # a secant on the last two, at most 1 in range_scale
                (sa, ea), (sb, eb) = tried[-2:] if len(tried) > 1 else (tried[0], tried[0])
                if sa == sb or abs(eb - ea) < 1e-6:
                    break
                s = sb - eb * (sb - sa) / (eb - ea)
                s = max(sb - 1.0, min(sb + 1.0, s))
            s = clip(s)
            if any(abs(s - t[0]) < 1e-6 for t in tried):
                break
            tried.append((s, lra(s)))
            side = -1 if tried[-1][1] > 0 else 1
        best = min(tried, key=lambda t: abs(t[1]))
        if best[0] != tried[-1][0]:
            lra(best[0])
        return tried

    candidates = []
    tried = land()
    candidates.append(("ride", console.snapshot(), _distances(console, pre, reference, sample_rate), tried))
    # The dynamics again (a grid search, the stage's dearest part) only where the LRA is
    # over its bar and the ride cannot bring it within (holding the rest).
    ride_d = candidates[-1][2]
    if was["lra"] > bars["lra"] and not (held(ride_d) and ride_d["lra"] <= bars["lra"]):
        console.load_values(start)
        # The dynamics searched with the ride neutral, so it can then go either way.
        ride.load_values({"range_scale": torch.ones(1, dtype=torch.float64)})
        dynamics_stage(console, pre, reference, sample_rate)
        range_stage(console, pre, reference, sample_rate)
        refine_stage(console, pre, reference, sample_rate)
        tried = land()
        candidates.append(("dynamics, ride", console.snapshot(), _distances(console, pre, reference,
                                                                            sample_rate), tried))
    fit = [c for c in candidates if held(c[2]) and c[2]["lra"] < was["lra"]]
    out["candidates"] = [{"name": name, "lra": round(d["lra"], 4), "over_bar": over(d),
                          "tried": [[round(s, 4), round(e, 4)] for s, e in tr]}
                         for name, _, d, tr in candidates]
    out["bars"] = {k: round(v, 4) for k, v in bars.items()}
    out["distances_before"] = {k: round(v, 4) for k, v in was.items()}
    if fit:
        name, values, d, _ = min(fit, key=lambda c: c[2]["lra"])
        console.load_values(values)
        out.update(applied=name, lra_after=round(d["lra"], 4))
    else:
        console.load_values(start)
        out.update(applied=False)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


@torch.no_grad()
def level_stage(
    console: Console, pre: Tensor, reference: Tensor, sample_rate: int, *, iterations: int = 4,
    tolerance_lu: float = 0.02,
) -> dict[str, Any]:
    """The master limiter's drive on the reference's integrated loudness and its ceiling
    (at most 0 dBTP) where the crest factor is the reference's: each pass solves the drive
    (:func:`~diffmix.mastering.loudness.solve_loudness`), measures the crest factor and
    moves the ceiling by the difference (a crest the limiter would have to raise stops at
    0 dBTP)."""
    from diffmix.mastering.loudness import solve_loudness
    from diffmix.mastering.render import render_with_drive

    t0 = time.perf_counter()
    limiter = console.master.effects[LIMITER] if LIMITER in console.master.effects else None
    if not isinstance(limiter, Limiter):
        return {"method": "none", "reason": f"the master bus has no Limiter {LIMITER!r}"}
    ref = reference.double()
    goal = _lufs(ref, sample_rate)
    crest_goal = float(crest_factor_db(ref)[0])
    spec = _param(limiter, "ceiling_db").spec
    ceiling = float(limiter.p("ceiling_db").detach().flatten()[0])
    # What precedes the limiter runs once; the limiter and what follows it (the ride) per drive.
    names = list(console.master.effects)
    tail = torch.nn.ModuleDict({k: console.master.effects[k] for k in names[names.index(LIMITER):]})
    into = _run(console, pre, until=LIMITER)

    def renderer() -> Callable[[Tensor], Tensor]:
        saved = console.master.effects
        console.master.effects = tail
        try:
            return render_with_drive(console.master, into)
        finally:
            console.master.effects = saved

    render = renderer()
    start = torch.tensor([goal - _lufs(render.pre, sample_rate)], dtype=torch.float64)  # type: ignore[attr-defined]
    good: tuple[float, float, float] | None = None  # (ceiling, drive, crest) of the last solve
    note = None
    for _ in range(iterations):
        limiter.load_values({"ceiling_db": torch.tensor([ceiling], dtype=torch.float64)})
        render = renderer()
        try:
            y, (solved,) = solve_loudness(
                render, [pre.shape[-1]], sample_rate, torch.tensor([goal], dtype=torch.float64),
                tolerance_lu=tolerance_lu, start_db=start, proxy=render.proxy,  # type: ignore[attr-defined]
            )
        except UserError as exc:
            # Under this ceiling the loudness is out of reach: the loudness comes first, so
            # the last ceiling that reached it stays (or, if none did, the loudest drive).
            note = str(exc)
            if good is None:
                good = (ceiling, float(_param(limiter, "gain_db").spec.max), math.nan)
            break
        start = torch.tensor([solved.drive_db], dtype=torch.float64)
        crest = float(crest_factor_db(y.double())[0])
        good = (ceiling, solved.drive_db, crest)
        new = min(spec.max, max(spec.min, ceiling + crest_goal - crest))
        if abs(crest_goal - crest) < 0.05 or abs(new - ceiling) < 1e-3:
            break
        ceiling = new
    assert good is not None
    limiter.load_values({"ceiling_db": torch.tensor([good[0]], dtype=torch.float64),
                         "gain_db": torch.tensor([good[1]], dtype=torch.float64)})
    out = {"method": "master limiter: drive for the loudness, ceiling for the crest factor",
           "drive_db": round(good[1], 3), "ceiling_db": round(good[0], 3), "crest_db": round(good[2], 3),
           "crest_goal_db": round(crest_goal, 3), "seconds": round(time.perf_counter() - t0, 3)}
    if note:
        out["note"] = note
    return out


@torch.no_grad()
def refine_stage(console: Console, pre: Tensor, reference: Tensor, sample_rate: int) -> dict[str, Any]:
    """What the master's output still misses of the reference's mid and side shapes,
    measured after the dynamics, added to the match EQ's gains."""
    t0 = time.perf_counter()
    eq = console.master.effects[MATCH] if MATCH in console.master.effects else None
    if not isinstance(eq, MatchEQ):
        return {"method": "none", "reason": f"the master bus has no MatchEQ {MATCH!r}"}
    y = _run(console, pre)
    wide = (-120.0, 120.0)
    dm, ds = match_gains(y, reference.to(y.dtype), sample_rate, eq.centres_hz, mid_range_db=wide,
                         side_range_db=wide)
    mid = eq.p("mid_gain_db").detach().double().cpu() + dm[0].double().cpu()
    side = eq.p("side_gain_db").detach().double().cpu() + ds[0].double().cpu()
    mid, side = mid.clamp(-GAIN_MAX_DB, GAIN_MAX_DB), side.clamp(SIDE_MIN_DB, GAIN_MAX_DB)
    eq.load_values({"mid_gain_db": mid.reshape(eq.p("mid_gain_db").shape),
                    "side_gain_db": side.reshape(eq.p("side_gain_db").shape)})
    return {"method": "the match EQ refined on the master's output",
            "max_change_db": round(float(torch.cat([dm, ds], -1).abs().max()), 3),
            "seconds": round(time.perf_counter() - t0, 3)}


def style_master(console: Console, audio: Tensor, reference: Tensor, sample_rate: int,
                 stage: Stage) -> dict[str, Any]:
    """The stages toward another song's mix on the master bus, in order, each through
    ``stage(name, run)`` (the fit's full-length judge).

    Each stage ends by setting the loudness and crest again (:func:`level_stage`), so it
    is judged at the reference's level. The dynamics stage chooses the compressor or
    expander from a grid (:func:`dynamics_stage`), closes the loop on the output's loudness
    range (:func:`range_stage`) and folds what it moved in the tone back into the match EQ
    (:func:`refine_stage`) before it is judged. The loudness ride then takes the output's
    LRA the rest of the way (:func:`ride_stage`; a broadband gain on the K-weighted
    short-term loudness, which a compressor's level detector does not see). Last, the
    trim (:func:`lra_trim_stage`, ``required``: it keeps or reverts itself by the feature
    bars) lands the LRA that the tone refine's re-levelling moved.

    ``audio``: the stems ``(1, N, C, T)``; ``reference``: ``(1, 2, T')``.
    """
    t0 = time.perf_counter()
    pre = master_input(console, audio).double()
    ref = reference.to(pre.device).double()
    limiter = console.master.effects[LIMITER] if LIMITER in console.master.effects else None
    if isinstance(limiter, Limiter):
        limiter.exact = True

    def then(*runs: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        def all_of() -> dict[str, Any]:
            report = runs[0]()
            for run in runs[1:]:
                report[run.__name__] = run()
            return report

        return all_of

    def level() -> dict[str, Any]:
        return level_stage(console, pre, ref, sample_rate)

    def refine() -> dict[str, Any]:
        return refine_stage(console, pre, ref, sample_rate)

    def loudness_range_loop() -> dict[str, Any]:
        return range_stage(console, pre, ref, sample_rate)

    def dynamics() -> dict[str, Any]:
        return dynamics_stage(console, pre, ref, sample_rate)

    def ride() -> dict[str, Any]:
        return ride_stage(console, pre, ref, sample_rate)

    out: dict[str, Any] = {}
    out["loudness"] = stage("loudness and crest", level)
    out["tone"] = stage("tone and width",
                        then(lambda: tone_width_stage(console, pre, ref, sample_rate), level))
    out["dynamics"] = stage("dynamics", then(dynamics, loudness_range_loop, refine, level))
    out["ride"] = stage("loudness ride", then(ride, refine, level))
    out["refine"] = stage("tone refine", then(refine, level))
    # Judged by the feature bars inside (the objective would trade the range for tone).
    out["lra trim"] = stage("loudness range trim",
                            lambda: lra_trim_stage(console, pre, ref, sample_rate,
                                                   base=equal_loudness_sum(audio, sample_rate)),
                            required=True)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out
