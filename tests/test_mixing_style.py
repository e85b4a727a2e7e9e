"""Mixing toward another song (diffmix.mixing.style, diffmix.mixing.style_master): the
feature distances and the master-bus stages, each with a case it must pass and a case
that shows it matters."""

from __future__ import annotations

import json
import math

import pytest
import soundfile as sf
import torch

from diffmix.checks import input_checks
from diffmix.console import Console
from diffmix.effects.dynamics import Compressor, Expander, Limiter, LoudnessRide
from diffmix.effects.gain import Gain, Pan, Width
from diffmix.effects.match_eq import MatchEQ
from diffmix.features import crest_factor_db
from diffmix.functional.dynamics import compressor
from diffmix.functional.loudness import integrated_loudness, loudness_range
from diffmix.functional.match_eq import band_levels_db
from diffmix.mixing.style import style_distances
from diffmix.mixing.style_master import (
    _distances,
    _run,
    dynamics_stage,
    equal_loudness_sum,
    level_stage,
    master_input,
    ride_stage,
    style_master,
    tone_width_stage,
)
from tests.jobs_helpers import ROOT, run_cli
from tests.seeds import drawn_seed

SR = 44100


def _stems(seed: int, seconds: float = 8.0, mono: bool = False, sections_db: float = 9.0) -> torch.Tensor:
    """Four stems ``(1, 4, 2, T)``: band-limited noise with its own rhythm each and
    partly correlated channels (identical channels with ``mono``), each swelling by
    +-``sections_db`` over 7 s."""
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    t = torch.arange(n, dtype=torch.float64) / SR
    f = torch.fft.rfftfreq(n, 1 / SR, dtype=torch.float64)
    parts = []
    for lo, hi, rate in ((30, 300, 2.0), (200, 3000, 3.0), (1000, 12000, 4.0), (40, 18000, 0.5)):
        common = torch.randn(n, generator=g, dtype=torch.float64)
        side = 0.0 if mono else 0.5
        x = torch.stack([common + side * torch.randn(n, generator=g, dtype=torch.float64) for _ in range(2)])
        x = torch.fft.irfft(torch.fft.rfft(x) * ((f >= lo) & (f < hi)), n)
        depth = float(torch.rand((), generator=g)) * 0.8
        phase = 6 * float(torch.rand((), generator=g))
        x = x * (1.0 - depth + depth * torch.relu(torch.sin(2 * math.pi * rate * t + phase)))
        x = x * 10 ** (sections_db * torch.sin(2 * math.pi * t / 7.0 + phase) / 20)  # sections
        parts.append(x / x.square().mean().sqrt() * 0.05)
    return torch.stack(parts).float().unsqueeze(0)


def _console(master: dict | None = None) -> Console:
    """Gain, width, pan, fader per strip; the master bus toward another song (or ``master``)."""
    strip = {"input": Gain(SR), "width": Width(SR), "pan": Pan(SR), "fader": Gain(SR)}
    if master is None:
        master = {"width": Width(SR), "match": MatchEQ(SR),
                  "comp": Compressor(SR, threshold_db=-6.0, ratio=1.0),
                  "expander": Expander(SR, threshold_db=-60.0, ratio=1.0, knee_db=6.0, attack_ms=5.0,
                                       release_ms=200.0, hold_ms=20.0, range_db=24.0),
                  "limiter": Limiter(SR, ceiling_db=0.0, release_ms=80.0), "ride": LoudnessRide(SR)}
    return Console(SR, 4, strip=strip, master=master)


def _tilt(centres: torch.Tensor, db_per_octave: float) -> torch.Tensor:
    return db_per_octave * torch.log2(centres / 1000.0)


def test_tone_width_stage_recovers_a_known_mid_side_tilt():
    # The reference is the very mix through a known mid/side EQ (mid tilted down 2 dB per
    # octave, side up 3 dB per octave): the stage's gains must be that EQ, up to the one
    # level offset the loudness sets, in every band with signal.
    stems = _stems(7)
    console = _console()
    eq = MatchEQ(SR)
    centres = eq.centres_hz
    mid_true, side_true = _tilt(centres, -2.0), _tilt(centres, 3.0)
    with torch.no_grad(), input_checks(False):
        pre = master_input(console, stems).double()
        eq.load_values({"mid_gain_db": mid_true, "side_gain_db": side_true})
        reference = eq.double()(pre)
        before = style_distances(pre, reference, SR)
        report = tone_width_stage(console, pre, reference, SR)
        got = console.master.effects["match"]
        mid, side = got.p("mid_gain_db")[0].double(), got.p("side_gain_db")[0].double()
        after = style_distances(got.double()(pre), reference, SR)
    live = band_levels_db(pre, SR, centres)[0, 0] > band_levels_db(pre, SR, centres)[0, 0].max() - 40.0
    offset = float((mid - mid_true)[live].mean())
    assert report["width"] == 1.0  # the side's need fits the EQ: no broadband width
    assert before["tone_mid"] > 3.0 and before["tone_side"] > 3.0, before  # the tilt matters
    assert (mid - mid_true - offset)[live].abs().max() < 0.5, (mid, mid_true)
    assert (side - side_true - offset)[live].abs().max() < 0.5, (side, side_true)
    for k in ("tone_mid", "tone_side", "width"):
        assert after[k] < 0.1 * before[k], (before, after)


def test_width_takes_the_side_the_match_eq_cannot_give():
    # Stems with almost no side against a wide reference: the side needs more than the
    # EQ's +24 dB. With the master width the width distance lands; without it it cannot.
    stems = _stems(8, mono=True)
    stems[:, 3] = stems[:, 3] * torch.tensor([1.0, 0.7]).view(1, 2, 1)  # a little side (-15 dB)
    wide = torch.cat([_stems(9)[0].sum(0, keepdim=True)[:, :1], _stems(10)[0].sum(0, keepdim=True)[:, :1]], 1)
    reference = wide.double()  # two unrelated channels: side as strong as mid
    out = {}
    for name, master in (("with", None), ("without", {"match": MatchEQ(SR)})):
        console = _console(master)
        with torch.no_grad(), input_checks(False):
            pre = master_input(console, stems).double()
            report = tone_width_stage(console, pre, reference, SR)
            y = console.master(pre.float()).double()
        out[name] = (style_distances(pre, reference, SR), style_distances(y, reference, SR), report)
    before, with_w, report = out["with"]
    assert report["width"] > 2.0, report
    assert with_w["width"] < 1.0 and with_w["width"] < 0.2 * before["width"], (before, with_w)
    assert out["without"][1]["width"] > 3.0 * max(with_w["width"], 0.5), out["without"][1]


def _dyn_case(reference_master: dict, seed: int = 21) -> tuple[dict, dict, dict]:
    """Style distances (before, after) and the report of the dynamics and level stages
    toward the same stems through ``reference_master``."""
    stems = _stems(seed, seconds=10.0)
    ref_console = Console(SR, 4, strip={"pan": Pan(SR)}, master=reference_master)
    console = _console()
    with torch.no_grad(), input_checks(False):
        reference = ref_console(stems).double()  # the same song through the hidden dynamics
        pre = master_input(console, stems).double()
        before = style_distances(console.master(pre.float()).double(), reference, SR)
        report = dynamics_stage(console, pre, reference, SR)
        report["level"] = level_stage(console, pre, reference, SR)
        after = style_distances(console.master(pre.float()).double(), reference, SR)
    return before, after, report


def test_dynamics_stage_compresses_toward_a_squashed_song():
    before, after, report = _dyn_case({"comp": Compressor(SR, threshold_db=-34.0, ratio=8.0, attack_ms=5.0,
                                                          release_ms=100.0)})
    assert report["chosen"] == "comp", report
    assert before["lra"] > 1.0 and before["crest"] > 1.0, before
    assert after["lra"] < 0.5 * before["lra"] and after["crest"] < 0.5 * before["crest"], (before, after)


def test_dynamics_stage_expands_toward_a_more_dynamic_song():
    # A compressor can only take range away: only the expander reaches this reference.
    before, after, report = _dyn_case({"exp": Expander(SR, threshold_db=-16.0, ratio=3.0, attack_ms=5.0,
                                                       release_ms=200.0, range_db=30.0)})
    assert report["chosen"] == "expander", report
    assert before["lra"] > 1.0, before
    assert after["lra"] < 0.5 * before["lra"], (before, after)
    assert after["crest"] < 0.5 * max(before["crest"], 0.5), (before, after)


def test_level_stage_hits_loudness_and_crest_with_the_ceiling_held():
    stems = _stems(31)
    console = _console()
    with torch.no_grad(), input_checks(False):
        # A loud, limited reference: crest factor well under the mix's.
        ref_console = Console(SR, 4, strip={"pan": Pan(SR)}, master={"lim": Limiter(SR, ceiling_db=-1.0,
                                                                                    gain_db=8.0)})
        reference = ref_console(_stems(32)).double()
        pre = master_input(console, stems).double()
        report = level_stage(console, pre, reference, SR)
        y = console.master(pre.float()).double()
    assert abs(float(integrated_loudness(y, SR)[0] - integrated_loudness(reference, SR)[0])) < 0.03
    assert abs(float(crest_factor_db(y)[0] - crest_factor_db(reference)[0])) < 0.1, report
    assert float(y.abs().max()) <= 1.0 and report["ceiling_db"] <= 0.0
    # It matters: a plain gain to the reference's loudness overshoots full scale.
    plain = pre * 10 ** (float(integrated_loudness(reference, SR)[0] - integrated_loudness(pre, SR)[0]) / 20)
    assert float(plain.abs().max()) > 1.0


def _bass_and_bright(seed: int, seconds: float, swell_db: float) -> torch.Tensor:
    """Four stems ``(1, 4, 2, T)``: a loud steady bass (40-90 Hz, what a level detector
    sees), a bright part (3-12 kHz, what K-weighting lifts) swelling by +-``swell_db``
    over 11 s, and two quiet mid parts."""
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    t = torch.arange(n, dtype=torch.float64) / SR
    f = torch.fft.rfftfreq(n, 1 / SR, dtype=torch.float64)

    def band(lo: float, hi: float) -> torch.Tensor:
        x = torch.randn(2, n, generator=g, dtype=torch.float64)
        x = torch.fft.irfft(torch.fft.rfft(x) * ((f >= lo) & (f < hi)), n)
        return x / x.square().mean().sqrt()

    phase = 2 * math.pi * float(torch.rand((), generator=g))
    bass = 0.3 * band(40, 90) * (1 + 0.3 * torch.sin(2 * math.pi * 2 * t))
    bright = 0.05 * band(3000, 12000) * 10 ** (swell_db * torch.sin(2 * math.pi * t / 11 + phase) / 20)
    return torch.stack([bass, bright, 0.02 * band(300, 2000), 0.02 * band(300, 2000)]).float().unsqueeze(0)


# The stems' bright part swells by this much: at 8 dB some draws left the mix within 0.4 LU
# of the reference's LRA before the ride (CI, seed 91863), so the case tested nothing; at 12
# the mix reads 1.6-2.7 LU over it on every one of 12 random draws, and no compressor setting
# comes within half of that.
SWELL_DB = 12.0


@pytest.mark.parametrize("seed", [drawn_seed(10**6)])
def test_ride_stage_lands_the_loudness_range_a_compressor_cannot(seed):
    # The loudness swells with a bright part K-weighting hears, under a steady bass that
    # holds the waveform's level: the ride (after the limiter, solved on the output) lands
    # the reference's LRA at its loudness; a broadband compressor, at any threshold, ratio
    # or timing the dynamics stage tries, cannot (its detector sees the bass).
    stems = _bass_and_bright(seed, 16.0, SWELL_DB)
    console = _console()
    with torch.no_grad(), input_checks(False):
        reference = _bass_and_bright(seed + 1, 16.0, 1.0)[0].sum(0, keepdim=True).double()
        goal = float(loudness_range(reference, SR)[0])
        pre = master_input(console, stems).double()
        level_stage(console, pre, reference, SR)
        before = _run(console, pre)
        report = ride_stage(console, pre, reference, SR)
        y = _run(console, pre)
        swept = [float(loudness_range(compressor(pre.float(), SR, threshold_db=thr, ratio=ratio,
                                                 attack_ms=a, release_ms=r), SR)[0])
                 for thr in range(-44, 1, 4) for ratio in (4.0, 10.0)
                 for a, r in ((2.0, 100.0), (200.0, 1500.0))]
    lra_before, lra = float(loudness_range(before, SR)[0]), float(loudness_range(y, SR)[0])
    print(report, goal, lra_before, lra, min(swept, key=lambda v: abs(v - goal)))
    assert abs(lra_before - goal) > 0.5, (lra_before, goal)
    assert abs(lra - goal) < 0.05, report
    assert report["range_scale"] < 1.0
    assert abs(float(integrated_loudness(y, SR)[0] - integrated_loudness(reference, SR)[0])) < 0.05
    assert float(y.abs().max()) <= 1.0
    assert min(abs(v - goal) for v in swept) > 0.5 * abs(lra_before - goal), swept


def _processed_song(g: torch.Generator) -> Console:
    """A reference's console: a random M/S EQ, a random width, a compressor or an expander
    and a limiter, drawn from ``g``."""
    eq = MatchEQ(SR)
    n = eq.num_bands
    eq.load_values({"mid_gain_db": _tilt(eq.centres_hz, float(torch.rand((), generator=g)) * 6 - 3)
                    + torch.randn(n, generator=g, dtype=torch.float64).cumsum(0) * 0.7,
                    "side_gain_db": torch.randn(n, generator=g, dtype=torch.float64).cumsum(0) - 6.0})
    squash = bool(torch.rand((), generator=g) < 0.5)
    dyn = (Compressor(SR, threshold_db=-30.0, ratio=4.0) if squash
           else Expander(SR, threshold_db=-35.0, ratio=2.0, attack_ms=5.0, release_ms=200.0, range_db=24.0))
    ref_console = Console(SR, 4, strip={"pan": Pan(SR)}, master={
        "eq": eq, "width": Width(SR, width=float(torch.rand((), generator=g)) * 1.5 + 0.25), "dyn": dyn,
        "lim": Limiter(SR, ceiling_db=-1.0, gain_db=float(torch.rand((), generator=g)) * 8)})
    return ref_console


def _judge(console, score, stages):  # noqa: ANN001, ANN202
    """A stage judge as the fit's: keep a stage only where it lowers ``score()`` (or is
    ``required``), else put the console back; each stage's (name, before, after) logged."""

    def judge(name, run, required=False):  # noqa: ANN001, ANN202
        before = console.snapshot()
        was = score()
        report = run()
        got = score()
        if got >= was and not required:
            console.load_values(before)
        stages.append((name, round(was, 3), round(got, 3)))
        return report

    return judge


@pytest.mark.parametrize("seed", [drawn_seed(10**6)])
def test_style_master_halves_every_distance_toward_a_differently_processed_song(seed):
    # A random synthetic multitrack toward another, processed through a random M/S EQ, a
    # random width and a compressor or an expander, each stage judged (here: by the sum of
    # the distances).
    g = torch.Generator().manual_seed(seed)
    print("seed", seed)
    stems = _stems(seed, seconds=6.0)
    ref_console = _processed_song(g)
    console = _console()
    stages = []

    def score() -> float:
        with torch.no_grad():
            return sum(style_distances(console(stems).double(), reference, SR).values())

    judge = _judge(console, score, stages)
    with torch.no_grad(), input_checks(False):
        reference = ref_console(_stems(seed + 1, seconds=6.0)).double()
        start = style_distances(console(stems).double(), reference, SR)
        style_master(console, stems, reference, SR, judge)
        end = style_distances(console(stems).double(), reference, SR)
    print(stages, start, end)
    # The closed-form parts land on any draw; the loudness range of a 6 s excerpt is a
    # handful of short-term windows, so LRA and crest are held to the judge's total here
    # (their own stages are tested above).
    for k in ("tone_mid", "tone_side", "width", "loudness"):
        assert end[k] <= 0.5 * start[k] + 0.02, (k, start, end)
    assert sum(end.values()) <= 0.5 * sum(start.values()), (start, end)
    assert [s[0] for s in stages] == ["loudness and crest", "tone and width", "dynamics", "loudness ride",
                                      "tone refine", "loudness range trim"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [852166, drawn_seed(10**6)])
def test_style_master_lands_the_loudness_range_under_a_judge_that_weighs_it_lightly(seed):
    # The fit's objective weighs the loudness range and crest at 0.01 against the tone, so
    # its judge keeps a tone stage that moves the LRA and reverts a dynamics stage that
    # costs a little tone (bench (d), synthetic 24563 and 24564): the last stage lands the
    # LRA on the reference's anyway, holding every other distance to half the stems'
    # equal-loudness sum's (or where it was).
    g = torch.Generator().manual_seed(seed)
    print("seed", seed)
    stems = _stems(seed, seconds=16.0)
    ref_console = _processed_song(g)
    console = _console()
    stages = []

    def score() -> float:
        d = style_distances(console(stems).double(), reference, SR)
        return sum(v * (0.01 if k in ("lra", "crest") else 1.0) for k, v in d.items())

    judge = _judge(console, score, stages)
    with torch.no_grad(), input_checks(False):
        reference = ref_console(_stems(seed + 1, seconds=16.0)).double()
        start = style_distances(equal_loudness_sum(stems, SR), reference, SR)
        report = style_master(console, stems, reference, SR, judge)
        # The stages judge the master bus in float64 on the master input; the console's
        # float32 render reads the same within float32 rounding (seed 917900: LRA
        # distance 0.00855 one way, 0.00858 the other).
        end = _distances(console, master_input(console, stems).double(), reference, SR)
        rendered = style_distances(console(stems).double(), reference, SR)
    trim = report["lra trim"]
    print(report, start, end, rendered)
    assert rendered == pytest.approx(end, abs=5e-3)
    assert stages[-1][0] == "loudness range trim"
    # The tolerance: a quarter of the master input's distance, 0.001-0.01 LU.
    assert trim["tolerance_lu"] == pytest.approx(min(0.01, max(0.001, 0.25 * start["lra"])), abs=1e-4)
    # Never further from the reference's LRA than before it; landed wherever a candidate
    # the trim may keep (every other feature within its bar) bracketed the goal with its
    # tries (some references' LRA lies outside what the ride can reach: its LRA is not
    # monotone in range_scale over the whole range). A candidate over a bar is not kept,
    # landed or not (seed 744389: the ride landed the LRA but took the crest over its bar).
    # Seed 852166: the LRA is not monotone in range_scale, and the regula falsi took its ends
    # as the tries nearest the goal in error, which bracketed nothing; it stopped 0.024 LU off
    # with a bracket 0.045 wide in hand. The ends are now the narrowest bracket.
    # The report rounds both bounds to 4 decimals, so each may read up to half a unit under
    # the value the trim used (seed 744389 kept nothing: its LRA distance 0.14862 as before,
    # reported 0.1486).
    rounded = 0.5e-4
    assert end["lra"] <= trim["lra_before"] + rounded + 1e-6, trim
    if any(min(e for _, e in c["tried"]) < 0 < max(e for _, e in c["tried"])
           for c in trim.get("candidates", []) if not c["over_bar"]):
        assert end["lra"] <= trim["tolerance_lu"] + rounded + 1e-6, trim
    for k in ("tone_mid", "tone_side", "width", "loudness"):
        assert end[k] <= 0.5 * start[k] + 0.02, (k, start, end)


def test_mix_cli_toward_another_song_reports_the_master_stages(tmp_path):
    # The real CLI with aligned=false: the master bus gains the style effects, the report
    # lists each judged stage, and the written file holds the reference's loudness.
    stems = _stems(41, seconds=4.0)[0].numpy()
    folder = tmp_path / "stems"
    folder.mkdir()
    for i, s in enumerate(stems):
        sf.write(str(folder / f"{i}.wav"), s.T, SR, subtype="FLOAT")
    ref = Console(SR, 4, strip={"pan": Pan(SR)}, master={"lim": Limiter(SR, ceiling_db=-1.0, gain_db=10.0)})
    with torch.no_grad():
        reference = ref(_stems(42, seconds=4.0)).double()
    sf.write(str(tmp_path / "ref.wav"), reference[0].numpy().T, SR, subtype="FLOAT")
    r = run_cli("mix", f"stems={folder}", f"reference={tmp_path / 'ref.wav'}", "aligned=false",
                f"out={tmp_path / 'out'}", "progress=false", cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "mix_report.json").read_text())
    names = [s["stage"] for s in report["fit"]["stages"]]
    assert names[:4] == ["loudness and crest", "tone and width", "dynamics", "loudness ride"], names
    assert "gradient steps" not in names and "loudness" not in names
    assert {"width", "match", "expander", "limiter", "ride"} <= set(report["params"]["master"])
    mix, _ = sf.read(str(tmp_path / "out" / "mix.wav"), always_2d=True)
    got = float(integrated_loudness(torch.from_numpy(mix.T).unsqueeze(0), SR)[0])
    assert abs(got - float(integrated_loudness(reference, SR)[0])) < 0.1
    assert float(loudness_range(torch.from_numpy(mix.T).unsqueeze(0), SR)[0]) >= 0.0


def test_the_mix_config_builds_the_master_bus_toward_a_song():
    # The real composed config: with a reference and aligned=false the master bus holds the
    # toward_song effects around console.master's, in order; aligned, it is untouched.
    from hydra import compose, initialize_config_dir

    from diffmix.errors import UserError
    from diffmix.jobs.mix import build_console, toward_song_master

    def console(*overrides: str) -> Console:
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("mix", overrides=["stems=s", *overrides])
        return build_console(cfg, SR, ["a", "b"], [False, True])

    toward = console("reference=r.wav", "aligned=false")
    assert list(toward.master.effects) == ["width", "match", "eq", "comp", "gain", "expander", "limiter",
                                           "ride"]
    assert toward(torch.randn(1, 2, 2, 4410) * 0.1).shape == (1, 2, 4410)
    assert list(console("reference=r.wav").master.effects) == ["eq", "comp", "gain"]
    with pytest.raises(UserError, match=r"already has effect\(s\) \['width'\]"):
        toward_song_master({"width": {}}, {"before": {"width": {}}})


def test_toward_a_song_the_objective_judges_dynamics_by_default():
    # The plain `aligned=false` command is judged on the loudness range and crest too
    # (toward_song.dynamics_weight); a weight the user sets wins; aligned, nothing is added.
    from hydra import compose, initialize_config_dir

    from diffmix.jobs.mix import fit_options

    def weights(*overrides: str) -> dict[str, float]:
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            return fit_options(compose("mix", overrides=["stems=s", *overrides])).weights

    assert weights("reference=r.wav", "aligned=false")["dynamics"] == 0.01
    assert weights("reference=r.wav", "aligned=false", "+loss.weights.dynamics=0.5")["dynamics"] == 0.5
    assert "dynamics" not in weights("reference=r.wav")
    assert "dynamics" not in weights()
