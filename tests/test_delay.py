"""Delay: fractional placement, the feedback loop against a float64 sample loop and against
theory, ping-pong, tempo sync and bad input (the effect contract is in test_contract.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from contract import noise

from diffmix.effects.delay import Delay
from diffmix.functional.delay import delay, note_to_ms

SR = 44100


def _impulse(n: int, channels: int = 1, dtype=torch.float64, device="cpu") -> torch.Tensor:  # noqa: ANN001
    x = torch.zeros(1, channels, n, dtype=dtype, device=device)
    x[..., 0] = 1.0
    return x


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize("samples", [100.0, 100.25, 237.4, 311.83])
def test_impulse_lands_at_the_fractional_delay(sr, samples, dtype, device):
    # The band-limited reference is the ideal delay e^{-jwD}: compare the delayed impulse's
    # spectrum with it up to 0.9 x Nyquist, in level and in phase.
    n = 1024
    y = delay(_impulse(n, dtype=dtype, device=device), sr, time_ms=samples * 1000.0 / sr, mix=1.0)
    y = y[0, 0].double().cpu().numpy()
    spec = np.fft.rfft(y, 4 * n)
    w = np.linspace(0.0, np.pi, 2 * n + 1)[: int(0.9 * 2 * n)]
    ratio = spec[: len(w)] / np.exp(-1j * w * samples)
    tol = 1e-6 if samples == int(samples) and dtype == torch.float64 else 1e-4
    assert np.abs(20 * np.log10(np.abs(ratio))).max() < 0.005 + tol
    assert np.abs(np.angle(ratio)).max() < 5e-4 + tol
    assert int(np.abs(y).argmax()) == round(samples)
    if samples == int(samples):
        assert abs(y[int(samples)] - 1.0) < 1e-5


def _loop_reference(x: np.ndarray, d: int, g: float, fc: float, sr: int) -> np.ndarray:
    """float64 sample loop: wet[n] = x[n-D] + g * LP(wet)[n-D]."""
    a = math.exp(-2.0 * math.pi * fc / sr)
    wet, lp, state = np.zeros_like(x), np.zeros_like(x), 0.0
    for i in range(len(x)):
        wet[i] = (x[i - d] + g * lp[i - d]) if i >= d else 0.0
        state = (1.0 - a) * wet[i] + a * state
        lp[i] = state
    return wet


@pytest.mark.parametrize("g, fc", [(0.9, 3000.0), (0.5, 12000.0)])
def test_feedback_loop_matches_a_float64_sample_loop(g, fc, dtype):
    x = noise(1, 1, 3000, seed=3)
    d = 73
    y = delay(x.to(dtype), SR, time_ms=d * 1000.0 / SR, feedback=g, damping_hz=fc, mix=1.0)
    ref = _loop_reference(x[0, 0].numpy(), d, g, fc, SR)
    err = np.abs(y[0, 0].double().numpy() - ref).max() / np.abs(ref).max()
    assert err < (1e-9 if dtype == torch.float64 else 2e-4), f"relative error {err:.2g}"


@pytest.mark.parametrize("g, fc", [(0.7, 2500.0), (0.85, 8000.0), (0.6, 20000.0)])
def test_energy_lost_per_repeat_matches_theory(g, fc):
    # Echo k is the impulse through (k-1) loop passes: energy g^(2(k-1)) * mean |LP|^(2(k-1))
    # over frequency (Parseval), LP the one-pole (1-a)/(1-a e^-jw).
    d, repeats = 400, 8
    y = delay(_impulse(d * (repeats + 1)), SR, time_ms=d * 1000.0 / SR, feedback=g, damping_hz=fc, mix=1.0)
    echoes = y[0, 0, d:].reshape(repeats, d).square().sum(-1).numpy()
    a = math.exp(-2.0 * math.pi * fc / SR)
    w = np.linspace(0.0, 2.0 * np.pi, 1 << 16, endpoint=False)
    lp2 = np.abs((1.0 - a) / (1.0 - a * np.exp(-1j * w))) ** 2
    theory = np.array([g ** (2 * k) * np.mean(lp2**k) for k in range(repeats)])
    np.testing.assert_allclose(echoes / echoes[0], theory, rtol=1e-6)
    # Even wide open (20 kHz at 44.1 kHz) the one-pole keeps only (1-a)/(1+a) ~ 0.89 of the
    # energy per pass, so a repeat loses a little more than g^2, but not much more.
    if fc == 20000.0:
        assert 0.85 * g * g < echoes[1] / echoes[0] < g * g


@pytest.mark.parametrize("feedback, mix", [(0.0, 0.5), (0.5, 0.5), (0.7, 1.0), (0.3, 0.25)])
def test_echoes_match_pedalboard_delay(feedback, mix):
    """pedalboard's Delay (JUCE) has the same feedback and dry/wet law and no loop filter.
    With the damping wide open, a 200 Hz tone burst (well below its cut-off) comes back with
    the same echo levels to 0.01 dB and the same waveform to 0.5 % of full scale."""
    import pedalboard as pb

    sr, burst, d = 48000, 2400, 12000  # 50 ms burst, 250 ms delay
    x = np.zeros(2 * sr, np.float32)
    x[:burst] = np.sin(2 * np.pi * 200.0 * np.arange(burst) / sr) * np.hanning(burst)
    ours = Delay(sr, time_ms=250.0, feedback=feedback, damping_hz=20000.0, mix=mix)(
        torch.from_numpy(x).view(1, 1, -1)).detach().numpy()[0, 0]
    theirs = pb.Delay(delay_seconds=0.25, feedback=feedback, mix=mix)(x[None], sr)[0]

    def energy(y: np.ndarray) -> np.ndarray:  # the dry burst, then four repeats
        return np.array([np.sum(y[k * d : k * d + burst] ** 2) for k in range(5)])

    # Compare only the segments that carry sound: no dry at mix 1, one echo at feedback 0.
    heard = [k for k in range(5) if (k > 0 or mix < 1.0) and (k < 2 or feedback > 0.0)]
    got, want = (10 * np.log10(energy(y)[heard]) for y in (ours, theirs))
    np.testing.assert_allclose(got, want, atol=0.01)
    assert np.abs(ours - theirs).max() < 5e-3


def test_ping_pong_alternates_sides():
    d = 300
    x = _impulse(d * 5, channels=2)
    y = delay(x, SR, time_ms=d * 1000.0 / SR, feedback=0.5, damping_hz=20000.0, mix=1.0, ping_pong=True)
    peaks = y[0, :, d::d][:, :4].abs()
    left, right = peaks[0].tolist(), peaks[1].tolist()
    assert left[0] > 0.49 and left[2] > 0.1 and right[1] > 0.2 and right[3] > 0.02
    assert left[1] < 1e-6 and left[3] < 1e-6 and right[0] < 1e-6 and right[2] < 1e-6


def test_time_is_differentiable_and_points_the_right_way():
    target = delay(_impulse(512), SR, time_ms=5.0, mix=1.0)
    effect = Delay(SR, time_ms=4.5, feedback=0.0, mix=1.0).double()
    loss = (effect(_impulse(512)) - target).square().sum()
    loss.backward()
    # Increasing the (too short) time lowers the loss.
    assert effect.params["time_ms"].raw.grad < 0


def test_tempo_sync():
    assert note_to_ms(120.0, "1/4") == 500.0
    assert note_to_ms(120.0, "1/8d") == 375.0
    assert note_to_ms(90.0, "1/4t") == pytest.approx(444.444, abs=1e-3)
    effect = Delay.synced(48000, bpm=140.0, note="1/16", feedback=0.2)
    assert float(effect.p("time_ms").detach()) == pytest.approx(60000.0 / 140.0 / 4.0, rel=1e-6)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: Delay(SR, ping_pong=True)(torch.zeros(1, 1, 64)), "Delay: audio must have 2 channel"),
        (lambda: delay(torch.zeros(1, 1, 64), SR, time_ms=5.0, ping_pong=True), "ping_pong needs stereo"),
        (lambda: Delay(SR, feedback=1.0), r"Delay: feedback=1 is outside its range"),
        (lambda: Delay(SR, time_ms=0.0), r"Delay: time_ms=0 is outside its range"),
        (lambda: Delay(SR)(torch.zeros(64)), r"Delay: audio must be \(batch, channels, time\)"),
        (lambda: note_to_ms(120.0, "1/3"), "unknown note value '1/3'"),
        (lambda: note_to_ms(0.0), "bpm must be a positive number"),
        (lambda: Delay(SR, ping_pong="yes"), "ping_pong must be True or False"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_delay_is_smooth_across_whole_samples():
    # The windowed-sinc kernel re-centres on the next whole sample; the output must not jump.
    x = noise(1, 1, 2048, seed=5)
    below = delay(x, SR, time_ms=(100.0 - 1e-7) * 1000.0 / SR, feedback=0.6, mix=1.0)
    above = delay(x, SR, time_ms=(100.0 + 1e-7) * 1000.0 / SR, feedback=0.6, mix=1.0)
    assert float((above - below).abs().max()) < 1e-5
