"""Reverb and delay on 8 stereo tracks x 30 s at 44.1 kHz, forward and forward+backward,
beside dasp-pytorch's ``noise_shaped_reverberation`` and pedalboard's ``Reverb``/``Delay``.

dasp renders its reverb by time-domain convolution with a 65536-tap kernel, whose cost is
linear in the signal length; its backward pass on this machine takes minutes per second
of audio. It is therefore measured, with diffmix beside it, on a 0.25 s excerpt of the
same tracks (like for like, same run), and its full-workload time is extrapolated
linearly from that and marked as such.
"""

from __future__ import annotations

import torch

from benchmarks._timing import fmt_s, median_time, table
from diffmix.checks import input_checks
from diffmix.effects.delay import Delay
from diffmix.effects.reverb import Reverb

TITLE = "Space: reverb and delay (8 stereo tracks x 30 s, 44.1 kHz)"
SR = 44100
TRACKS = 8


def _tracks(seconds: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(TRACKS, 2, int(seconds * SR), generator=g)


def _diffmix(effect: torch.nn.Module, x: torch.Tensor, backward: bool) -> None:
    with input_checks(False):
        if backward:
            effect.zero_grad(set_to_none=True)
            effect(x).square().mean().backward()
        else:
            with torch.no_grad():
                effect(x)


def _dasp_params(requires_grad: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(TRACKS, 1, generator=g).requires_grad_(requires_grad) for _ in range(25)]


def _dasp(x: torch.Tensor, backward: bool) -> None:
    from dasp_pytorch.functional import noise_shaped_reverberation

    params = _dasp_params(backward)
    if backward:
        noise_shaped_reverberation(x, SR, *params[:24], params[24]).square().mean().backward()
    else:
        with torch.no_grad():
            noise_shaped_reverberation(x, SR, *params[:24], params[24])


def _pedalboard(plugin, x: torch.Tensor) -> None:  # noqa: ANN001
    audio = x.numpy()
    for track in audio:
        plugin(track, SR, reset=True)


def run(quick: bool) -> str:
    import pedalboard

    seconds = 2.0 if quick else 30.0
    excerpt = 0.05 if quick else 0.25
    repeat = 1 if quick else 3
    x = _tracks(seconds)
    reverb = Reverb(SR, rt60_s=1.5, mix=0.3)
    delay = Delay(SR, time_ms=375.0, feedback=0.45, damping_hz=5000.0, mix=0.3)

    t = {}
    for name, effect in (("reverb", reverb), ("delay", delay)):
        for bwd in (False, True):
            t[name, bwd] = median_time(lambda e=effect, b=bwd: _diffmix(e, x, b), repeat=repeat)
    t["pb_reverb"] = median_time(
        lambda: _pedalboard(pedalboard.Reverb(room_size=0.7, wet_level=0.3, dry_level=0.7), x),
        repeat=repeat,
    )
    t["pb_delay"] = median_time(
        lambda: _pedalboard(pedalboard.Delay(delay_seconds=0.375, feedback=0.45, mix=0.3), x),
        repeat=repeat,
    )
    xs = x[..., : int(excerpt * SR)].contiguous()
    short = {}
    for bwd in (False, True):
        short["diffmix", bwd] = median_time(lambda b=bwd: _diffmix(reverb, xs, b), repeat=repeat)
        short["dasp", bwd] = median_time(lambda b=bwd: _dasp(xs, b), repeat=1, warmup=0)
    scale = seconds / excerpt

    def ratio(a: float, b: float) -> str:
        r = a / b
        return f"{r:.0f}x" if r >= 10 else f"{r:.1f}x" if r >= 1 else f"{r:.2f}x"

    rev_f, rev_b = t["reverb", False], t["reverb", True]
    dasp_f, dasp_b = short["dasp", False] * scale, short["dasp", True] * scale
    rows = [
        ["diffmix Reverb (FFT conv, synthesized IR)", fmt_s(rev_f), fmt_s(rev_b), "-"],
        [
            f"dasp noise_shaped_reverberation (extrapolated x{scale:.0f} from {excerpt:g} s)",
            fmt_s(dasp_f),
            fmt_s(dasp_b),
            f"{ratio(dasp_f, rev_f)} / {ratio(dasp_b, rev_b)}",
        ],
        ["pedalboard Reverb (C++, no gradients)", fmt_s(t["pb_reverb"]), "n/a", ratio(t["pb_reverb"], rev_f)],
        ["diffmix Delay (FFT-domain feedback loop)", fmt_s(t["delay", False]), fmt_s(t["delay", True]), "-"],
        [
            "pedalboard Delay (C++, no gradients)",
            fmt_s(t["pb_delay"]),
            "n/a",
            ratio(t["pb_delay"], t["delay", False]),
        ],
    ]
    like = [
        ["diffmix Reverb", fmt_s(short["diffmix", False]), fmt_s(short["diffmix", True])],
        ["dasp noise_shaped_reverberation", fmt_s(short["dasp", False]), fmt_s(short["dasp", True])],
        [
            "dasp / diffmix",
            ratio(short["dasp", False], short["diffmix", False]),
            ratio(short["dasp", True], short["diffmix", True]),
        ],
    ]
    goal = short["dasp", True] / short["diffmix", True]
    verdict = "met" if goal >= 10 else "NOT met"
    return (
        f"Workload: {TRACKS} stereo tracks x {seconds:g} s, float32, CPU; loss = mean square of "
        "the output, gradients to the effect parameters. Median of "
        f"{repeat} after a warm-up.\n\n"
        + table(rows, ["effect", "forward", "forward+backward", "peer time / diffmix time (fwd / fwd+bwd)"])
        + f"\n\nLike for like on a {excerpt:g} s excerpt of the same tracks (dasp measured once):\n\n"
        + table(like, ["reverb", "forward", "forward+backward"])
        + f"\n\nGoal (reverb forward+backward >= 10x faster than dasp-pytorch): {verdict}, "
        f"{goal:.0f}x on the excerpt, measured in the same run."
    )
