"""The objective: each term responds to what it names, and only to it."""

from __future__ import annotations

import math

import pytest
import torch
from contract import noise

from diffmix.functional.gain import width as set_width
from diffmix.objective import TERMS, Objective

SR = 44100


def music_like(seed=0, seconds=3.5):
    x = noise(1, 2, int(SR * seconds), seed=seed)
    env = 0.5 + 0.5 * torch.sin(torch.linspace(0, 40, x.shape[-1], dtype=torch.float64)).abs()
    return x * env


def test_all_terms_zero_on_the_reference_itself():
    ref = music_like()
    obj = Objective(
        SR, {t: 1.0 for t in TERMS if not t.startswith("spec") and t not in ("mrstft", "gain_staging")},
        reference=ref, n_fft=2048,
    )
    loss, terms = obj(ref)
    assert set(terms) == {"tone_mid", "tone_side", "width", "correlation", "loudness", "dynamics"}
    assert float(loss) < 1e-6


def test_terms_respond_to_their_attribute():
    ref = music_like()
    obj = Objective(SR, {"width": 1.0, "loudness": 1.0, "tone_mid": 1.0}, reference=ref, n_fft=2048)
    _, louder = obj(ref * 2.0)
    assert float(louder["loudness"]) == pytest.approx(6.02**2, rel=0.01)
    assert float(louder["width"]) < 1e-6 and float(louder["tone_mid"]) < 1e-3
    _, narrow = obj(set_width(ref, SR, width=0.3))
    assert float(narrow["width"]) > 10 and float(narrow["tone_mid"]) < 0.05


def test_spec_terms():
    x = music_like()
    target = {"lufs": -14.0, "true_peak_db": -1.0, "lra": [1.0, 2.0], "plr": 12.0}
    obj = Objective(SR, {"spec_lufs": 1, "spec_true_peak": 1, "spec_lra": 1, "spec_plr": 1}, target=target)
    loud = x / x.abs().max() * 0.99
    _, t = obj(loud)  # peaks near 0 dBTP: 1 dB over the ceiling
    assert float(t["spec_true_peak"]) > 0.8
    # PLR is about 9 LU (under the 12 minimum), LRA about 0 LU (under the 1 minimum)
    assert float(t["spec_plr"]) > 1.0 and float(t["spec_lra"]) > 0.1
    _, quiet = obj(x / x.abs().max() * 0.1)
    assert float(quiet["spec_true_peak"]) == 0.0 and float(quiet["spec_lufs"]) > 100
    # PLR and LRA are level-free
    assert float(quiet["spec_plr"]) == pytest.approx(float(t["spec_plr"]), rel=1e-6)
    assert float(quiet["spec_lra"]) == pytest.approx(float(t["spec_lra"]), rel=1e-6)
    stepped = torch.cat([music_like(seed=1, seconds=5), 0.1 * music_like(seed=2, seconds=5)], -1)
    _, steps = obj(stepped)  # a 20 dB step: LRA about 20 LU, over the 2 maximum
    assert float(steps["spec_lra"]) > 100
    admits = Objective(SR, {"spec_lra": 1, "spec_plr": 1}, target={"lra": [0.0, 50.0], "plr": 0.0})
    for y in (loud, stepped):
        _, ok = admits(y)
        assert float(ok["spec_lra"]) == 0.0 and float(ok["spec_plr"]) == 0.0


def test_gradients_reach_the_audio_and_are_finite_on_silence():
    ref = music_like()
    obj = Objective(
        SR,
        {t: 1.0 for t in TERMS if t != "mrstft"},
        reference=ref,
        target={"lufs": -14, "true_peak_db": -1, "lra": [3, 8], "plr": 8},
        n_fft=2048,
    )
    for y, silent in ((music_like(seed=3), False), (torch.zeros_like(ref), True)):
        y = y.clone().requires_grad_(True)
        loss, _ = obj(y)
        loss.sum().backward()
        assert torch.isfinite(y.grad).all()
        assert silent or y.grad.abs().sum() > 0  # on exact silence d(x²)/dx = 0


def test_bad_configs():
    with pytest.raises(ValueError, match="unknown term"):
        Objective(SR, {"tone": 1.0})
    with pytest.raises(ValueError, match="need a reference"):
        Objective(SR, {"tone_mid": 1.0})
    with pytest.raises(ValueError, match="needs target.lufs"):
        Objective(SR, {"spec_lufs": 1.0}, target={})
    with pytest.raises(ValueError, match="nothing to fit"):
        Objective(SR, {"loudness": 0.0})


def test_gain_staging_penalises_each_items_peak_above_full_scale():
    y = music_like(seed=5)
    y = torch.stack([0.5 * y[0] / y.abs().amax(), 2.0 * y[0] / y.abs().amax()])  # -6 and +6 dBFS
    loss, terms = Objective(SR, {"gain_staging": 3.0})(y)
    over = 20 * math.log10(2.0)
    assert terms["gain_staging"].tolist() == pytest.approx([0.0, over**2])
    assert loss.tolist() == pytest.approx([0.0, 3.0 * over**2])


def test_mrstft_on_precomputed_magnitudes_and_mono():
    ref, y = music_like(seed=1), music_like(seed=2)
    obj = Objective(SR, {"mrstft": 1.0})
    direct, _ = obj(y, ref)
    cached, _ = obj(y, aligned_mags=obj.mrstft_reference(ref))
    assert torch.equal(direct, cached)
    assert torch.allclose(direct, obj.mrstft(y, ref))
    mono = Objective(SR, {"mrstft": 1.0}, mono=True)
    m, _ = mono(y, ref)
    assert torch.allclose(m, mono.mrstft(y.mean(1, keepdim=True), ref.mean(1, keepdim=True)))
    assert not torch.allclose(m, direct)  # the mean is another comparison


def test_a_mono_output_has_no_side_to_compare_and_a_stereo_one_is_compared_as_before():
    # A mono output's side is the dB floor in every band; compared with a stereo reference's,
    # its level-normalised shape only says "turn the mid down" (the master of a mono mix
    # toward a stereo reference fitted its level 24 dB away). Bands with no side say nothing.
    ref = music_like(seed=3)
    obj = Objective(SR, {"tone_mid": 1.0, "tone_side": 1.0, "width": 1.0}, reference=ref, n_fft=2048)
    gain = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    mono = music_like(seed=4)[:, :1].expand(-1, 2, -1) * gain
    _, terms = obj(mono)
    assert float(terms["tone_side"].detach()) == 0.0 and float(terms["width"].detach()) == 0.0
    (terms["tone_side"] + terms["width"]).backward()
    assert gain.grad is None or float(gain.grad) == 0.0
    # A stereo output: every band heard, the plain mean over bands, as before.
    y = set_width(music_like(seed=5), SR, width=0.5)
    _, terms = obj(y)
    f = obj.features(y)
    assert bool(f.side_heard.all()) and bool(f.width_heard.all())
    torch.testing.assert_close(terms["tone_side"], (f.tone_side - obj.ref["tone_side"]).square().mean(-1),
                               rtol=0, atol=0)
    torch.testing.assert_close(terms["width"], (f.width_db - obj.ref["width"]).square().mean(-1),
                               rtol=0, atol=0)
