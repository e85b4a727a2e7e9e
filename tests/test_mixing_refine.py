"""The mix fit's refine stages (diffmix.mixing.wiring): each strip compressor re-fitted on
its track's share of the reference at short frames (``compressor refine``), and each strip
EQ re-fitted to the tone left on the strip's output with the dynamics as set
(``eq refine``).

A kick (a pitch-swept thump with a click on every beat) goes through a hidden strip EQ and
a fast, heavy compressor, beside a steady pad; the seed of each case is printed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffmix.console import Console
from diffmix.effects.dynamics import Compressor
from diffmix.effects.eq import ParametricEQ
from diffmix.effects.gain import Gain, Pan, Width
from diffmix.mixing.solvers import eq_band_response_db
from diffmix.mixing.wiring import (
    compressor_refine,
    compressor_start,
    console_estimate,
    eq_band_start,
    eq_refine,
    initialise_console,
    placement_resolve,
)
from tests.seeds import drawn_seed

SR = 44100
BANDS = ("low_shelf", "peak", "peak", "peak", "high_shelf")
FREQS = (120.0, 400.0, 1500.0, 5000.0, 9000.0)
SEEDS = [int(s) for s in np.random.SeedSequence(1217).generate_state(2) % 10000]


def _stems(seconds: float, seed: int) -> torch.Tensor:
    """``(1, 2, 2, T)``: a kick (a 50-150 Hz sweep decaying over ~150 ms, a noise click in
    its first 5 ms; a random tempo) and a steady band-limited pad, both stereo."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = torch.arange(n, dtype=torch.float64) / SR
    beat = 60.0 / rng.uniform(100.0, 140.0)
    ph = t % beat
    sweep = torch.sin(2 * math.pi * (50.0 * ph + 100.0 * 0.03 * (1 - torch.exp(-ph / 0.03))))
    click = torch.randn(n, generator=g, dtype=torch.float64) * (ph < 0.005)
    kick = sweep * torch.exp(-ph / 0.15) + 0.5 * click
    kick = torch.stack([kick, 0.9 * kick])
    f = torch.fft.rfftfreq(n, 1 / SR, dtype=torch.float64)
    noise = torch.fft.rfft(torch.randn(2, n, generator=g, dtype=torch.float64))
    pad = torch.fft.irfft(noise * ((f > 200) & (f < 6000)) * f.clamp_min(1.0) ** -0.5, n)
    parts = [kick / kick.square().mean().sqrt() * 0.1, pad / pad.square().mean().sqrt() * 0.03]
    return torch.stack(parts).float().unsqueeze(0)


def _strip() -> dict:
    """The test strip: gain, a fixed-frequency EQ, a neutral compressor, width, pan, fader."""
    return {
        "input": Gain(SR),
        "eq": ParametricEQ(SR, bands=list(BANDS), freq_hz=list(FREQS)),
        "comp": Compressor(SR, threshold_db=-10.0, ratio=1.0, attack_ms=10.0, release_ms=120.0),
        "width": Width(SR),
        "pan": Pan(SR),
        "fader": Gain(SR),
    }


def _console() -> Console:
    return Console(SR, 2, strip=_strip(), master={"gain": Gain(SR)})


def _hidden(stems: torch.Tensor, seed: int, eq: bool = True) -> dict[str, torch.Tensor]:
    """The kick: a bell of +-4-6 dB at 150-400 Hz (``eq``; else flat), a compressor 12-18 dB under its peak at
    ratio 4-8, attack 0.5-2 ms, release 60-120 ms; the pad: uncompressed; random pans."""
    rng = np.random.default_rng(seed)
    top = 20 * math.log10(float(stems[0, 0].abs().max()))
    freq = [list(FREQS), list(FREQS)]
    gain = [[0.0] * 5, [0.0] * 5]
    q = [[0.7071] * 5, [0.7071] * 5]
    freq[0][1] = float(np.exp(rng.uniform(math.log(150.0), math.log(400.0))))
    gain[0][1] = float(rng.choice([-1, 1]) * rng.uniform(4.0, 6.0))
    q[0][1] = float(rng.uniform(0.7, 1.5))
    if not eq:
        gain[0][1] = 0.0
    return {
        "strip.eq.freq_hz": torch.tensor(freq),
        "strip.eq.gain_db": torch.tensor(gain),
        "strip.eq.q": torch.tensor(q),
        "strip.comp.threshold_db": torch.tensor([top - rng.uniform(12.0, 18.0), -10.0]),
        "strip.comp.ratio": torch.tensor([rng.uniform(4.0, 8.0), 1.0]),
        "strip.comp.attack_ms": torch.tensor([rng.uniform(0.5, 2.0), 10.0]),
        "strip.comp.release_ms": torch.tensor([rng.uniform(60.0, 120.0), 120.0]),
        "strip.pan.pan": torch.tensor(rng.uniform(-0.6, 0.6, 2)),
    }


def _render_hidden(stems: torch.Tensor, seed: int, eq: bool = True
                   ) -> tuple[Console, dict[str, torch.Tensor], torch.Tensor]:
    """The console set to :func:`_hidden`'s setting, that setting, and its render of ``stems``."""
    truth = _console()
    hidden = _hidden(stems, seed, eq=eq)
    truth.load_values(hidden)
    with torch.no_grad():
        ref = truth(stems)
    return truth, hidden, ref


def _error(console: Console, stems: torch.Tensor, ref: torch.Tensor) -> float:
    """The waveform error relative to the reference's energy."""
    with torch.no_grad():
        return float((console(stems) - ref).square().sum() / ref.square().sum())


def _start(stems: torch.Tensor, ref: torch.Tensor, compressors: bool = True) -> Console:
    """The closed-form stages before the refines: start, EQ bands, compressor start (or not:
    as where the judge reverts it), placement."""
    fitted = _console()
    with torch.no_grad():
        est = console_estimate(fitted, stems, ref, SR, coherent=True)
        initialise_console(fitted, stems, ref, SR, estimate=est)
        eq_band_start(fitted, est, SR)
        if compressors:
            compressor_start(fitted, stems, est, SR)
        placement_resolve(fitted, stems, ref, SR)
    return fitted


def _kick_tone_error(console: Console, truth: Console, stems: torch.Tensor) -> float:
    """The kick's EQ response against the hidden one (dB, half-octave bands from 45 Hz to
    2 kHz, where it has energy), each less its mean: the largest difference."""
    centres = torch.tensor([45.0 * 2 ** (i / 2) for i in range(11)], dtype=torch.float64)

    def resp(c: Console) -> torch.Tensor:
        v = c.named_values()
        fqg = [v[f"strip.eq.{k}"].exact().double().reshape(2, 5)[:1] for k in ("freq_hz", "q", "gain_db")]
        r = eq_band_response_db(BANDS, *fqg, centres, SR)[0]
        return r - r.mean()

    return float((resp(console) - resp(truth)).abs().max())


@pytest.mark.parametrize("seed", SEEDS)
def test_compressor_refine_finds_a_heavy_kick_compressor_from_none(seed):
    """From the placed start without compressors (as where the judge reverts the
    compressor start), the kick's share of the reference at 6 ms frames shows a compressor
    (ratio 2 or more; hidden 4-8) and the waveform error falls. What the start's EQ took up
    of the compression as tone stays (the ``eq refine`` stage's part): measured 0.048 ->
    0.044 and 0.022 -> 0.020 on the two seeds."""
    stems = _stems(4.0, seed)
    _, hidden, ref = _render_hidden(stems, seed, eq=False)
    fitted = _start(stems, ref, compressors=False)
    before = _error(fitted, stems, ref)
    with torch.no_grad():
        report = compressor_refine(fitted, stems, ref, SR)
    after = _error(fitted, stems, ref)
    msg = f"seed {seed}: hidden {hidden}, refine {report}, error {before:.4f} -> {after:.4f}"
    assert report["ratio"][0] is not None and report["ratio"][0] >= 2.0, msg
    assert after < 0.95 * before, msg


def test_compressor_refine_keeps_an_uncompressed_track_and_never_raises_the_error():
    """With the hidden compressors already in place a refit has nothing to gain: the error
    may not rise (each track's change is kept only where the waveform error falls)."""
    seed = SEEDS[0]
    stems = _stems(3.0, seed)
    truth, _, ref = _render_hidden(stems, seed)
    with torch.no_grad():
        fitted = _console()
        fitted.load_values({k: p.exact() for k, p in truth.named_values().items()})
        before = _error(fitted, stems, ref)
        report = compressor_refine(fitted, stems, ref, SR)
    after = _error(fitted, stems, ref)
    assert after <= before + 1e-5, (seed, before, after, report)
    assert float(fitted.named_values()["strip.comp.ratio"].exact().flatten()[1]) <= 1.5, report


@pytest.mark.parametrize("seed", SEEDS)
def test_eq_refine_reads_the_kicks_eq_off_its_compressed_output(seed):
    """The closed form reads the compressor's moving gain as tone (the click pressed harder
    than the tail); with the compressor as the data show it, the tone left on the strip's
    output brings the kick's EQ to the hidden one (measured 1.60 -> 0.77 and 1.93 -> 0.98 dB
    at worst over its bands) and the waveform error falls (0.027 -> 0.016, 0.024 -> 0.015)."""
    stems = _stems(4.0, seed)
    truth, hidden, ref = _render_hidden(stems, seed)
    fitted = _start(stems, ref)
    comp = {k: v for k, v in hidden.items() if k.startswith("strip.comp")}
    fitted.load_values(comp)  # the dynamics right, the EQ as the start left it
    with torch.no_grad():
        placement_resolve(fitted, stems, ref, SR)
    tone_before, err_before = _kick_tone_error(fitted, truth, stems), _error(fitted, stems, ref)
    with torch.no_grad():
        report = eq_refine(fitted, stems, ref, SR)
    tone_after, err_after = _kick_tone_error(fitted, truth, stems), _error(fitted, stems, ref)
    msg = (f"seed {seed}: hidden {hidden}, tone error {tone_before:.2f} -> {tone_after:.2f} dB, "
           f"waveform {err_before:.4f} -> {err_after:.4f}, {report['tone_left_rms_db']}")
    assert tone_after <= 0.6 * tone_before, msg
    assert err_after < 0.75 * err_before, msg


def test_the_refine_stages_are_on_in_the_mix_config_and_can_be_turned_off():
    # Both refines cost an 8-stem fit about a third more time (BENCHMARKS.md, Mixing,
    # sessions 12-13) for the compressed drums they recover: on in the composed default
    # config, off with their overrides; they fit on the reference's loudest 60 s (refine_s).
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from diffmix.jobs.mix import fit_options

    configs = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(configs, version_base="1.3"):
        default = fit_options(compose("mix", overrides=["stems=s"]))
        chosen = fit_options(compose("mix", overrides=["stems=s", "fit.compressor_refine=false",
                                                       "fit.eq_refine=false"]))
    assert default.compressor_refine and default.eq_refine
    assert default.refine_s == 60.0
    assert not chosen.compressor_refine and not chosen.eq_refine


def _master_console(seed: int) -> Console:
    """The test console with a master EQ and a biting master compressor, random strips."""
    rng = np.random.default_rng(seed)
    strip = _strip()
    master = {
        "eq": ParametricEQ(SR, bands=["low_shelf", "peak"], freq_hz=[150.0, 2000.0], gain_db=[3.0, -4.0]),
        "comp": Compressor(SR, threshold_db=-30.0, ratio=4.0, attack_ms=2.0, release_ms=80.0),
        "gain": Gain(SR, gain_db=2.0),
    }
    console = Console(SR, 2, strip=strip, master=master)
    console.load_values({
        "strip.comp.threshold_db": torch.tensor(rng.uniform(-30.0, -15.0, 2)),
        "strip.comp.ratio": torch.tensor(rng.uniform(2.0, 6.0, 2)),
        "strip.pan.pan": torch.tensor(rng.uniform(-0.8, 0.8, 2)),
        "strip.width.width": torch.tensor(rng.uniform(0.2, 2.0, 2)),
        "strip.fader.gain_db": torch.tensor(rng.uniform(-6.0, 6.0, 2)),
    })
    return console


def test_the_keyed_master_is_each_signal_through_the_master_keyed_by_the_mix():
    """The master's compressor gain computed once on the key against the oracle: every
    signal through the master with the key as the compressor's side-chain, one by one;
    and the tracks' contributions sum to the console's own mix."""
    from diffmix.mixing.wiring import _keyed_master, _send_returns

    seed = SEEDS[0]
    print("seed", seed)
    console = _master_console(seed)
    stems = _stems(1.5, seed)
    with torch.no_grad():
        parts = console.strip(stems[0])
        key = parts.sum(0, keepdim=True) + _send_returns(console, parts)
        got = _keyed_master(console, parts, key)
        for k in range(2):
            sig = parts[k : k + 1]
            side = key
            for effect in console.master.effects.values():
                sig = effect(sig, sidechain=side) if isinstance(effect, Compressor) else effect(sig)
                side = effect(side)
            torch.testing.assert_close(got[k : k + 1], sig, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got.sum(0, keepdim=True), console(stems), rtol=1e-4, atol=1e-6)


def test_one_tracks_stages_alone_match_the_strip():
    """compressor_refine renders one track from its compressor on by the functional core and
    the channel matrices: the same as that track's row of the whole strip."""
    from diffmix.mixing.wiring import _track_stages

    seed = SEEDS[1]
    print("seed", seed)
    console = _master_console(seed)
    stems = _stems(1.0, seed)
    names = list(console.strip.effects)
    with torch.no_grad():
        pre = console.strip(stems[0], until="comp")
        whole = pre
        for name in names[names.index("comp"):]:
            whole = console.strip.effects[name](whole)
        for k in range(2):
            one = _track_stages(console, names[names.index("comp"):], pre[k : k + 1], k)
            torch.testing.assert_close(one, whole[k : k + 1], rtol=1e-5, atol=1e-7)


def test_the_search_on_one_channel_gives_the_stereo_compressors_frame_energy():
    """A peak detector linked by the channels' maximum: one channel of sqrt(sum x_c^2) keyed
    by max |x_c| has the stereo output's energy, sample by sample."""
    from diffmix.functional.dynamics import compressor

    seed = SEEDS[0]
    print("seed", seed)
    x = _stems(1.0, seed)[0, 0] * torch.tensor([[1.0], [0.4]])
    thr = torch.tensor([-30.0, -20.0, -12.0])
    kw = dict(ratio=torch.tensor([2.0, 4.0, 8.0]), knee_db=6.0, attack_ms=torch.tensor([1.0, 3.0, 30.0]),
              release_ms=torch.tensor([30.0, 80.0, 200.0]))
    stereo = compressor(x.expand(3, -1, -1), SR, threshold_db=thr, **kw).square().sum(1)
    mono = compressor(x.square().sum(0, keepdim=True).sqrt().expand(3, -1, -1), SR, threshold_db=thr, **kw,
                      sidechain=x.abs().amax(0, keepdim=True).expand(3, -1, -1)).square()[:, 0]
    torch.testing.assert_close(mono, stereo, rtol=1e-5, atol=1e-9)


def test_a_track_silent_in_the_excerpt_keeps_its_placement():
    """The refine stages fit on the reference's loudest excerpt; a track silent there shows
    no pan, width or level, and keeps them (without the guard its fader would go to the
    floor); the other track is placed."""
    seed = SEEDS[0]
    print("seed", seed)
    stems = _stems(2.0, seed)
    truth, _, ref = _render_hidden(stems, seed)
    fitted = _start(stems, ref)
    before = {k: p.exact().clone() for k, p in fitted.named_values().items()}
    quiet = stems.clone()
    quiet[:, 1] = 0.0
    with torch.no_grad():
        placement_resolve(fitted, quiet, truth(quiet), SR)
    after = fitted.named_values()
    for key in ("strip.pan.pan", "strip.width.width", "strip.fader.gain_db"):
        assert torch.equal(after[key].exact().flatten()[1], before[key].flatten()[1]), key
    assert not torch.equal(after["strip.fader.gain_db"].exact().flatten()[0],
                           before["strip.fader.gain_db"].flatten()[0])


def test_the_loudest_window():
    from diffmix.mixing.analysis import loudest_window

    seed = SEEDS[1]
    rng = np.random.default_rng(seed)
    print("seed", seed)
    x = torch.from_numpy(rng.standard_normal((1, 2, 10 * SR)) * 0.01)
    at = int(rng.uniform(2.0, 7.0) * SR)
    x[..., at : at + SR] *= 30.0  # one loud second
    a, b = loudest_window(x, SR, 2.0)
    assert b - a == 2 * SR and a <= at and at + SR <= b, (a, b, at)
    assert loudest_window(x, SR, 0.0) == (0, 10 * SR)
    assert loudest_window(x, SR, 20.0) == (0, 10 * SR)


@pytest.mark.parametrize("seed", SEEDS)
def test_compressor_refine_changes_a_tracks_shape_not_its_level(seed, monkeypatch):
    """A compressor the refine keeps changes its track's shape, not its level: the fader
    takes exactly what the new compressor changes of its output's energy (the search's own
    constant, the mean frame gain of the track's share of the reference, reads every other
    track's residual energy as level: BENCHMARKS.md, Mixing, session 16). The kick's
    compressor is found from none (as in the test above); the placement re-solve after the
    loop is left out here, so what is measured is the loop's."""
    import diffmix.mixing.wiring as wiring

    stems = _stems(4.0, seed)
    _, _, ref = _render_hidden(stems, seed, eq=False)
    fitted = _start(stems, ref, compressors=False)
    monkeypatch.setattr(wiring, "placement_resolve", lambda *a, **k: {})

    def outputs() -> torch.Tensor:  # each strip's output energy (compressor to fader), dB
        with torch.no_grad():
            return 10 * torch.log10(fitted.strip(stems[0]).double().square().sum((1, 2)))

    before = outputs()
    with torch.no_grad():
        report = compressor_refine(fitted, stems, ref, SR)
    msg = f"seed {seed}: {report}, energy change {(outputs() - before).tolist()} dB"
    assert report["ratio"][0] is not None and report["ratio"][0] >= 2.0, msg
    assert abs(report["fader_db"][0]) > 0.5, msg  # the compressor took level off: the fader gives it back
    assert (outputs() - before).abs().max() < 0.01, msg

def test_the_refines_leave_every_tracks_loudness_where_they_found_it(monkeypatch):
    """fit_console holds each track's loudness through the compressor and eq refines
    (``hold_levels``, on): a refine that sets the hidden compressor (shape) and moves the
    faders by 2-4 dB is kept with each track's loudness as before it (the report says by
    how much each fader went back); with ``hold_levels=false`` the faders keep the move."""
    import diffmix.mixing.console_fit as cf
    from diffmix.mixing.console_fit import MixFitOptions, fit_console
    from diffmix.mixing.wiring import track_loudness

    seed = drawn_seed(10000)
    rng = np.random.default_rng(seed)
    print(f"seed {seed}")
    stems = _stems(3.0, seed)
    _, hidden, ref = _render_hidden(stems, seed, eq=False)
    push = torch.tensor(rng.choice([-1.0, 1.0], 2) * rng.uniform(2.0, 4.0, 2))
    seen: dict[str, torch.Tensor] = {}

    def fake_refine(console, audio, reference, sr):  # noqa: ANN001, ANN202
        seen["before"] = track_loudness(console, stems, SR)
        console.load_values({k: v for k, v in hidden.items() if k.startswith("strip.comp")})
        seen["compressed"] = track_loudness(console, stems, SR)  # the compressors' own level change
        fader = console.named_values()["strip.fader.gain_db"].exact().double()
        console.load_values({"strip.fader.gain_db": fader + push.view_as(fader)})
        return {}

    monkeypatch.setattr(cf, "compressor_refine", fake_refine)
    monkeypatch.setattr(cf, "eq_refine", lambda *a: {})
    options = MixFitOptions(weights={"mrstft": 1.0}, params=["strip.input.*"], steps=0, polish=False,
                            compressor_start=False, match_loudness=False)
    for hold in (True, False):
        console = _console()
        report = fit_console(console, stems, ref, SR, MixFitOptions(**{**vars(options), "hold_levels": hold}),
                             optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
        stage = report["init"]["compressor refine"]
        after = track_loudness(console, stems, SR)
        msg = f"seed {seed}, push {push.tolist()}, hold {hold}: {report['stages']}, {stage}"
        if hold:
            # Back by the push and by what the compressors changed (a linear master: one move).
            back = torch.tensor(stage["hold levels"]["change_db"], dtype=torch.float64)
            moved = push + seen["compressed"] - seen["before"]
            assert (back + moved).abs().max() < 0.06, msg
            if stage["kept"]:
                assert (after - seen["before"]).abs().max() < 0.06, msg
                ratio = console.named_values()["strip.comp.ratio"].exact().flatten()
                assert torch.allclose(ratio.double(), hidden["strip.comp.ratio"].double(), atol=1e-4), msg
        else:
            assert "hold levels" not in stage, msg
            if stage["kept"]:
                assert (after - seen["before"]).abs().max() > 1.0, msg
