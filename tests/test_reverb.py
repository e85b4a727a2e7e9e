"""Reverb: RT60 by Schroeder integration per band at 44.1 and 48 kHz, batch consistency with
the automatic tail, determinism, width, pre-delay, level and bad input (the effect contract
is in test_contract.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal as ss
import torch
from contract import assert_batch_consistent, noise

from diffmix.effects.reverb import Reverb
from diffmix.functional.reverb import reverb, reverb_ir

SR = 44100


@pytest.mark.parametrize("channels", [1, 2])
def test_batch_consistent_with_automatic_tail(channels, dtype, device):
    # Items alone get shorter IRs than the batch (whose tail follows its longest RT60);
    # the cut is 90 dB down, so they agree to float32 resolution.
    per_item = [{"rt60_s": 0.1, "rt60_low_ratio": 1.0}, {"rt60_s": 0.25, "rt60_low_ratio": 2.0}]
    x = noise(2, channels, 2048, dtype=dtype, device=device)
    assert_batch_consistent(lambda v: Reverb(SR, **v), per_item, x, atol=1e-4)


def _t30(h: np.ndarray, sr: int) -> float:
    """RT60 from Schroeder's backward-integrated decay, fitted from -5 to -35 dB (T30).

    ``h`` is ``(time,)`` or ``(channels, time)``; channels' decay curves are averaged, as
    ISO 3382 averages positions.
    """
    edc = np.cumsum((np.atleast_2d(h) ** 2)[:, ::-1], axis=-1)[:, ::-1].sum(0)
    edc_db = 10.0 * np.log10(edc / edc[0])
    i5, i35 = int(np.argmax(edc_db <= -5.0)), int(np.argmax(edc_db <= -35.0))
    slope = np.polyfit(np.arange(i5, i35) / sr, edc_db[i5:i35], 1)[0]
    return -60.0 / slope


def _param(v: float) -> torch.Tensor:
    return torch.tensor([[v]], dtype=torch.float64)


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize("rt60, low, high", [(1.2, 1.8, 0.5), (0.5, 1.0, 1.0), (2.5, 0.6, 0.4)])
def test_rt60_per_band_by_schroeder_integration(sr, rt60, low, high):
    length = int(1.1 * rt60 * max(low, high, 1.0) * sr)
    h = reverb_ir(
        sr,
        length,
        rt60_s=_param(rt60),
        rt60_low_ratio=_param(low),
        rt60_high_ratio=_param(high),
        early_late=_param(1.0),
        width=_param(1.0),
        channels=2,
    )[0].numpy()
    # Bands well inside the low (< 250 Hz), mid and high (> 4 kHz) bands. The low band is
    # measured over 40-180 Hz: a single octave that low holds too few degrees of freedom
    # for a 10 % estimate of any noise-like decay (Davy's variance formula).
    for edges, want in (
        ((40.0, 180.0), rt60 * low),
        ((707.0, 1414.0), rt60),
        ((5657.0, 11314.0), rt60 * high),
    ):
        sos = ss.butter(4, edges, "bandpass", fs=sr, output="sos")
        got = _t30(ss.sosfilt(sos, h, axis=-1), sr)
        assert got == pytest.approx(want, rel=0.10), f"{edges} Hz band"
    if low == high == 1.0:
        assert _t30(h[0], sr) == pytest.approx(rt60, rel=0.05)


def test_measured_rt60_of_the_rendered_effect():
    sr = 48000
    x = torch.zeros(1, 1, int(1.2 * sr), dtype=torch.float64)
    x[..., 0] = 1.0
    y = Reverb(
        sr, rt60_s=0.9, rt60_low_ratio=1.0, rt60_high_ratio=1.0, early_late=0.8, pre_delay_ms=20.0, mix=1.0
    ).double()(x)
    assert _t30(y[0, 0].detach().numpy(), sr) == pytest.approx(0.9, rel=0.10)


def test_deterministic_between_calls_and_instances():
    x = noise(2, 2, 4000, dtype=torch.float32)
    a = Reverb(SR, rt60_s=0.4)(x)
    assert torch.equal(a, Reverb(SR, rt60_s=0.4)(x))
    assert torch.equal(
        a,
        reverb(
            x,
            SR,
            rt60_s=0.4,
            rt60_low_ratio=1.2,
            rt60_high_ratio=0.6,
            pre_delay_ms=10.0,
            early_late=0.7,
            width=1.0,
            mix=0.3,
        ),
    )
    assert not torch.equal(a, Reverb(SR, rt60_s=0.4, seed=1)(x))


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_width_sets_interchannel_correlation(w):
    h = reverb_ir(
        SR,
        SR,
        rt60_s=_param(1.0),
        rt60_low_ratio=_param(1.0),
        rt60_high_ratio=_param(1.0),
        early_late=_param(1.0),
        width=_param(w),
        channels=2,
    )[0].numpy()
    corr = np.corrcoef(h)[0, 1]
    assert corr == pytest.approx((1 - w * w) / (1 + w * w), abs=0.03)


def test_pre_delay_shifts_the_onset():
    x = torch.zeros(1, 1, 8000, dtype=torch.float64)
    x[..., 0] = 1.0
    for pre in (0.0, 50.0):
        y = reverb(x, SR, rt60_s=0.5, pre_delay_ms=pre, early_late=0.0, mix=1.0)[0, 0]
        first = int(torch.nonzero(y.abs() > 1e-3)[0])
        # The first early reflection comes 3 ms or more after the pre-delay.
        assert pre * SR / 1000 + 0.003 * SR - 2 <= first <= pre * SR / 1000 + 0.02 * SR


def test_wet_level_is_independent_of_decay_time():
    x = noise(1, 2, 3 * SR, dtype=torch.float64)
    levels = []
    for rt60 in (0.3, 1.0, 2.0):
        wet = reverb(x, SR, rt60_s=rt60, mix=1.0, tail_s=2.0 * rt60)[..., SR:]
        levels.append(10 * math.log10(float(wet.square().mean() / x[..., SR:].square().mean())))
    assert max(abs(v) for v in levels) < 1.0, levels


def test_gradients_reach_every_parameter():
    effect = Reverb(SR, tail_s=0.1).double()
    effect(noise(1, 2, 2000)).square().sum().backward()
    for name, bp in effect.params.items():
        assert bp.raw.grad is not None and bp.raw.grad.abs() > 0, name


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: Reverb(SR)(torch.zeros(1, 3, 64)), "Reverb: audio must have 1 or 2 channel"),
        (lambda: Reverb(SR, crossover_hz=(300.0, 400.0)), "Reverb: crossover_hz"),
        (lambda: Reverb(SR, rt60_s=20.0), r"Reverb: rt60_s=20 is outside its range"),
        (lambda: Reverb(SR, tail_s=-1.0), "Reverb: tail_s must be a positive number"),
        (lambda: reverb(torch.zeros(1, 2, 64), SR, tail_s=0.0), "reverb: tail_s must be"),
        (lambda: Reverb(SR, seed=1.5), "Reverb: seed must be an integer"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
