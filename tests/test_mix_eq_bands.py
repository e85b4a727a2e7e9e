"""The mix fit's ``eq bands`` stage (diffmix.mixing.wiring.eq_band_start): each strip EQ's
band frequencies, gains and Qs from the tone the closed-form start measured.

A stem goes through a hidden EQ with one to three bells at random frequencies, gains and
Qs (seed printed); the stage must recover the EQ's response where the stem has energy,
which the closed form's EQ, its gains fitted at the console's fixed frequencies, cannot.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffmix.console import Console
from diffmix.effects.eq import ParametricEQ
from diffmix.effects.gain import Gain, Pan, Width
from diffmix.functional.eq import eq_coeffs
from diffmix.functional.filters import sos_response
from diffmix.mixing.wiring import console_estimate, eq_band_start, initialise_console

SR = 44100
BANDS = ("low_shelf", "peak", "peak", "peak", "high_shelf")
FREQS = (120.0, 400.0, 1500.0, 5000.0, 9000.0)  # configs/console/default.yaml's strip EQ
# Where the comparison is made: half-octave bands (the start's resolution) over which the
# test stem has energy.
LOW_HZ, HIGH_HZ = 45.0, 14000.0


def _stem(seconds: float, seed: int) -> torch.Tensor:
    """``(1, 1, 2, T)``: pink noise, the two channels independent with different tilts
    (one darker), with a rhythm."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    f = torch.fft.rfftfreq(n, 1 / SR, dtype=torch.float64)
    spec = torch.fft.rfft(torch.randn(2, n, generator=g, dtype=torch.float64))
    tilt = torch.stack([f.clamp_min(20.0) ** -0.5, f.clamp_min(20.0) ** -0.7])
    x = torch.fft.irfft(spec * tilt * ((f >= 30) & (f <= 18000)), n)
    t = torch.arange(n, dtype=torch.float64) / SR
    x = x * (0.3 + torch.relu(torch.sin(2 * math.pi * 2.0 * t)))
    return (x / x.square().mean().sqrt() * 0.1).float()[None, None]


def _console() -> Console:
    strip = {"input": Gain(SR), "eq": ParametricEQ(SR, bands=list(BANDS), freq_hz=list(FREQS)),
             "width": Width(SR), "pan": Pan(SR), "fader": Gain(SR)}
    return Console(SR, 1, strip=strip)


def _draw(seed: int, between: bool) -> dict[str, torch.Tensor]:
    """A hidden EQ: 1-3 bells at random frequencies (``between``: midway between the
    console's own, Q 2-3, |gain| 4-6 dB), gains and Qs, on a random level and pan."""
    rng = np.random.default_rng(seed)
    freq, q, gain = list(FREQS), [0.7071] * 5, [0.0] * 5
    for j in rng.choice([1, 2, 3], size=int(rng.integers(1, 4)), replace=False):
        if between:
            freq[j] = math.sqrt(FREQS[j] * FREQS[j + 1]) * 2 ** rng.uniform(-0.2, 0.2)
            q[j] = rng.uniform(2.0, 3.0)
            gain[j] = rng.choice([-1, 1]) * rng.uniform(4.0, 6.0)
        else:
            freq[j] = math.exp(rng.uniform(math.log(150.0), math.log(8000.0)))
            q[j] = math.exp(rng.uniform(math.log(0.5), math.log(3.0)))
            gain[j] = rng.uniform(-6.0, 6.0)
    return {
        "strip.input.gain_db": torch.tensor([rng.uniform(-6.0, 6.0)]),
        "strip.pan.pan": torch.tensor([rng.uniform(-0.6, 0.6)]),
        "strip.eq.freq_hz": torch.tensor([freq]),
        "strip.eq.q": torch.tensor([q]),
        "strip.eq.gain_db": torch.tensor([gain]),
    }


def _strip_db(console: Console) -> torch.Tensor:
    """The strip's input gain plus its EQ's power response (dB), averaged over each
    half-octave band between LOW_HZ and HIGH_HZ, less its mean (the level is the
    placement's)."""
    v = console.named_values()
    fqg = (v[f"strip.eq.{k}"].exact().double().reshape(5) for k in ("freq_hz", "q", "gain_db"))
    b, a = eq_coeffs(BANDS, *fqg, SR)
    n_b = int(2 * math.log2(HIGH_HZ / LOW_HZ))
    fine = LOW_HZ * 2.0 ** ((torch.arange(n_b * 32, dtype=torch.float64) + 0.5) / 64)
    p = sos_response(b, a, fine, SR).abs().square().reshape(n_b, 32).mean(-1)
    db = 10 * torch.log10(p) + float(v["strip.input.gain_db"].exact())
    return db - db.mean()


def _fit(stems: torch.Tensor, hidden: dict[str, torch.Tensor]) -> tuple[float, float, dict]:
    """The largest band error (dB) of the closed form's EQ and of the ``eq bands`` stage."""
    truth = _console()
    truth.load_values(hidden)
    with torch.no_grad():
        ref = truth(stems)
        fitted = _console()
        est = console_estimate(fitted, stems, ref, SR, coherent=True)
        initialise_console(fitted, stems, ref, SR, estimate=est)
        fixed = float((_strip_db(fitted) - _strip_db(truth)).abs().max())
        report = eq_band_start(fitted, est, SR)
        fitted_err = float((_strip_db(fitted) - _strip_db(truth)).abs().max())
    return fixed, fitted_err, report


@pytest.mark.parametrize("seed", [int(s) for s in np.random.SeedSequence(17).generate_state(3) % 10000])
def test_eq_bands_recover_a_hidden_eq_at_random_frequencies(seed):
    hidden = _draw(seed, between=False)
    fixed, err, report = _fit(_stem(3.0, seed), hidden)
    msg = f"seed {seed}: hidden {hidden}, fitted {report['bands']}, fixed-frequency error {fixed:.2f} dB"
    assert err < 0.6, f"{msg}, error {err:.2f} dB"
    assert err <= fixed + 0.05, msg


@pytest.mark.parametrize("seed", [5, 6])
def test_the_fixed_frequency_eq_cannot_follow_bells_between_its_frequencies(seed):
    hidden = _draw(seed, between=True)
    fixed, err, report = _fit(_stem(3.0, seed), hidden)
    msg = f"seed {seed}: hidden {hidden}, fitted {report['bands']}: fixed {fixed:.2f} dB, fitted {err:.2f} dB"
    assert fixed > 1.5, msg
    assert err < 0.6, msg


def test_fit_console_runs_and_reports_the_eq_bands_stage():
    """Through the fit: the stage is judged on the full length, listed in the report, kept
    on a stem through bells between the console's frequencies, and its result stands."""
    from diffmix.mixing.console_fit import MixFitOptions, fit_console

    seed = 7
    stems = _stem(3.0, seed)
    truth = _console()
    truth.load_values(_draw(seed, between=True))
    with torch.no_grad():
        ref = truth(stems)
    fitted = _console()
    options = MixFitOptions(
        weights={"mrstft": 1.0, "tone_mid": 0.01, "tone_side": 0.005, "width": 0.005, "loudness": 0.01},
        params=[], steps=0, compressor_start=False, placement=False,
    )
    report = fit_console(fitted, stems, ref, SR, options, optimizer=lambda p: torch.optim.Adam(p))
    stage = next(s for s in report["stages"] if s["stage"] == "eq bands")
    assert stage["kept"] and stage["after"] < stage["before"], report["stages"]
    err = float((_strip_db(fitted) - _strip_db(truth)).abs().max())
    assert err < 0.6, f"seed {seed}: {err:.2f} dB, {report['init']['eq bands']['bands']}"
    # The same fit without the stage (nor the eq refine, which fits the frequencies too):
    # the fixed-frequency EQ stays off.
    fixed = _console()
    without = MixFitOptions(**{**vars(options), "eq_bands": False, "eq_refine": False})
    fit_console(fixed, stems, ref, SR, without, optimizer=lambda p: torch.optim.Adam(p))
    assert float((_strip_db(fixed) - _strip_db(truth)).abs().max()) > 1.5


def test_fit_eq_bands_leaves_bands_it_does_not_move_and_silent_stems_as_they_are():
    """A band type without a movable frequency (a resonant high-pass, a notch) keeps its
    values exactly, even outside what the fit may give a bell (Q 8 and 9); a stem with no
    energy keeps its EQ and gets no offset."""
    from diffmix.mixing.analysis import band_edges
    from diffmix.mixing.solvers import MixEstimate, fit_eq_bands

    edges = band_edges(SR)
    centres = torch.as_tensor(np.sqrt(edges[:-1] * edges[1:]))
    tone = torch.zeros(2, len(centres), dtype=torch.float64)
    tone[:, 8] = 3.0
    weight = torch.full_like(tone, 1.0 / len(centres))
    weight[1] = 0.0
    est = MixEstimate(gain_db=torch.zeros(2), band_db=tone, weight=weight, centres_hz=centres,
                      explained=1.0, tone_db=tone)
    freq = torch.tensor([[30.0, 1000.0, 3000.0, 8000.0]] * 2)
    q = torch.tensor([[8.0, 0.7, 9.0, 0.7]] * 2)
    out = fit_eq_bands(est, ("highpass", "peak", "notch", "high_shelf"), freq, q, torch.zeros(2, 4), SR,
                       freq_range=(20.0, 19845.0), q_range=(0.1, 10.0))
    for k, start in (("freq_hz", freq), ("q", q)):
        assert torch.equal(out[k][:, [0, 2]], start[:, [0, 2]].double()), out[k]
        assert torch.equal(out[k][1], start[1].double()), out[k]
    assert float(out["offset_db"][1]) == 0.0 and not out["gain_db"][1].any()
    assert float(out["rms_db"][0]) < float(out["rms_fixed_db"][0])
