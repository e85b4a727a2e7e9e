"""The mix fit's closed-form first stage (diffmix.mix_init): gains and tone from band powers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffmix.console import Console
from diffmix.effects.eq import ParametricEQ
from diffmix.effects.gain import Gain, Pan
from diffmix.functional.eq import eq_coeffs
from diffmix.functional.filters import sos_response
from diffmix.functional.loudness import integrated_loudness
from diffmix.jobs.mix import _excerpt_pool
from diffmix.mix_init import band_edges, estimate_mix, fit_eq_gains, initialise_console

SR = 44100
BANDS = ("low_shelf", "peak", "peak", "high_shelf")
FREQS = (150.0, 800.0, 3000.0, 8000.0)


def _band_noise(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    spec = torch.fft.rfft(torch.randn(2, n, generator=gen, dtype=torch.float64))
    f = torch.fft.rfftfreq(n, 1 / SR, dtype=torch.float64)
    return torch.fft.irfft(spec * ((f >= lo) & (f < hi)), n)


def _stems(seconds: float = 3.0, seed: int = 0) -> torch.Tensor:
    """Four stems with their own spectra and rhythms (as instruments have): ``(4, 2, T)``."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    t = torch.arange(n, dtype=torch.float64) / SR
    parts = []
    for (lo, hi), rate, phase in (
        ((30, 250), 2.0, 0.0),
        ((200, 2000), 3.0, 0.3),
        ((1500, 8000), 5.0, 0.6),
        ((40, 16000), 1.25, 0.1),
    ):
        env = (0.2 + torch.relu(torch.sin(2 * math.pi * (rate * t + phase)))) ** 2
        x = _band_noise(n, lo, hi, g) * env
        parts.append(x / x.square().mean().sqrt() * 0.05)
    return torch.stack(parts)


def _lufs(x: torch.Tensor) -> float:
    return float(integrated_loudness(x.unsqueeze(0), SR)[0])


def test_band_edges_cover_the_audible_range_in_half_octaves():
    e = band_edges(SR)
    assert e[0] == pytest.approx(22.4) and e[-1] == pytest.approx(20000.0)
    ratios = e[1:-1] / e[:-2]
    assert np.allclose(ratios, math.sqrt(2.0))


@pytest.mark.parametrize("lag", [0, 20])
def test_estimate_recovers_gains_including_a_quiet_stem(lag):
    stems = _stems()
    gains_db = torch.tensor([4.0, -3.0, -20.0, 1.5], dtype=torch.float64)
    ref = (stems * (10 ** (gains_db / 20)).view(-1, 1, 1)).sum(0)
    # A producer's render is not sample-aligned with its stems: band powers don't care.
    ref = torch.roll(ref, lag, dims=-1)
    est = estimate_mix(stems, ref, SR)
    err = (est.gain_db.double() - gains_db).abs()
    # 3 s of noise leaves ~30 frames; cross-terms between stems put the quiet one at the
    # 1 dB bar's edge, the others well inside it.
    assert err[[0, 1, 3]].max() < 0.3 and err[2] < 1.0, est.gain_db
    assert est.explained > 0.9
    # Flat tone: every band a stem carries is at its broadband gain.
    heard = est.weight[[0, 1, 3]] > 0.05
    dev = (est.band_db - est.gain_db.unsqueeze(1))[[0, 1, 3]][heard]
    assert dev.abs().max() < 1.0


def test_estimate_recovers_tone_and_the_eq_fit_reproduces_it():
    stems = _stems(seed=1)
    n = stems.shape[0]
    shelf = torch.tensor(
        [[6.0, 0.0, 0.0, -4.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, -5.0, 0.0], [-3.0, 0.0, 0.0, 4.0]],
        dtype=torch.float64,
    )
    eq = ParametricEQ(SR, bands=list(BANDS), freq_hz=list(FREQS), gain_db=shelf.unsqueeze(1))
    ref = eq(stems).sum(0)
    est = estimate_mix(stems, ref, SR)
    gains = fit_eq_gains(est, BANDS, torch.tensor(FREQS), torch.full((4,), 1 / math.sqrt(2)), SR)
    assert gains.shape == (n, 4)
    # Judge by what is heard: the fitted gain + EQ against the true EQ, where each stem
    # has energy (a shelf over a band a stem never reaches is unobservable, and harmless).
    f = est.centres_hz.double()

    def resp(g):  # noqa: E306
        b, a = eq_coeffs(
            BANDS,
            torch.tensor(FREQS).double().expand(n, 4),
            torch.full((n, 4), 1 / math.sqrt(2), dtype=torch.float64),
            g,
            SR,
        )
        return 20 * torch.log10(sos_response(b, a, f, SR).abs())

    fitted = resp(gains) + est.gain_db.double().unsqueeze(1)
    heard = est.weight > 0.05
    assert (fitted - resp(shelf))[heard].abs().max() < 1.5


def test_initialise_console_puts_each_contribution_within_1_db():
    stems = _stems(seed=2).float()
    n = stems.shape[0]

    def strip():  # noqa: ANN202
        return {
            "input": Gain(SR),
            "eq": ParametricEQ(SR, bands=list(BANDS), freq_hz=list(FREQS)),
            "pan": Pan(SR),
        }

    truth = Console(SR, n, strip=strip())
    truth.load_values(
        {
            "strip.input.gain_db": torch.tensor([3.0, -6.0, -20.0, 0.0]),
            "strip.eq.gain_db": torch.tensor([[4.0, 0, 0, -3], [0, -4, 0, 0], [0, 0, 3, 0], [2, 0, 0, 0]]),
        }
    )
    fitted = Console(SR, n, strip=strip())
    with torch.no_grad():
        ref = truth(stems.unsqueeze(0))
        summary = initialise_console(fitted, stems.unsqueeze(0), ref, SR)
        assert summary["method"] == "nnls" and len(summary["gain_db"]) == n
        for k in range(n):
            solo = torch.zeros_like(stems)
            solo[k] = stems[k]
            want = _lufs(truth(solo.unsqueeze(0))[0].double())
            got = _lufs(fitted(solo.unsqueeze(0))[0].double())
            assert abs(got - want) < 1.0, (k, got, want)


def test_a_silent_stem_keeps_a_finite_neutral_gain():
    stems = _stems(2.0)
    stems[1] = 0.0
    est = estimate_mix(stems, stems.sum(0), SR)
    assert torch.isfinite(est.gain_db).all() and torch.isfinite(est.band_db).all()
    assert float(est.gain_db[1]) == 0.0


def test_initialise_console_leaves_a_strip_without_input_gain_alone():
    stems = _stems(1.0).float()
    console = Console(SR, 4, strip={"pan": Pan(SR)})
    before = {k: p.exact().clone() for k, p in console.named_values().items()}
    summary = initialise_console(console, stems.unsqueeze(0), stems.sum(0, keepdim=True), SR)
    assert summary["method"] == "none"
    assert all(torch.equal(before[k], p.exact()) for k, p in console.named_values().items())


def test_excerpt_pool_spreads_over_the_song_and_is_fixed():
    pool = _excerpt_pool(30 * SR, SR, 8)
    assert pool == _excerpt_pool(30 * SR, SR, 8)
    assert len(pool) == 8 and pool[0] == 0 and pool[-1] == 29 * SR
    assert _excerpt_pool(SR, 2 * SR, 8) == [0]


@pytest.mark.parametrize("lag", [-37, 0, 20])
def test_estimate_lag_finds_the_shift(lag):
    stems = _stems(1.0)
    ref = torch.roll(stems.sum(0), lag, dims=-1)
    from diffmix.mix_init import estimate_lag

    assert estimate_lag(stems.sum(0), ref, 2205) == lag
