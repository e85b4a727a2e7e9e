"""Fixed computations of a render made once (diffmix.functional._cache): the EQ's impulse
response and the reverb's spectrum. A cached result must equal a fresh one bit for bit, a
changed value must not hit an old entry, nothing differentiated is cached, and memory
stays bounded."""

from __future__ import annotations

import torch

from diffmix.functional import filters, reverb
from diffmix.functional._cache import ValueCache, constant_key
from diffmix.functional.eq import parametric_eq

SR = 44100


def test_reverb_spectrum_is_reused_only_for_the_same_settings():
    x = torch.randn(2, 2, SR, generator=torch.Generator().manual_seed(0))
    reverb._RESPONSES._items.clear()
    first = reverb.reverb(x, SR, rt60_s=torch.tensor(1.2), mix=1.0)
    assert len(reverb._RESPONSES._items) == 1
    again = reverb.reverb(x, SR, rt60_s=torch.tensor(1.2), mix=1.0)
    other = reverb.reverb(x, SR, rt60_s=torch.tensor(1.3), mix=1.0)
    reverb._RESPONSES._items.clear()
    fresh = reverb.reverb(x, SR, rt60_s=torch.tensor(1.3), mix=1.0)
    assert torch.equal(first, again)
    assert torch.equal(other, fresh) and not torch.equal(other, first)


def test_eq_response_is_not_cached_while_its_gains_are_fitted():
    x = torch.randn(1, 2, SR // 2, generator=torch.Generator().manual_seed(1))
    filters._FIRS._items.clear()
    gain = torch.tensor([4.0, -3.0], requires_grad=True)
    kw = {"bands": ["low_shelf", "peak"], "freq_hz": [120.0, 2000.0], "q": 0.7}
    y = parametric_eq(x, SR, gain_db=gain, **kw)
    y.square().sum().backward()
    assert gain.grad is not None and torch.all(gain.grad != 0)
    assert not filters._FIRS._items  # the response depends on a fitted value
    fixed = parametric_eq(x, SR, gain_db=gain.detach(), **kw)
    assert len(filters._FIRS._items) == 1
    assert torch.equal(parametric_eq(x, SR, gain_db=gain.detach(), **kw), fixed)
    assert torch.equal(fixed, y.detach())


def test_cache_keys_and_bounds():
    assert constant_key(torch.ones(2, requires_grad=True)) is None
    assert constant_key(torch.ones(2)) != constant_key(torch.ones(2, dtype=torch.float64))
    assert constant_key(torch.ones(2)) != constant_key(torch.ones(1, 2))
    cache = ValueCache(2, max_bytes=1000)
    big = cache.get(("big",), lambda: torch.zeros(1000))  # 4000 bytes: returned, not kept
    assert big.numel() == 1000 and not cache._items
    for i in range(3):
        cache.get((i,), lambda: torch.zeros(10))
    assert list(cache._items) == [(1,), (2,)]  # at most two, the oldest dropped


def test_a_signal_memo_keys_by_the_tensor_and_its_version_not_by_content():
    from diffmix.functional._cache import SignalMemo

    memo, calls = SignalMemo(size=2), []

    def make(x):
        calls.append(1)
        return float(x.sum())

    x, twin = torch.ones(5), torch.ones(5)
    assert memo.get(x, "k", lambda: make(x)) == 5.0 and memo.get(x, "k", lambda: make(x)) == 5.0
    assert len(calls) == 1  # the same tensor: made once
    assert memo.get(twin, "k", lambda: make(twin)) == 5.0 and len(calls) == 2  # equal content, another tensor
    assert memo.get(x, "other", lambda: make(x)) == 5.0 and len(calls) == 3  # another key
    x.mul_(2.0)  # in place: a new version, made again
    assert memo.get(x, "k", lambda: make(x)) == 10.0 and len(calls) == 4
    assert len(memo._items) == 2  # bounded


def test_the_match_eqs_band_levels_and_the_reports_tone_share_one_analysis_of_a_signal(monkeypatch):
    # A master job measures its input's (and reference's) float64 mid/side spectrum for the
    # match EQ's closed form, again for the width fold and again for the report's tone error:
    # one Welch analysis per signal serves all three, with the values of a fresh one.
    from diffmix.effects.match_eq import MatchEQ
    from diffmix.features import spectral_errors
    from diffmix.functional import spectrum
    from diffmix.functional.gain import mid_side
    from diffmix.functional.match_eq import band_levels_db, signal_band_levels_db

    seed = 2026
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    # 8 s: past one group of Welch frames
    x, ref = torch.randn(1, 2, 8 * SR, generator=g), torch.randn(1, 2, 3 * SR, generator=g)
    centres = MatchEQ(SR).centres_hz
    fresh = band_levels_db(x.clone(), SR, centres, shared=True)
    psd = spectrum.welch_psd(x.clone(), 8192, pre=mid_side).double()
    seen: list[torch.Tensor] = []
    welch = spectrum.welch_psd
    monkeypatch.setattr(spectrum, "welch_psd", lambda v, *a, **k: seen.append(v) or welch(v, *a, **k))
    levels = signal_band_levels_db(x, SR, centres)
    eq = MatchEQ(SR)
    eq.match(x, ref, refine=0)  # the closed form, as the job's start runs it
    spectral_errors(x, ref, SR)
    assert sum(v is x for v in seen) == 1 and sum(v is ref for v in seen) == 1
    assert torch.equal(levels, fresh)
    assert torch.equal(spectrum.mid_side_psd(x), psd)
    x.mul_(0.5)  # changed in place: measured again
    spectrum.mid_side_psd(x)
    assert sum(v is x for v in seen) == 2
