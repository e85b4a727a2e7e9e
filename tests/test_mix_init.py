"""The mix fit's closed-form first stage (diffmix.mixing): gains and tone from band powers."""

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
from diffmix.mixing.analysis import band_edges
from diffmix.mixing.console_fit import excerpt_pool as _excerpt_pool
from diffmix.mixing.solvers import estimate_mix, fit_eq_gains
from diffmix.mixing.wiring import initialise_console

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
    assert est.lag == lag
    # A lag the caller already found (the mix job's alignment) is used as given.
    given = estimate_mix(stems, ref, SR, lag=lag)
    assert given.lag == lag and torch.equal(given.gain_db, est.gain_db)
    wrong = estimate_mix(stems, ref, SR, lag=lag + 400)
    assert wrong.lag == lag + 400 and wrong.explained < est.explained


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
    from diffmix.mixing.analysis import estimate_lag

    assert estimate_lag(stems.sum(0), ref, 2205) == lag


@pytest.mark.parametrize("seconds", [1.0, 3.0])  # one zero-padded frame; averaged frames
@pytest.mark.parametrize("lag", [-20, 0, 13])
def test_estimate_lag_is_not_pulled_by_a_filters_phase_on_a_loud_low_stem(lag, seconds):
    # The mechanism of the hidden-setting failure on Alf42red seed 5003 (every track's
    # loudness off by up to 11 LU): the reference's kick went through the strip's high-pass
    # and a low shelf, which turn the phase of its 55 Hz body; a plain cross-correlation,
    # ruled by that body's energy, peaked 226 samples early, and the whole fit ran on a
    # shifted timeline. Here a 2nd-order high-pass at 80 Hz turns a 55 Hz kick by ~100
    # degrees: the plain peak sits ~100 samples off; weighed by coherence, the delay holds.
    from scipy.signal import butter, sosfilt

    from diffmix.mixing.analysis import estimate_lag

    seed = int(np.random.default_rng().integers(1 << 31))
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    kick = _kick(seconds, 55.0, seed, 0.0)
    t = torch.arange(n, dtype=torch.float64) / SR
    hats = torch.randn(2, n, generator=g, dtype=torch.float64) * torch.exp(-((t + 0.25) % 0.25) * 40) * 0.05
    mix = torch.from_numpy(sosfilt(butter(2, 80.0, "highpass", fs=SR, output="sos"), kick.numpy())) + hats
    ref = torch.nn.functional.pad(mix, (lag, 0))[..., :n] if lag >= 0 else torch.nn.functional.pad(
        mix[..., -lag:], (0, -lag)
    )
    spec = torch.fft.rfft(ref.mean(0), 2 * n) * torch.fft.rfft((kick + hats).mean(0), 2 * n).conj()
    xc = torch.fft.irfft(spec)
    plain = int(torch.argmax(torch.cat([xc[-2205:], xc[:2206]]))) - 2205
    assert abs(plain - lag) > 50  # the case shows the mechanism
    assert estimate_lag(kick + hats, ref, 2205) == lag


def _analytic(seconds: float, delay: float, seed: int, taper: bool = False) -> torch.Tensor:
    """Three stems, each a sum of random sinusoids under a slow sinusoidal envelope, evaluated
    at ``t - delay`` (a delay of any real number of samples, exact by construction):
    ``(3, 2, T)``. Frequencies up to 0.85 x Nyquist. ``taper``: faded in and out (sin^2 over
    the length), so that a shift brings in (near) silence at either end."""
    rng = np.random.default_rng(seed)
    t = (np.arange(int(seconds * SR)) - delay) / SR
    fade = np.sin(np.pi * t / seconds) ** 2 if taper else 1.0
    out = []
    for _ in range(3):
        f = rng.uniform(40.0, 0.85 * SR / 2, 60)
        amp = rng.uniform(0.2, 1.0, 60) / np.sqrt(f / 40.0)  # falling toward the highs
        ph = rng.uniform(0, 2 * np.pi, (2, 60))
        env = 1.0 + 0.6 * np.sin(2 * np.pi * rng.uniform(1.0, 4.0) * t + rng.uniform(0, 2 * np.pi))
        x = np.stack([(amp * np.cos(2 * np.pi * f * t[:, None] + ph[c])).sum(-1) for c in range(2)]) * env
        out.append(x * fade / np.sqrt(np.sum(amp**2)) * 0.05)  # a scale that does not depend on the delay
    return torch.from_numpy(np.stack(out))


# One zero-padded frame: its edges, where the two signals do not overlap, weigh as much as
# the rest and pull the peak (0.19 samples at worst in 240 draws of the lags below; a first
# bound of 0.1 failed in CI at 0.13): only the nearest whole sample, what the console's
# offset takes, is asserted there. Hann frames averaged: measured within 0.002 samples.
@pytest.mark.parametrize(("seconds", "tol"), [(0.5, 0.5), (1.5, 0.01)])
def test_estimate_delay_finds_a_whole_and_a_fractional_lag(seconds, tol):
    # CapDan's producer render lags its stems by 19.5 samples: the whole-sample peak sits on
    # -19 or -20 by a hair (0.4825 vs 0.4790), and which one decided whether the fit's
    # gradient steps were kept (the producer's MR-STFT 85 % or 90 % of the baseline).
    from diffmix.mixing.analysis import estimate_delay, estimate_lag

    seed = int(np.random.default_rng().integers(1 << 31))
    print("seed", seed)
    frac = float(np.random.default_rng(seed).uniform(-1.0, 1.0))
    stems = _analytic(seconds, 0.0, seed)
    for lag in (-19.5, 0.0, 13.0, 7.0 + frac):
        ref = _analytic(seconds, lag, seed).sum(0) * 0.7
        found = estimate_delay(stems.sum(0), ref, 2205)
        assert found == pytest.approx(lag, abs=tol), (lag, found)
        assert abs(estimate_lag(stems.sum(0), ref, 2205) - lag) < 1.0


def test_fractional_shift_is_an_analytic_delay():
    from diffmix.functional.delay import fractional_shift

    seed = int(np.random.default_rng().integers(1 << 31))
    print("seed", seed)
    d = float(np.random.default_rng(seed).uniform(-30.0, 30.0))
    x = _analytic(0.25, 0.0, seed, taper=True)
    for shift in (d, -0.5, 3.0):
        want = _analytic(0.25, shift, seed, taper=True)
        got = fractional_shift(x, shift)
        inner = slice(32, -32)  # what moved in from past an end is not in x
        err = (got - want)[..., inner].square().mean().sqrt() / want.square().mean().sqrt()
        print(shift, float(err))
        assert float(err) < 1e-6, (shift, float(err))


def test_a_half_sample_lag_moved_out_leaves_the_coherent_start_nothing_to_explain():
    # The mix job moves the console by whole samples and the reference by the rest; without
    # the rest, each band's complex gain cannot follow the half sample's phase across the
    # band and the fit is left a residual (which it spreads over the stems that share it).
    from diffmix.functional.delay import fractional_shift
    from diffmix.mixing.analysis import estimate_delay

    seed = int(np.random.default_rng().integers(1 << 31))
    print("seed", seed)
    stems = _stems(3.0, seed=seed % 1000)
    gains = torch.tensor([2.0, 0.5, 1.0, 0.25], dtype=torch.float64)
    ref = fractional_shift((stems * gains.view(-1, 1, 1)).sum(0), 7.5)
    delay = round(estimate_delay(stems.sum(0), ref, 2205), 2)
    assert delay == pytest.approx(7.5, abs=0.01)
    whole = round(delay)
    moved = estimate_mix(stems, fractional_shift(ref, whole - delay), SR, coherent=True, lag=whole)
    only_whole = estimate_mix(stems, ref, SR, coherent=True, lag=whole)
    assert 1 - moved.explained < 1e-6 < 1e-4 < 1 - only_whole.explained
    assert torch.allclose(moved.matrix[3], 0.25 * torch.eye(2, dtype=moved.matrix.dtype), atol=1e-3)


# --- the coherent (complex-spectrum) solve, the per-track solo renders and the polish ---


def _kick(seconds: float, f0: float, seed: int, click: float) -> torch.Tensor:
    """A kick drum on every half second: a falling sine and a noise click, ``(2, T)``."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    phase = (torch.arange(n, dtype=torch.float64) / SR) % 0.5
    body = torch.sin(2 * math.pi * f0 * phase * (1 + 2 * torch.exp(-phase * 30))) * torch.exp(-phase * 8)
    x = body + torch.randn(n, generator=g, dtype=torch.float64) * torch.exp(-phase * 60) * click
    return torch.stack([x, x])


def _two_kicks() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Stems (a loud kick, a quiet kick on the same beats, a pad) and what each adds to a
    reference where the loud kick went through an IIR low shelf (its phase turns) and a
    level-dependent gain (a compressor) and the quiet one sits 14 dB down."""
    from scipy.signal import lfilter

    n = 3 * SR
    loud, quiet = _kick(3.0, 50.0, 1, 0.3), _kick(3.0, 70.0, 2, 1.0)
    t = torch.arange(n, dtype=torch.float64) / SR
    g = torch.Generator().manual_seed(3)
    pad = torch.randn(2, n, generator=g, dtype=torch.float64) * 0.05 * (1 + torch.sin(2 * math.pi * 0.7 * t))
    a_ = 10 ** (4.0 / 40)  # RBJ low shelf, +4 dB at 120 Hz, written out as scipy's oracle
    w0 = 2 * math.pi * 120.0 / SR
    al, c, r = math.sin(w0) / 2 * math.sqrt(2), math.cos(w0), 2 * math.sqrt(a_)
    b = [
        a_ * ((a_ + 1) - (a_ - 1) * c + r * al),
        2 * a_ * ((a_ - 1) - (a_ + 1) * c),
        a_ * ((a_ + 1) - (a_ - 1) * c - r * al),
    ]
    a = [(a_ + 1) + (a_ - 1) * c + r * al, -2 * ((a_ - 1) + (a_ + 1) * c), (a_ + 1) + (a_ - 1) * c - r * al]
    env = torch.nn.functional.avg_pool1d(
        loud.square().mean(0, keepdim=True).unsqueeze(0), 441, 1, 220, count_include_pad=False
    )[0, 0].sqrt()
    comp = (env / env.max()).clamp_min(1e-3) ** -0.15
    parts = [torch.from_numpy(lfilter(b, a, loud.numpy(), axis=-1)) * comp, quiet * 10 ** (-14 / 20), pad]
    return torch.stack([loud, quiet, pad]), parts


def test_coherent_estimate_resolves_a_quiet_kick_under_a_loud_one():
    stems, parts = _two_kicks()
    ref = sum(parts)
    truth = torch.tensor([_lufs(p) - _lufs(s) for p, s in zip(parts, stems, strict=True)])
    assert _lufs(parts[1]) - _lufs(ref) < -14.0  # the quiet kick is well under the mix
    powers = estimate_mix(stems, ref, SR)
    coherent = estimate_mix(stems, ref, SR, coherent=True)
    assert coherent.coherent and not powers.coherent and coherent.incoherent == []
    # Band powers credit the quiet kick with what the loud one's phase and gain changes
    # leave unexplained in the same bands and frames; the waveforms tell them apart.
    assert float(powers.gain_db[1] - truth[1]) > 1.5
    err = (coherent.gain_db.double() - truth).abs()
    # 0.54 dB on the quiet kick: the loud kick's moving (compressor) gain, which a static
    # solve cannot hold, leaks into it (the compressor start handles that downstream).
    assert err.max() < 0.6, (coherent.gain_db, truth)
    assert coherent.explained > 0.95


def test_coherent_estimate_falls_back_to_band_powers_where_the_reference_is_not_these_stems():
    stems = _stems(seed=4)
    gains = torch.tensor([1.0, 0.5, 0.7, 0.6], dtype=torch.float64).view(-1, 1, 1)
    ref = (stems * gains).sum(0)
    # One loud stem reaches the reference 7 ms late and reversed in polarity every other
    # 100 ms (as a producer's delayed, re-amped part): band powers still see it at its
    # level, the coherent solve sees a fraction of it.
    flip = torch.where((torch.arange(ref.shape[-1]) // 4410) % 2 == 0, 1.0, -1.0).double()
    moved = torch.roll(stems[2] * gains[2], 309, dims=-1) * flip
    est = estimate_mix(stems, ref - stems[2] * gains[2] + moved, SR, coherent=True)
    assert est.coherent and est.incoherent == [2], est
    assert abs(float(est.gain_db[2]) - 20 * math.log10(0.7)) < 1.0
    assert (est.gain_db.double() - 20 * torch.log10(gains.view(-1)))[[0, 1, 3]].abs().max() < 0.5
    # Nothing coherent left at all (every stem delayed): the whole solve is band powers.
    delayed = [torch.roll(s, 400 * (k + 1), dims=-1) for k, s in enumerate(stems * gains)]
    scrambled = torch.stack(delayed).sum(0)
    est = estimate_mix(stems, scrambled * flip, SR, coherent=True)
    assert not est.coherent and est.incoherent == []
    assert (est.gain_db.double() - 20 * torch.log10(gains.view(-1))).abs().max() < 1.5


def test_coherent_statistics_summed_in_blocks_equal_one_pass(monkeypatch):
    import diffmix.mixing.analysis as mi

    stems = _stems(1.0, seed=7).float()
    regs = stems.reshape(-1, stems.shape[-1])  # every stem channel its own regressor
    ref = stems.sum(0) * 0.5
    edges = band_edges(SR)
    whole = mi.coherent_band_stats(regs, ref, SR, edges)
    monkeypatch.setattr(mi, "STATS_BLOCK_FRAMES", 3)
    blocks = mi.coherent_band_stats(regs, ref, SR, edges)
    for a, b in zip(whole, blocks, strict=True):
        assert np.abs(a - b).max() <= 1e-9 * np.abs(a).max()
    # Each reference channel is half the stems' same channel, so its products with the
    # regressors and its power follow from the Gram matrix: the normal equations are consistent.
    gram, cross, ref_power, stem_power = whole
    for c in range(2):
        same = gram[:, :, c::2].sum(axis=2)  # products with channel c of every stem
        assert np.allclose(cross[:, :, c], 0.5 * same, rtol=1e-6, atol=1e-9 * np.abs(cross).max())
        assert np.allclose(ref_power[:, c], 0.25 * gram[:, c::2, c::2].sum(axis=(1, 2)).real, rtol=1e-6)
    assert np.allclose(stem_power.T, np.einsum("bkk->bk", gram).real)


def _console(n: int, sends: bool = False, groups: dict | None = None) -> Console:
    from diffmix.effects.dynamics import Compressor
    from diffmix.effects.reverb import Reverb

    strip = {
        "input": Gain(SR),
        "eq": ParametricEQ(SR, bands=list(BANDS), freq_hz=list(FREQS)),
        "comp": Compressor(SR, threshold_db=-30.0, ratio=3.0),
        "pan": Pan(SR),
        "fader": Gain(SR),
    }
    master = {"eq": ParametricEQ(SR, bands=["low_shelf"], freq_hz=[100.0], gain_db=[2.0])}
    return Console(
        SR,
        n,
        strip=strip,
        master=master,
        sends={"reverb": Reverb(SR, rt60_s=0.3)} if sends else None,
        groups=groups,
    )


def _solos(console: Console, stems: torch.Tensor) -> torch.Tensor:
    out = []
    for k in range(stems.shape[1]):
        solo = torch.zeros_like(stems)
        solo[:, k] = stems[:, k]
        out.append(console(solo)[0])
    return torch.stack(out)


@pytest.mark.parametrize("routing", ["direct", "sends", "groups", "offset"])
def test_console_solo_equals_each_track_rendered_alone(routing):
    stems = _stems(0.5, seed=5).float().unsqueeze(0)
    console = _console(4, sends=routing == "sends", groups={"a": [0, 1]} if routing == "groups" else None)
    if routing == "offset":
        console.offset_samples = -7  # a mix moved onto a reference's timeline
    if routing == "sends":
        console.load_values({"sends.reverb.send_db": torch.tensor([-6.0, -70.0, -12.0, -20.0])})
    with torch.no_grad():
        got, want = console.solo(stems), _solos(console, stems)
    assert got.shape == (4, 2, stems.shape[-1])
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_polish_levels_puts_back_what_the_gradient_steps_traded_away():
    from diffmix.mixing.wiring import console_estimate, polish_levels

    stems = _stems(2.0, seed=6).float().unsqueeze(0)
    truth = _console(4)
    truth.load_values(
        {
            "strip.input.gain_db": torch.tensor([2.0, -4.0, -18.0, 0.0]),
            "strip.eq.gain_db": torch.tensor([[3.0, 0, 0, -2], [0, -3, 0, 0], [0, 0, 2, 0], [1, 0, 0, 0]]),
        }
    )
    with torch.no_grad():
        ref = truth(stems)
        fitted = _console(4)
        est = console_estimate(fitted, stems, ref, SR, coherent=True)
        initialise_console(fitted, stems, ref, SR, estimate=est)
        # What the waveform loss does to a quiet track: +6 dB through its EQ, and the
        # loud ones a little down.
        g = fitted.named_values()["strip.eq.gain_db"].exact().clone()
        g[2] += 6.0
        faders = torch.tensor([-0.7, 0.5, 0.0, -0.4])
        fitted.load_values({"strip.eq.gain_db": g, "strip.fader.gain_db": faders})
        want = torch.tensor([_lufs(c.double()) for c in _solos(truth, stems)])
        before = torch.tensor([_lufs(c.double()) for c in _solos(fitted, stems)])
        summary = polish_levels(fitted, stems, est, SR, starts=[0, SR], length=SR)
        after = torch.tensor([_lufs(c.double()) for c in _solos(fitted, stems)])
    assert (before - want).abs().max() > 4.0
    # The truth compresses hard (3:1 from -30 dB): a least-squares gain reads the mean of
    # the compressor's moving gain, whose square is a little under its mean power gain, so
    # the estimate sits up to ~0.5 dB low; the 6 dB the quiet track was off are gone.
    assert (after - want).abs().max() < 0.75, (after - want, summary)
    assert abs(float(after[2] - want[2])) < 0.3
    assert len(summary["change_db"]) == 4 and summary["change_db"][2] < -4.0


@pytest.mark.parametrize("sends", [False, True])
def test_hold_levels_puts_each_track_back_and_keeps_the_tone(sends):
    """What a gradient step may do to a strip (its input gain, EQ and compressor moved): the
    hold puts each track's loudness alone through the console back where it was, on the
    fader only, so the new tone and dynamics stay. The master bus here is linear (an EQ),
    so one step is exact; printed seed, drawn moves."""
    from diffmix.mixing.wiring import hold_levels, track_loudness

    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    stems = _stems(2.0, seed=seed % 1000).float().unsqueeze(0)
    console = _console(4, sends=sends)
    if sends:
        console.load_values({"sends.reverb.send_db": torch.tensor([-12.0, -70.0, -20.0, -9.0])})
    with torch.no_grad():
        want = torch.tensor([_lufs(c.double()) for c in console.solo(stems)])
        held = track_loudness(console, stems, SR)
        assert (held - want).abs().max() < 1e-4
        values = console.named_values()
        moved = {
            "strip.input.gain_db": values["strip.input.gain_db"].exact() + 8 * torch.rand(4, generator=g) - 4,
            "strip.eq.gain_db": values["strip.eq.gain_db"].exact() + 12 * torch.rand(4, 4, generator=g) - 6,
            "strip.comp.threshold_db": values["strip.comp.threshold_db"].exact()
            - 10 * torch.rand(4, generator=g),
        }
        console.load_values(moved)
        off = torch.tensor([_lufs(c.double()) for c in console.solo(stems)])
        summary = hold_levels(console, stems, SR, held)
        after = torch.tensor([_lufs(c.double()) for c in console.solo(stems)])
    # The moves change each level by decibels; the hold takes all of it back (a linear
    # master: the fader's gain passes unchanged; 0.01 dB is float32 rendering).
    assert (off - want).abs().max() > 0.5, (off - want)
    assert (after - want).abs().max() < 0.01, (after - want, summary)
    assert all(torch.equal(console.named_values()[k].exact(), v.double()) for k, v in moved.items())
    assert len(summary["change_db"]) == 4


def test_polish_levels_leaves_a_strip_without_a_fader_alone():
    from diffmix.mixing.wiring import console_estimate, polish_levels

    stems = _stems(1.0).float().unsqueeze(0)
    console = Console(SR, 4, strip={"input": Gain(SR), "pan": Pan(SR)})
    est = console_estimate(console, stems, stems[0].sum(0, keepdim=True), SR)
    before = {k: p.exact().clone() for k, p in console.named_values().items()}
    summary = polish_levels(console, stems, est, SR, starts=[0], length=SR)
    assert summary["method"] == "none"
    assert all(torch.equal(before[k], p.exact()) for k, p in console.named_values().items())
    from diffmix.mixing.wiring import hold_levels

    assert hold_levels(console, stems, SR, torch.full((4,), -20.0))["method"] == "none"
    assert all(torch.equal(before[k], p.exact()) for k, p in console.named_values().items())


@pytest.mark.slow
def test_shared_stems_through_an_independent_hidden_chain_are_resolved(shared_multitrack):
    """Shovon's stems through pedalboard gains, shelves, a peak and compressors (another
    engine): the closed form puts each track's loudness within 1 dB, the bassdrum 20 LU
    under the pluck included (band powers put it 1.4 dB high)."""
    import pedalboard as pb
    import soundfile as sf

    files = sorted((shared_multitrack / "Shovon-ProgressiveHousePluckDemo" / "stems").glob("*.flac"))
    stems = []
    for f in files:
        data, sr = sf.read(str(f), always_2d=True, dtype="float32")
        stems.append(np.ascontiguousarray(np.broadcast_to(data.T, (2, data.shape[0]))))
    n = min(s.shape[-1] for s in stems)
    setting = [  # gain, low shelf, peak, high shelf, compressor threshold and ratio
        (-6.1, (138.0, -2.0), (2300.0, 2.2), (9900.0, 3.4), -16.0, 2.3),
        (-4.6, (140.0, -3.1), (2340.0, 2.2), (9970.0, 3.4), -16.2, 2.3),
        (1.6, (200.0, 3.0), (800.0, -3.0), (6000.0, -2.0), -22.0, 3.5),
    ]
    parts = []
    for x, (gain, low, peak, high, thr, ratio) in zip(stems, setting, strict=True):
        board = pb.Pedalboard(
            [
                pb.Gain(gain),
                pb.LowShelfFilter(low[0], low[1], 0.707),
                pb.PeakFilter(peak[0], peak[1], 1.0),
                pb.HighShelfFilter(high[0], high[1], 0.707),
                pb.Compressor(threshold_db=thr, ratio=ratio, attack_ms=10.0, release_ms=100.0),
            ]
        )
        parts.append(torch.from_numpy(board(x[:, :n], sr).astype(np.float64)))
    ref = sum(parts)
    st = torch.from_numpy(np.stack([s[:, :n] for s in stems])).double()
    truth = torch.tensor(
        [
            float(integrated_loudness(p.unsqueeze(0), sr)[0] - integrated_loudness(s.unsqueeze(0), sr)[0])
            for p, s in zip(parts, st, strict=True)
        ]
    )
    under = integrated_loudness(parts[1].unsqueeze(0), sr)[0] - integrated_loudness(ref.unsqueeze(0), sr)[0]
    assert float(under) < -15.0
    est = estimate_mix(st, ref, sr, coherent=True)
    assert est.coherent and est.explained > 0.95
    assert (est.gain_db.double() - truth).abs().max() < 0.5, (est.gain_db, truth)
    assert float(estimate_mix(st, ref, sr).gain_db[1] - truth[1]) > 1.0


@pytest.mark.slow
def _held_and_free(stems, ref, options, hold, read):  # noqa: ANN001, ANN202
    """Fit a fresh 4-track console three ways: the closed form alone (``start``), then 24
    steps with the option ``hold`` on (``held``) and off (``free``); ``read(console)`` after
    each. Both arms' gradient steps must be kept by the judge. Returns (readings, reports)."""
    from diffmix.mixing.console_fit import MixFitOptions, fit_console

    readings, reports = {}, {}
    for name, steps, on in (("start", 0, True), ("held", 24, True), ("free", 24, False)):
        console = _console(4)
        opts = MixFitOptions(**{**vars(options), "steps": steps, hold: on})
        reports[name] = fit_console(console, stems, ref, SR, opts,
                                    optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
        readings[name] = read(console)
    for name in ("held", "free"):
        stage = next(s for s in reports[name]["stages"] if s["stage"] == "gradient steps")
        assert stage["kept"], reports[name]["stages"]
    return readings, reports


def test_the_gradient_steps_keep_each_track_at_the_level_the_start_measured():
    """Toward a render the console cannot reproduce (a narrow bell between its EQ's
    frequencies on two stems), 1 s excerpt steps that may move input gains and EQ gains
    trade levels for tone; with ``hold_levels`` (the default) every track leaves the
    kept steps at the loudness the closed form left it, and without it they do not."""
    from diffmix.mixing.console_fit import MixFitOptions
    from diffmix.mixing.wiring import track_loudness

    stems = _stems(3.0, seed=8).float().unsqueeze(0)
    from diffmix.effects.dynamics import Compressor

    truth = Console(SR, 4, strip={
        "input": Gain(SR),
        "eq": ParametricEQ(SR, bands=["peak"], freq_hz=[2200.0], q=[4.0]),
        "comp": Compressor(SR, threshold_db=-30.0, ratio=3.0),
        "pan": Pan(SR),
    }, master={"eq": ParametricEQ(SR, bands=["low_shelf"], freq_hz=[100.0], gain_db=[2.0])})
    truth.load_values({"strip.input.gain_db": torch.tensor([3.0, -5.0, -2.0, 0.0]),
                       "strip.eq.gain_db": torch.tensor([[0.0], [12.0], [-12.0], [0.0]])})
    with torch.no_grad():
        ref = truth(stems)
    options = MixFitOptions(
        weights={"mrstft": 1.0}, params=["strip.input.*", "strip.eq.gain_db"], steps=24, prior=0.0,
        eq_bands=False, compressor_start=False, placement=False, compressor_refine=False,
        eq_refine=False, polish=False, match_loudness=False,
    )
    levels, reports = _held_and_free(stems, ref, options, "hold_levels",
                                     lambda console: track_loudness(console, stems, SR))
    free = (levels["free"] - levels["start"]).abs().max()
    held = (levels["held"] - levels["start"]).abs().max()
    print(f"free {free:.3f} dB, held {held:.3f} dB", reports["held"]["hold levels"])
    assert held < 0.06
    assert free > 0.3


def test_the_gradient_steps_leave_the_placement_where_the_start_measured_it():
    """The same render the console cannot reproduce, the stems panned: steps that may move
    the pans (Adam: about ``lr`` a step however weakly the excerpts determine one) leave
    them where the closed form put them with ``hold_placement`` (the default), exactly,
    and move them without it (both arms' steps kept by the judge)."""
    from diffmix.effects.dynamics import Compressor
    from diffmix.mixing.console_fit import MixFitOptions

    stems = _stems(3.0, seed=8).float().unsqueeze(0)
    truth = Console(SR, 4, strip={
        "input": Gain(SR),
        "eq": ParametricEQ(SR, bands=["peak"], freq_hz=[2200.0], q=[4.0]),
        "comp": Compressor(SR, threshold_db=-30.0, ratio=3.0),
        "pan": Pan(SR),
    })
    truth.load_values({"strip.input.gain_db": torch.tensor([3.0, -5.0, -2.0, 0.0]),
                       "strip.eq.gain_db": torch.tensor([[0.0], [12.0], [-12.0], [0.0]]),
                       "strip.pan.pan": torch.tensor([0.5, -0.3, 0.0, 0.8])})
    with torch.no_grad():
        ref = truth(stems)
    options = MixFitOptions(
        weights={"mrstft": 1.0}, params=["strip.input.*", "strip.eq.gain_db", "strip.pan.*"], steps=24,
        prior=0.0, eq_bands=False, compressor_start=False, placement=False, compressor_refine=False,
        eq_refine=False, polish=False, match_loudness=False,
    )

    def pan(console):  # noqa: ANN001, ANN202
        assert console.named_values()["strip.pan.pan"].raw.requires_grad  # the console's own again
        return console.named_values()["strip.pan.pan"].exact().flatten()

    pans, _ = _held_and_free(stems, ref, options, "hold_placement", pan)
    print("start", pans["start"], "held", pans["held"], "free", pans["free"])
    assert torch.equal(pans["held"], pans["start"])
    assert (pans["free"] - pans["start"]).abs().max() > 0.005


def test_hold_levels_is_on_in_the_mix_config_and_can_be_turned_off():
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from diffmix.jobs.mix import fit_options

    configs = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(configs, version_base="1.3"):
        default = fit_options(compose("mix", overrides=["stems=s"]))
        chosen = fit_options(compose("mix", overrides=["stems=s", "fit.hold_levels=false"]))
        free = fit_options(compose("mix", overrides=["stems=s", "fit.hold_placement=false"]))
    assert default.hold_levels and not chosen.hold_levels
    assert default.hold_placement and chosen.hold_placement and not free.hold_placement
