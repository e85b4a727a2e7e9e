"""The limiter's compiled kernels against their torch definitions: the linked true-peak
envelope (4x and 2x oversampling), the lookahead ramp, their gradients, and the exact
correction's local re-metering on adversarial inter-sample peaks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffmix.functional import _peak_kernels as pk
from diffmix.functional import dynamics as D
from diffmix.functional import limiter as L
from diffmix.functional.peaks import true_peak

pytestmark = pytest.mark.skipif(not pk.HAVE_NUMBA, reason="numba kernels not available")


def _torch_ramp(req, lookahead):
    padded = F.pad(req.unsqueeze(1), (lookahead, lookahead), value=1.0)
    held = -F.max_pool1d(-padded, lookahead + 1, stride=1)
    return F.avg_pool1d(held, lookahead + 1, stride=1)[:, 0]


@pytest.mark.parametrize("sample_rate", [44100, 96000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_envelope_equals_the_oversampled_definition(sample_rate, dtype):
    g = torch.Generator().manual_seed(3)
    # 3 items x 2 channels, 1000 samples: several 256-sample blocks and a ragged end.
    x = torch.randn(3, 2, 1000, generator=g).to(dtype)
    want = L._true_peak_envelope(x, sample_rate).amax(1, keepdim=True)
    got = pk.envelope(x, sample_rate)
    eps = torch.finfo(dtype).eps
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 16 * eps * want.max()


def test_envelope_gradient_matches_autograd_of_the_definition():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 600, dtype=torch.float64, generator=g, requires_grad=True)
    up = torch.rand(2, 1, 600, dtype=torch.float64, generator=g)
    got = torch.autograd.grad(pk.envelope(x, 44100), x, up)[0]
    ref = L._true_peak_envelope(x, 44100).amax(1, keepdim=True)
    want = torch.autograd.grad(ref, x, up)[0]
    assert want.abs().max() > 0.1
    assert (got - want).abs().max() <= 1e-12 * want.abs().max()


def test_envelope_gradcheck():
    x = torch.randn(1, 2, 80, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: pk.envelope(v, 48000), (x,), fast_mode=True)


@pytest.mark.parametrize("lookahead", [1, 7, 220])
def test_ramp_equals_min_then_mean_pools_and_its_gradient(lookahead):
    g = torch.Generator().manual_seed(lookahead)
    req = (0.05 + 0.95 * torch.rand(2, 900, dtype=torch.float64, generator=g)).requires_grad_()
    got, want = pk.ramp(req, lookahead), _torch_ramp(req, lookahead)
    assert (got - want).abs().max() <= 1e-12
    assert bool((got <= req + 1e-12).all())  # never above what each sample requires
    up = torch.randn(2, 900, dtype=torch.float64, generator=g)
    dg = torch.autograd.grad(got, req, up)[0]
    dw = torch.autograd.grad(want, req, up)[0]
    assert (dg - dw).abs().max() <= 1e-12 * dw.abs().max()


@pytest.mark.parametrize("sample_rate", [44100, 48000, 96000])
def test_local_exact_correction_holds_the_ceiling_like_the_torch_loop(sample_rate):
    # Square-ish bursts at fs/4 with a 45-degree phase: inter-sample peaks 3 dB above
    # the samples, the case where gain changes move the true peak most.
    n = sample_rate // 4
    t = torch.arange(n, dtype=torch.float32)
    burst = (torch.sin(math.pi / 2 * t + math.pi / 4) * (1 + (t % 997 < 300).float() * 3))
    x = torch.stack([burst, 0.8 * burst.roll(13)]).unsqueeze(0) * 2.0
    ceiling_db = -1.0
    y = L.limiter(x, sample_rate, ceiling_db=ceiling_db, release_ms=30.0)
    assert float(true_peak(y, sample_rate).max()) <= 10 ** (ceiling_db / 20)
    # The local correction alone, on the smooth-limited signal: it must act (the smooth
    # stage leaves overs here), only ever reduce, and meet the meter's ceiling.
    smooth = L.limiter(x, sample_rate, ceiling_db=ceiling_db, release_ms=30.0, exact=False)
    ceiling = torch.tensor(10 ** (ceiling_db / 20)).view(1, 1, 1)
    target = ceiling * (1 - L._LIMIT_MARGIN)
    lookahead = D._lookahead_samples(5.0, sample_rate, "limiter")
    release = D.ms_to_pole(torch.tensor(30.0).view(1, 1, 1), sample_rate)
    local, level = L._exact_correction_local(smooth, sample_rate, target, ceiling, lookahead, release)
    assert float(true_peak(smooth * local, sample_rate).max()) <= float(ceiling)
    # the level it returns is the meter's envelope of its output, as a fresh pass reads it
    assert torch.equal(level.unsqueeze(1), L.limiter_envelope(smooth * local, sample_rate))
    assert float(local.min()) < 1.0  # the correction acted
    assert float(local.max()) <= 1.0
