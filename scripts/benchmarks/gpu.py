"""GPU: the console and a batch of masters on CUDA, where the Triton kernels serve the
smoother and the fused compressor/expander (``backend="auto"``).

Workloads (issue 20), kept short so that ``./scripts/gpu-check`` fits in a few minutes:

* Workload 1, the console bench (:mod:`benchmarks.console`: 8 stereo tracks x 30 s through
  strips and a master bus with a true-peak limiter): forward and forward+backward, as
  real-time factors (seconds of track audio, 8 x 30 s, per second of compute).
* 64 three-minute stereo songs through the mastering chain (``configs/chain/mastering.yaml``:
  M/S EQ, compressor, width, true-peak limiter with its exact step) as one batch, against
  the same chain on this machine's CPU one song at a time (one song timed, times 64).
* Peak GPU memory of each.

Without a CUDA device ``run`` returns ``None`` and BENCHMARKS.md keeps its GPU section.
"""

from __future__ import annotations

import math

import torch

from benchmarks import console as console_bench
from benchmarks._timing import fmt_s, median_time, table
from diffmix.checks import input_checks
from diffmix.console import Bus
from diffmix.effects.dynamics import Compressor, Limiter
from diffmix.effects.eq import ParametricEQ
from diffmix.effects.gain import Width

TITLE = "GPU: console (workload 1) and a 64-song batch master on CUDA"
SR = 44100
SONGS = 64
SONG_S = 180.0


def _sync_time(fn, repeat: int = 5) -> float:  # noqa: ANN001
    def run() -> None:
        fn()
        torch.cuda.synchronize()

    return median_time(run, repeat=repeat, warmup=2)


def _chain(songs: int) -> Bus:
    effects = {
        "eq": ParametricEQ(SR, bands=["highpass2", "low_shelf", "peak", "peak", "peak", "high_shelf"],
                           freq_hz=[25.0, 110.0, 300.0, 1200.0, 4000.0, 9000.0], stereo="ms"),
        "comp": Compressor(SR, threshold_db=-12.0, ratio=1.5, attack_ms=30.0, release_ms=250.0,
                           knee_db=6.0),
        "width": Width(SR),
        "limiter": Limiter(SR, ceiling_db=-1.0, release_ms=80.0),
    }
    return Bus(SR, effects, items=songs)


def _songs(n: int, seconds: float, device: str) -> torch.Tensor:
    """Music-like stereo songs ``(n, 2, T)`` (the console bench's stems, summed)."""
    base = console_bench.stems(console_bench.TRACKS, seconds, device).sum(1)[0]  # (2, T)
    gains = torch.linspace(0.5, 1.5, n, device=device).view(n, 1, 1)
    return gains * base.unsqueeze(0)


def _console(quick: bool) -> list[list[str]]:
    seconds = 5.0 if quick else 30.0
    device = "cuda"
    console = console_bench.build_console(console_bench.TRACKS, device)
    x = console_bench.stems(console_bench.TRACKS, seconds, device)
    rows = []
    for grad in (False, True):
        torch.cuda.reset_peak_memory_stats()
        t = _sync_time(lambda grad=grad: console_bench._diffmix(console, x, grad))  # noqa: SLF001
        mem = torch.cuda.max_memory_allocated() / 2**30
        rows.append([
            "console, " + ("forward+backward" if grad else "forward"),
            f"{console_bench.TRACKS} x {seconds:g} s stereo", fmt_s(t),
            f"{console_bench.TRACKS * seconds / t:,.0f}x",
            f"{mem:.2f} GiB",
        ])
    return rows


def _batch_master(quick: bool) -> tuple[list[str], float]:
    songs, seconds = (8, 20.0) if quick else (SONGS, SONG_S)
    with input_checks(False), torch.no_grad():
        gpu_chain = _chain(songs).to("cuda")
        x = _songs(songs, seconds, "cuda")
        torch.cuda.reset_peak_memory_stats()
        t_gpu = _sync_time(lambda: gpu_chain(x), repeat=3)
        mem = torch.cuda.max_memory_allocated() / 2**30
        cpu_chain = _chain(1)
        one = _songs(1, seconds, "cpu")
        t_cpu_one = median_time(lambda: cpu_chain(one), repeat=3, warmup=1)
    t_cpu = songs * t_cpu_one
    row = [f"mastering chain, {songs} songs in one batch", f"{songs} x {seconds:g} s stereo",
           fmt_s(t_gpu), f"{songs * seconds / t_gpu:,.0f}x", f"{mem:.2f} GiB"]
    return row, t_cpu / t_gpu if math.isfinite(t_cpu) else float("nan")


def run(quick: bool) -> str | None:
    if not torch.cuda.is_available():
        return None
    rows = _console(quick)
    master_row, speedup = _batch_master(quick)
    rows.append(master_row)
    body = table(rows, ["workload", "audio", "time (median)", "real time", "peak GPU memory"])
    threads = torch.get_num_threads()
    body += (
        f"\n\nThe batch master is **{speedup:,.0f}x** faster than the same chain on this "
        f"machine's CPU run one song at a time ({threads} torch threads; one song timed, "
        f"times the batch). Goals (issue 20): workload 1 forward+backward at least 10,000x "
        f"real time (about 24 ms for 8 x 30 s; the memory-bandwidth limit is about "
        f"200,000x); the batch master at least 50x the sequential CPU.\n"
    )
    return body
