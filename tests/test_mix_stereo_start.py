"""The mix fit's stages (diffmix.mixing): the stereo closed-form start, the compressor
start, the full-length judge, the loudness match and the hidden-setting generator.

Each stage has a case it must pass and a case that shows it matters. References are
rendered through diffmix's own console from known settings, so a perfect fit exists.
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
from diffmix.functional.loudness import integrated_loudness
from diffmix.mixing.console_fit import FullLengthJudge, MixFitOptions, match_loudness
from diffmix.mixing.hidden import contributions, draw_setting
from diffmix.mixing.wiring import compressor_start, console_estimate, initialise_console
from tests.seeds import drawn_seed

SR = 44100
BANDS = ("low_shelf", "peak", "peak", "high_shelf")
FREQS = (150.0, 800.0, 3000.0, 8000.0)


def _stems(seconds: float, seed: int) -> torch.Tensor:
    """Four stereo stems ``(1, 4, 2, T)`` with their own bands and rhythms; stem 1 carries
    one signal in both channels (a mono source in a stereo file)."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    t = torch.arange(n, dtype=torch.float64) / SR
    f = torch.fft.rfftfreq(n, 1 / SR, dtype=torch.float64)
    parts = []
    for (lo, hi), rate, phase in (((30, 250), 2.0, 0.0), ((200, 2000), 3.0, 0.3),
                                  ((1500, 8000), 5.0, 0.6), ((40, 16000), 1.25, 0.1)):
        spec = torch.fft.rfft(torch.randn(2, n, generator=g, dtype=torch.float64))
        x = torch.fft.irfft(spec * ((f >= lo) & (f < hi)), n)
        env = (0.2 + torch.relu(torch.sin(2 * math.pi * (rate * t + phase)))) ** 2
        x = x * env
        parts.append(x / x.square().mean().sqrt() * 0.2)
    stems = torch.stack(parts)
    stems[1, 1] = stems[1, 0]
    return stems.float().unsqueeze(0)


def _console(comp: bool = True) -> Console:
    strip = {"input": Gain(SR), "eq": ParametricEQ(SR, bands=list(BANDS), freq_hz=list(FREQS))}
    if comp:
        strip["comp"] = Compressor(SR, threshold_db=-10.0, ratio=1.5, attack_ms=10.0, release_ms=120.0)
    strip.update({"width": Width(SR), "pan": Pan(SR), "fader": Gain(SR)})
    return Console(SR, 4, strip=strip)


def _balance_db(x: torch.Tensor) -> torch.Tensor:
    """``(N, 2, T)`` -> each track's left/right energy ratio in dB."""
    e = x.double().square().sum(-1)
    return 10 * torch.log10(e[:, 0] / e[:, 1])


PLACED = {
    "strip.input.gain_db": [3.0, -6.0, -12.0, 0.0],
    "strip.pan.pan": [0.6, -0.4, 0.0, -0.7],
    "strip.width.width": [0.0, 1.0, 1.7, 0.4],  # stem 0 narrowed to mono, then panned
    "strip.eq.gain_db": [[3.0, 0, 0, -2], [0, -3, 0, 0], [0, 0, 2, 0], [1, 0, 0, 0]],
}


def test_stereo_start_recovers_pan_width_and_balance():
    stems = _stems(3.0, seed=1)
    truth = _console(comp=False)
    truth.load_values({k: torch.tensor(v) for k, v in PLACED.items()})
    with torch.no_grad():
        ref = truth(stems)
        fitted = _console(comp=False)
        est = console_estimate(fitted, stems, ref, SR, coherent=True)
        initialise_console(fitted, stems, ref, SR, estimate=est)
        values = fitted.named_values()
        pan = values["strip.pan.pan"].exact()
        width = values["strip.width.width"].exact()
        got, want = fitted.solo(stems), truth.solo(stems)
    assert est.one_column == [False, True, False, False]
    # Stem 1 is one signal in both channels: its width only scales it, its pan is seen.
    assert (pan - torch.tensor(PLACED["strip.pan.pan"])).abs().max() < 0.02, pan
    assert width[0] < 0.02 and abs(float(width[2]) - 1.7) < 0.05 and abs(float(width[3]) - 0.4) < 0.02
    assert (_balance_db(got) - _balance_db(want)).abs().max() < 0.2
    lufs = integrated_loudness(got.double(), SR) - integrated_loudness(want.double(), SR)
    assert lufs.abs().max() < 0.3, lufs


def test_without_the_channel_solve_panned_stems_land_centred():
    """What the stereo start adds: with the shared-gain start (no channel matrix) the
    panned and narrowed stems are placed in the centre, several dB off in balance."""
    stems = _stems(3.0, seed=1)
    truth = _console(comp=False)
    truth.load_values({k: torch.tensor(v) for k, v in PLACED.items()})
    with torch.no_grad():
        ref = truth(stems)
        fitted = _console(comp=False)
        est = console_estimate(fitted, stems, ref, SR, coherent=True)
        est.matrix = None  # the start without the stereo image
        est.tone_db = None
        initialise_console(fitted, stems, ref, SR, estimate=est)
        off = (_balance_db(fitted.solo(stems)) - _balance_db(truth.solo(stems))).abs()
    assert off[0] > 6.0 and off[3] > 6.0, off


def test_compressor_start_finds_compression_where_the_mix_shows_it():
    stems = _stems(4.0, seed=2) * 2
    truth = _console()
    truth.load_values(
        {
            "strip.input.gain_db": torch.tensor([0.0, -6.0, 0.0, -3.0]),
            "strip.comp.threshold_db": torch.tensor([-30.0, -10.0, -28.0, -10.0]),
            "strip.comp.ratio": torch.tensor([6.0, 1.0, 4.0, 1.0]),  # 0, 2 compressed hard
            "strip.comp.attack_ms": torch.tensor([5.0, 10.0, 20.0, 10.0]),
            "strip.comp.release_ms": torch.tensor([100.0, 100.0, 300.0, 100.0]),
            "strip.pan.pan": torch.tensor([0.3, -0.3, 0.0, 0.5]),
        }
    )
    with torch.no_grad():
        ref = truth(stems)
        fitted = _console()
        est = console_estimate(fitted, stems, ref, SR, coherent=True)
        initialise_console(fitted, stems, ref, SR, estimate=est)
        before = float((fitted(stems) - ref).square().sum() / ref.square().sum())
        summary = compressor_start(fitted, stems, est, SR)
        after = float((fitted(stems) - ref).square().sum() / ref.square().sum())
    ratio = summary["ratio"]
    assert ratio[0] >= 2.5 and ratio[2] >= 2.5, summary  # heavily compressed: found
    assert ratio[1] <= 1.5 and ratio[3] <= 1.5, summary  # uncompressed: left alone
    # The static start leaves the compressed stems' moving gain in the residual.
    assert after < 0.5 * before, (before, after)


def test_compressor_start_keeps_the_fader_in_its_range():
    # A compressor found with much gain reduction hands the fader its level back; where that
    # passes the fader's range (a stem far under its level in the mix, an unseen LMMS song
    # toward its producer's render: +33 dB), the fader stands at the range's end instead of
    # the job failing on an out-of-range value.
    stems = _stems(4.0, seed=2) * 2
    truth = _console()
    truth.load_values({"strip.comp.threshold_db": torch.tensor([-30.0, -10.0, -28.0, -10.0]),
                       "strip.comp.ratio": torch.tensor([6.0, 1.0, 4.0, 1.0])})
    with torch.no_grad():
        ref = truth(stems)
        fitted = _console()
        est = console_estimate(fitted, stems, ref, SR, coherent=True)
        initialise_console(fitted, stems, ref, SR, estimate=est)
        spec = fitted.named_values()["strip.fader.gain_db"].spec
        fitted.load_values({"strip.fader.gain_db": torch.full((4,), spec.max - 0.5, dtype=torch.float64)})
        summary = compressor_start(fitted, stems, est, SR)
    wanted = [spec.max - 0.5 + (c or 0.0) for c in summary["fader_db"]]
    assert max(wanted) > spec.max, summary  # the case: the change alone passes the range
    fader = fitted.named_values()["strip.fader.gain_db"].exact()
    assert float(fader.max()) == pytest.approx(spec.max), fader
    assert bool((fader >= spec.min).all()), fader


def test_judge_keeps_a_stage_that_helps_and_reverts_one_that_hurts():
    stems = _stems(2.0, seed=3)
    truth = _console(comp=False)
    truth.load_values({"strip.input.gain_db": torch.tensor([2.0, -4.0, 0.0, -8.0])})
    with torch.no_grad():
        ref = truth(stems)
    fitted = _console(comp=False)
    judge = FullLengthJudge(fitted, stems, ref, SR, {"mrstft": 1.0}, MixFitOptions(weights={}, params=[]))
    stages: list[dict] = []
    good = {"strip.input.gain_db": torch.tensor([2.0, -4.0, 0.0, -8.0], dtype=torch.float64)}
    assert judge.stage("good", lambda: fitted.load_values(good) or {}, stages)["kept"]
    bad = {"strip.fader.gain_db": torch.tensor([6.0, 0.0, -6.0, 0.0], dtype=torch.float64)}
    assert not judge.stage("bad", lambda: fitted.load_values(bad) or {}, stages)["kept"]
    assert torch.equal(fitted.named_values()["strip.fader.gain_db"].exact(), torch.zeros(4))
    assert [s["kept"] for s in stages] == [True, False] and stages[1]["after"] > stages[1]["before"]


def test_match_loudness_lands_within_a_tenth_of_a_lu_through_a_master_compressor():
    stems = _stems(2.0, seed=4)
    console = Console(SR, 4, strip={"pan": Pan(SR), "fader": Gain(SR)},
                      master={"comp": Compressor(SR, threshold_db=-30.0, ratio=4.0)})
    console.load_values({"strip.fader.gain_db": torch.full((4,), 5.0)})
    with torch.no_grad():
        ref = console(stems)  # the same console 5 dB hotter into its compressor
    console.load_values({"strip.fader.gain_db": torch.zeros(4)})
    summary = match_loudness(console, stems, ref, SR)
    with torch.no_grad():
        diff = integrated_loudness(console(stems).double(), SR) - integrated_loudness(ref.double(), SR)
    # The compressor passes about a quarter of a fader move: one plain step would stop short.
    assert abs(float(diff)) < 0.05 and abs(summary["change_db"] - 5.0) < 0.1, (diff, summary)


@pytest.mark.parametrize("seed", [0, 7])
def test_hidden_setting_is_seeded_realisable_and_its_contributions_sum_to_the_mix(seed):
    from jobs_helpers import ROOT
    from omegaconf import OmegaConf

    from diffmix.config import instantiate

    print("seed", seed)
    stems = _stems(1.0, seed=seed)
    node = OmegaConf.load(ROOT / "configs" / "console" / "default.yaml")
    node.sample_rate, node.tracks = SR, 4
    console = instantiate(node, _convert_="all", where="console")
    a, b = draw_setting(console, stems, seed), draw_setting(console, stems, seed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    console.load_values(a)  # in range: load_values raises otherwise
    ratio = a["strip.comp.ratio"].flatten()
    assert ((ratio == 1.0) | ((ratio >= 1.5) & (ratio <= 8.0))).all()
    with torch.no_grad():
        parts, mix = contributions(console, stems), console(stems)[0]
    assert (parts.sum(0) - mix).abs().max() <= 1e-5 * mix.abs().max()
    assert np.isfinite(float(integrated_loudness(mix.unsqueeze(0).double(), SR)[0]))


def _band(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``x`` (``(..., n)``) kept from ``lo`` to ``hi`` Hz by an ideal FFT mask."""
    n = x.shape[-1]
    f = torch.fft.rfftfreq(n, 1 / SR, dtype=torch.float64)
    return torch.fft.irfft(torch.fft.rfft(x) * ((f >= lo) & (f < hi)), n)


def _balance_error_db(matrix: torch.Tensor, truth: torch.Tensor) -> float:
    """A one-column placement ``matrix`` ``(2, 2)``'s left/right balance minus the truth's
    (``(2,)`` channel gains), dB."""
    return 20 * math.log10(float(matrix[0, 0] / matrix[1, 0]) / float(truth[0] / truth[1]))


@pytest.mark.parametrize("bounded,weighted", [(True, True), (True, False), (False, False)])
def test_a_quiet_hard_panned_stem_keeps_its_balance_where_it_has_no_energy(bounded, weighted, monkeypatch):
    """A stem narrowed to mono and panned hard right, 60 dB down outside its band, beside a
    centred residual in that empty band (another stem's misfit it is faintly correlated
    with): an unbounded per-band tone lifts it by 70 dB to explain the residual, whose
    centred balance then pulls the stem's placement; held to what an EQ can give
    (``TONE_BOOST_DB``) its balance stays the truth's. (Alf42red-Mauiwowi, hidden seed
    92604: 06-hollow-wood-2 came out 13.6 dB off.) With or without the placement solve's
    band weights (``_band_noise``); without both it is off. (The weights alone, unbounded:
    0.3-2.5 dB off on four seeds; they lower that band's pull, the bound removes it.)"""
    from diffmix.mixing import solvers
    from diffmix.mixing.solvers import solve_placement

    if not bounded:
        monkeypatch.setattr(solvers, "TONE_BOOST_DB", 300.0)
    if not weighted:
        monkeypatch.setattr(solvers, "_band_noise", lambda *args: None)
    seed = drawn_seed(10_000)
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    n = 3 * SR

    wide = _band(torch.randn(2, n, generator=g, dtype=torch.float64), 30, 16000)
    src = torch.randn(n, generator=g, dtype=torch.float64)
    quiet = _band(src, 1500, 8000) + 1e-3 * _band(src, 100, 1000)
    stems = torch.stack([wide, torch.stack([quiet, quiet])])
    truth = torch.tensor([0.125, 1.4], dtype=torch.float64)  # 21 dB right
    ref = wide + truth.view(2, 1) * quiet + 10.0 * _band(src, 100, 1000)
    matrix, one_column, _, _ = solve_placement(stems.float(), ref.float(), SR, mono=[False, False])
    assert one_column == [False, True]
    err_db = _balance_error_db(matrix[1], truth)
    if bounded:
        assert abs(err_db) < 0.75, (seed, err_db)
    else:
        assert err_db > 3.0, (seed, err_db)


# Seeds 0-199 checked one by one: the weights land the balance within 0.75 dB on all of
# them, but a random draw met seed 6355 at 0.88 dB; without the weights it is over 6 dB off
# on all but 7, 12, 29, 72, 129 and 174 (0.4-5.0 dB: the body's pull is what the draw makes
# it). The fit is a least-squares estimate, not a guarantee either way.
_OFF_WEIGHTED, _NEAR_UNWEIGHTED = (6355,), (7, 12)


@pytest.mark.parametrize("weighted, seeds", [
    pytest.param(True, tuple(range(20)), id="weighted-seeds-0-19"),
    pytest.param(False, tuple(s for s in range(20) if s not in _NEAR_UNWEIGHTED), id="plain-seeds-0-19"),
    *(pytest.param(True, (s,), id=f"weighted-seed-{s}", marks=pytest.mark.xfail(
        strict=True, reason="the weighted balance lands over 0.75 dB off")) for s in _OFF_WEIGHTED),
    *(pytest.param(False, (s,), id=f"plain-seed-{s}", marks=pytest.mark.xfail(
        strict=True, reason="the unweighted balance lands under 6 dB off")) for s in _NEAR_UNWEIGHTED),
])
def test_a_quiet_stem_collinear_with_a_loud_one_takes_its_balance_where_it_is_not(weighted, seeds,
                                                                                  monkeypatch):
    """A quiet kick panned hard right (18 dB of balance, 30 dB under a loud centred kick)
    whose body (40-200 Hz) is nearly the loud kick's, with a click of its own (1-4 kHz);
    the loud kick reaches the mix through a moving gain no strip reproduces (a compressor's),
    so its misfit sits, centred, in the band the two share. Must pass: each band counted by
    the inverse of what no regressor explains there, the quiet kick's balance comes from
    its click, within 0.75 dB. Matters: every bin alike, its body (most of its energy, and
    collinear) takes up the loud kick's centred misfit, several dB toward the centre.
    (Shovon-ProgressiveHousePluckDemo, hidden seed 62767: 03-kick01 came out +5.3 dB.)
    Fixed seeds (``_OFF_WEIGHTED``, ``_NEAR_UNWEIGHTED``: strict expected failures)."""
    from diffmix.mixing import solvers
    from diffmix.mixing.solvers import solve_placement

    if not weighted:
        monkeypatch.setattr(solvers, "_band_noise", lambda *args: None)
    for seed in seeds:
        print(f"seed {seed}")
        g = torch.Generator().manual_seed(seed)
        n = 4 * SR
        t = torch.arange(n, dtype=torch.float64) / SR

        beat = torch.exp(-((t * 2) % 1.0) * 8)  # a hit every 0.5 s
        body, own, click = (torch.randn(n, generator=g, dtype=torch.float64) for _ in range(3))
        loud = _band(beat * body, 40, 200)
        quiet = _band(beat * (0.995 * body + 0.1 * own), 40, 200) + 0.1 * _band(beat * click, 1000, 4000)
        rate = float(torch.empty(1).uniform_(0.3, 2.0, generator=g))
        moving = 1 + 0.3 * torch.sin(2 * math.pi * rate * t)
        truth = 0.03 * torch.tensor([0.12, 0.99], dtype=torch.float64)
        ref = (moving * loud).expand(2, n) + truth.view(2, 1) * quiet
        stems = torch.stack([loud.expand(2, n), quiet.expand(2, n)])
        matrix, one_column, _, _ = solve_placement(stems.float(), ref.float(), SR, mono=[False, False])
        assert one_column == [True, True]
        err_db = _balance_error_db(matrix[1], truth)
        if weighted:
            assert abs(err_db) < 0.75, (seed, err_db)
        else:
            assert err_db > 6.0, (seed, err_db)
