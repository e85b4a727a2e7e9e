"""Console wiring for the mix fit: the closed-form estimate as the console's strips see
the stems, written onto the console (input gains, strip EQ), and the fader polish.

Everything here reads and writes the console through its public surface
(:meth:`~diffmix.console.Console.named_values`, :meth:`~diffmix.console.Console.load_values`,
``mono``, ``track_names``, :meth:`~diffmix.console.Console.solo`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from diffmix.effects.dynamics import Compressor
from diffmix.effects.eq import ParametricEQ
from diffmix.effects.gain import Gain, Pan, Width
from diffmix.functional.gain import db_to_amp, pan_matrix, width_matrix
from diffmix.functional.loudness import integrated_loudness
from diffmix.linalg import nnls
from diffmix.mixing.analysis import band_edges, band_frame_powers, frame_energy, k_weight_power, stft_frames
from diffmix.mixing.solvers import (
    GAIN_DB_RANGE,
    MixEstimate,
    eq_band_response_db,
    estimate_mix,
    fit_eq_bands,
    fit_eq_gains,
    solve_placement,
    solve_tone,
)

if TYPE_CHECKING:
    from diffmix.console import Console



def _strip_scale(console: Console, stems: Tensor) -> Tensor:
    """``(N, 1, 1)``: a mono source carried as two channels reaches the mix through the
    pan law (at the centre each side gets cos(pi/4) of it), which the estimate must see."""
    mono = torch.tensor(list(console.mono))
    return torch.where(mono, math.sqrt(0.5), 1.0).to(stems.dtype).to(stems.device).view(-1, 1, 1)


def console_estimate(
    console: Console,
    stems: Tensor,
    reference: Tensor,
    sample_rate: int,
    *,
    coherent: bool = False,
    lag: int | None = None,
) -> MixEstimate:
    """:func:`estimate_mix` of ``(1, N, C, T)`` stems as the console's strips receive them
    against a ``(1, 2, T')`` reference."""
    return estimate_mix(
        stems[0] * _strip_scale(console, stems),
        reference[0],
        sample_rate,
        coherent=coherent,
        lag=lag,
        mono=list(console.mono),
    )


def _placement_matrices(
    stages: Sequence[tuple[str, object]], pan: Tensor, width: Tensor, mono: bool
) -> Tensor:
    """The strip's pan and width stages (in strip order) as one ``(P, W, 2, 2)`` matrix per
    pair ``(pan[i], width[j])`` of the two axes; a mono item is two equal channels panned by
    the mono law. Each stage's matrices are made once per value of its own axis and
    composed by broadcasting (a grid of 401 x 401 needs 802 of them, not 160,801)."""
    probe = torch.zeros(1, 2, 1, dtype=torch.float64)
    total = torch.eye(2, dtype=torch.float64).expand(1, 1, 2, 2)
    for kind, _ in stages:
        if kind == "pan":
            flags = torch.full((pan.shape[0],), mono) if mono else None
            step = pan_matrix(pan, probe.expand(pan.shape[0], 2, 1), mono_items=flags)[:, None]
        else:
            step = width_matrix(width, probe.expand(width.shape[0], 2, 1))[None, :]
        total = step.to(torch.float64) @ total
    return total.expand(pan.shape[0], width.shape[0], 2, 2)


def stereo_placement(
    console: Console,
    matrix: Tensor,
    one_column: list[bool] | None = None,
    steps: int = 401,
    channel_gram: Tensor | None = None,
) -> dict[str, Tensor]:
    """Each track's input gain, pan and width whose product in the strip best gives its
    channel matrix (from :func:`estimate_mix` with ``coherent``).

    A search over a ``steps x steps`` grid of pan (-1..1) and width (its range), then a
    grid 40 times finer around the best; the gain is the least-squares scale of each
    candidate. The distance between two matrices is the energy of the difference of
    what they make of the stem, ``tr((M - M') C (M - M')^T)`` with ``C`` the stem's
    channel Gram (``channel_gram``; default: the identity): a nearly mono stem's side,
    which the solve barely sees and which carries little of its sound, then cannot pull
    the placement of its mid (where its balance is) off. A mono track's width only scales
    it (or, after the pan, spreads it): among equal fits the one nearest width 1 is kept.

    Args:
        console: the console whose strip holds a :class:`~diffmix.effects.gain.Pan` and/or
            :class:`~diffmix.effects.gain.Width` (other stages are left as they are).
        matrix: ``(N, 2, 2)`` from the estimate (mono stems: column 0, on the stem scaled
            by the mono pan law's centre gain, as :func:`console_estimate` gives it).
        one_column: the stems whose matrix holds column 0 only (their two channels carry
            one signal); default: the console's mono tracks.
        channel_gram: ``(N, 2, 2)`` (:attr:`~diffmix.mixing.solvers.MixEstimate.channel_gram`).

    Returns:
        ``{"gain_db": (N,), "strip.<pan>.pan": (N,), "strip.<width>.width": (N,)}`` as far as
        the strip has them.
    """
    stages = [
        ("pan" if isinstance(e, Pan) else "width", name)
        for name, e in console.strip.effects.items()
        if isinstance(e, (Pan, Width))
    ]
    values = console.named_values()
    w_spec = next((values[f"strip.{n}.width"].spec for k, n in stages if k == "width"), None)
    w_lo, w_hi = (w_spec.min, w_spec.max) if w_spec else (1.0, 1.0)
    has_pan = any(k == "pan" for k, _ in stages)
    out_gain, out_pan, out_width = [], [], []
    for k in range(matrix.shape[0]):
        mono = bool(console.mono[k])
        single = mono or bool(one_column[k] if one_column else False)
        target = matrix[k].double().cpu()
        if single:
            target = target[:, :1] * (math.sqrt(0.5) if mono else 1.0)
            root = torch.ones(1, 1, dtype=torch.float64)
        elif channel_gram is not None:
            # C^(1/2): |(M - M') C^(1/2)|_F^2 is the energy of the difference on the stem
            c = channel_gram[k].double().cpu()
            val, vec = torch.linalg.eigh(0.5 * (c + c.T))
            root = vec @ torch.diag(val.clamp_min(0.0).sqrt()) @ vec.T
            root = root / root.square().sum().sqrt().clamp_min(1e-30)
        else:
            root = torch.eye(2, dtype=torch.float64)
        target = target @ root
        best_p, best_w = 0.0, 1.0
        p_step = 2.0 / (steps - 1) if has_pan else 0.0
        w_step = (w_hi - w_lo) / (steps - 1) if w_spec else 0.0
        for rnd in range(2):
            scale = 1.0 if rnd == 0 else 40.0
            span = steps // 2 if rnd == 0 else 40
            centre_p, centre_w = (0.0, 0.5 * (w_lo + w_hi)) if rnd == 0 else (best_p, best_w)
            offsets = torch.arange(-span, span + 1, dtype=torch.float64) / scale
            still = torch.zeros(1, dtype=torch.float64)  # a stage the strip lacks: its neutral value
            ps = (centre_p + offsets * p_step).clamp(-1, 1) if has_pan else still
            ws = (centre_w + offsets * w_step).clamp(w_lo, w_hi) if w_spec else still + 1.0
            pp, ww = torch.meshgrid(ps, ws, indexing="ij")
            pp, ww = pp.reshape(-1), ww.reshape(-1)
            eff = _placement_matrices(stages, ps, ws, mono).reshape(-1, 2, 2)
            eff = (eff.sum(-1, keepdim=True) if single else eff) @ root  # single: two equal channels in
            num = (eff * target).sum((1, 2))
            den = (eff * eff).sum((1, 2)).clamp_min(1e-30)
            gain = num.clamp_min(0.0) / den
            norm = float(target.square().sum()) or 1.0
            err = (target - gain.view(-1, 1, 1) * eff).square().sum((1, 2)) / norm
            err = err + 1e-6 * (ww - 1.0).square()  # ties (one signal in both channels): width 1
            i = int(torch.argmin(err))
            best_p, best_w, best_g = float(pp[i]), float(ww[i]), float(gain[i])
        out_gain.append(20 * math.log10(max(best_g, 1e-6)))
        out_pan.append(best_p)
        out_width.append(best_w)
    result = {"gain_db": torch.tensor(out_gain, dtype=torch.float64)}
    for kind, name in stages:
        if kind == "pan":
            result[f"strip.{name}.pan"] = torch.tensor(out_pan, dtype=torch.float64)
        else:
            result[f"strip.{name}.width"] = torch.tensor(out_width, dtype=torch.float64)
    return result


def initialise_console(
    console: Console,
    stems: Tensor,
    reference: Tensor,
    sample_rate: int,
    *,
    gain: str = "strip.input.gain_db",
    eq: str = "eq",
    coherent: bool = False,
    estimate: MixEstimate | None = None,
) -> dict[str, object]:
    """Set a console's per-track input gains and strip EQ gains from :func:`estimate_mix`.

    Args:
        console: a :class:`~diffmix.console.Console` whose strip has a gain stage
            (``gain``, a parameter path) and optionally a parametric EQ (effect ``eq``); a
            strip without the gain stage is left as it is.
        stems: ``(1, N, 2, T)`` as given to the console.
        reference: ``(1, 2, T')`` the reference mix.
        sample_rate: Hz.
        coherent: the reference is a mix of these very stems: solve on complex spectra
            (see :func:`estimate_mix`).
        estimate: a :func:`console_estimate` already made (then ``reference`` is unused).

    Returns:
        A summary for the report: the gains set (dB), how much of the reference they
        explain, and the seconds taken.
    """
    t0 = time.perf_counter()
    values = console.named_values()
    if gain not in values:
        return {"method": "none", "reason": f"the strip has no {gain}"}
    est = estimate if estimate is not None else console_estimate(
        console, stems, reference, sample_rate, coherent=coherent
    )
    update = {gain: est.gain_db.to(torch.float64).cpu()}
    placed = {}
    if est.matrix is not None:
        # The stereo image from the channel solve: each track's gain, pan and width (the
        # tone, shared by both channels, goes to the EQ below).
        placed = stereo_placement(console, est.matrix, est.one_column, channel_gram=est.channel_gram)
        lo, hi = GAIN_DB_RANGE
        update[gain] = placed.pop("gain_db").clamp(lo, hi)
        update.update({k: v.view(values[k].exact().shape) for k, v in placed.items()})
    effect = console.strip.effects[eq] if eq in console.strip.effects else None
    if isinstance(effect, ParametricEQ):
        freq = values[f"strip.{eq}.freq_hz"].exact().double()
        q = values[f"strip.{eq}.q"].exact().double()
        lo, hi = values[f"strip.{eq}.gain_db"].spec.min, values[f"strip.{eq}.gain_db"].spec.max
        g = fit_eq_gains(
            est,
            effect.bands,
            freq.to(est.centres_hz.device),
            q.to(est.centres_hz.device),
            sample_rate,
            limit_db=min(12.0, -lo, hi),
        )
        update[f"strip.{eq}.gain_db"] = g.cpu().view(values[f"strip.{eq}.gain_db"].exact().shape)
    console.load_values(update)
    return {
        "method": "nnls",
        "spectra": "complex" if est.coherent else "power",
        "incoherent": [console.track_names[k] for k in est.incoherent]
        if hasattr(console, "track_names")
        else est.incoherent,
        "explained": round(est.explained, 4),
        "lag_samples": est.lag,
        "gain_db": [round(float(v), 2) for v in update[gain]],
        **{k.split(".")[-1]: [round(float(v), 3) for v in placed[k].flatten()] for k in placed},
        "seconds": round(time.perf_counter() - t0, 3),
    }


def eq_band_start(
    console: Console,
    estimate: MixEstimate,
    sample_rate: int,
    *,
    gain: str = "strip.input.gain_db",
    eq: str = "eq",
) -> dict[str, object]:
    """Set each strip EQ's band frequencies, gains and Qs from the tone the closed form
    measured for its stem (:func:`~diffmix.mixing.solvers.fit_eq_bands`); the level the
    tone's normalisation leaves goes to the input gain ``gain``.

    The closed form's EQ keeps the console's band frequencies and fits only the gains: a
    hidden EQ's bands at other frequencies and Qs then leave a tone error, which the
    channels of a stem with different spectra weigh differently (a balance error).

    Returns:
        A summary for the report: per track its bands (Hz, dB, Q) and the weighted rms
        tone error (dB) with the frequencies as they were and as fitted.
    """
    t0 = time.perf_counter()
    values = console.named_values()
    effect = console.strip.effects[eq] if eq in console.strip.effects else None
    if not isinstance(effect, ParametricEQ) or gain not in values:
        return {"method": "none", "reason": f"the strip has no parametric {eq} or no {gain}"}
    n = len(console.mono)
    keys = {k: f"strip.{eq}.{k}" for k in ("freq_hz", "q", "gain_db")}
    now = {k: values[p].exact().double().cpu() for k, p in keys.items()}
    m = len(effect.bands)
    f_spec, q_spec, g_spec = (values[keys[k]].spec for k in ("freq_hz", "q", "gain_db"))
    out = fit_eq_bands(
        estimate,
        effect.bands,
        now["freq_hz"].expand(n, m) if now["freq_hz"].numel() == m else now["freq_hz"].reshape(n, m),
        now["q"].expand(n, m) if now["q"].numel() == m else now["q"].reshape(n, m),
        now["gain_db"].expand(n, m) if now["gain_db"].numel() == m else now["gain_db"].reshape(n, m),
        sample_rate,
        freq_range=(f_spec.min, f_spec.max),
        q_range=(q_spec.min, q_spec.max),
        limit_db=min(12.0, -g_spec.min, g_spec.max),
    )
    update = {}
    for k, p in keys.items():
        shape = values[p].exact().shape
        v = out[k]
        update[p] = v.reshape(shape) if v.numel() == values[p].exact().numel() else v
    lo, hi = GAIN_DB_RANGE
    g_now = values[gain].exact().double().cpu()
    update[gain] = (g_now + out["offset_db"].view(g_now.shape)).clamp(lo, hi)
    console.load_values(update)
    names = list(getattr(console, "track_names", range(n)))
    return {
        "method": "fit_eq_bands",
        "bands": {
            str(names[i]): [
                [round(float(out["freq_hz"][i, j]), 1), round(float(out["gain_db"][i, j]), 2),
                 round(float(out["q"][i, j]), 3)]
                for j in range(m)
            ]
            for i in range(n)
        },
        "tone_rms_db_fixed": [round(float(v), 3) for v in out["rms_fixed_db"]],
        "tone_rms_db": [round(float(v), 3) for v in out["rms_db"]],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def polish_levels(
    console: Console,
    stems: Tensor,
    estimate: MixEstimate,
    sample_rate: int,
    *,
    starts: list[int],
    length: int,
    fader: str = "strip.fader.gain_db",
    limit_db: float = 12.0,
) -> dict[str, object]:
    """After the gradient fit, set each track's loudness back to the closed-form estimate.

    A waveform loss barely sees a track 20 LU under the lead: the gradient fit trades its
    level (through its EQ as much as its gain) for small gains elsewhere, while the
    closed-form estimate resolves it (see :func:`estimate_mix` with ``coherent``). So the
    gradient fit keeps what it is good at (tone, dynamics, pan, width) and the level of
    each track's contribution is re-set on its fader (after the compressor, so the change
    is exactly a gain on the strip): the K-weighted energy of the track rendered alone
    through the fitted console, master included, is brought to the K-weighted energy the
    estimate predicts for it (the stem's band energies times its band gains) on the same
    excerpts.

    Args:
        console: the fitted :class:`~diffmix.console.Console` (its strip has ``fader``).
        stems: ``(1, N, C, T)`` as given to the console.
        estimate: from :func:`estimate_mix` on these stems (as they reach the strip).
        sample_rate: Hz.
        starts, length: the excerpts (samples) on which both energies are measured.
        limit_db: no fader moves by more than this.

    Returns:
        A summary for the report: each fader's change (dB) and the seconds taken.
    """
    t0 = time.perf_counter()
    values = console.named_values()
    if fader not in values:
        return {"method": "none", "reason": f"the strip has no {fader}"}
    edges = band_edges(sample_rate)
    kw = torch.as_tensor(k_weight_power(np.sqrt(edges[:-1] * edges[1:]), sample_rate))
    scale = _strip_scale(console, stems)
    gains = 10 ** (estimate.band_db.double().cpu() / 10)  # power gains per band
    want = torch.zeros(stems.shape[1], dtype=torch.float64)
    have = torch.zeros_like(want)
    with torch.no_grad():
        for s0 in starts:
            piece = stems[..., s0 : s0 + length]
            e_in = band_frame_powers(piece[0] * scale, sample_rate, edges).sum(dim=(1, 3)).cpu()  # (N, nb)
            e_out = band_frame_powers(console.solo(piece), sample_rate, edges).sum(dim=(1, 3)).cpu()
            want += (e_in * gains * kw).sum(1)
            have += (e_out * kw).sum(1)
    live = (want > 0) & (have > 0)
    change = torch.where(live, 10 * torch.log10(want / have.clamp_min(1e-30)), torch.zeros_like(want))
    change = change.clamp(-limit_db, limit_db)
    spec = values[fader].spec
    now = values[fader].exact().double().cpu()
    moved = (now + change.view_as(now)).clamp(spec.min, spec.max)
    console.load_values({fader: moved})
    return {
        "method": "closed-form loudness per track, on the fader",
        "change_db": [round(float(v), 2) for v in change],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def track_loudness(console: Console, stems: Tensor, sample_rate: int) -> Tensor:
    """``(N,)`` float64: the integrated loudness (LUFS, BS.1770 gated) of each track alone
    through the console, master bus included (:meth:`~diffmix.console.Console.solo`), over
    the whole of ``(1, N, C, T)`` stems in one render (pieces would restart every
    compressor); -inf for a silent one. Not differentiable."""
    with torch.no_grad():
        return integrated_loudness(console.solo(stems).double(), sample_rate).cpu()


def hold_levels(
    console: Console,
    stems: Tensor,
    sample_rate: int,
    want_lufs: Tensor,
    *,
    fader: str = "strip.fader.gain_db",
    limit_db: float = 12.0,
    tolerance_db: float = 0.05,
) -> dict[str, object]:
    """Put each track's loudness back where it was before a stage meant to change something
    else (the gradient steps: tone, dynamics, placement).

    ``want_lufs`` is :func:`track_loudness` before that stage. Each fader (after the
    compressor: exactly a gain on the strip) moves by the difference, so the stage keeps its
    tone, dynamics and placement but not the track's level, which the closed-form stages
    measured on the whole song. Loudness is homogeneous in the level, so one move is exact
    through a linear master bus; through a master compressor a second move takes up what
    the first left past ``tolerance_db``. A track silent on either side keeps its fader.

    Returns:
        A summary for the report: each fader's change (dB) and the seconds taken.
    """
    t0 = time.perf_counter()
    values = console.named_values()
    if fader not in values:
        return {"method": "none", "reason": f"the strip has no {fader}"}
    param = values[fader]
    total = torch.zeros(stems.shape[1], dtype=torch.float64)
    for _ in range(2):
        have = track_loudness(console, stems, sample_rate)
        live = torch.isfinite(want_lufs) & torch.isfinite(have)
        off = torch.where(live, want_lufs - have, torch.zeros_like(have))
        if float(off.abs().max()) <= tolerance_db:
            break
        step = (total + off).clamp(-limit_db, limit_db) - total
        now = param.exact().double().cpu()
        console.load_values({fader: (now + step.view_as(now)).clamp(param.spec.min, param.spec.max)})
        total += step
    return {
        "method": "each track's loudness as before, on the fader",
        "change_db": [round(float(v), 2) for v in total],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _frame_window(energy: np.ndarray, frames: int) -> tuple[int, int]:
    """The ``frames``-long run of frames with the most energy: ``(first, end)``."""
    if len(energy) <= frames:
        return 0, len(energy)
    run = np.convolve(energy, np.ones(frames), mode="valid")
    first = int(np.argmax(run))
    return first, first + frames


RATIOS = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
ATTACKS_MS = (1.0, 3.0, 10.0, 30.0)
RELEASES_MS = (30.0, 80.0, 200.0, 500.0)


def _search_compressor(
    seg: Tensor,
    lead: int,
    frames_in: np.ndarray,
    meas: np.ndarray,
    w: np.ndarray,
    top: float,
    effect: Compressor,
    knee: float,
    specs: dict,
    times: tuple[float, float],
    sample_rate: int,
    hop: int,
    window: Tensor,
) -> tuple[float, float, float, float, float, float]:
    """The compressor setting whose frame-wise gain best follows ``meas`` (dB per frame).

    ``seg`` ``(C, S)`` is the compressor's input from ``lead`` samples before the first
    frame (a warm-up); ``frames_in`` its energy per frame, ``w`` each frame's weight and
    ``top`` its loudest frame's level (dB). A candidate's error is the weighted spread of
    ``meas`` less its gain about their weighted mean difference (the constant, which goes
    to a gain after the compressor). Three passes, each keeping the best so far:
    threshold x ratio at ``times`` (ratio 1: none), attack x release x threshold nearby,
    then threshold x ratio again at those times (a wrong time constant is otherwise made
    up by a ratio at the range's edge).

    Returns:
        ``(threshold_db, ratio, attack_ms, release_ms, constant_db, error_db2)``.
    """
    from diffmix.functional.dynamics import compressor

    frames = len(meas)
    wsum = max(float(w.sum()), 1e-30)
    options = dict(effect.options)
    side = None
    if options.get("detector", "peak") == "peak" and options.get("link", "max") == "max" and seg.shape[0] > 1:
        # A peak detector linked by the channels' maximum sets one gain for every channel
        # from max_c |x_c|: the same gain on one channel of sqrt(sum_c x_c^2) has the same
        # energy per frame, at one channel's cost.
        side = seg.abs().amax(0, keepdim=True)
        seg = seg.square().sum(0, keepdim=True).sqrt()

    def score(thr: Tensor, ratio: Tensor, att: Tensor, rel: Tensor) -> tuple[int, float, float]:
        thr = thr.clamp(specs["threshold_db"].min, specs["threshold_db"].max)
        y = compressor(
            seg.expand(len(thr), -1, -1), sample_rate, threshold_db=thr.float(), ratio=ratio.float(),
            knee_db=knee, attack_ms=att.float(), release_ms=rel.float(), **options,
            sidechain=None if side is None else side.expand(len(thr), -1, -1),
        )
        y = y[..., lead:].square()
        # The window over every channel at once: the frames' energy, channels summed.
        kernel = window.to(y.dtype).view(1, 1, -1).expand(1, y.shape[1], -1)
        out = torch.nn.functional.conv1d(y, kernel, stride=hop)[:, 0, :frames]
        cand = 10 * np.log10(np.maximum(out.double().numpy(), 1e-30) / np.maximum(frames_in, 1e-30))
        diff = meas[None, :] - cand
        c = (diff * w).sum(1) / wsum
        err = ((diff - c[:, None]) ** 2 * w).sum(1) / wsum
        i = int(np.argmin(err))
        return i, float(c[i]), float(err[i])

    f64 = torch.float64
    ratios = torch.tensor(RATIOS, dtype=f64).clamp(specs["ratio"].min, specs["ratio"].max)

    def thr_ratio(att: float, rel: float, thr_grid: Tensor) -> tuple:
        tt, rr = torch.meshgrid(thr_grid, ratios, indexing="ij")
        tt = torch.cat([torch.tensor([top], dtype=f64), tt.reshape(-1)])
        rr = torch.cat([torch.tensor([1.0], dtype=f64), rr.reshape(-1)])
        i, c, err = score(tt, rr, torch.full_like(tt, att), torch.full_like(tt, rel))
        return float(tt[i].clamp(specs["threshold_db"].min, specs["threshold_db"].max)), float(rr[i]), c, err

    att, rel = times
    thr, ratio, c, err = thr_ratio(att, rel, torch.arange(top - 30.0, top + 1.0, 3.0, dtype=f64))
    if ratio > 1.0:
        grid = torch.cartesian_prod(
            torch.tensor(ATTACKS_MS, dtype=f64), torch.tensor(RELEASES_MS, dtype=f64),
            torch.tensor([thr - 2.0, thr, thr + 2.0], dtype=f64),
        )
        j, c2, err2 = score(grid[:, 2], torch.full_like(grid[:, 0], ratio), grid[:, 0], grid[:, 1])
        if err2 < err:
            att, rel = float(grid[j, 0]), float(grid[j, 1])
            thr = float(grid[j, 2].clamp(specs["threshold_db"].min, specs["threshold_db"].max))
            c, err = c2, err2
            t3, r3, c3, err3 = thr_ratio(att, rel, torch.arange(thr - 6.0, thr + 6.5, 1.5, dtype=f64))
            if err3 < err:
                thr, ratio, c, err = t3, r3, c3, err3
    return thr, ratio, att, rel, c, err


def _master_input(console: Console, stems: Tensor, until: str | None = None) -> Tensor:
    """``(1, N, C, T)`` stems -> ``(1, 2, T)``: the master bus's input (every strip, placed,
    and the send returns), through the master's stages before ``until`` (all: None), not
    yet moved by ``offset_samples``. One song, without subgroups."""
    parts = console.strip(stems[0])
    n = parts.shape[0]
    mix = (parts * console.direct.to(parts.dtype).view(n, 1, 1)).sum(0, keepdim=True)
    mix = mix + _send_returns(console, parts)
    return console.master(mix, until=until) if until is not None else mix


def master_frame_gain(
    console: Console, stems: Tensor, frame_offset: int = 0, comp: str = "comp"
) -> Tensor | None:
    """The master compressor's gain per frame (amplitude, ``(frames,)``) on the grid of
    :func:`~diffmix.mixing.analysis.stft_frames` from stem sample ``frame_offset``: the
    gain it applies to every track alike (it is keyed by the whole mix). None without a
    master compressor or with subgroups."""
    effect = console.master.effects[comp] if comp in console.master.effects else None
    if not isinstance(effect, Compressor) or console.groups:
        return None
    with torch.no_grad():
        pre = _master_input(console, stems, until=comp)[..., frame_offset:]
        post = effect(pre)
    e_in = frame_energy(pre.double()).sum(-2)[0]
    e_out = frame_energy(post.double()).sum(-2)[0]
    return torch.where(e_in > 0, (e_out / e_in.clamp_min(1e-300)).sqrt(), torch.ones_like(e_in))


def _loudest_run(
    energy: np.ndarray, use: np.ndarray, seconds: float, sample_rate: int, hop: int
) -> tuple[int, int]:
    """The run of ``seconds`` of frames (hop ``hop``) with the most energy among ``use``."""
    return _frame_window(energy * use, max(1, int(seconds * sample_rate / hop)))


def _run_frames(x_pad: Tensor, a: int, b: int, hop: int, window: Tensor) -> np.ndarray:
    """Windowed energy (channels summed) of frames ``a .. b - 1`` of the hop-padded
    ``(C, T)`` signal ``x_pad``, float64: what :func:`_search_compressor` compares with."""
    piece = x_pad[:, a * hop : (b - 1) * hop + window.numel()].square().sum(0).view(1, 1, -1)
    return torch.nn.functional.conv1d(piece, window.view(1, 1, -1), stride=hop)[0, 0].double().numpy()


def _top_level_db(frames: np.ndarray, keep: np.ndarray, window: Tensor) -> float:
    """The loudest kept frame's mean-square level, dB (-120 when none is kept)."""
    level = 10 * np.log10(np.maximum(frames / window.sum().item(), 1e-12))
    return float(np.max(np.where(keep, level, -120.0)))


def compressor_start(
    console: Console,
    stems: Tensor,
    estimate: MixEstimate,
    sample_rate: int,
    *,
    comp: str = "comp",
    fader: str = "strip.fader.gain_db",
    seconds: float = 6.0,
    warm_s: float = 0.5,
) -> dict[str, object]:
    """Start each track's compressor from the gain the mix shows it moving by.

    :func:`estimate_mix` (``coherent``) measures each stem's gain frame by frame against
    its static fit; the master compressor's gain on the current mix
    (:func:`master_frame_gain`, the same for every track) is taken out of it, so a loud
    kick that pumps the master bus is not read as a strip compressor of its own. Each
    track's compressor input (the strip up to ``comp``, with the start's gain and EQ) is
    then run through the strip's own compressor for a grid of settings on the stem's
    loudest ``seconds`` (:func:`_search_compressor`); the frame-wise gain that best follows
    the measured one (energy-weighted, up to a constant, which goes to the fader) is kept.
    A track the mix holds steady keeps ratio 1.

    Returns:
        A summary for the report: each track's threshold, ratio, attack, release, the
        fader change and the fit's RMS error in dB.
    """
    t0 = time.perf_counter()
    effect = console.strip.effects[comp] if comp in console.strip.effects else None
    values = console.named_values()
    if not isinstance(effect, Compressor) or estimate.frame_gain is None or fader not in values:
        return {"method": "none", "reason": "no strip compressor, coherent estimate or fader"}
    n = stems.shape[1]
    size, hop, n_frames = stft_frames(stems.shape[-1] - estimate.frame_offset)
    with torch.no_grad():
        x_in = console.strip(stems[0], until=comp)[..., estimate.frame_offset :].double()
    x_pad = torch.nn.functional.pad(x_in, (hop, hop)).float()
    window = torch.hann_window(size, dtype=torch.float32).square()
    g_meas = estimate.frame_gain.numpy().copy()
    master = master_frame_gain(console, stems, estimate.frame_offset)
    if master is not None:
        m = master.numpy()[: g_meas.shape[1]]
        g_meas[:, : len(m)] /= np.maximum(m, 1e-3)[None, :]
    e_fit = estimate.frame_energy.numpy()
    now = {k: values[f"strip.{comp}.{k}"].exact().double().cpu().clone() for k in
           ("threshold_db", "ratio", "attack_ms", "release_ms")}
    knee = values[f"strip.{comp}.knee_db"].exact().double().cpu()
    specs = {k: values[f"strip.{comp}.{k}"].spec for k in now}
    fade = values[fader].exact().double().cpu().clone()
    summary: dict[str, list[float | None]] = {
        k: [] for k in ("threshold_db", "ratio", "attack_ms", "release_ms", "fader_db", "error_db")
    }
    warm = int(warm_s * sample_rate)
    for k in range(n):
        e = e_fit[k]
        use = (e > 1e-4 * e.max(initial=0.0)) & (g_meas[k] > 0.05) if e.max(initial=0.0) > 0 else e > 1
        a, b = _loudest_run(e, use, seconds, sample_rate, hop)
        s_start = max(0, a * hop - warm)
        seg = x_pad[k, :, s_start : (b - 1) * hop + size]
        if not use[a:b].any() or seg.shape[-1] < size:
            for key in summary:
                summary[key].append(None)
            continue
        frames_in = _run_frames(x_pad[k], a, b, hop, window)
        keep = use[a:b] & (frames_in > 0)
        w = np.sqrt(e[a:b]) * keep
        meas = 20 * np.log10(np.maximum(g_meas[k, a:b], 1e-3))
        top = _top_level_db(frames_in, keep, window)
        times = (float(now["attack_ms"].flatten()[k]), float(now["release_ms"].flatten()[k]))
        thr, ratio, att, rel, c, err = _search_compressor(
            seg, a * hop - s_start, frames_in, meas, w, top, effect,
            float(knee[k]) if knee.ndim else float(knee), specs, times, sample_rate, hop, window,
        )
        for key, v in (("threshold_db", thr), ("ratio", ratio), ("attack_ms", att), ("release_ms", rel)):
            flat = now[key].view(-1)
            flat[k if flat.numel() == n else 0] = min(max(v, specs[key].min), specs[key].max)
        fade.view(-1)[k] += c
        for key, v in (("threshold_db", thr), ("ratio", ratio), ("attack_ms", att), ("release_ms", rel),
                       ("fader_db", c), ("error_db", math.sqrt(err))):
            summary[key].append(round(v, 2))
    # The fader takes each compressor's level change, within its range (a start past it
    # stands at the end; the stage is judged on the whole mix like every other).
    fade = fade.clamp(values[fader].spec.min, values[fader].spec.max)
    console.load_values({f"strip.{comp}.{k}": v for k, v in now.items()} | {fader: fade})
    return {"method": "frame gains (the master's taken out) vs the strip's compressor", **summary,
            "seconds": round(time.perf_counter() - t0, 3)}


def master_compressor_start(
    console: Console,
    stems: Tensor,
    reference: Tensor,
    sample_rate: int,
    *,
    comp: str = "comp",
    gain: str = "gain",
    seconds: float = 6.0,
    warm_s: float = 0.5,
) -> dict[str, object]:
    """Start the master bus's compressor from the gain the reference shows against the
    current mix.

    The master compressor is keyed by the whole mix, so where the strips are right the
    reference is the master's input (:func:`_master_input`, through the master's stages
    before ``comp``) times one gain curve. Its frame-wise gain (the reference's energy over
    the input's, per frame, on the reference's timeline) is fitted by the master's own
    compressor on the mix's loudest ``seconds`` (:func:`_search_compressor`, energy-weighted
    up to a constant, which goes to the master's output gain ``gain``, or to every fader).

    Returns:
        A summary for the report: the threshold, ratio, attack, release, the gain change
        and the fit's RMS error in dB.
    """
    t0 = time.perf_counter()
    effect = console.master.effects[comp] if comp in console.master.effects else None
    if not isinstance(effect, Compressor) or console.groups:
        return {"method": "none", "reason": "no master compressor, or subgroups"}
    values = console.named_values()
    with torch.no_grad():
        pre = console._place(_master_input(console, stems, until=comp))[0].double()  # noqa: SLF001
    t = min(pre.shape[-1], reference.shape[-1])
    pre, ref = pre[:, :t], reference[0, :, :t].double()
    size, hop, _ = stft_frames(t)
    window = torch.hann_window(size, dtype=torch.float32).square()
    e_pre = frame_energy(pre).sum(0).numpy()
    e_ref = frame_energy(ref).sum(0).numpy()
    use = (e_ref > 1e-4 * e_ref.max(initial=0.0)) & (e_pre > 1e-4 * e_pre.max(initial=0.0))
    if not use.any():
        return {"method": "none", "reason": "a silent mix or reference"}
    a, b = _loudest_run(e_ref, use, seconds, sample_rate, hop)
    x_pad = torch.nn.functional.pad(pre, (hop, hop)).float()
    s_start = max(0, a * hop - int(warm_s * sample_rate))
    seg = x_pad[:, s_start : (b - 1) * hop + size]
    frames_in = e_pre[a:b]
    keep = use[a:b]
    w = np.sqrt(e_ref[a:b]) * keep
    meas = 10 * np.log10(np.maximum(e_ref[a:b], 1e-30) / np.maximum(frames_in, 1e-30))
    top = _top_level_db(frames_in, keep, window)
    keys = ("threshold_db", "ratio", "attack_ms", "release_ms")
    specs = {k: values[f"master.{comp}.{k}"].spec for k in keys}
    knee = float(values[f"master.{comp}.knee_db"].exact().flatten()[0])
    att0, rel0 = (float(values[f"master.{comp}.{k}"].exact().flatten()[0]) for k in keys[2:])
    frames_seg = _run_frames(x_pad, a, b, hop, window)
    thr, ratio, att, rel, c, err = _search_compressor(
        seg, a * hop - s_start, frames_seg, meas, w, top, effect, knee, specs, (att0, rel0), sample_rate, hop,
        window,
    )
    update = {}
    for k, v in zip(keys, (thr, ratio, att, rel), strict=True):
        path = f"master.{comp}.{k}"
        v = min(max(v, specs[k].min), specs[k].max)
        update[path] = torch.full_like(values[path].exact().double().cpu(), v)
    target = f"master.{gain}.gain_db" if f"master.{gain}.gain_db" in values else "strip.fader.gain_db"
    update[target] = values[target].exact().double().cpu() + c
    console.load_values(update)
    return {"method": "frame gains of the reference vs the master's input, through the master's compressor",
            "threshold_db": round(thr, 2), "ratio": round(ratio, 2), "attack_ms": round(att, 2),
            "release_ms": round(rel, 2), "gain_db": round(c, 2), "error_db": round(math.sqrt(err), 2),
            "seconds": round(time.perf_counter() - t0, 3)}


def _master_head(console: Console) -> int:
    """How many of the master bus's effects come before its first compressor: the stages
    that treat every signal on its own (the rest depend on the whole mix)."""
    kinds = [isinstance(e, Compressor) for e in console.master.effects.values()]
    return kinds.index(True) if any(kinds) else len(kinds)


def _keyed_master_map(console: Console, key: Tensor, *, start: int = 0) -> Callable[[Tensor], Tensor]:
    """The master bus as the linear, time-varying map it is for the ``(1, 2, T)`` mix
    ``key`` (its gain curves set by the whole mix): a function of ``(B, 2, T)`` signals,
    on the console's timeline. A compressor's gain depends on its detector input only, so
    it is computed once, on the key (a unit input), and multiplies every signal given.
    ``start``: the signals and the key have already been through the master's first
    ``start`` effects."""
    steps: list[Tensor | torch.nn.Module] = []
    for effect in list(console.master.effects.values())[start:]:
        if isinstance(effect, Compressor):
            gain = effect(torch.ones_like(key), sidechain=key)
            steps.append(gain)
            key = key * gain
        else:
            steps.append(effect)
            key = effect(key)

    def run(signals: Tensor) -> Tensor:
        for step in steps:
            signals = signals * step if isinstance(step, Tensor) else step(signals)
        return console._place(signals)  # noqa: SLF001 - the console's own timeline shift

    return run


def _keyed_master(console: Console, signals: Tensor, key: Tensor, *, start: int = 0) -> Tensor:
    """``(B, 2, T)`` signals through the master bus with every compressor keyed by the
    ``(1, 2, T)`` mix ``key`` (:func:`_keyed_master_map`)."""
    return _keyed_master_map(console, key, start=start)(signals)


def _keyed_master_fixed(console: Console, fixed: Tensor, others: Tensor, key: Tensor) -> Tensor:
    """``_keyed_master(console, cat([fixed, others]), key)`` with the master's lead stages
    (before its first compressor) run on ``fixed``, ``others`` and ``key`` apart, through
    the master bus: while a fit keeps the master's renders of the strips' outputs
    (:mod:`diffmix.bus_memo`), ``fixed`` (those outputs, unchanged) is rendered once. The
    same values: those stages treat each signal on its own."""
    head = _master_head(console)
    names = list(console.master.effects)
    if head == 0:
        return _keyed_master(console, torch.cat([fixed, others]), key)
    until = names[head] if head < len(names) else None

    def lead(sig: Tensor) -> Tensor:
        return console.master(sig, until=until)

    return _keyed_master(console, torch.cat([lead(fixed), lead(others)]), lead(key), start=head)


def _track_stages(console: Console, stages: list[str], x: Tensor, k: int) -> Tensor | None:
    """Track ``k``'s ``(1, C, T)`` signal ``x`` through the strip's ``stages`` with its own
    values: a compressor by the functional core on its row of values, the channel
    matrices (width, pan, fader) as the console folds them. None where a stage is
    neither, or a value is not one per track (or shared)."""
    from diffmix.functional.dynamics import compressor

    n = console.tracks
    for name in stages:
        effect = console.strip.effects[name]
        if isinstance(effect, Compressor):
            values = {}
            for key, v in effect.values().items():
                if v.numel() not in (1, n):
                    return None
                values[key] = v.reshape(-1)[k if v.numel() == n else 0].reshape(1)
            x = compressor(x, effect.sample_rate, **values, **effect.options)
        elif hasattr(effect, "channel_matrix"):
            probe = x.new_zeros(n, x.shape[1], 1)
            m = effect.channel_matrix(probe)  # type: ignore[operator]
            x = torch.bmm(m[k if m.shape[0] == n else 0].unsqueeze(0).to(x.dtype), x)
        else:
            return None
    return x


def _send_returns(console: Console, parts: Tensor) -> Tensor:
    """The send buses' returns for the ``(N, 2, T)`` placed tracks: ``(1, 2, T)``."""
    n = parts.shape[0]
    out = parts.new_zeros(1, *parts.shape[1:])
    for name, fx in console.sends.items():
        level = db_to_amp(console.send_levels[name]()).to(parts.dtype).view(n, 1, 1)
        ret = db_to_amp(console.return_levels[name]()).to(parts.dtype).view(1, 1, 1)
        out = out + ret * fx((parts * level).sum(0, keepdim=True))
    return out


def _solve_sends(console: Console, parts: Tensor, reference: Tensor) -> dict[str, list[float]]:
    """Every track's send level to every send bus, by non-negative least squares.

    A send bus is linear in what it is fed (:class:`~diffmix.effects.reverb.Reverb`
    convolves), so its return is ``sum_k a_k ret fx(track_k)`` and, through the master as
    keyed by the current mix, the reference less the dry mix is a non-negative
    combination of each track's return at unit send: its waveform, not only its energy,
    so a reverb's decorrelated tail is told from the dry sound. Sets ``send_db``
    (``20 log10 a``, within its range; ``a = 0``: the range's floor).
    """
    n = parts.shape[0]
    names = list(console.sends)
    if not names:
        return {}
    dry = (parts * console.direct.to(parts.dtype).view(n, 1, 1)).sum(0, keepdim=True)
    key = dry + _send_returns(console, parts)
    cols = []
    for name in names:
        ret = db_to_amp(console.return_levels[name]()).to(parts.dtype).view(1, 1, 1)
        cols.append(_keyed_master(console, ret * console.sends[name](parts), key))  # (N, 2, T)
    z = torch.cat(cols).reshape(len(names) * n, -1).double()
    wet = reference[0, :, : parts.shape[-1]].double() - _keyed_master(console, dry, key)[0].double()
    r = wet.reshape(-1)
    gram, h = (z @ z.T).cpu().numpy(), (z @ r).cpu().numpy()
    d = np.sqrt(np.maximum(np.diag(gram), 1e-300))
    # |z a - r|^2 = |L^T a - L^-1 h|^2 + const with L L^T = gram (columns scaled to unit norm)
    chol = np.linalg.cholesky(gram / np.outer(d, d) + 1e-9 * np.eye(len(d)))
    a, _ = nnls(chol.T, np.linalg.solve(chol, h / d))
    a = a / d
    out = {}
    for j, name in enumerate(names):
        spec = console.send_levels[name].spec
        amp = a[j * n : (j + 1) * n]
        db = np.where(amp > 0, 20 * np.log10(np.maximum(amp, 1e-30)), spec.min).clip(spec.min, spec.max)
        console.load_values({f"sends.{name}.send_db": torch.as_tensor(db)})
        out[name] = [round(float(v), 2) for v in db]
    return out


def placement_resolve(
    console: Console,
    stems: Tensor,
    reference: Tensor,
    sample_rate: int,
    *,
    fader: str = "strip.fader.gain_db",
    max_s: float = 60.0,
    passes: int = 2,
    sends: bool = True,
    before: Tensor | None = None,
) -> dict[str, object]:
    """Re-solve each track's pan, width and fader, and its send levels, on what its strip
    now makes of its stem.

    The first closed form models a strip as a tone and a matrix: a compressor's moving
    gain, the EQ's shape inside an analysis band and the master bus's dynamics are left
    in its residual, which leaks into the placement of a quiet track whose stem is alike
    a loud one's (two kick drums), and it cannot see a reverb send (decorrelated from the
    stems). Here every track's strip output before its width and pan (its gain, EQ and
    compressor as they now are), through the master bus with its dynamics keyed by the
    current mix, is a regressor; the current send returns are taken off the reference;
    the same coherent solve (:func:`~diffmix.mixing.solvers.solve_placement`) then gives
    each track's channel matrix, which :func:`stereo_placement` (weighted by the track's
    channel Gram) turns into width, pan and the fader. Then, with the tracks placed, each
    send level by :func:`_solve_sends`. Everything after the compressor is linear in these
    values, so with the strip's dynamics right the solve is exact.

    Args:
        console: a one-song console whose strip ends in width/pan/gain stages (``fader``
            the last gain), without subgroups.
        stems: ``(1, N, C, T)``; reference: ``(1, 2, T')`` on the console's timeline
            (``offset_samples`` applied to the regressors).
        max_s: at most this many seconds from the start are used.
        passes: the send returns and the master's key depend on the placement and the
            placement's target on the sends: each pass takes them from the last one's.
        sends: also solve the send levels.
        before: the strips' outputs before their first width/pan stage ``(N, C, t)``
            (``t``: the length used) when the caller has them as the console now stands;
            rendered here otherwise.

    Returns:
        A summary for the report: the pans, widths, fader changes, send levels, the share
        explained and the seconds taken.
    """
    t0 = time.perf_counter()
    values = console.named_values()
    names = list(console.strip.effects)
    placing = [isinstance(e, (Pan, Width)) for e in console.strip.effects.values()]
    first = placing.index(True) if any(placing) else None
    tail = names[first:] if first is not None else []
    if (
        first is None
        or console.groups
        or fader not in values
        or not all(isinstance(console.strip.effects[k], (Pan, Width, Gain)) for k in tail)
        or f"strip.{tail[-1]}.gain_db" != fader
    ):
        return {"method": "none", "reason": "needs a strip ending in width/pan and the fader, no groups"}
    n = stems.shape[1]
    t = min(stems.shape[-1], reference.shape[-1], int(max_s * sample_rate))
    x = stems[..., :t]
    spec = values[fader].spec
    start = values[fader].exact().double().cpu().clone()
    send_db: dict[str, list[float]] = {}
    if before is None:
        with torch.no_grad():
            before = console.strip(x[0], until=names[first])  # (N, C, T): before the placement
    y = before.expand(n, 2, t) if before.shape[1] == 1 else before

    def tracks() -> Tensor:
        # The strip's tail (width, pan, fader) on its fixed input: the only stages a pass changes.
        return console.strip(before, start=tail[0])

    for _ in range(passes):
        with torch.no_grad():
            parts = tracks()
            returns = _send_returns(console, parts)
            key = (parts * console.direct.to(parts.dtype).view(n, 1, 1)).sum(0, keepdim=True) + returns
            pre = _keyed_master_fixed(console, y, returns, key)
            z, rest = pre[:n], pre[n]
            target = reference[0, :, :t].to(z.dtype) - rest
            matrix, one_col, chan, explained = solve_placement(
                z * _strip_scale(console, z), target, sample_rate, mono=list(console.mono)
            )
            # A track silent here (e.g. outside an excerpt) shows no placement: it keeps its own.
            # Only compared with a threshold: a norm, not a float64 copy of every track.
            energy = torch.linalg.vector_norm(z, dim=(1, 2), dtype=torch.float64).square()
            silent = (energy <= 1e-9 * energy.max()).cpu()
        placed = stereo_placement(console, matrix, one_col, channel_gram=chan)
        new = placed.pop("gain_db").view_as(start).clamp(spec.min, spec.max)
        now = console.named_values()
        new = torch.where(silent.view_as(new), now[fader].exact().double().cpu().view_as(new), new)
        for k, v in placed.items():
            old = now[k].exact().double().cpu()
            if v.numel() == silent.numel() and old.numel() == v.numel():
                placed[k] = torch.where(silent.view_as(v), old.view_as(v), v)
        console.load_values({fader: new, **{k: v.view(values[k].exact().shape) for k, v in placed.items()}})
        if sends and console.sends:
            with torch.no_grad():
                send_db = _solve_sends(console, tracks(), reference[..., :t])
    return {
        "method": "coherent solve on the strips' outputs before the placement; sends by NNLS",
        "explained": round(explained, 4),
        **{k.split(".")[-1]: [round(float(v), 3) for v in placed[k].flatten()] for k in placed},
        "fader_change_db": [round(float(v), 2) for v in (new - start).flatten()],
        "send_db": send_db,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def compressor_refine(
    console: Console,
    stems: Tensor,
    reference: Tensor,
    sample_rate: int,
    *,
    comp: str = "comp",
    fader: str = "strip.fader.gain_db",
    max_s: float = 60.0,
    seconds: float = 6.0,
    size: int = 1024,
    hop: int = 256,
) -> dict[str, object]:
    """Re-fit each strip's compressor on what the reference shows of its track, frame by
    short frame, then the placement.

    :func:`compressor_start` reads a track's gain off the closed form's 93 ms frames,
    against the stem as given: at that resolution a kick compressor's attack (1 ms or
    30 ms) and its ratio trade, and its tone and placement are not yet known. Here, with
    everything placed, each track's share of the reference is the reference less every
    other track's contribution (through the master bus keyed by the current mix, with the
    send returns), and its gain against the track's compressor input is measured on
    ``size``-sample frames (hop ``hop``; 23 ms and 6 ms at 44.1 kHz), with the master's
    gain on the track taken out; the strip's own compressor is then fitted to it
    (:func:`_search_compressor`) on the track's loudest ``seconds``, and its fader moves so
    that the compressor's output keeps its energy (the track's level is the earlier stages'
    measure; the search's constant would read the other tracks' residual as level). Tracks
    in order of loudness, each with the others as now set; then pan, width and fader once
    more (:func:`placement_resolve`, one pass, no sends).

    Returns:
        A summary for the report: per track the threshold, ratio, attack, release, fader
        change and the fit's rms error (dB), and the placement's summary.
    """
    t0 = time.perf_counter()
    effect = console.strip.effects[comp] if comp in console.strip.effects else None
    values = console.named_values()
    if not isinstance(effect, Compressor) or fader not in values or console.groups:
        return {"method": "none", "reason": "no strip compressor or fader, or subgroups"}
    n = stems.shape[1]
    t = min(stems.shape[-1], reference.shape[-1], int(max_s * sample_rate))
    x = stems[0, ..., :t]
    ref = reference[0, :, :t].double()
    window = torch.hann_window(size, dtype=torch.float32).square()
    keys = ("threshold_db", "ratio", "attack_ms", "release_ms")
    specs = {k: values[f"strip.{comp}.{k}"].spec for k in keys}
    knee = values[f"strip.{comp}.knee_db"].exact().double().cpu()

    def frames(sig: Tensor) -> np.ndarray:  # (C, t) -> energy per short frame, channels summed
        pad = torch.nn.functional.pad(sig.float(), (hop, hop))
        return _run_frames(pad, 0, (pad.shape[-1] - size) // hop + 1, hop, window)

    names = list(console.strip.effects)
    rest = names[names.index(comp):]  # the compressor and the stages after it: all this stage changes
    head = _master_head(console)
    lead = list(console.master.effects.values())[:head]
    direct = console.direct.view(n, 1, 1)

    after = rest[1] if len(rest) > 1 else None  # the strip's stage after the compressor

    def from_after(sig: Tensor, until: str | None = None) -> Tensor:  # the stages after it, to ``until``
        return sig if after is None else console.strip(sig, start=after, until=until)

    def master_lead(sig: Tensor) -> Tensor:  # the master's stages before its first compressor
        for effect in lead:
            sig = effect(sig)
        return sig

    def mix_of(parts: Tensor, rows: list[int]) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor], Tensor]:
        """From the strips' outputs ``parts``: the master's lead stages on the dry shares
        of ``rows`` and on the key (the whole mix with the send returns), the keyed
        master (:func:`_keyed_master_map`) and the mix it gives ``(1, 2, t)``. The master
        after its lead is linear for a given key: the mix is the key through it, and a
        track's contribution its dry share's lead through it."""
        returns = _send_returns(console, parts)
        dry = parts * direct.to(parts.dtype)
        key = dry.sum(0, keepdim=True) + returns
        fresh = master_lead(torch.cat([dry[rows], key]))
        keyed = _keyed_master_map(console, fresh[-1:], start=head)
        return fresh[:-1], fresh[-1:], keyed, keyed(fresh[-1:])

    with torch.no_grad():
        # What each compressor gets (the stages before it do not change here), what it
        # gives now, and each strip's output: tracks change one at a time, so each is
        # rendered again on its own (_track_stages) where the strip allows.
        pre = console.strip(x, until=comp)
        comped = console.strip(pre, start=comp, until=after)
        parts = from_after(comped)
        lead_dry, _, keyed, mix = mix_of(parts, list(range(n)))
        energy = keyed(lead_dry).double().square().sum((1, 2))
    order = np.argsort([-float(v) for v in energy])
    summary: dict[str, list[float | None]] = {k: [None] * n for k in (*keys, "fader_db", "error_db")}
    resid = float((ref - mix[0].double()).square().sum())
    for k in order.tolist():
        with torch.no_grad():
            own = keyed(lead_dry[k : k + 1])[0].double()
            target = ref - mix[0].double() + own
            # ... on the mix's timeline (track k's output is read before its own compressor changes).
            y, post = console._place(pre[k : k + 1])[0], console._place(comped[k : k + 1])[0]  # noqa: SLF001
        # The gain the reference shows on the track against the model's: the compressor's
        # gain now plus what the model's share misses (the master's keyed gain, the placement
        # and the fader are in both, so they cancel).
        e_out, e_t, e_y = frames(own), frames(target), frames(y.double())
        live = (e_out > 1e-6 * e_out.max(initial=0.0)) & (e_y > 1e-6 * e_y.max(initial=0.0)) & (e_t > 0)
        if not live.any():
            continue
        g_now = 10 * np.log10(np.maximum(frames(post.double()), 1e-30) / np.maximum(e_y, 1e-30))
        meas = 10 * np.log10(np.maximum(e_t, 1e-30) / np.maximum(e_out, 1e-30)) + g_now
        a, b = _loudest_run(e_out, live, seconds, sample_rate, hop)
        y_pad = torch.nn.functional.pad(y.float(), (hop, hop))
        seg = y_pad[:, a * hop : (b - 1) * hop + size]
        keep = live[a:b]
        w = np.sqrt(e_out[a:b]) * keep
        frames_in = e_y[a:b]
        top = _top_level_db(frames_in, keep, window)
        now = {key: values[f"strip.{comp}.{key}"].exact().double().cpu().clone() for key in keys}
        times = (float(now["attack_ms"].view(-1)[k if now["attack_ms"].numel() == n else 0]),
                 float(now["release_ms"].view(-1)[k if now["release_ms"].numel() == n else 0]))
        knee_k = float(knee.view(-1)[k if knee.numel() == n else 0])
        thr, ratio, att, rel, _constant, err = _search_compressor(
            seg, 0, frames_in, meas[a:b], w, top, effect, knee_k, specs, times, sample_rate, hop, window,
        )
        update = {}
        for key, v in zip(keys, (thr, ratio, att, rel), strict=True):
            shared = now[key].numel() != n  # one value for every track: now one each
            full = now[key].reshape(-1).expand(n).clone() if shared else now[key].reshape(-1).clone()
            full[k] = min(max(v, specs[key].min), specs[key].max)
            update[f"strip.{comp}.{key}"] = full if shared else full.view(now[key].shape)
        keep_now = {p: values[p].exact().double().cpu().clone() for p in (*update, fader)}
        console.load_values(update)
        # Kept only where the mix's waveform error goes down: a quiet track's share carries
        # the louder ones' errors. Only track k's strip changed: it alone is rendered again
        # from its compressor on, then the sends, the key and the master.
        with torch.no_grad():
            comp_k = _track_stages(console, rest[:1], pre[k : k + 1], k)
            if comp_k is None:  # a strip the per-track path does not cover
                comp_k = console.strip(pre, start=comp, until=after)[k : k + 1]
            # The track's level stays where the earlier stages measured it (its compressor's
            # output keeps its energy): the search's constant is the mean of frame
            # gains read off the reference less the other tracks, so every other track's
            # residual energy adds to it, and a quiet track's share is mostly that residual
            # (BENCHMARKS.md, Mixing, session 16). This stage fits the compressor's shape.
            level = 10 * math.log10(max(float(comped[k].double().square().sum()), 1e-30)
                                    / max(float(comp_k.double().square().sum()), 1e-30))
            fade = keep_now[fader].clone()
            spec = values[fader].spec
            fade.view(-1)[k] = min(max(float(fade.view(-1)[k]) + level, spec.min), spec.max)
            console.load_values({fader: fade})
            part_k = _track_stages(console, rest[1:], comp_k, k)
            if part_k is None:
                part_k = from_after(comp_k.expand(n, -1, -1))[k : k + 1]
            old = parts[k].clone()
            parts[k] = part_k[0]
            lead_k, _, keyed_k, mix_k = mix_of(parts, [k])
        new_resid = float((ref - mix_k[0].double()).square().sum())
        if new_resid >= resid:
            parts[k] = old
            console.load_values(keep_now)
            continue
        comped[k], lead_dry[k] = comp_k[0], lead_k[0]
        keyed, mix, resid = keyed_k, mix_k, new_resid
        values = console.named_values()
        found = (thr, ratio, att, rel, level, math.sqrt(err))
        for key, v in zip((*keys, "fader_db", "error_db"), found, strict=True):
            summary[key][k] = round(v, 2)
    placing = [isinstance(console.strip.effects[name], (Pan, Width)) for name in names]
    first = placing.index(True) if any(placing) else 0
    before = None
    if first > names.index(comp):  # the strips before their placement, as now set: from the compressor on
        with torch.no_grad():
            before = from_after(comped, until=names[first])
    placed = placement_resolve(console, stems, reference, sample_rate, fader=fader, max_s=max_s, passes=1,
                               sends=False, before=before)
    return {"method": "short-frame gains of each track's share of the reference vs its compressor",
            **summary, "placement": placed, "seconds": round(time.perf_counter() - t0, 3)}


def eq_refine(
    console: Console,
    stems: Tensor,
    reference: Tensor,
    sample_rate: int,
    *,
    eq: str = "eq",
    gain: str = "strip.input.gain_db",
    fader: str = "strip.fader.gain_db",
    max_s: float = 60.0,
    passes: int = 2,
) -> dict[str, object]:
    """Re-measure each strip's tone on its output and refit its EQ to it, then the placement.

    The closed form measures a stem's tone against the stem as given, so a compressor's
    moving gain (on the strip or on the master bus) is read as tone: a kick whose attack
    is pressed harder than its tail looks duller than its EQ made it, and through a loud
    stem's tone error its residual leaks into a quiet one alike it (two kick drums). Here,
    with the dynamics as the earlier stages set them, every strip's output before its
    placement, through the master bus keyed by the current mix, is a regressor (as in
    :func:`placement_resolve`; the send returns taken off the reference); the coherent
    solve (:func:`~diffmix.mixing.solvers.solve_tone`) gives the tone left on each output,
    the EQ is refitted (:func:`~diffmix.mixing.solvers.fit_eq_bands`, the EQ as it is among
    its starts) to its own band response plus that tone, the level its fit leaves goes
    to the input gain ``gain``, and each track's pan, width and fader are re-solved
    (:func:`placement_resolve`, one pass, no sends). The EQ sits before the compressor,
    which passes only part of a change: ``passes`` rounds.

    Returns:
        A summary for the report: per pass the weighted rms tone left (dB, per track), and
        the last placement's summary.
    """
    t0 = time.perf_counter()
    values = console.named_values()
    effect = console.strip.effects[eq] if eq in console.strip.effects else None
    names = list(console.strip.effects)
    placing = [isinstance(e, (Pan, Width)) for e in console.strip.effects.values()]
    if not isinstance(effect, ParametricEQ) or gain not in values or not any(placing) or console.groups:
        return {"method": "none", "reason": f"needs a parametric {eq}, {gain}, a width/pan stage, no groups"}
    first = names[placing.index(True)]
    n = stems.shape[1]
    t = min(stems.shape[-1], reference.shape[-1], int(max_s * sample_rate))
    x = stems[..., :t]
    keys = {k: f"strip.{eq}.{k}" for k in ("freq_hz", "q", "gain_db")}
    m = len(effect.bands)
    f_spec, q_spec, g_spec = (values[keys[k]].spec for k in ("freq_hz", "q", "gain_db"))
    left: list[list[float]] = []
    placed: dict[str, object] = {}
    with torch.no_grad():
        before = console.strip(x[0], until=first)  # the strips before their placement
    for _ in range(passes):
        with torch.no_grad():
            y = before.expand(n, 2, t) if before.shape[1] == 1 else before
            parts = console.strip(y, start=first)
            returns = _send_returns(console, parts)
            key = (parts * console.direct.to(parts.dtype).view(n, 1, 1)).sum(0, keepdim=True) + returns
            pre = _keyed_master_fixed(console, y, returns, key)
            z, rest = pre[:n], pre[n]
            tone, share, centres, _ = solve_tone(
                z * _strip_scale(console, z), reference[0, :, :t].to(z.dtype) - rest, sample_rate,
                mono=list(console.mono),
            )
        values = console.named_values()
        now = {}
        for k, p in keys.items():
            v = values[p].exact().double().cpu()
            now[k] = v.expand(n, m) if v.numel() == m else v.reshape(n, m)
        target = eq_band_response_db(
            effect.bands, now["freq_hz"], now["q"], now["gain_db"], centres, sample_rate
        )
        est = MixEstimate(
            gain_db=torch.zeros(n, dtype=torch.float64), band_db=torch.zeros_like(target), weight=share,
            centres_hz=centres, explained=0.0, coherent=True, tone_db=target + tone,
        )
        out = fit_eq_bands(
            est, effect.bands, now["freq_hz"], now["q"], now["gain_db"], sample_rate,
            freq_range=(f_spec.min, f_spec.max), q_range=(q_spec.min, q_spec.max),
            limit_db=min(12.0, -g_spec.min, g_spec.max),
        )
        update = {}
        for k, p in keys.items():
            shape = values[p].exact().shape
            update[p] = out[k].reshape(shape) if out[k].numel() == values[p].exact().numel() else out[k]
        lo, hi = GAIN_DB_RANGE
        g_now = values[gain].exact().double().cpu()
        update[gain] = (g_now + out["offset_db"].view(g_now.shape)).clamp(lo, hi)
        console.load_values(update)
        left.append([round(float(v), 3) for v in (share * tone.square()).sum(1).sqrt()])
        with torch.no_grad():  # with the new EQ: the placement's regressors, and the next pass's
            before = console.strip(x[0], until=first)
        placed = placement_resolve(console, stems, reference, sample_rate, fader=fader, max_s=max_s, passes=1,
                                   sends=False, before=before)
    return {
        "method": "tone on the strips' outputs, EQ refitted to it; placement again",
        "tone_left_rms_db": left,
        "placement": placed,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def send_resolve(
    console: Console,
    stems: Tensor,
    reference: Tensor,
    sample_rate: int,
    *,
    fader: str = "strip.fader.gain_db",
    max_s: float = 60.0,
) -> dict[str, object]:
    """Every send level by NNLS on the tracks as now placed (:func:`_solve_sends`), then
    the placement once more with those returns taken off the reference, then the sends
    again (:func:`placement_resolve` with one pass).

    A stage of its own, after :func:`placement_resolve` without sends: the send solve
    fits the reference's waveform, and where the strips' dynamics are still off it can
    take up their residual with a reverb tail that a spectral loss hears as added decay;
    judged apart, such sends are dropped without dropping the placement.

    Args and Returns: as :func:`placement_resolve` (``first_send_db``: the first solve's).
    """
    if not console.sends:
        return {"method": "none", "reason": "the console has no send bus"}
    t = min(stems.shape[-1], reference.shape[-1], int(max_s * sample_rate))
    with torch.no_grad():
        first = _solve_sends(console, console.strip(stems[0, ..., :t]), reference[..., :t])
    report = placement_resolve(console, stems, reference, sample_rate, fader=fader, max_s=max_s, passes=1)
    return {**report, "first_send_db": first}
