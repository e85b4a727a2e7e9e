"""Clicks in both channels at once (the detector's pair rule) and two loud clicks bridged
into one burst (the split of a too-long burst), each measured against the detector
without it on signals with a known mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from diffmix.functional.restoration import detect_clicks, runs
from diffmix.functional.restoration.masks import _split_long

SR = 44100


def ar_unit(rng: np.random.Generator, n: int) -> np.ndarray:
    """A unit-RMS AR process through three resonant pole pairs."""
    poly = np.array([1.0])
    for _ in range(3):
        r, th = rng.uniform(0.9, 0.99), rng.uniform(0.02, 2.8)
        poly = np.convolve(poly, [1.0, -2 * r * math.cos(th), r * r])
    x = lfilter([1.0], poly, rng.standard_normal(n + 4096))[4096:]
    return x / x.std()


def stereo_with_clicks(seed: int, shift: int = 0, partner: bool = True, smooth: int = 1):
    """5 s of stereo "music" (a common AR source in both channels, at 0 and -2 dB, plus
    an independent one in each at -6 dB) with 20 bursts of 5-40 samples: 20-30 dB over
    the RMS in the left channel, and (``partner``) the same shape 3-9 dB over the RMS
    in the right, either sign, ``shift`` samples later; ``smooth``: each burst's noise
    through a Hann window of that many samples (a dull transient, not a click).
    ``(damaged, truth)``."""
    rng = np.random.default_rng(seed)
    n = 5 * SR
    common = ar_unit(rng, n)
    clean = 0.1 * np.stack([common + 0.5 * ar_unit(rng, n), 0.8 * common + 0.5 * ar_unit(rng, n)])
    rms = clean.std(-1)
    damaged, truth = clean.copy(), np.zeros(clean.shape, bool)
    for s in np.sort(rng.choice(np.arange(2000, n - 2000, 2000), 20, replace=False)):
        length = int(rng.integers(5, 41))
        burst = np.convolve(rng.standard_normal(length), np.hanning(smooth + 2)[1:-1])[:length]
        burst /= np.abs(burst).max()
        damaged[0, s : s + length] += burst * rms[0] * 10 ** (rng.uniform(20, 30) / 20)
        truth[0, s : s + length] = True
        if partner:
            lo = s + shift
            damaged[1, lo : lo + length] += (burst * rms[1] * 10 ** (rng.uniform(3, 9) / 20)
                                             * rng.choice([-1.0, 1.0]))
            truth[1, lo : lo + length] = True
    return damaged, truth


def found(mask: np.ndarray, truth: np.ndarray) -> tuple[list[int], int]:
    """Inserted bursts found per channel, and flagged spans off every burst."""
    events = runs(torch.from_numpy(truth)[None]).tolist()
    per = [sum(bool(mask[r, s:e].any()) for r, s, e in events if r == ch) for ch in (0, 1)]
    false = sum(not truth[r, s:e].any() for r, s, e in runs(torch.from_numpy(mask)[None]).tolist())
    return per, false


# Seed 1472366541 (one of ~360 drawn at random): the detector marks one span off a burst,
# with the pair rule and without it alike (the guards' false alarm on the music, not the
# pair rule's); 19 of the 20 quiet copies found, 5 without the rule.
_GUARDS_FALSE_ALARM = 1472366541


@pytest.mark.parametrize("seeds", [
    pytest.param(tuple(range(6)), id="seeds-0-5"),
    pytest.param((_GUARDS_FALSE_ALARM,), id=f"seed-{_GUARDS_FALSE_ALARM}", marks=pytest.mark.xfail(
        strict=True, reason="the guards alone mark a span off a burst")),
])
def test_pair_rule_finds_the_quieter_channel_of_a_click_in_both(seeds):
    """A burst in both channels at the same samples, loud in one and 3-9 dB over the music
    in the other, where the guards veto it alone: the pair rule only adds the quiet copies
    (never loses a burst, nothing off a burst either way), and over six signals it finds
    most of them where the guards alone find few (seeds 0-59, each alone: 10-20 of 20 per
    signal, mean 17.9, against mean 6.6; one signal's copies can all be found either way,
    so no single signal need gain). Fixed seeds: the rule is a detector, not a guarantee
    (``_GUARDS_FALSE_ALARM``, held as a strict expected failure so that a fix shows)."""
    print("seeds", seeds)
    quiet_on = quiet_off = 0
    for seed in seeds:
        damaged, truth = stereo_with_clicks(seed)
        x = torch.from_numpy(damaged).float()[None]
        on, false_on = found(detect_clicks(x, SR)[0][0].numpy(), truth)
        off, false_off = found(detect_clicks(x, SR, pair_sigma=None)[0][0].numpy(), truth)
        print(seed, on, off, false_on, false_off)
        assert on[0] == off[0] == 20  # the loud copies: found by the guards alone
        assert on[1] >= off[1] and false_on == false_off == 0
        quiet_on, quiet_off = quiet_on + on[1], quiet_off + off[1]
    assert quiet_on >= 0.6 * 20 * len(seeds) and quiet_on - quiet_off >= 0.25 * 20 * len(seeds)


# Seeds 0-39 each alone pass "one channel" and, but for seed 20, "shifted"; a random draw
# met one more (520344640). On both the rule pairs one shifted copy the guards alone
# leave (20: 1 of 19 found against 0; 520344640: 3 of 17 against 2).
_SHIFTED_PAIRED = (20, 520344640)


@pytest.mark.parametrize("case, seeds", [
    *(pytest.param(c, tuple(range(10)), id=f"{c}-seeds-0-9") for c in ("one channel", "shifted")),
    *(pytest.param("shifted", (s,), id=f"shifted-seed-{s}", marks=pytest.mark.xfail(
        strict=True, reason="the pair rule pairs a shifted copy")) for s in _SHIFTED_PAIRED),
])
def test_pair_rule_needs_the_same_samples(case, seeds):
    """A loud burst in one channel brings nothing in the other where the other has no
    burst ("one channel", the channels sharing most of their music), nor where its copy
    (a dull transient, noise through a 9-sample Hann window) lands 3 samples later, as a
    sound reaches two microphones at different times ("shifted": the copies found are
    those the guards find alone; without the test of the shifts, 2 and 4 of 20 were
    paired on seeds 1 and 2, measured). Fixed seeds: the test of the shifts is a
    detector's, not a guarantee (``_SHIFTED_PAIRED``, strict expected failures)."""
    for seed in seeds:
        damaged, truth = stereo_with_clicks(seed, shift=3, partner=case == "shifted",
                                            smooth=9 if case == "shifted" else 1)
        x = torch.from_numpy(damaged).float()[None]
        on, false_on = found(detect_clicks(x, SR)[0][0].numpy(), truth)
        off, false_off = found(detect_clicks(x, SR, pair_sigma=None)[0][0].numpy(), truth)
        print(seed, case, on, off, false_on, false_off)
        assert on == off and false_on == false_off, seed


def test_split_long_breaks_two_loud_cores_only():
    """A burst too long to be a click splits (runs merged again at a smaller gap) only into
    pieces no longer than a click, exactly two of them loud, the whole no longer than
    two clicks and a gap."""
    def case(pieces, loud_at, length=400):
        r = torch.tensor([[0, s, e] for s, e in pieces])
        long = torch.tensor([[0, pieces[0][0], pieces[-1][1]]])
        loud = torch.zeros(1, length, dtype=torch.bool)
        loud[0, loud_at] = True
        return _split_long(long, r, 13, 132, loud)

    two = [(10, 59), (79, 87), (107, 148)]  # the 50/s case: two clicks and a bridge
    pieces, split = case(two, [20, 120])
    assert split.tolist() == [True] and pieces.tolist() == [[0, *p] for p in two]
    assert case(two, [20])[1].tolist() == [False]  # one loud core: an attack
    assert case(two, [20, 80, 120])[1].tolist() == [False]  # three: a rattle
    assert case([(10, 150), (170, 200)], [20, 180])[1].tolist() == [False]  # a piece too long
    assert case([(10, 100), (120, 200), (220, 300)], [20, 250])[1].tolist() == [False]  # too long


def test_two_loud_clicks_bridged_into_one_burst_are_found(monkeypatch):
    """The restore benchmark's music draw, seed 5 (printed), 50 clicks/s, the reggae mix:
    two loud clicks (49 and 41 samples, +29 and +23 dB) 48 samples apart, whose errors
    bridge them into one 138-sample burst, over ``max_click_ms``: dropped as no click
    (79 % of the row's residual error), found once split."""
    from test_restoration_repair import bench_music_draw

    damaged, truth = bench_music_draw(5, 50.0, "CapDan-ReggaeTry")
    assert truth[0, 44956:45005].all() and truth[0, 45053:45094].all()
    x = torch.from_numpy(damaged.astype(np.float32))[None]
    for key in ("split", "whole"):
        mask = detect_clicks(x, SR, split_db=16.0 if key == "split" else None)[0][0].numpy()
        hits = [bool(mask[0, 44956:45005].any()), bool(mask[0, 45053:45094].any())]
        print(key, hits)
        assert hits == ([True, True] if key == "split" else [False, False])
