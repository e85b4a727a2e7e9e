"""One click at the same samples of both channels (a scratch, a glitch): the detector's
joint stereo rule, which reads the two channels' evidence together, measured against
the detector without it; and percussion heard in both channels left alone."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from diffmix.functional.restoration import declick, detect_clicks, runs
from diffmix.functional.restoration.guards import _bracketed, _near, _near_both
from diffmix.functional.restoration.pairs import _in_both
from tests.seeds import drawn_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from benchmarks.restore import BOTH_SEED_OFFSET, insert_clicks  # noqa: E402

SR = 44100


def test_near_both_needs_the_same_place_in_both_channels():
    """The joint candidate rule: a sample whose one-sided test holds and whose matched
    filter passes within ``reach`` samples, where the other channel has such a sample
    within ``tol``; nothing where the other channel shows the pair of tests farther off,
    or only one of them. Random positions (seed printed)."""
    seed = int(np.random.default_rng().integers(1 << 31))
    print("seed", seed)
    rng = np.random.default_rng(seed)
    t, reach, tol = 4000, 8, 2
    for _ in range(20):
        n = int(rng.integers(100, t - 100))
        dz = [int(rng.integers(-reach, reach + 1)) for _ in range(2)]  # matched filter's peaks
        cand = torch.zeros(2, t, dtype=torch.bool)
        z = torch.zeros(2, t)
        shift = int(rng.integers(-tol, tol + 1))  # the other channel's one-sided peak
        cand[0, n] = cand[1, n + shift] = True
        z[0, n + dz[0]] = z[1, n + shift + dz[1]] = 9.0

        def rule(c: torch.Tensor, zr: torch.Tensor) -> list:
            return _near_both(_near(c, zr, reach, 8.0), (2, t), tol).tolist()

        assert rule(cand, z) == [[0, n], [1, n + shift]]
        far = cand.clone()
        far[1] = False
        far[1, n + tol + 1 + int(rng.integers(0, 20))] = True  # the other channel too far
        assert rule(far, z) == []
        weak = z.clone()
        weak[1] = 7.0  # the other channel's matched filter under the threshold
        assert rule(cand, weak) == []
        late = torch.zeros(2, t)
        late[0, n + reach + 1] = late[1, n + shift] = 9.0  # one channel's beyond reach
        assert rule(cand, late) == []


def test_bracketed_marks_the_samples_between_a_forward_and_a_later_backward_break():
    """The one-sided test over a burst: a forward break at ``m1`` and a backward break at
    ``m2 >= m1`` mark the samples with the first at most ``reach`` before and the second
    at most ``reach`` after them; the reverse order (an attack's: backwards before its
    onset, forwards from it on) marks nothing, and ``reach`` 0 is the per-sample test.
    Random positions (seed printed)."""
    seed = int(np.random.default_rng().integers(1 << 31))
    print("seed", seed)
    rng = np.random.default_rng(seed)
    t = 400
    for _ in range(50):
        reach = int(rng.integers(0, 10))
        m1 = int(rng.integers(20, 200))
        m2 = m1 + int(rng.integers(0, 2 * reach + 5))
        fwd, bwd = torch.zeros(1, t, dtype=torch.bool), torch.zeros(1, t, dtype=torch.bool)
        fwd[0, m1] = bwd[0, m2] = True
        got = _bracketed(fwd, bwd, reach)[0].nonzero()[:, 0].tolist()
        assert got == list(range(max(m1, m2 - reach), min(m2, m1 + reach) + 1))
        assert _bracketed(bwd, fwd, reach).any() == (m1 == m2)  # reversed: only on one sample
    assert torch.equal(_bracketed(fwd, bwd, 0), fwd & bwd)


def test_a_joint_burst_stands_in_both_channels_or_in_neither():
    """The joint rule's bursts: one kept where the other channel has a kept burst within
    ``tol`` samples, dropped where the other channel's is vetoed, absent or farther off;
    a vetoed one stays vetoed. Random spans (seed printed)."""
    seed = int(np.random.default_rng().integers(1 << 31))
    print("seed", seed)
    rng = np.random.default_rng(seed)
    t, tol = 5000, 2
    for _ in range(50):
        row = int(rng.integers(0, 4))
        s = int(rng.integers(10, t - 100))
        e = s + int(rng.integers(1, 40))
        gap = int(rng.integers(0, 2 * tol + 2))  # the other channel's burst starts after e
        partner = row + 1 - 2 * (row % 2)
        bursts = torch.tensor([[row, s, e], [partner, e + gap, e + gap + 5]])
        mine, theirs = (bool(v) for v in rng.integers(0, 2, 2))
        got = _in_both(bursts, torch.tensor([mine, theirs]), t, tol).tolist()
        near = gap < tol  # `e` is exclusive: `gap` samples between the two bursts
        assert got == [mine and theirs and near, theirs and mine and near]
    assert _in_both(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.bool), t,
                    tol).tolist() == []


def bench_both_draw(seed: int, rate: float, song: str, shared: Path) -> tuple[np.ndarray, np.ndarray]:
    """The restore benchmark's both-channel draw of music seed ``seed`` (clicks from seed
    ``seed + BOTH_SEED_OFFSET``) for ``song``: ``(damaged, truth)``."""
    paths = sorted(shared.glob("*/mix.flac"))
    if len(paths) != 3:
        pytest.skip("shared multitracks absent")
    rng = np.random.default_rng(seed + BOTH_SEED_OFFSET)
    print("seed", seed + BOTH_SEED_OFFSET)
    draws = {}
    for r in (1.0, 10.0):  # the benchmark's order
        for p in paths:
            clean = np.ascontiguousarray(sf.read(str(p), dtype="float64", always_2d=True)[0].T)
            damaged, truth, _ = insert_clicks(clean, SR, r, rng, both=True)
            draws[r, p.parent.name] = damaged, truth
    return draws[rate, song]


def test_a_click_in_both_channels_the_channel_rules_miss_is_found(shared_multitrack):
    """The restore benchmark's both-channel draw at 1 click/s, seed 1002 (printed): a
    3-sample click in both channels of Alf42red-Mauiwowi, +21 and +14 dB over the music
    (57 % of the song's residual error), was no candidate in either channel: in both the
    one-sided test passes (3.9x and 1.5x its threshold) and the matched filter too (8.9x
    and 4.3x), but two samples apart, and the nearby-samples rule asks the other channel
    to show nothing. Found in both channels by the joint rule, missed in both without
    it; nothing off a click either way."""
    lo, hi = 316538, 316541
    damaged, truth = bench_both_draw(2, 1.0, "Alf42red-Mauiwowi", shared_multitrack)
    assert truth[:, lo:hi].all()
    x = torch.from_numpy(damaged.astype(np.float32))[None]
    for joint in (2, None):
        mask = detect_clicks(x, SR, joint_reach=joint)[0][0].numpy()
        hits = mask[:, lo - 6 : hi + 6].any(-1).tolist()
        off = [(r, s) for r, s, e in runs(torch.from_numpy(mask)[None]).tolist()
               if not truth[r, s:e].any()]
        print(joint, hits, off)
        assert hits == ([True, True] if joint else [False, False])
        assert off == []


def test_a_burst_in_both_channels_no_sample_of_which_passes_both_halves_is_found(
        shared_multitrack, monkeypatch):
    """The restore benchmark's both-channel draw at 1 click/s, seed 1001 (printed): a
    7-sample click in both channels of CapDan-ReggaeTry, 16-20 dB over dense music (the
    model predicts some 3 dB), was missed in both (-5.9 dB against adeclick on the row):
    inside the burst each direction predicts the click partly from itself, so the forward
    error breaks the threshold early in the burst and the backward one late, but on no one
    sample (the per-sample test read 2.4 and 3.8 of its 5). Found in both channels by the
    joint rule's two halves on nearby samples (:func:`_bracketed`), missed with the
    per-sample test; nothing off a click either way."""
    import diffmix.functional.restoration.detect as detect

    lo, hi = 874757, 874764
    damaged, truth = bench_both_draw(1, 1.0, "CapDan-ReggaeTry", shared_multitrack)
    assert truth[:, lo:hi].all()
    x = torch.from_numpy(damaged.astype(np.float32))[None]
    for bracket in (True, False):
        if not bracket:
            monkeypatch.setattr(detect, "_bracketed", lambda f, b, reach: f & b)
        mask = detect_clicks(x, SR)[0][0].numpy()
        hits = mask[:, lo:hi].any(-1).tolist()
        off = [(r, s) for r, s, e in runs(torch.from_numpy(mask)[None]).tolist()
               if not truth[r, s:e].any()]
        print(bracket, hits, off)
        assert hits == [bracket, bracket]
        assert off == []


def _mono_percussion(seed: int) -> np.ndarray:
    """Hi-hats (high-passed noise), rimshots (an impulse into two resonators and a noise
    tick) and plucks (Karplus-Strong) over a soft pad, each hit the *same* samples in both
    channels at its own random pan: ``(2, T)``, 4 s."""
    rng = np.random.default_rng(seed)
    t = 4 * SR
    n = np.arange(t) / SR
    pad = 0.05 * np.sin(2 * math.pi * 110 * n) + 0.03 * np.sin(2 * math.pi * 164.8 * n)
    out = np.stack([pad, pad * 0.9])
    hits = []
    for beat in range(16):
        length = SR // 8
        noise = np.diff(rng.standard_normal(length), prepend=0.0)
        env = np.exp(-np.arange(length) / (rng.uniform(0.03, 0.08) * SR))
        hits.append((beat * SR // 4 + int(rng.integers(0, 200)), rng.uniform(0.1, 0.3) * noise * env))
    for beat in range(4):
        k = np.arange(SR // 5)
        ring = sum(np.exp(-k / (0.02 * SR)) * np.sin(2 * math.pi * f * k / SR) for f in (420, 1650))
        tick = rng.standard_normal(len(k)) * np.exp(-k / (0.002 * SR))
        hits.append((beat * SR + SR // 2 + int(rng.integers(0, 200)), 0.3 * ring + 0.2 * tick))
    for beat in range(6):
        period, length = int(rng.integers(60, 300)), SR // 2
        buf, y = rng.uniform(-1, 1, period), np.zeros(length)
        for i in range(length):  # test-signal synthesis only
            y[i] = buf[i % period]
            buf[i % period] = 0.996 * 0.5 * (buf[i % period] + buf[(i + 1) % period])
        hits.append((beat * SR * 2 // 3 + SR // 8 + int(rng.integers(0, 200)), 0.2 * y))
    for s, hit in hits:
        pan = rng.uniform(0.0, math.pi / 2)
        end = min(t, s + len(hit))
        out[0, s:end] += math.cos(pan) * hit[: end - s] * math.sqrt(2)
        out[1, s:end] += math.sin(pan) * hit[: end - s] * math.sqrt(2) * rng.choice([-1.0, 1.0])
    return out


# Seed 20 of seeds 0-119: the joint rule marks a Karplus-Strong pluck's onset in both
# channels (a period of white noise that starts at the same samples of both, at the same
# shape: what a click in both channels looks like over the ~2 ms the rules read), which
# the channel rules alone veto.
_JOINT_FALSE_ALARMS = (20,)
# Seeds where the joint rule's burst beside another rule's changed that one's verdict
# through their shared repair (36: kept, 1582853473: its span moved), before the two were
# repaired and judged apart.
_NEIGHBOURS = (36, 1582853473)


@pytest.mark.parametrize("seeds", [
    pytest.param((*range(20), *_NEIGHBOURS), id="seeds-0-19-and-neighbours"),
    *(pytest.param((s,), id=f"seed-{s}", marks=pytest.mark.xfail(
        strict=True, reason="the joint rule marks a pluck's onset in both channels"))
      for s in _JOINT_FALSE_ALARMS),
])
def test_percussion_at_the_same_samples_in_both_channels_gets_nothing_from_the_joint_rule(
        monkeypatch, seeds):
    """Every hit at the same samples in both channels (each at its own pan, some with the
    sign flipped in one channel): where the joint rules look, an attack is one event in
    both channels just as a click is. The joint rule sees candidates there (counted), and
    the guards and the shape test leave every attack alone: the mask is the one the channel
    rules give alone. (Those give some false alarms on this harsh material by themselves,
    0-3 spans a seed, the same with the joint rules and without.) Fixed seeds: the rule is
    a detector, not a guarantee, and it fails on 1 of seeds 0-119 (``_JOINT_FALSE_ALARMS``,
    held as a strict expected failure so that a fix shows)."""
    import diffmix.functional.restoration.detect as detect

    seen = []

    def counted(*args):
        out = _near_both(*args)
        seen.append(len(out))
        return out

    monkeypatch.setattr(detect, "_near_both", counted)
    for seed in seeds:
        x = torch.from_numpy(_mono_percussion(seed)).float()[None]
        on = runs(detect_clicks(x, SR)[0]).tolist()
        off = runs(detect_clicks(x, SR, joint_reach=None)[0]).tolist()
        print(seed, on, off)
        assert on == off
    print("joint candidates", sum(seen))
    assert sum(seen) > 0


def test_detection_is_the_same_on_every_run_on_two_threads():
    """The same signal gives the same mask on every run, on two threads: on this one
    (seed 110) a level written by overlapping windows in the thread schedule's order gave
    two different masks in six runs (see ``test_burst_level_is_the_larger_...``)."""
    x = torch.from_numpy(_mono_percussion(110)).float()[None]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        masks = [detect_clicks(x, SR, joint_reach=None)[0] for _ in range(4)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(masks[0], m) for m in masks[1:])


@pytest.mark.parametrize("seed, lo, hi", [(1, 52240, 52250), (7, 321216, 321229)], ids=["1001", "1007"])
def test_a_click_both_channels_share_in_near_mono_music_is_judged_on_their_difference(
        shared_multitrack, monkeypatch, seed, lo, hi):
    """The restore benchmark's both-channel draws at 1 click/s, seeds 1001 and 1007
    (printed): a 10- and a 13-sample click in both channels of CapDan-ReggaeTry's
    near-mono snare. The guards vetoed both in both channels: on 1001 (9-12 dB over the
    snare) the repair explained 7.2-8.7 dB of the prediction error, under the 10 dB the
    guard asks; on 1007 the mono rules' span held the click's first sample only, and
    explained 2.5-2.8 dB. Judged again on
    each channel minus the other times the music's relation between them
    (:func:`~diffmix.functional.restoration.guards._shared_guards`), where the music
    cancels and the click does not, they are found over their whole span in both
    channels; without that look, missed. Nothing off a click either way."""
    import diffmix.functional.restoration.detect as detect

    damaged, truth = bench_both_draw(seed, 1.0, "CapDan-ReggaeTry", shared_multitrack)
    assert truth[:, lo:hi].all() and not truth[:, lo - 1].any() and not truth[:, hi].any()
    x = torch.from_numpy(damaged.astype(np.float32))[None]
    for look in (True, False):
        if not look:
            monkeypatch.setattr(detect, "_shared_guards",
                                lambda x, repaired, bursts, judge, *a, **k: torch.zeros_like(judge))
        mask = detect_clicks(x, SR)[0][0].numpy()
        covered = mask[:, lo:hi].all(-1).tolist()
        off = [(r, s) for r, s, e in runs(torch.from_numpy(mask)[None]).tolist() if not truth[r, s:e].any()]
        print(look, covered, mask[:, lo - 8 : hi + 8].sum(-1).tolist(), off)
        assert covered == ([True, True] if look else [False, False])
        assert off == []


@pytest.mark.parametrize("both", [False, True], ids=["one-channel", "both-channels"])
def test_the_stereo_looks_decide_on_their_excerpt_as_on_the_whole_signal(
        shared_multitrack, monkeypatch, both):
    """The stereo looks (:func:`~diffmix.functional.restoration.guards._stereo_guards`,
    ``_shared_guards``) run on the frames around their bursts only
    (:func:`~diffmix.functional.restoration.guards._excerpt`): on a shared mix with
    clicks drawn at random (10 a second, printed seed), in one channel or in both, the
    repair and its mask are the same, bit for bit, as with the looks given the whole
    signal, where the excerpts hold a part of it only."""
    import diffmix.functional.restoration.guards as guards

    seed = drawn_seed(2**31)
    rng = np.random.default_rng(seed)
    song = sorted(shared_multitrack.glob("*/mix.flac"))[seed % 3]
    print("seed", seed, song.parent.name)
    clean = np.ascontiguousarray(sf.read(str(song), dtype="float64", always_2d=True)[0].T)
    start = int(rng.integers(0, clean.shape[1] - 8 * SR))
    damaged, _, _ = insert_clicks(clean[:, start : start + 8 * SR], SR, 10.0, rng, both=both)
    x = torch.from_numpy(damaged.astype(np.float32))[None]
    cut = guards._excerpt
    shares = []

    def excerpt(bursts, hop, t, near):
        out = cut(bursts, hop, t, near)
        shares.append(len(out[1]) / t)
        return out

    def whole(bursts, hop, t, near):
        return (torch.arange(-(-t // hop)), torch.arange(t), bursts,
                torch.zeros(len(bursts), dtype=torch.long))

    monkeypatch.setattr(guards, "_excerpt", excerpt)
    y, mask = declick(x, SR)
    monkeypatch.setattr(guards, "_excerpt", whole)
    y_whole, mask_whole = declick(x, SR)
    print("excerpts (share of the signal)", [round(s, 2) for s in shares], int(mask.sum()))
    assert shares and min(shares) < 1.0
    assert torch.equal(mask, mask_whole)
    assert torch.equal(y, y_whole)


def test_the_burst_level_on_an_excerpt_is_the_whole_signals():
    """:func:`~diffmix.functional.restoration.guards._burst_level` on an excerpt
    (:func:`~diffmix.functional.restoration.guards._excerpt`, frames of 882 samples, no
    multiple of the 32-sample sub-blocks) with each burst's shift reads, over every burst,
    exactly the level it reads on the whole signal: its sub-blocks lie on the signal's
    grid. Without the shift they do not (random signal and bursts, printed seed)."""
    from diffmix.functional.restoration.guards import _burst_level, _excerpt

    seed = drawn_seed(2**31)
    print("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(2, 200_000, generator=gen) * torch.linspace(0.1, 2.0, 200_000)
    starts = torch.randint(0, 199_900, (12,), generator=gen).sort().values
    bursts = torch.stack([torch.randint(0, 2, (12,), generator=gen), starts,
                          starts + torch.randint(1, 60, (12,), generator=gen)], -1)
    _, at, moved, shift = _excerpt(bursts, 882, rows.shape[1], 42)
    width, span = 11, 144
    whole = _burst_level(rows, bursts, width, span)
    part = rows[:, at]
    here = _burst_level(part, moved, width, span, shift)
    unshifted = _burst_level(part, moved, width, span)
    same, moved_away = [], []
    for (r, s, e), (_, s2, e2) in zip(bursts.tolist(), moved.tolist(), strict=True):
        same.append(torch.equal(here[r, s2:e2], whole[r, s:e]))
        moved_away.append(not torch.equal(unshifted[r, s2:e2], whole[r, s:e]))
    print(len(at), same, moved_away)
    assert len(at) < rows.shape[1] and all(same) and any(moved_away)
