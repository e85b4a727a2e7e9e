"""Losses: identity, sensitivity, weighting curve, stereo views."""

from __future__ import annotations

import pytest
import torch
from contract import noise

from diffmix.losses import MRSTFTLoss, a_weighting, hinge, stereo_views


@pytest.mark.parametrize("f, db", [(1000.0, 0.0), (100.0, -19.1), (10000.0, -2.5), (50.0, -30.2)])
def test_a_weighting_matches_iec_61672_table(f, db):
    value = 20 * torch.log10(a_weighting(torch.tensor([f], dtype=torch.float64)))
    assert float(value) == pytest.approx(db, abs=0.1)


@pytest.mark.parametrize("stereo", ["lr", "ms", "lr+ms"])
@pytest.mark.parametrize("weighting", [None, "a"])
def test_mrstft_zero_on_identity_and_grows_with_error(stereo, weighting):
    loss = MRSTFTLoss(44100, fft_sizes=(512, 128), stereo=stereo, weighting=weighting)
    x = noise(2, 2, 8192)
    assert loss(x, x).abs().max() < 1e-9
    small = loss(x * 1.05, x)
    large = loss(x * 2.0, x)
    assert (small > 0).all() and (large > small).all()


def test_mrstft_sees_side_only_differences_in_ms_mode():
    x = noise(1, 2, 8192)
    mono = x.mean(1, keepdim=True).expand(-1, 2, -1)
    wider = mono + 0.1 * torch.stack([x[:, 0], -x[:, 0]], 1)
    loss = MRSTFTLoss(44100, fft_sizes=(256,), stereo="ms")
    assert float(loss(wider, mono)) > 1.0  # side vs silence: large log-magnitude gap


def test_mrstft_gradient_is_finite_on_silence():
    y = torch.zeros(1, 2, 2048, dtype=torch.float64, requires_grad=True)
    MRSTFTLoss(44100, fft_sizes=(256,))(y, noise(1, 2, 2048)).sum().backward()
    assert torch.isfinite(y.grad).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="weighting must be"):
        MRSTFTLoss(44100, weighting="b")
    with pytest.raises(ValueError, match="stereo mode"):
        stereo_views(torch.zeros(1, 2, 4), "xy")
    with pytest.raises(ValueError, match="shapes differ"):
        MRSTFTLoss(44100)(torch.zeros(1, 2, 4096), torch.zeros(1, 2, 2048))


def test_hinge():
    assert hinge(torch.tensor([-1.0, 0.0, 2.0])).tolist() == [0.0, 0.0, 4.0]


@pytest.mark.parametrize("stereo", ["lr", "ms", "lr+ms"])
def test_mrstft_against_cached_reference_magnitudes_equals_the_plain_call(stereo):
    loss = MRSTFTLoss(44100, fft_sizes=(512, 128), stereo=stereo)
    y = noise(2, 2, 4096).double().requires_grad_(True)
    ref = noise(2, 2, 4096, seed=3).double()
    cached = loss.reference(ref)
    assert all(not m.requires_grad for m in cached)
    a, b = loss.distance(y, cached), loss(y, ref)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0.0)
    (ga,) = torch.autograd.grad(a.sum(), y)
    (gb,) = torch.autograd.grad(b.sum(), y)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="magnitudes differ"):
        loss.distance(y[..., :2048], cached)
