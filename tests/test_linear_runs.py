"""Adjacent linear effects rendered as one filter (``run_effects``, ``LinearFilter.then``):
the same signal as the effects in turn on the zero-extended input, checked against numpy's
direct convolution, with gradients through both filters' parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmix.console import Bus
from diffmix.effects.base import run_effects
from diffmix.effects.dynamics import Compressor
from diffmix.effects.eq import ParametricEQ
from diffmix.effects.gain import Width
from diffmix.effects.match_eq import MatchEQ
from diffmix.functional.eq import parametric_eq_filter
from diffmix.functional.filters import LinearFilter
from diffmix.functional.match_eq import match_centres, match_eq_filter
from tests.seeds import drawn_seed

SR = 44100
BANDS = ["highpass2", "low_shelf", "peak", "peak", "peak", "high_shelf"]


def _chain(seed: int, *, stereo: str = "ms", per_channel: bool = False) -> tuple[MatchEQ, ParametricEQ]:
    """A match EQ and a parametric EQ at random settings drawn from ``seed`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    n = match_centres(SR).numel()
    match = MatchEQ(SR, n_fir=4096, mid_gain_db=(8 * torch.rand(n, generator=g) - 4).tolist(),
                    side_gain_db=(8 * torch.rand(n, generator=g) - 4).tolist(),
                    mix=float(torch.rand((), generator=g))).double()
    shape = (1, 2, len(BANDS)) if per_channel else (len(BANDS),)
    eq = ParametricEQ(SR, bands=BANDS, stereo=stereo, fft_tail_s=0.05,
                      freq_hz=[30.0, 120.0, 400.0, 1500.0, 5000.0, 9000.0],
                      gain_db=(12 * torch.rand(shape, generator=g, dtype=torch.float64) - 6).tolist(),
                      mix=float(torch.rand((), generator=g))).double()
    return match, eq


@pytest.mark.parametrize("length", [30000, 3000])  # longer and shorter than the joined filter's head
def test_a_run_is_the_effects_in_turn(length):
    seed = drawn_seed(2**31)
    print(f"seed {seed}")
    match, eq = _chain(seed)
    x = torch.randn(2, 2, length, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        one = run_effects([match, eq], x)
        turn = eq(match(x))  # the match EQ's ringing before sample 0 cut off, as in turn
        whole = eq(match(torch.nn.functional.pad(x, (4096, 0))))[..., 4096:]  # ... and heard
    scale = float(turn.abs().max())
    assert float((one - turn).abs().max()) < 1e-12 * scale
    assert float((whole - turn).abs().max()) > 1e-6 * scale  # the head's fix is not idle
    x.requires_grad_(True)
    with_graph = run_effects([match, eq], x).detach()
    assert float((with_graph - turn).abs().max()) < 1e-12 * scale


def test_the_joined_filter_is_numpy_convolution_of_both_responses():
    seed = drawn_seed(2**31)
    print(f"seed {seed}")
    match, eq = _chain(seed)
    x = torch.randn(1, 2, 12000, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        first, second = match.linear(x), eq.linear(x)
        joined = first.then(second)
        assert joined is not None and joined.parts == (first, second) and joined.skip == first.skip
    for c in range(2):
        h1, h2 = (f.fir[0, min(c, f.fir.shape[1] - 1)].numpy() for f in (first, second))
        assert np.abs(joined.fir[0, c].numpy() - np.convolve(h1, h2)).max() < 1e-12 * np.abs(h1).max()
    # on samples past the match EQ's ringing before sample 0, the one convolution is numpy's
    mid, side = ((x[0, 0] + x[0, 1]) / 2).numpy(), ((x[0, 0] - x[0, 1]) / 2).numpy()
    out = []
    for c, sig in enumerate((mid, side)):
        out.append(np.convolve(sig, joined.fir[0, c].numpy())[first.skip : first.skip + sig.size])
    ref = np.stack([out[0] + out[1], out[0] - out[1]])
    late = second.fir.shape[-1]
    with torch.no_grad():
        one = run_effects([match, eq], x)[0].numpy()
    assert np.abs(one[:, late:] - ref[:, late:]).max() < 1e-12 * np.abs(ref).max()


def test_filters_on_different_channel_pairs_stay_apart():
    seed = drawn_seed(2**31)
    print(f"seed {seed}")
    match, eq = _chain(seed, stereo="lr", per_channel=True)  # left and right gains differ
    x = torch.randn(1, 2, 20000, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    assert match.linear(x).then(eq.linear(x)) is None
    with torch.no_grad():
        assert torch.equal(run_effects([match, eq], x), eq(match(x)))  # each its own forward
    # one response for both channels is the same on left/right and mid/side: it joins
    _, shared = _chain(seed, stereo="lr")
    joined = match.linear(x).then(shared.linear(x))
    assert joined is not None and joined.ms and joined.skip == match.linear(x).skip


def test_a_lone_linear_effect_and_the_rest_run_as_their_own_forward():
    seed = drawn_seed(2**31)
    print(f"seed {seed}")
    match, eq = _chain(seed)
    comp, width = Compressor(SR, threshold_db=-20.0).double(), Width(SR, width=1.3).double()
    x = torch.randn(1, 2, 20000, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert torch.equal(run_effects([eq, comp, match, width], x), width(match(comp(eq(x)))))


def test_gradients_reach_both_filters_parameters():
    seed = drawn_seed(2**31)
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    n = match_centres(SR).numel()
    x = torch.randn(1, 2, 700, dtype=torch.float64, generator=g)
    mid = (4 * torch.rand(n, dtype=torch.float64, generator=g) - 2).requires_grad_()
    gain = (6 * torch.rand(3, dtype=torch.float64, generator=g) - 3).requires_grad_()

    def run(mid: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        a = match_eq_filter(x, SR, mid_gain_db=mid, side_gain_db=-mid, n_fir=256)
        b = parametric_eq_filter(x, SR, bands=["low_shelf", "peak", "high_shelf"],
                                 freq_hz=[150.0, 1000.0, 6000.0], q=0.7, gain_db=gain, stereo="ms", tail=300)
        return a.then(b)(x)

    assert torch.autograd.gradcheck(run, (mid, gain), eps=1e-6, atol=1e-6)


def test_the_mastering_fit_and_renders_fuse_but_a_bus_keeping_renders_refuses():
    from diffmix.bus_memo import remember_prefixes

    seed = drawn_seed(2**31)
    print(f"seed {seed}")
    match, eq = _chain(seed)
    bus = Bus(SR, {"match": match, "eq": eq}).double()
    x = torch.randn(1, 2, 8000, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert torch.equal(bus(x, fuse=True), run_effects([match, eq], x))
        with remember_prefixes(bus), pytest.raises(ValueError, match="fuse=True while the bus keeps"):
            bus(x, fuse=True)


def test_a_linear_filter_applies_its_response():
    fir = torch.tensor([[[1.0, 0.5]]], dtype=torch.float64)
    y = LinearFilter(fir)(torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float32))
    assert y.dtype == torch.float32 and y.tolist() == [[[1.0, 2.5, 4.0]]]
