"""Compressor: diffmix against torchcomp, dasp-pytorch and pedalboard.

Workload (issue 3): 16 channels x 30 s at 44.1 kHz, forward and forward+backward, on a
music-like test signal (noise under a tremolo and drum-like bursts, crossing the threshold
both ways). Every compressor gets the same threshold, ratio, attack and release. diffmix
also runs its knee, makeup and 2 ms lookahead; torchcomp has none of these, so its run adds
makeup and lookahead as torch ops around ``compexp_gain`` (knee it cannot do). dasp-pytorch
ignores ``release_ms``. pedalboard is compiled C++ without gradients (forward only).
With a CUDA device, 64 stereo tracks x 30 s forward+backward are timed as well.
"""

from __future__ import annotations

import math
import time

import torch

from benchmarks._timing import fmt_s, median_time, table
from diffmix.checks import input_checks
from diffmix.functional.dynamics import compressor

TITLE = "Dynamics: compressor, 16 channels x 30 s at 44.1 kHz"
SR = 44100
SETTINGS = dict(threshold_db=-20.0, ratio=4.0, attack_ms=5.0, release_ms=50.0)
KNEE_DB, MAKEUP_DB, LOOKAHEAD_MS = 6.0, 3.0, 2.0


def _signal(channels: int, seconds: float, device: str = "cpu") -> torch.Tensor:
    n = int(seconds * SR)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(n) / SR
    tremolo = 0.05 + 0.45 * (0.5 + 0.5 * torch.sin(2 * math.pi * 3.0 * t)) ** 2
    hits = torch.exp(-((t * 2.0) % 1.0) * 20.0)  # a drum-like burst every 0.5 s
    x = (tremolo + 0.6 * hits) * torch.randn(channels, n, generator=g)
    return x.float().to(device)


def _params(device: str) -> dict[str, torch.Tensor]:
    values = dict(SETTINGS, knee_db=KNEE_DB, makeup_db=MAKEUP_DB)
    return {k: torch.tensor(v, device=device, requires_grad=True) for k, v in values.items()}


def _diffmix(x: torch.Tensor, grad: bool) -> None:
    p = _params(str(x.device))
    inp = x.detach().unsqueeze(1).requires_grad_(grad)  # 16 mono tracks
    with input_checks(False), torch.set_grad_enabled(grad):
        y = compressor(inp, SR, lookahead_ms=LOOKAHEAD_MS, **p)
        if grad:
            y.square().mean().backward()


def _torchcomp(x: torch.Tensor, grad: bool) -> None:
    from torchcomp import compexp_gain, ms2coef

    p = _params(str(x.device))
    inp = x.detach().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        look = int(round(LOOKAHEAD_MS * SR / 1000))
        side = torch.nn.functional.pad(inp.abs(), (0, look)).clamp_min(1e-7)
        gain = compexp_gain(
            side, p["threshold_db"], p["ratio"], -1000.0, 0.5,
            ms2coef(p["attack_ms"], SR), ms2coef(p["release_ms"], SR),
        )
        y = inp * gain[:, look:] * 10 ** (p["makeup_db"] / 20)
        if grad:
            y.square().mean().backward()


def _dasp(x: torch.Tensor, grad: bool) -> None:
    from dasp_pytorch.functional import compressor as dasp_compressor

    p = _params(str(x.device))
    inp = x.detach().unsqueeze(1).requires_grad_(grad)
    n = x.shape[0]
    with torch.set_grad_enabled(grad):
        y = dasp_compressor(
            inp, SR, p["threshold_db"].expand(n), p["ratio"].expand(n), p["attack_ms"].expand(n),
            p["release_ms"].expand(n), p["knee_db"].expand(n), p["makeup_db"].expand(n),
            lookahead_samples=int(round(LOOKAHEAD_MS * SR / 1000)),
        )
        if grad:
            y.square().mean().backward()


def _pedalboard(x: torch.Tensor) -> None:
    import pedalboard

    board = pedalboard.Pedalboard([pedalboard.Compressor(**SETTINGS)])
    board(x.numpy(), SR)


def _cpu_time_per_sample(x: torch.Tensor, repeat: int) -> str:
    """Single-threaded CPU time per sample, forward: immune to other load on the machine,
    unlike wall time (a busy shared box starves a 2-thread run more than a 1-thread one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernels split rows over torch's thread count
    try:
        def cpu_ns(fn: object) -> float:
            best = math.inf
            for _ in range(max(repeat, 2)):
                t0 = time.process_time()
                fn()  # type: ignore[operator]
                best = min(best, time.process_time() - t0)
            return best / x.numel() * 1e9

        ours = cpu_ns(lambda: _diffmix(x, False))
        lines = [["**diffmix** (knee, makeup, lookahead)", f"{ours:.1f} ns", "1.00"]]
        try:
            theirs = cpu_ns(lambda: _pedalboard(x))
            lines.append(["pedalboard `Compressor`", f"{theirs:.1f} ns", f"{theirs / ours:.2f}x"])
        except ImportError as exc:
            lines.append(["pedalboard `Compressor`", f"not installed ({exc.name})", "-"])
    finally:
        torch.set_num_threads(threads)
    return "Forward, single thread, CPU time per sample (best of runs):\n\n" + table(
        lines, ["implementation", "CPU time / sample", "time / diffmix"]
    )


def run(quick: bool) -> str:
    seconds = 1.0 if quick else 30.0
    repeat = 1 if quick else 5
    warmups = 0 if quick else 2
    x = _signal(16, seconds)
    # Warm every implementation on a short signal (numba compilation, caches) first; the
    # first full-length calls of each also pay first touch of fresh memory (the first ~0.6 s
    # more, the second still some on this VM), so two are untimed warm-ups. Peers' times
    # swing between runs as much as diffmix's: they get a median too (of 3; 1 in --quick).
    short = x[:, :4410]
    for warm in (_diffmix, _torchcomp, _dasp):
        try:
            warm(short, True)
        except ImportError:
            pass
    rows: list[list[str]] = []
    ours: dict[str, float] = {}
    for label, grad in (("forward", False), ("forward+backward", True)):
        ours[label] = median_time(lambda g=grad: _diffmix(x, g), repeat=repeat, warmup=warmups)
        rows.append(["**diffmix** (knee, makeup, lookahead)", label, fmt_s(ours[label]), "1.00"])
    peers = [
        ("torchcomp `compexp_gain` (+ makeup, lookahead)", _torchcomp, (False, True)),
        ("dasp-pytorch `compressor`", _dasp, (False, True)),
    ]
    for name, fn, modes in peers:
        for grad in modes:
            label = "forward+backward" if grad else "forward"
            try:
                took = median_time(lambda f=fn, g=grad: f(x, g), repeat=min(repeat, 3), warmup=warmups)
            except ImportError as exc:  # a peer missing from this environment
                rows.append([name, label, f"not installed ({exc.name})", "-"])
                continue
            rows.append([name, label, fmt_s(took), f"{took / ours[label]:.1f}x slower"])
    try:
        took = median_time(lambda: _pedalboard(x), repeat=repeat)
        rows.append(["pedalboard `Compressor` (C++, no gradients)", "forward", fmt_s(took),
                     f"{took / ours['forward']:.2f}x"])
    except ImportError as exc:
        rows.append(["pedalboard `Compressor`", "forward", f"not installed ({exc.name})", "-"])
    body = table(rows, ["implementation", "pass", "time (median)", "time / diffmix"])
    body = (
        f"Signal: {x.shape[0]} channels x {seconds:g} s, float32, CPU, "
        f"{torch.get_num_threads()} torch threads. Settings: threshold {SETTINGS['threshold_db']} dB, "
        f"ratio {SETTINGS['ratio']}, attack {SETTINGS['attack_ms']} ms, release "
        f"{SETTINGS['release_ms']} ms; diffmix adds knee {KNEE_DB} dB, makeup {MAKEUP_DB} dB, "
        f"lookahead {LOOKAHEAD_MS} ms. Ratios > 1 mean the peer is slower.\n\n" + body
    )
    body += "\n\n" + _cpu_time_per_sample(x, repeat)
    if torch.cuda.is_available():
        xg = _signal(128, seconds, "cuda")  # 64 stereo tracks

        def on_gpu() -> None:
            p = _params("cuda")
            inp = xg.detach().view(64, 2, -1).requires_grad_(True)
            compressor(inp, SR, lookahead_ms=LOOKAHEAD_MS, **p).square().mean().backward()
            torch.cuda.synchronize()

        took = median_time(on_gpu, repeat=repeat)
        body += (
            f"\n\nGPU ({torch.cuda.get_device_name(0)}): 64 stereo tracks x {seconds:g} s, "
            f"forward+backward: {fmt_s(took)}."
        )
    return body
