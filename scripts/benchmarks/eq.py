"""6-band parametric EQ: diffmix (FFT and exact paths) vs dasp-pytorch's parametric_eq."""

from __future__ import annotations

import torch

from benchmarks._timing import fmt_s, median_time, table

TITLE = "Parametric EQ: 6 bands, 8 stereo tracks x 30 s at 44.1 kHz"

SR = 44100
BANDS = ["low_shelf", "peak", "peak", "peak", "peak", "high_shelf"]


def _params(batch: int) -> dict[str, torch.Tensor]:
    """Per-track settings, the same for every peer: (batch, 6) in band order."""
    g = torch.Generator().manual_seed(0)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(batch, len(BANDS), generator=g)

    centres = torch.tensor([120.0, 300.0, 900.0, 2500.0, 6000.0, 9000.0])
    return {
        "freq_hz": centres * (1.0 + 0.3 * uniform(-1.0, 1.0)),
        "q": uniform(0.5, 2.5),
        "gain_db": uniform(-9.0, 9.0),
    }


def _dasp_kwargs(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = ["low_shelf", "band0", "band1", "band2", "band3", "high_shelf"]
    out = {}
    for i, name in enumerate(names):
        out[f"{name}_gain_db"] = p["gain_db"][:, i]
        out[f"{name}_cutoff_freq"] = p["freq_hz"][:, i]
        out[f"{name}_q_factor"] = p["q"][:, i]
    return out


def run(quick: bool) -> str:
    from diffmix.checks import input_checks
    from diffmix.effects.eq import ParametricEQ

    seconds = 3.0 if quick else 30.0
    repeat = 1 if quick else 3
    batch, channels = 8, 2
    x = 0.1 * torch.randn(batch, channels, int(seconds * SR), generator=torch.Generator().manual_seed(1))
    p = _params(batch)

    def diffmix_case(mode: str, backward: bool):
        eq = ParametricEQ(SR, bands=BANDS, mode=mode, **p)

        def fn() -> None:
            with input_checks(False), torch.set_grad_enabled(backward):
                y = eq(x)
                if backward:
                    eq.zero_grad(set_to_none=True)
                    y.square().mean().backward()

        return fn

    rows_spec = [
        ("diffmix fft", lambda b: diffmix_case("fft", b)),
        ("diffmix exact", lambda b: diffmix_case("exact", b)),
    ]
    peers = []
    try:
        from dasp_pytorch.functional import parametric_eq as dasp_eq

        def dasp_case(backward: bool):
            def fn() -> None:
                leaves = {k: v.clone().requires_grad_(backward) for k, v in p.items()}
                with torch.set_grad_enabled(backward):
                    y = dasp_eq(x, SR, **_dasp_kwargs(leaves))
                    if backward:
                        y.square().mean().backward()

            return fn

        peers.append(("dasp-pytorch parametric_eq", dasp_case))
    except ImportError:
        pass

    results: dict[str, dict[str, float]] = {}
    for name, make in rows_spec + peers:
        # diffmix's FFT path is cheap: more repeats make its median robust on a busy machine.
        n = repeat if quick or name != "diffmix fft" else 7
        results[name] = {
            "fwd": median_time(make(False), repeat=n),
            "fwd+bwd": median_time(make(True), repeat=n),
        }

    dasp = results.get("dasp-pytorch parametric_eq")
    rows = []
    for name, r in results.items():
        ratio = lambda k, r=r: f"{dasp[k] / r[k]:.1f}x" if dasp else "n/a"  # noqa: E731
        rows.append([name, fmt_s(r["fwd"]), fmt_s(r["fwd+bwd"]), ratio("fwd"), ratio("fwd+bwd")])
    body = table(
        rows, ["implementation", "forward", "forward+backward", "speed-up vs dasp (fwd)", "(fwd+bwd)"]
    )
    note = (
        f"\n\nWorkload: `(8, 2, {x.shape[-1]})` float32 on CPU, bands {BANDS}, per-track "
        "parameters; backward = gradients of a mean-square loss w.r.t. every band parameter. "
        "diffmix fft = frequency sampling of the cascade into an impulse response (cut at "
        "-120 dB of its slowest pole) and an overlap-save rfft convolution; diffmix exact = "
        "the float64 recursion (torchaudio lfilter per section); dasp samples the response "
        "on a `2^ceil(log2(2T-1))`-point grid from rffts of every section's coefficients. "
        f"Medians of {repeat} runs (7 for diffmix fft) after a warm-up."
    )
    if not dasp:
        note += "\n\ndasp-pytorch is not installed (`pip install .[bench]`): no ratio."
    return body + note
