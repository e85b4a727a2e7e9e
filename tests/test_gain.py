"""Gain, polarity, pan, balance and width: physical checks (the effect contract is in
test_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch
from contract import noise

from diffmix.effects import Balance, Gain, Pan, Polarity, Width
from diffmix.functional.gain import mid_side

SR = 44100


def test_gain_db_is_amplitude_ratio():
    y = Gain(SR, gain_db=-20.0)(torch.ones(1, 1, 4))
    torch.testing.assert_close(y, torch.full((1, 1, 4), 0.1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("position", [-1.0, -0.5, 0.0, 0.3, 1.0])
def test_pan_law_constant_power_mono(position):
    x = noise(1, 1, 1000)
    y = Pan(SR, pan=position).double()(x)
    torch.testing.assert_close(y.square().sum(1), x.square().sum(1), rtol=1e-9, atol=0)


def test_pan_centre_is_minus_3db_and_extremes_are_hard():
    x = torch.ones(1, 1, 1)
    centre = Pan(SR, pan=0.0)(x).detach().flatten()
    assert 20 * math.log10(float(centre[0])) == pytest.approx(-3.0103, abs=1e-3)
    left = Pan(SR, pan=-1.0)(x).detach().flatten()
    right = Pan(SR, pan=1.0)(x).detach().flatten()
    assert left.tolist() == pytest.approx([1.0, 0.0], abs=1e-7)
    assert right.tolist() == pytest.approx([0.0, 1.0], abs=1e-7)


def _mono_law(place: float) -> tuple[float, float]:
    """The documented mono pan gains (L, R) = (cos θ, sin θ), θ = (place + 1)·π/4."""
    theta = (place + 1) * math.pi / 4
    return math.cos(theta), math.sin(theta)


@pytest.mark.parametrize("position", [-1.0, -0.4, 0.0, 0.6, 1.0])
def test_pan_stereo_preserves_each_channel_power(position):
    x = noise(1, 2, 2000).double()
    y = Pan(SR, pan=position).double()(x).detach()
    assert float(y.square().sum()) == pytest.approx(float(x.square().sum()), rel=0.02)
    if position == 0.0:
        torch.testing.assert_close(y, x)
    # The documented law, exactly: each input channel is a mono source on the mono law;
    # panning right walks the left channel from hard left (-1) to hard right (1) while the
    # right one stays put, and vice versa.
    l_to_l, l_to_r = _mono_law(-1.0 + 2.0 * max(position, 0.0))
    r_to_l, r_to_r = _mono_law(1.0 - 2.0 * max(-position, 0.0))
    left, right = x[:, 0], x[:, 1]
    want = torch.stack([l_to_l * left + r_to_l * right, l_to_r * left + r_to_r * right], 1)
    torch.testing.assert_close(y, want, rtol=1e-9, atol=1e-12)


def test_pan_gradient_finite_at_hard_left_and_right():
    for position in (-1.0, 1.0):
        effect = Pan(SR, pan=position)
        x = noise(1, 1, 64, dtype=torch.float32)
        effect(x).sum().backward()
        grad = effect.params["pan"].raw.grad
        assert grad is not None and torch.isfinite(grad).all()


@pytest.mark.parametrize("position", [-1.0, -0.5, 0.0, 0.9, 1.0])
def test_balance_is_the_documented_constant_power_law(position):
    # Channel gains √2·cos θ and √2·sin θ, θ = (balance + 1)·π/4: unity at 0, one side
    # silent and the other +3 dB at the extremes, and no crosstalk between channels.
    x = noise(1, 2, 1000)
    y = Balance(SR, balance=position).double()(x).detach()
    theta = (position + 1) * math.pi / 4
    want = math.sqrt(2.0) * torch.stack([math.cos(theta) * x[:, 0], math.sin(theta) * x[:, 1]], 1)
    torch.testing.assert_close(y, want, rtol=1e-9, atol=1e-12)


def test_width_zero_is_mono_and_one_is_identity():
    x = noise(1, 2, 512)
    mono = Width(SR, width=0.0).double()(x)
    torch.testing.assert_close(mono[:, 0], mono[:, 1])
    torch.testing.assert_close(Width(SR, width=1.0).double()(x), x)


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0, 4.0])
def test_width_keeps_power_of_decorrelated_stereo(w):
    x = noise(1, 2, 200_000)
    y = Width(SR, width=w).double()(x).detach()
    assert float(y.square().mean()) == pytest.approx(float(x.square().mean()), rel=0.02)
    side = mid_side(y)[:, 1]
    assert float(side.square().mean()) == pytest.approx(
        float(mid_side(x)[:, 1].square().mean()) * w * w * 2 / (1 + w * w), rel=0.02
    )


def test_polarity_per_channel():
    x = noise(1, 2, 16)
    y = Polarity(SR, invert=[True, False])(x)
    torch.testing.assert_close(y[:, 0], -x[:, 0])
    torch.testing.assert_close(y[:, 1], x[:, 1])


@pytest.mark.parametrize(
    "effect, x, match",
    [
        (Gain(SR), torch.zeros(2, 8), r"Gain: audio must be \(batch, channels, time\)"),
        (Width(SR), torch.zeros(1, 1, 8), "Width: audio must have 2 channel"),
        (Pan(SR), torch.zeros(1, 3, 8), "Pan: audio must have 1 or 2 channel"),
        (Gain(SR), torch.tensor([[[0.0, float("nan")]]]), "Gain: audio contains NaN or Inf"),
        (Gain(SR), torch.zeros(1, 1, 0), "Gain: audio is empty"),
    ],
)
def test_bad_input_names_the_problem(effect, x, match):
    with pytest.raises(ValueError, match=match):
        effect(x)


def test_bad_values_name_effect_parameter_and_range():
    with pytest.raises(ValueError, match=r"Pan: pan=2 is outside its range \[-1, 1\]"):
        Pan(SR, pan=2.0)
    with pytest.raises(ValueError, match=r"Gain: unknown parameter\(s\) \['gain'\]"):
        Gain(SR).load_values({"gain": 1.0})
    with pytest.raises(ValueError, match="sample_rate must be a positive integer"):
        Gain(0)


def test_per_item_param_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="gain_db has 3 values along batch, but the audio has 2"):
        Gain(SR, gain_db=[0.0, 1.0, 2.0])(torch.zeros(2, 1, 8))


def test_amp_to_db_has_one_meaning():
    """amp_to_db reads -inf for silence wherever it is imported from; the finite variant
    has its own name."""
    from diffmix.functional import analysis, gain, peaks

    assert peaks.amp_to_db is gain.amp_to_db and analysis.amp_to_db is gain.amp_to_db
    amp = torch.tensor([1.0, 0.1, 0.0], dtype=torch.float64)
    assert gain.amp_to_db(amp).tolist() == [0.0, -20.0, -math.inf]
    assert gain.amp_to_db_floored(amp).tolist() == [0.0, -20.0, -240.0]
    assert gain.amp_to_db_floored(amp, floor=1e-6)[-1] == -120.0
