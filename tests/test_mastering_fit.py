"""The mastering fit's excerpts and stopping: what it sees, and so when it stops, comes from
the audio alone (issue 19: the same song under another file name ran twice the steps)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from jobs_helpers import music

from diffmix.fit import excerpt_pool
from diffmix.mastering import ChainSpec, FitOptions, fit_stage, song_excerpts

SR = 44100


def _song(seconds: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(music(seconds, SR, seed=seed).T.copy()).unsqueeze(0)


def test_the_pool_cycles_through_fixed_excerpts_spread_over_each_song():
    seed = 7
    print("seed", seed)
    a, b = _song(6.0, seed), _song(3.0, seed + 1)  # songs of different lengths in one batch
    length, pool = SR, 4
    starts_a, starts_b = excerpt_pool(a.shape[-1], length, pool), excerpt_pool(b.shape[-1], length, pool)
    assert starts_a[0] == 0 and starts_a[-1] == a.shape[-1] - length  # spread end to end
    for step in range(2 * pool):
        batch = song_excerpts([a, b], length, step, pool=pool)
        k = step % pool
        torch.testing.assert_close(batch[0], a[0, :, starts_a[k] : starts_a[k] + length], rtol=0, atol=0)
        torch.testing.assert_close(batch[1], b[0, :, starts_b[k] : starts_b[k] + length], rtol=0, atol=0)
    # A song no longer than an excerpt is its whole self, zero-padded.
    short = song_excerpts([b], 4 * SR, 3, pool=pool)
    assert short.shape[-1] == 4 * SR and torch.equal(short[0, :, : b.shape[-1]], b[0])
    # Without a pool, a fresh random excerpt per step, the same for a given (seed, step).
    drawn = song_excerpts([a], length, 5, pool=0, seed=1)
    assert torch.equal(drawn, song_excerpts([a], length, 5, pool=0, seed=1))


def _fit(audio: torch.Tensor, key: str, reference: torch.Tensor, **options) -> tuple[dict, dict]:
    spec = ChainSpec(SR, {
        "eq": {"_target_": "diffmix.effects.eq.ParametricEQ", "sample_rate": SR,
                "bands": ["low_shelf", "peak", "high_shelf"], "freq_hz": [150.0, 1000.0, 6000.0]},
        "limiter": {"_target_": "diffmix.effects.dynamics.Limiter", "sample_rate": SR, "ceiling_db": -1.0},
    })
    bus = spec.build(1)
    fit = FitOptions(
        steps=60, excerpt_s=1.0, params=["eq.gain_db"], weights={"tone_mid": 1.0}, progress=False,
        optimizer=partial(torch.optim.Adam, lr=0.2), **options,
    )
    report = fit_stage(bus, [audio], [key], [reference], {}, fit)
    assert report is not None
    return report, {k: v.exact().detach().clone() for k, v in bus.named_values().items()}


@pytest.mark.parametrize("names", [("mix", "a/much/longer name (final) v2")])
def test_the_fit_is_the_same_under_any_file_name_and_stops_on_convergence(names):
    seed = 11
    print("seed", seed)
    audio, reference = _song(5.0, seed), _song(5.0, seed + 1)
    first, values = _fit(audio, names[0], reference, pool=4, patience=4, min_delta=0.01)
    second, again = _fit(audio, names[1], reference, pool=4, patience=4, min_delta=0.01)
    print("steps", first["steps"], first["stopped"])
    assert first["steps"] == second["steps"] and first["loss"] == second["loss"]
    for k in values:
        assert torch.equal(values[k], again[k]), k
    # It stopped because the pool's mean loss stopped improving, well before the step cap.
    assert first["stopped"] == "plateau" and first["steps"] < 60 and math.isfinite(first["best_loss"])


def test_the_refine_passes_smooth_render_has_the_exact_renders_tone():
    # Between match-refine passes the master is rendered through the smooth limiter: the
    # exact one is that times a metered correction <= 1 on a few peaks, so the tone the
    # pass measures is the delivered one.
    from diffmix.functional.match_eq import match_gains
    from diffmix.mastering import render_with_drive
    from diffmix.mastering.render import smooth_render

    seed = 5
    print("seed", seed)
    x = _song(4.0, seed)
    spec = ChainSpec(SR, {
        "comp": {"_target_": "diffmix.effects.dynamics.Compressor", "sample_rate": SR, "threshold_db": -20.0},
        "limiter": {"_target_": "diffmix.effects.dynamics.Limiter", "sample_rate": SR, "ceiling_db": -1.0,
                    "strict": True},
    })
    bus = spec.build(1)
    drives = torch.tensor([12.0], dtype=torch.float64)  # the limiter works hard
    exact = render_with_drive(bus, x)(drives)
    smooth = smooth_render(bus, x, drives)
    assert (exact.abs() <= smooth.abs() + 1e-7).all()
    assert (smooth - exact).abs().max() > 0  # the correction did act
    centres = torch.tensor([100.0 * 2 ** (k / 3) for k in range(21)])
    mid, side = match_gains(exact, smooth, SR, centres)
    assert mid.abs().max() < 0.01 and side.abs().max() < 0.01
