"""The console: 8 stereo tracks x 30 s through strips and a master bus, against dasp-pytorch
and pedalboard.

Workload (issue 7, workload 1): every track runs input gain, a 6-band parametric EQ (low
shelf, 4 peaks, high shelf; diffmix's ``fft`` mode), a compressor and a pan; the tracks are
summed and the master bus runs a 3-band EQ, a compressor and a true-peak limiter. Timed
forward (no autograd) and forward+backward (a loss on the mix, gradients to every
parameter).

The peers run the closest chain they can express, on the same signals and settings:

* dasp-pytorch: ``gain`` -> ``parametric_eq`` (its fixed 6-band EQ) -> ``compressor`` per
  track (tracks in the batch axis), ``stereo_panner`` on each track's mid (it only pans
  mono sources), sum, master ``parametric_eq`` (6 bands, 3 left flat) -> ``compressor`` ->
  a 20:1, 0.1 ms compressor standing in for the limiter it lacks. It ignores release times.
* pedalboard (compiled C++, not differentiable; forward only): ``Gain``, ``LowShelfFilter``,
  4 ``PeakFilter``, ``HighShelfFilter``, ``Compressor`` per track, a constant-power pan as
  numpy gains, sum, then ``LowShelfFilter``/``PeakFilter``/``HighShelfFilter``,
  ``Compressor`` and ``Limiter``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from benchmarks._timing import fmt_s, median_time, table
from diffmix.checks import input_checks
from diffmix.console import Console
from diffmix.effects.dynamics import Compressor, Limiter
from diffmix.effects.eq import ParametricEQ
from diffmix.effects.gain import Gain, Pan

TITLE = "Console: 8 stereo tracks x 30 s at 44.1 kHz, strips + master bus"
SR = 44100
TRACKS = 8
STRIP_BANDS = ["low_shelf", "peak", "peak", "peak", "peak", "high_shelf"]
STRIP_FREQS = [100.0, 300.0, 1000.0, 3000.0, 6000.0, 10000.0]
STRIP_GAINS = [2.0, -3.0, 1.5, -2.0, 2.5, 3.0]
MASTER_BANDS = ["low_shelf", "peak", "high_shelf"]
MASTER_FREQS = [100.0, 1000.0, 8000.0]
MASTER_GAINS = [1.0, -1.0, 1.5]
Q = 0.707
TRACK_GAIN_DB = -6.0
COMP = dict(threshold_db=-18.0, ratio=3.0, attack_ms=5.0, release_ms=100.0, knee_db=6.0)
MASTER_COMP = dict(threshold_db=-12.0, ratio=2.0, attack_ms=20.0, release_ms=200.0, knee_db=6.0)
CEILING_DB = -1.0
PANS = [-0.8, -0.5, -0.2, 0.0, 0.1, 0.3, 0.6, 0.9]  # diffmix's -1..1 convention


def stems(tracks: int, seconds: float, device: str = "cpu") -> torch.Tensor:
    """Music-like stereo stems ``(1, tracks, 2, T)``: noise under tremolos and bursts."""
    n = int(seconds * SR)
    g = torch.Generator().manual_seed(7)
    t = torch.arange(n) / SR
    out = []
    for k in range(tracks):
        rate = 1.0 + 0.7 * k
        env = 0.05 + 0.3 * (0.5 + 0.5 * torch.sin(2 * math.pi * rate * t)) ** 2
        env = env + 0.4 * torch.exp(-((t * (1 + k % 3)) % 1.0) * 25.0)
        x = env * torch.randn(2, n, generator=g)
        out.append(x)
    return torch.stack(out).unsqueeze(0).float().to(device)


def build_console(tracks: int, device: str = "cpu") -> Console:
    strip = {
        "input": Gain(SR, gain_db=TRACK_GAIN_DB),
        "eq": ParametricEQ(
            SR, bands=STRIP_BANDS, freq_hz=STRIP_FREQS, gain_db=STRIP_GAINS, q=[Q] * 6, mode="fft"
        ),
        "comp": Compressor(SR, **COMP),
        "pan": Pan(SR),
    }
    master = {
        "eq": ParametricEQ(
            SR, bands=MASTER_BANDS, freq_hz=MASTER_FREQS, gain_db=MASTER_GAINS, q=[Q] * 3, mode="fft"
        ),
        "comp": Compressor(SR, **MASTER_COMP),
        "limiter": Limiter(SR, ceiling_db=CEILING_DB),
    }
    console = Console(SR, tracks, strip, master)
    console.load_values({"strip.pan.pan": torch.tensor(PANS[:tracks], dtype=torch.float64)})
    return console.to(device)


def _diffmix(console: Console, x: torch.Tensor, grad: bool) -> None:
    with input_checks(False), torch.set_grad_enabled(grad):
        if grad:
            console.zero_grad(set_to_none=True)
            console.select(["*"])
        y = console(x)
        if grad:
            y.square().mean().backward()


def _dasp_params(tracks: int, device: str, grad: bool) -> dict[str, torch.Tensor]:
    def p(values):  # noqa: ANN001, ANN202
        return torch.tensor(values, dtype=torch.float32, device=device).requires_grad_(grad)

    n = tracks
    out = {"gain": p([TRACK_GAIN_DB] * n), "pan": p([(v + 1) / 2 for v in PANS[:n]])}
    names = ["low_shelf", "band0", "band1", "band2", "band3", "high_shelf"]
    for name, f, gdb in zip(names, STRIP_FREQS, STRIP_GAINS, strict=True):
        out[f"{name}_gain_db"] = p([gdb] * n)
        out[f"{name}_cutoff_freq"] = p([f] * n)
        out[f"{name}_q_factor"] = p([Q] * n)
    for k in ("threshold_db", "ratio", "attack_ms", "release_ms", "knee_db"):
        out["c_" + k] = p([COMP[k]] * n)
    out["c_makeup"] = p([0.0] * n)
    master_f = [MASTER_FREQS[0], MASTER_FREQS[1], 2000.0, 4000.0, 6000.0, MASTER_FREQS[2]]
    master_g = [MASTER_GAINS[0], MASTER_GAINS[1], 0.0, 0.0, 0.0, MASTER_GAINS[2]]
    for name, f, gdb in zip(names, master_f, master_g, strict=True):
        out[f"m_{name}_gain_db"] = p([gdb])
        out[f"m_{name}_cutoff_freq"] = p([f])
        out[f"m_{name}_q_factor"] = p([Q])
    for k in ("threshold_db", "ratio", "attack_ms", "release_ms", "knee_db"):
        out["mc_" + k] = p([MASTER_COMP[k]])
    out["mc_makeup"] = p([0.0])
    out["l_threshold"], out["l_ratio"], out["l_attack"] = p([CEILING_DB]), p([20.0]), p([0.1])
    out["l_release"], out["l_knee"], out["l_makeup"] = p([80.0]), p([0.5]), p([0.0])
    return out


def _dasp(x: torch.Tensor, grad: bool) -> None:
    import dasp_pytorch.functional as D

    _, n, c, t = x.shape
    p = _dasp_params(n, str(x.device), grad)
    names = ["low_shelf", "band0", "band1", "band2", "band3", "high_shelf"]
    with torch.set_grad_enabled(grad):
        y = D.gain(x[0], SR, p["gain"])
        y = D.parametric_eq(
            y, SR, *[p[f"{b}_{k}"] for b in names for k in ("gain_db", "cutoff_freq", "q_factor")]
        )
        y = D.compressor(
            y,
            SR,
            *[p["c_" + k] for k in ("threshold_db", "ratio", "attack_ms", "release_ms", "knee_db", "makeup")],
        )
        y = D.stereo_panner(y.mean(1).unsqueeze(0), SR, p["pan"])  # (1, 2, tracks, T)
        mix = y.sum(2)
        mix = D.parametric_eq(
            mix, SR, *[p[f"m_{b}_{k}"] for b in names for k in ("gain_db", "cutoff_freq", "q_factor")]
        )
        mix = D.compressor(
            mix,
            SR,
            *[
                p["mc_" + k]
                for k in ("threshold_db", "ratio", "attack_ms", "release_ms", "knee_db", "makeup")
            ],
        )
        mix = D.compressor(
            mix, SR, p["l_threshold"], p["l_ratio"], p["l_attack"], p["l_release"], p["l_knee"], p["l_makeup"]
        )
        if grad:
            mix.square().mean().backward()


def _pedalboard_boards():
    import pedalboard as pb

    strips = []
    for _ in range(TRACKS):
        fx = [pb.Gain(gain_db=TRACK_GAIN_DB), pb.LowShelfFilter(STRIP_FREQS[0], STRIP_GAINS[0], Q)]
        fx += [pb.PeakFilter(f, g, Q) for f, g in zip(STRIP_FREQS[1:5], STRIP_GAINS[1:5], strict=True)]
        fx += [pb.HighShelfFilter(STRIP_FREQS[5], STRIP_GAINS[5], Q)]
        fx += [
            pb.Compressor(
                threshold_db=COMP["threshold_db"],
                ratio=COMP["ratio"],
                attack_ms=COMP["attack_ms"],
                release_ms=COMP["release_ms"],
            )
        ]
        strips.append(pb.Pedalboard(fx))
    master = pb.Pedalboard(
        [
            pb.LowShelfFilter(MASTER_FREQS[0], MASTER_GAINS[0], Q),
            pb.PeakFilter(MASTER_FREQS[1], MASTER_GAINS[1], Q),
            pb.HighShelfFilter(MASTER_FREQS[2], MASTER_GAINS[2], Q),
            pb.Compressor(
                threshold_db=MASTER_COMP["threshold_db"],
                ratio=MASTER_COMP["ratio"],
                attack_ms=MASTER_COMP["attack_ms"],
                release_ms=MASTER_COMP["release_ms"],
            ),
            pb.Limiter(threshold_db=CEILING_DB, release_ms=80.0),
        ]
    )
    theta = (np.asarray(PANS[:TRACKS]) + 1) * np.pi / 4
    pans = np.stack([np.cos(theta), np.sin(theta)], 1).astype(np.float32)[:, :, None] * math.sqrt(2)
    return strips, master, pans


def _pedalboard(x: np.ndarray, boards) -> None:  # noqa: ANN001
    strips, master, pans = boards
    mix = np.zeros_like(x[0])
    for k, board in enumerate(strips):
        mix += board(x[k], SR, reset=True) * pans[k]
    master(mix, SR, reset=True)


def stage_profile(console: Console, x: torch.Tensor) -> list[list[str]]:
    """Forward time of each stage of the console on ``x`` (no autograd), after a warm-up.

    Where the time goes decides what to optimise; the limiter is also shown with
    ``exact=False`` (the smooth version fits use) beside its default exact render.
    """
    import time

    rows, total = [], 0.0
    s, n, c, t = x.shape
    tail = console._matrix_tail()
    with input_checks(False), torch.no_grad():
        console(x)
        y = x.reshape(s * n, c, t)
        for name, fx in console.strip.effects.items():
            if name in tail:
                break
            t0 = time.perf_counter()
            y = fx(y)
            dt = time.perf_counter() - t0
            total += dt
            rows.append([f"strip.{name}", fmt_s(dt)])
        # The console folds the strip's trailing channel matrices (here the pan) into the
        # track sum: one (2, tracks x 2) @ (tracks x 2, T) product.
        t0 = time.perf_counter()
        m = console.strip.effects[tail[0]].channel_matrix(y) if tail else None
        if m is not None:
            mm = m.expand(s * n, 2, y.shape[1]).view(s, n, 2, -1).permute(0, 2, 1, 3).reshape(s, 2, -1)
            m = torch.bmm(mm, y.reshape(s, -1, t))
        else:
            m = y.view(s, n, 2, t).sum(1)
        dt = time.perf_counter() - t0
        total += dt
        rows.append([f"strip.{tail[0] if tail else '(none)'} + track sum (one product)", fmt_s(dt)])
        for name, fx in console.master.effects.items():
            t0 = time.perf_counter()
            out = fx(m)
            dt = time.perf_counter() - t0
            total += dt
            rows.append([f"master.{name}", fmt_s(dt)])
            if name == "limiter":
                smooth = Limiter(SR, ceiling_db=CEILING_DB, exact=False)
                t0 = time.perf_counter()
                smooth(m)
                rows.append(["master.limiter (exact=False)", fmt_s(time.perf_counter() - t0)])
            m = out
    return rows + [["total (exact limiter)", fmt_s(total)]]


def run(quick: bool) -> str:
    seconds = 3.0 if quick else 30.0
    repeat = 1 if quick else 3
    torch.manual_seed(0)
    x = stems(TRACKS, seconds)
    console = build_console(TRACKS)
    times: dict[str, float] = {}
    warm = 1 if quick else 2
    times["diffmix fwd"] = median_time(lambda: _diffmix(console, x, False), repeat=repeat, warmup=warm)
    times["diffmix fwd+bwd"] = median_time(
        lambda: _diffmix(console, x, True), repeat=repeat, warmup=warm
    )
    # Every implementation gets the same untimed full-length warm-ups and a median of
    # `repeat` runs: the first calls also pay first touch of fresh memory (the first ~1 s more
    # on this VM, the second still some).
    times["dasp fwd"] = median_time(lambda: _dasp(x, False), repeat=repeat, warmup=warm)
    times["dasp fwd+bwd"] = median_time(lambda: _dasp(x, True), repeat=repeat, warmup=warm)
    xn = x[0].numpy()
    boards = _pedalboard_boards()
    times["pedalboard fwd"] = median_time(lambda: _pedalboard(xn, boards), repeat=max(repeat, 3))
    audio_s = seconds  # one mix of `seconds` seconds per call
    rows = [
        [
            "diffmix",
            fmt_s(times["diffmix fwd"]),
            fmt_s(times["diffmix fwd+bwd"]),
            f"{audio_s / times['diffmix fwd']:.0f}x",
            f"{audio_s / times['diffmix fwd+bwd']:.0f}x",
        ],
        [
            "dasp-pytorch",
            fmt_s(times["dasp fwd"]),
            fmt_s(times["dasp fwd+bwd"]),
            f"{audio_s / times['dasp fwd']:.1f}x",
            f"{audio_s / times['dasp fwd+bwd']:.1f}x",
        ],
        [
            "pedalboard (C++, no gradients)",
            fmt_s(times["pedalboard fwd"]),
            "n/a",
            f"{audio_s / times['pedalboard fwd']:.0f}x",
            "n/a",
        ],
    ]
    bwd_vs_dasp = times["dasp fwd+bwd"] / times["diffmix fwd+bwd"]
    fwd_vs_dasp = times["dasp fwd"] / times["diffmix fwd"]
    fwd_vs_pb = times["pedalboard fwd"] / times["diffmix fwd"]
    lines = [
        f"{TRACKS} stereo tracks x {seconds:g} s at {SR} Hz (one mix per call). Strip: gain, "
        "6-band EQ (fft mode), compressor, pan; master: 3-band EQ, compressor, true-peak limiter. "
        "Real-time factor = seconds of mix per second of wall time.",
        "",
        table(rows, ["engine", "forward", "forward+backward", "RT forward", "RT fwd+bwd"]),
        "",
        table(
            [
                [
                    "forward+backward: dasp / diffmix",
                    f"{bwd_vs_dasp:.1f}x",
                    ">= 20x",
                    "met" if bwd_vs_dasp >= 20 else "not met",
                ],
                ["forward: dasp / diffmix", f"{fwd_vs_dasp:.1f}x", "-", "-"],
                [
                    "forward: pedalboard / diffmix",
                    f"{fwd_vs_pb:.2f}x",
                    ">= 1x (no slower)",
                    "met" if fwd_vs_pb >= 1 else "not met",
                ],
            ],
            ["ratio", "measured", "goal", "status"],
        ),
        "",
        "dasp-pytorch runs the same chain as closely as it can express it: its panner takes "
        "mono sources (each track's mid), it has no limiter (a 20:1, 0.1 ms compressor stands "
        "in) and no release times. pedalboard pans with numpy gains (it has no pan).",
    ]
    lines += [
        "",
        "Where diffmix's forward time goes (one call per stage, same signal):",
        "",
        table(stage_profile(console, x), ["stage", "forward time"]),
    ]
    if torch.cuda.is_available():
        xg = x.cuda()
        cg = build_console(TRACKS, "cuda")

        def _sync(fn):  # noqa: ANN001, ANN202
            def inner():  # noqa: ANN202
                fn()
                torch.cuda.synchronize()

            return inner

        tg = median_time(_sync(lambda: _diffmix(cg, xg, True)), repeat=5)
        tf = median_time(_sync(lambda: _diffmix(cg, xg, False)), repeat=5)
        lines += [
            "",
            f"On {torch.cuda.get_device_name(0)}: forward {fmt_s(tf)} "
            f"({audio_s / tf:.0f}x real time), forward+backward {fmt_s(tg)} "
            f"({audio_s / tg:.0f}x real time; goal >= 2000x).",
        ]
    else:
        lines += ["", "No GPU in this run: the >= 2000x real-time goal on an H100 is not measured here."]
    return "\n".join(lines)
