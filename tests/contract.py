"""The effect contract: one registry of cases, one set of checks, every exported effect.

:data:`CASES` holds, per case, how to build an effect from physical parameter values and
the signals it is checked on. :class:`Contract` holds the checks; ``tests/test_contract.py``
runs it over every case in the dtype x device matrix of ``conftest.py`` and fails when an
effect in ``diffmix.effects.__all__`` has no case. The checks:

- :func:`assert_output_layout`: ``(B, C, T)`` out, in the input's dtype and on its device;
- :func:`assert_gradcheck`: float64 gradcheck through every differentiable parameter
  (through its unconstrained ``raw`` tensor, so the range mapping is checked too) and x;
- :func:`assert_batch_consistent`: items run alone equal the batched run, with per-item
  parameter values;
- :func:`assert_not_in_place`: the input is never modified;
- :func:`assert_finite_at_extremes`: finite outputs and gradients at every parameter's
  min and max, on noise and on digital silence;
- :func:`assert_preset_round_trip`: save -> load -> identical audio.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from diffmix.config import load_preset
from diffmix.effects import (
    Balance,
    BandWidth,
    Chain,
    Chorus,
    Compressor,
    Delay,
    Expander,
    Gain,
    HighPass,
    Limiter,
    LoudnessRide,
    LowPass,
    MatchEQ,
    MultibandCompressor,
    Pan,
    Parallel,
    ParametricEQ,
    Phaser,
    Polarity,
    Reverb,
    Saturation,
    VolumeAutomation,
    Width,
)

# ---------------------------------------------------------------------------- assertions


def noise(batch: int, channels: int, n: int, *, dtype=torch.float64, device="cpu", seed=0) -> Tensor:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    return (0.25 * torch.randn(batch, channels, n, generator=g, dtype=torch.float64)).to(
        dtype=dtype, device=device
    )


def _raw_params(effect: nn.Module) -> dict[str, Tensor]:
    return {
        name: p for name, p in effect.named_parameters() if name.endswith(".raw") and p.requires_grad
    }


def assert_output_layout(effect: nn.Module, x: Tensor, channels_out: int) -> None:
    """``(B, C, T)`` in, ``(B, channels_out, T)`` out, same dtype and device."""
    with torch.no_grad():
        y = effect(x)
    b, _, t = x.shape
    assert tuple(y.shape) == (b, channels_out, t), f"output shape {tuple(y.shape)} for input {tuple(x.shape)}"
    assert y.dtype == x.dtype, f"output dtype {y.dtype} for input {x.dtype}"
    assert y.device == x.device, f"output on {y.device} for input on {x.device}"


def assert_gradcheck(
    effect: nn.Module, x: Tensor, *, params: bool = True, wrt_input: bool = True, **kw
) -> None:
    """gradcheck in float64 w.r.t. the input and every differentiable raw parameter.

    ``params=True`` also asserts that there is at least one such parameter, so a case
    can't pass by checking nothing; pass ``params=False`` for an effect without any.
    """
    effect = copy.deepcopy(effect).double()
    x = x.double().detach().requires_grad_(wrt_input)
    raws = {k: v.detach().clone().requires_grad_(True) for k, v in _raw_params(effect).items()}
    if params:
        assert raws, "the effect has no differentiable parameter to check"
    else:
        assert not raws, f"the case says no parameters, the effect has {sorted(raws)}"
    names = list(raws)

    def run(inp: Tensor, *values: Tensor) -> Tensor:
        return functional_call(effect, dict(zip(names, values, strict=True)), (inp,))

    inputs = (x, *raws.values())
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, **kw)


def assert_batch_consistent(
    make: Callable[[dict], nn.Module], values: list[dict], x: Tensor, *, atol: float = 1e-6
) -> None:
    """``make(values_i)`` on item i alone equals a batched effect with stacked values.

    Args:
        make: builds an effect from a dict of physical parameter values.
        values: one dict per batch item (same keys).
        x: ``(len(values), C, T)`` audio.
    """
    stacked = {
        k: torch.stack([torch.as_tensor(v[k], dtype=torch.float64) for v in values])
        for k in values[0]
    }
    batched = make(stacked).to(dtype=x.dtype, device=x.device)
    with torch.no_grad():
        y = batched(x)
        for i, item_values in enumerate(values):
            alone = make(item_values).to(dtype=x.dtype, device=x.device)(x[i : i + 1])
            scale = alone.abs().max().clamp_min(1e-3)
            err = (y[i : i + 1] - alone).abs().max() / scale
            assert err <= atol, f"item {i} differs from the batched run by {err:.3g} (relative)"


def assert_not_in_place(effect: nn.Module, x: Tensor) -> None:
    before = x.clone()
    effect(x)
    assert torch.equal(x, before), "the effect modified its input in place"


def _finite_run(effect: nn.Module, signal: Tensor, what: str) -> None:
    inp = signal.detach().clone().requires_grad_(True)
    y = effect(inp)
    assert torch.isfinite(y).all(), f"{what}: non-finite output"
    y.square().sum().backward()
    assert torch.isfinite(inp.grad).all(), f"{what}: non-finite input grad"
    for name, p in effect.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"{what}: {name} grad"


def assert_finite_at_extremes(effect: nn.Module, x: Tensor, *, params: bool = True) -> None:
    """Every differentiable parameter at its min and at its max: finite output and grads,
    on ``x`` and on digital silence. ``params=False`` (an effect without parameters)
    checks the effect as it is."""
    specs = {n: m for n, m in effect.named_modules() if hasattr(m, "spec") and hasattr(m, "raw")}
    assert bool(specs) == params, (
        "effect has no parameters to test" if params else f"the case says no parameters: {sorted(specs)}"
    )
    for signal in (x, torch.zeros_like(x)):
        if not specs:
            _finite_run(copy.deepcopy(effect), signal, "as built")
        for path, bp in specs.items():
            for bound in (bp.spec.min, bp.spec.max):
                e = copy.deepcopy(effect)
                target = e.get_submodule(path)
                target.set(torch.full_like(target.anchor, bound))
                _finite_run(e, signal, f"{path}={bound}")


def assert_preset_round_trip(effect: nn.Module, x: Tensor, tmp_path) -> None:  # noqa: ANN001
    """save -> load -> identical audio."""
    from diffmix.config import save_preset

    path = tmp_path / "preset.yaml"
    save_preset(effect, path)
    loaded = load_preset(path).to(dtype=x.dtype, device=x.device)
    with torch.no_grad():
        assert torch.equal(effect(x), loaded(x)), "preset round trip changed the audio"


# ---------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Case:
    """How one effect is built and checked.

    Attributes:
        make: builds the effect from a dict of physical values (constructor keywords).
        values: two per-item settings, with the same keys: item 0 is gradchecked, item 1
            round-trips through a preset, both together are the batch.
        channels: input channels; ``channels_out`` the output's (default the same).
        plain: the setting checked for in-place writes and at the parameters' extremes.
        params: False for an effect without differentiable parameters.
        gradcheck: ``(batch, time)`` of the gradcheck input; ``fast_mode`` checks a random
            projection of the Jacobian (every parameter and the input still take part).
        no_gradcheck: why the case has no gradcheck (a render-time step), else None.
        atol: the batch check's relative tolerance, float32 and float64.
        batch_n, extremes_batch, preset_n: lengths and batch of those checks' inputs.
    """

    make: Callable[[dict], nn.Module]
    values: tuple[dict, dict]
    channels: int = 2
    channels_out: int | None = None
    plain: dict = field(default_factory=dict)
    params: bool = True
    gradcheck: tuple[int, int] = (1, 96)
    fast_mode: bool = False
    no_gradcheck: str | None = None
    atol: tuple[float, float] = (1e-6, 1e-6)
    batch_n: int = 512
    extremes_batch: int = 2
    preset_n: int = 128

    def effect_class(self) -> type:
        return type(self.make(dict(self.values[0])))


def _pairs(values: dict[str, list]) -> tuple[dict, dict]:
    """``{"a": [a0, a1], ...}`` -> ``({"a": a0, ...}, {"a": a1, ...})``."""
    return tuple({k: v[i] for k, v in values.items()} for i in range(2))  # type: ignore[return-value]


def _gains(n: int, seed: int, scale: float = 6.0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (scale * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1)).tolist()


SR = 44100
# Gains, pan, balance, width: per-sample maths, so short signals and full gradchecks.
_GAIN = {"gradcheck": (2, 64), "batch_n": 256}
_DYNAMICS = {"gradcheck": (1, 96)}
_LOOSE = (1e-4, 1e-9)  # effects whose batched FFTs round differently in float32

EQ_BANDS = ["highpass2", "low_shelf", "peak", "notch", "bandpass", "high_shelf", "lowpass"]
EQ_SETTINGS = (  # two per-item settings of EQ_BANDS
    {
        "freq_hz": [30.0, 120.0, 900.0, 3000.0, 5000.0, 9000.0, 16000.0],
        "q": [0.7071, 0.8, 2.0, 4.0, 0.5, 0.7071, 1.2],
        "gain_db": [0.0, 4.0, -6.0, 0.0, 0.0, 3.0, 0.0],
    },
    {
        "freq_hz": [45.0, 200.0, 2500.0, 1000.0, 700.0, 6000.0, 18000.0],
        "q": [1.5, 0.5, 0.7, 8.0, 2.0, 1.0, 0.7071],
        "gain_db": [0.0, -3.0, 9.0, 0.0, 0.0, -5.0, 0.0],
    },
)
EQ_SIX = ["low_shelf", "peak", "peak", "peak", "peak", "high_shelf"]
# EQ: a random projection of the full Jacobian keeps every band in the gradcheck at a
# fraction of the dense cost; the extremes run with a short fixed FFT tail (finiteness is
# checked there, not the tail).
_EQ = {"gradcheck": (2, 96), "fast_mode": True, "atol": (2e-5, 1e-9), "extremes_batch": 1,
       "preset_n": 300}

_AUTOMATION_TIMES = [0.002, 0.01, 0.02, 0.03]  # within the 256-512-sample signals at 8 kHz
_AUTOMATION = {"gradcheck": (2, 256), "extremes_batch": 1, "preset_n": 300}

_LIMITER = {"gradcheck": (1, 96)}
_MULTIBAND_VALUES = {
    "three_bands": {
        "crossover_hz": [[150.0, 2500.0], [300.0, 4000.0]],
        "threshold_db": [[-30.0, -25.0, -20.0], [-18.0, -22.0, -26.0]],
        "ratio": [[3.0, 2.0, 4.0], [6.0, 1.5, 2.0]],
        "attack_ms": [[2.0, 1.0, 0.5], [3.0, 2.0, 1.0]],
        "release_ms": [[20.0, 10.0, 5.0], [30.0, 15.0, 8.0]],
        "makeup_db": [[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]],
    },
    "four_bands_rms_unlinked": {
        "crossover_hz": [[120.0, 1000.0, 6000.0], [200.0, 1500.0, 8000.0]],
        "threshold_db": [[-30.0, -25.0, -22.0, -20.0], [-20.0, -20.0, -20.0, -20.0]],
        "mix": [[1.0, 0.5, 0.8, 1.0], [0.3, 1.0, 1.0, 0.6]],
    },
}
# Multiband: the LR4 band tree makes each full Jacobian column cost 24 biquad passes.
_MULTIBAND = {"gradcheck": (1, 128), "fast_mode": True, "batch_n": 1024, "preset_n": 256}

_MODULATION_VALUES = {
    "chorus": {"rate_hz": [0.7, 3.0], "depth": [0.3, 0.8], "centre_ms": [1.2, 1.9],
               "feedback": [0.4, -0.3], "mix": [0.5, 0.9]},
    "phaser": {"rate_hz": [2.0, 5.0], "depth": [0.5, 1.0], "centre_hz": [600.0, 2500.0],
               "feedback": [0.5, -0.4], "mix": [0.5, 0.8]},
}
_REVERB_VALUES = {
    "rt60_s": [0.3, 0.8], "rt60_low_ratio": [1.5, 0.7], "rt60_high_ratio": [0.5, 1.3],
    "pre_delay_ms": [2.5, 7.25], "early_late": [0.3, 0.8], "width": [0.4, 1.0], "mix": [0.6, 1.0],
}
_SATURATION_VALUES = {"drive_db": [6.0, 20.0], "tone_hz": [3000.0, 12000.0],
                      "output_db": [-3.0, 2.0], "mix": [0.7, 1.0]}
_MATCH_SMALL = {"bands_per_octave": 1, "low_hz": 100.0, "n_fir": 128}  # 8 octave bands, short FIR
_MATCH_BANDS = 8

CASES: dict[str, Case] = {
    # gain.py
    "gain": Case(lambda v: Gain(SR, **v), _pairs({"gain_db": [-12.0, 3.0]}), **_GAIN),
    "pan_mono": Case(lambda v: Pan(SR, **v), _pairs({"pan": [-0.7, 0.4]}), channels=1,
                     channels_out=2, **_GAIN),
    "pan_stereo": Case(lambda v: Pan(SR, **v), _pairs({"pan": [-0.7, 0.4]}), **_GAIN),
    "balance": Case(lambda v: Balance(SR, **v), _pairs({"balance": [-0.5, 0.9]}), **_GAIN),
    "width": Case(lambda v: Width(SR, **v), _pairs({"width": [0.3, 1.7]}), **_GAIN),
    "polarity": Case(lambda v: Polarity(SR, invert=[True, False]), ({}, {}), params=False, **_GAIN),
    # dynamics.py
    "compressor_peak_max": Case(
        lambda v: Compressor(SR, **v),
        _pairs({"threshold_db": [-30.0, -12.0], "ratio": [4.0, 2.5], "attack_ms": [0.5, 2.0],
                "release_ms": [5.0, 40.0], "knee_db": [6.0, 0.0], "makeup_db": [3.0, -1.0],
                "mix": [0.7, 1.0]}),
        **_DYNAMICS,
    ),
    "compressor_rms_none_lookahead": Case(
        lambda v: Compressor(SR, detector="rms", rms_ms=0.5, link="none", lookahead_ms=0.1, **v),
        _pairs({"threshold_db": [-25.0, -18.0], "ratio": [8.0, 3.0], "attack_ms": [1.0, 0.3],
                "release_ms": [10.0, 3.0]}),
        **_DYNAMICS,
    ),
    "compressor_mean_mono": Case(
        lambda v: Compressor(SR, link="mean", **v),
        _pairs({"threshold_db": [-20.0, -15.0], "knee_db": [12.0, 3.0]}),
        channels=1,
        **_DYNAMICS,
    ),
    "expander": Case(
        lambda v: Expander(SR, hold_ms=0.05, **v),
        _pairs({"threshold_db": [-12.0, -20.0], "ratio": [3.0, 1.5], "attack_ms": [0.2, 1.0],
                "release_ms": [2.0, 5.0], "range_db": [30.0, 12.0], "knee_db": [6.0, 0.0]}),
        **_DYNAMICS,
    ),
    # The ride reads 3 s windows: under 3.1 s it has nothing to ride, so its gradcheck,
    # batch and preset checks run on 4 s (the gradcheck on a random projection).
    "loudness_ride": Case(
        lambda v: LoudnessRide(SR, **v), _pairs({"range_scale": [0.4, 1.7]}),
        gradcheck=(1, 4 * SR), fast_mode=True, batch_n=4 * SR, preset_n=4 * SR,
    ),
    "limiter_sample_peak": Case(
        lambda v: Limiter(SR, true_peak=False, lookahead_ms=0.2, **v),
        _pairs({"ceiling_db": [-3.0, -1.0], "release_ms": [2.0, 10.0], "gain_db": [6.0, 9.0]}),
        **_LIMITER,
    ),
    "limiter_true_peak_smooth": Case(
        lambda v: Limiter(SR, true_peak=True, exact=False, lookahead_ms=0.1, **v),
        _pairs({"ceiling_db": [-2.0, -0.5], "release_ms": [5.0, 1.5], "gain_db": [8.0, 3.0]}),
        **_LIMITER,
    ),
    "limiter_true_peak_exact": Case(
        lambda v: Limiter(SR, **v),
        _pairs({"ceiling_db": [-1.0, -6.0], "release_ms": [50.0, 20.0], "gain_db": [12.0, 0.0]}),
        no_gradcheck="the exact step is a render-time correction; fit with exact=False",
        **_LIMITER,
    ),
    **{
        f"multiband_{name}": Case(
            (lambda v: MultibandCompressor(SR, **v)) if name == "three_bands"
            else (lambda v: MultibandCompressor(SR, detector="rms", rms_ms=1.0, link="none", **v)),
            _pairs(values),
            plain={"crossover_hz": values["crossover_hz"][0]},
            **_MULTIBAND,
        )
        for name, values in _MULTIBAND_VALUES.items()
    },
    # eq.py
    "eq_fft": Case(lambda v: ParametricEQ(SR, bands=EQ_BANDS, **v), EQ_SETTINGS,
                   plain={**EQ_SETTINGS[0], "fft_tail_s": 0.05}, **_EQ),
    "eq_exact": Case(lambda v: ParametricEQ(SR, bands=EQ_BANDS, mode="exact", **v), EQ_SETTINGS,
                     channels=1, plain={**EQ_SETTINGS[0], "fft_tail_s": 0.05}, **_EQ),
    # Per-channel (M, S) values are checked in test_eq's mid/side test: a lone item's
    # (C, bands) would read as (B, bands), so the batch check runs per-item values here.
    "eq_ms": Case(
        lambda v: ParametricEQ(SR, bands=EQ_SIX, stereo="ms", **v),
        ({"gain_db": [2.0, -3.0, 1.0, 0.0, 4.0, -2.0], "mix": 0.7},
         {"gain_db": [-1.0, 0.0, 5.0, 2.0, 0.0, 1.0], "mix": 1.0}),
        plain={"gain_db": [2.0, -3.0, 1.0, 0.0, 4.0, -2.0], "mix": 0.7, "fft_tail_s": 0.05},
        **_EQ,
    ),
    "highpass4": Case(lambda v: HighPass(SR, order=4, **v), ({"freq_hz": 80.0}, {"freq_hz": 300.0}),
                      plain={"freq_hz": 80.0}, **_EQ),
    "lowpass_fft": Case(
        lambda v: LowPass(SR, mode="fft", **v),
        ({"freq_hz": 3000.0, "q": 2.0}, {"freq_hz": 9000.0, "q": 0.6}),
        channels=1, plain={"freq_hz": 3000.0, "q": 2.0}, **_EQ,
    ),
    # automation.py (8 kHz)
    "automation_cosine": Case(
        lambda v: VolumeAutomation(8000, times_s=_AUTOMATION_TIMES, **v),
        ({"gain_db": [-6.0, 3.0, -20.0, 0.0], "amount": 0.8},
         {"gain_db": [0.0, -12.0, 6.0, -3.0], "amount": 1.0}),
        plain={"gain_db": [-6.0, 3.0, -20.0, 0.0], "amount": 0.8},
        **_AUTOMATION,
    ),
    "automation_linear": Case(
        lambda v: VolumeAutomation(8000, times_s=_AUTOMATION_TIMES, curve="linear", **v),
        ({"gain_db": [-6.0, 3.0, -20.0, 0.0]}, {"gain_db": [2.0, -1.0, 0.0, -40.0]}),
        plain={"gain_db": [-6.0, 3.0, -20.0, 0.0]},
        **_AUTOMATION,
    ),
    "automation_single_point": Case(
        lambda v: VolumeAutomation(8000, times_s=[0.01], **v),
        ({"gain_db": [-6.0]}, {"gain_db": [4.0]}),
        plain={"gain_db": [-6.0]},
        **_AUTOMATION,
    ),
    # stereo.py: item 0 has a width at its maximum-slope interior, item 1 a mono low band.
    "band_width": Case(
        lambda v: BandWidth(SR, **v),
        _pairs({"low_width": [0.6, 0.0], "mid_width": [0.8, 1.3], "high_width": [0.2, 1.7],
                "low_hz": [300.0, 120.0], "high_hz": [6000.0, 3000.0]}),
        gradcheck=(1, 128), fast_mode=True, atol=_LOOSE,
    ),
    # modulation.py, delay.py, reverb.py, distortion.py: mono and stereo where they differ.
    **{
        f"{name}_{'mono' if ch == 1 else 'stereo'}": Case(
            (lambda v: Chorus(SR, **v)) if name == "chorus" else (lambda v: Phaser(SR, **v)),
            _pairs(values), channels=ch, gradcheck=(1, 128), fast_mode=True, atol=_LOOSE,
        )
        for name, values in _MODULATION_VALUES.items()
        for ch in (1, 2)
    },
    "delay": Case(
        lambda v: Delay(SR, **v),
        _pairs({"time_ms": [1.3, 2.71], "feedback": [0.5, 0.8], "damping_hz": [3000.0, 9000.0],
                "mix": [0.4, 0.9]}),
        fast_mode=True, atol=(2e-4, 1e-9),
    ),
    "delay_ping_pong": Case(
        lambda v: Delay(SR, ping_pong=True, **v),
        _pairs({"time_ms": [1.1, 1.9], "feedback": [0.7, 0.3], "damping_hz": [1000.0, 15000.0],
                "mix": [1.0, 0.5]}),
        fast_mode=True, atol=(2e-4, 1e-9),
    ),
    # A short fixed tail: the contract checks the effect, test_reverb the tail.
    **{
        f"reverb_{'mono' if ch == 1 else 'stereo'}": Case(
            lambda v: Reverb(SR, tail_s=0.01, **v), _pairs(_REVERB_VALUES), channels=ch,
            gradcheck=(1, 64), fast_mode=True, atol=_LOOSE,
        )
        for ch in (1, 2)
    },
    **{
        f"saturation_{curve}": Case(
            lambda v, curve=curve: Saturation(SR, curve=curve, oversample=4, **v),
            _pairs(_SATURATION_VALUES), gradcheck=(1, 64), fast_mode=True, atol=_LOOSE,
        )
        for curve in ("tanh", "soft", "tube")
    },
    # match_eq.py: 8 octave bands and a short FIR keep it small.
    "match_eq": Case(
        lambda v: MatchEQ(SR, **_MATCH_SMALL, **v),
        ({"mid_gain_db": _gains(_MATCH_BANDS, 1), "side_gain_db": _gains(_MATCH_BANDS, 2), "mix": 0.8},
         {"mid_gain_db": _gains(_MATCH_BANDS, 11), "side_gain_db": _gains(_MATCH_BANDS, 12), "mix": 0.6}),
        gradcheck=(1, 40), fast_mode=True, atol=(1e-5, 1e-9),
    ),
    # base.py: the containers, holding effects with parameters of their own.
    "chain": Case(
        lambda v: Chain(SR, [Gain(SR, gain_db=v.get("gain_db")), Width(SR, width=v.get("width"))],
                        mix=v.get("mix", 1.0)),
        _pairs({"gain_db": [-6.0, 2.0], "width": [0.5, 1.4], "mix": [0.7, 0.4]}),
        **_GAIN,
    ),
    "parallel": Case(
        lambda v: Parallel(SR, [Gain(SR, gain_db=v.get("gain_db")), Pan(SR, pan=v.get("pan"))],
                           mix=v.get("mix", 1.0)),
        _pairs({"gain_db": [-3.0, 1.0], "pan": [0.3, -0.6], "mix": [0.8, 0.5]}),
        **_GAIN,
    ),
}

# Exported names that are not effects: the base class every effect subclasses.
NOT_EFFECTS = {"Effect": "the base class of every effect; it has no forward of its own"}


def uncovered(exported: list[str], cases: dict[str, Case] = CASES) -> set[str]:
    """Exported effect names that no case builds (``NOT_EFFECTS`` aside)."""
    built = {case.effect_class().__name__ for case in cases.values()}
    return set(exported) - set(NOT_EFFECTS) - built


# ---------------------------------------------------------------------------- the checks


class Contract:
    """Every check of the contract for a ``case`` (a key of :data:`CASES`).

    A test class subclasses it (``Test...`` so pytest collects it) and parametrises
    ``case``; ``dtype`` and ``device`` come from ``conftest.py``.
    """

    def test_output_layout(self, case, dtype, device):  # noqa: ANN001
        c = CASES[case]
        effect = c.make(dict(c.values[0])).to(dtype=dtype, device=device)
        x = noise(2, c.channels, 256, dtype=dtype, device=device)
        assert_output_layout(effect, x, c.channels_out or c.channels)

    def test_gradcheck(self, case):  # noqa: ANN001
        c = CASES[case]
        if c.no_gradcheck:
            pytest.skip(c.no_gradcheck)
        batch, n = c.gradcheck
        assert_gradcheck(c.make(dict(c.values[0])), noise(batch, c.channels, n), params=c.params,
                         fast_mode=c.fast_mode)

    def test_batch_consistent(self, case, dtype, device):  # noqa: ANN001
        c = CASES[case]
        atol = c.atol[0] if dtype == torch.float32 else c.atol[1]
        x = noise(2, c.channels, c.batch_n, dtype=dtype, device=device)
        assert_batch_consistent(c.make, list(c.values), x, atol=atol)

    def test_not_in_place(self, case, dtype, device):  # noqa: ANN001
        c = CASES[case]
        effect = c.make(dict(c.plain)).to(dtype=dtype, device=device)
        assert_not_in_place(effect, noise(2, c.channels, 256, dtype=dtype, device=device))

    def test_finite_at_extremes(self, case, dtype, device):  # noqa: ANN001
        c = CASES[case]
        effect = c.make(dict(c.plain)).to(dtype=dtype, device=device)
        x = noise(c.extremes_batch, c.channels, 256, dtype=dtype, device=device)
        assert_finite_at_extremes(effect, x, params=c.params)

    def test_preset_round_trip(self, case, tmp_path):  # noqa: ANN001
        c = CASES[case]
        effect = c.make(dict(c.values[1]))
        assert_preset_round_trip(effect, noise(1, c.channels, c.preset_n, dtype=torch.float32), tmp_path)
