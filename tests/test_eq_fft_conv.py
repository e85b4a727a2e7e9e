"""The overlap-save convolution behind the FFT EQ: values and hand-written gradients
against one whole-signal FFT convolution differentiated by autograd."""

from __future__ import annotations

import pytest
import torch

from diffmix.functional._fft_conv import overlap_save, real_fft
from diffmix.functional.filters import fft_convolve


def _reference(x, fir):
    n = x.shape[-1] + fir.shape[-1] - 1
    spec = torch.fft.rfft(x, n=n) * torch.fft.rfft(fir, n=n)
    return torch.fft.irfft(spec, n=n)[..., : x.shape[-1]]


@pytest.mark.parametrize(
    "x_shape, fir_shape, n_time, length, block",
    [
        ((2, 2), (2, 1), 5000, 100, 1024),  # per-item filter shared by both channels
        ((1, 2), (3, 2), 7001, 64, 512),  # the filter broadcasts the batch; ragged end
        ((2, 1), (1, 1), 300, 1, 64),  # a one-tap filter: no overlap at all
        ((1, 1), (1, 1), 700, 63, 128),  # T a whole number of hops
    ],
)
@pytest.mark.parametrize("x_grad", [True, False])
def test_overlap_save_matches_one_fft_values_and_gradients(x_shape, fir_shape, n_time, length, block, x_grad):
    g = torch.Generator().manual_seed(n_time)
    x = torch.randn(*x_shape, n_time, dtype=torch.float64, generator=g).requires_grad_(x_grad)
    fir = torch.randn(*fir_shape, length, dtype=torch.float64, generator=g).requires_grad_()
    y, want = overlap_save(x, fir, block), _reference(x, fir)
    scale = want.abs().max()
    assert (y - want).abs().max() <= 1e-13 * scale
    up = torch.randn(want.shape, dtype=torch.float64, generator=g)
    inputs = (x, fir) if x_grad else (fir,)
    grads = torch.autograd.grad(y, inputs, up)
    for got, ref in zip(grads, torch.autograd.grad(want, inputs, up), strict=True):
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= 1e-12 * ref.abs().max()


@pytest.mark.parametrize(
    "x_shape, fir_shape, n_time, length, block",
    [
        ((2, 2), (2, 1), 200_003, 100, 1024),  # many groups of blocks, a ragged last group
        ((1, 2), (1, 1), 64 * 449 + 448, 64, 512),  # ends where a group does, less a sample
        ((2, 1), (1, 1), 30_000, 1, 64),  # a one-tap filter
        ((1, 2), (3, 2), 30_001, 64, 512),  # a filter per item over one signal
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_render_without_gradient_is_the_same_values_a_group_at_a_time(
    x_shape, fir_shape, n_time, length, block, dtype, monkeypatch
):
    # Rendering (no gradient) transforms a group of blocks at a time into the output (here 4,
    # so every case has many groups): the same values, bit for bit, as the autograd path,
    # and the one-transform reference.
    import diffmix.functional._fft_conv as fft_conv

    monkeypatch.setattr(fft_conv, "_GROUP_SAMPLES", 4 * block)
    g = torch.Generator().manual_seed(n_time)
    x = torch.randn(*x_shape, n_time, dtype=dtype, generator=g)
    fir = torch.randn(*fir_shape, length, dtype=dtype, generator=g)
    with torch.no_grad():
        y = overlap_save(x, fir, block)
    graph = overlap_save(x, fir.clone().requires_grad_(), block)
    assert torch.equal(y, graph.detach())
    want = _reference(x.double(), fir.double())
    assert (y.double() - want).abs().max() <= (1e-13 if dtype == torch.float64 else 1e-5) * want.abs().max()


@pytest.mark.parametrize("skip", [0, 1, 300, 449, 1500])  # inside block 0, one hop, several blocks
@pytest.mark.parametrize("ms", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_render_skip_is_the_padded_render_cut(skip, ms, dtype, monkeypatch):
    # Why: the match EQ's zero-phase FIR padded the whole song with half a filter of zeros
    # (a full-length copy) and cut the delay off the result; ``skip`` takes the same samples
    # of the same block transforms, bit for bit, without the copy. A filter of another dtype
    # (products made fresh, not in buffers) too; the float64 oracle pads and cuts.
    import diffmix.functional._fft_conv as fft_conv

    monkeypatch.setattr(fft_conv, "_GROUP_SAMPLES", 4 * 512)
    g = torch.Generator().manual_seed(skip)
    n_time, length, block = 20_011, 64, 512
    x = torch.randn(2, 2, n_time, dtype=dtype, generator=g)
    for fir in (torch.randn(2, 2, length, dtype=dtype, generator=g),
                torch.randn(1, 2, length, dtype=torch.float64, generator=g)):
        with torch.no_grad():
            got = overlap_save(x, fir, block, ms=ms, skip=skip)
            want = overlap_save(torch.nn.functional.pad(x, (0, skip)), fir, block, ms=ms)[..., skip:]
        assert got.shape == (2, 2, n_time) and torch.equal(got, want)
        graph = overlap_save(x, fir.clone().requires_grad_(), block, ms=ms, skip=skip)
        atol = 1e-13 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(graph.detach(), got, rtol=0, atol=atol)
    padded = torch.nn.functional.pad(x.double(), (0, skip))
    if ms:
        mid, side = (padded[:, 0] + padded[:, 1]) / 2, (padded[:, 0] - padded[:, 1]) / 2
        m, s = _reference(mid, fir[:, 0]), _reference(side, fir[:, 1])
        oracle = torch.stack([m + s, m - s], 1)[..., skip:]
    else:
        oracle = _reference(padded, fir)[..., skip:]
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    assert (got.double() - oracle).abs().max() <= tol * oracle.abs().max()


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("n_time", [3000, 70_000])  # one transform, and overlap-save blocks
def test_fft_convolve_skip_is_padding_and_cutting(grad, n_time):
    g = torch.Generator().manual_seed(n_time)
    x = torch.randn(1, 2, n_time, dtype=torch.float64, generator=g)
    fir = torch.randn(1, 2, 2187, dtype=torch.float64, generator=g).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        got = fft_convolve(x, fir, ms=True, skip=1093)
        want = fft_convolve(torch.nn.functional.pad(x, (0, 1093)), fir, ms=True)[..., 1093:]
    assert got.shape == x.shape
    assert torch.equal(got, want) if not grad else (got - want).abs().max() <= 1e-13 * want.abs().max()


@pytest.mark.parametrize("length, n", [(7, 16), (7, 15), (16, 16), (9, 4), (1, 2)])
def test_real_fft_backward_is_autograds(length, n):
    """The one-inverse-transform adjoint against gradcheck's finite differences and
    against autograd's own rfft backward: even and odd sizes, padded and cut inputs."""
    g = torch.Generator().manual_seed(length * 100 + n)
    x = torch.randn(2, 3, length, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: torch.view_as_real(real_fft(v, n)), (x,))
    up = torch.randn(2, 3, n // 2 + 1, dtype=torch.complex128, generator=g)
    (got,) = torch.autograd.grad(real_fft(x, n), x, up)
    (want,) = torch.autograd.grad(torch.fft.rfft(x, n=n), x, up)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-12 * want.abs().max()


def test_overlap_save_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 150, dtype=torch.float64, generator=g, requires_grad=True)
    fir = torch.randn(2, 1, 9, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: overlap_save(a, b, 32), (x, fir), fast_mode=True)


def test_fft_convolve_long_signal_takes_overlap_save_and_agrees():
    # 70 000 samples with a 2187-tap filter: past two 32768-point blocks, so fft_convolve
    # runs the overlap-save path; it must equal the single transform in float32 too.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 70000, generator=g)
    fir = torch.randn(1, 1, 2187, generator=g) * 0.02
    y = fft_convolve(x, fir)
    want = _reference(x.double(), fir.double())
    assert (y.double() - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize("x_batch, fir_batch, fir_channels", [(2, 2, 2), (1, 3, 2), (2, 1, 2), (2, 2, 1)])
@pytest.mark.parametrize("grad", [False, True])
def test_mid_side_convolution_is_the_mid_and_side_filtered_alone(x_batch, fir_batch, fir_channels, grad,
                                                                  monkeypatch):
    # ms=True: fir's channels filter M = (L + R) / 2 and S = (L - R) / 2, the result is
    # L = M + S, R = M - S. The render takes the sums on each block's spectrum (groups of 4
    # blocks here, so many); the oracle filters mid and side as signals in one transform.
    import diffmix.functional._fft_conv as fft_conv

    monkeypatch.setattr(fft_conv, "_GROUP_SAMPLES", 4 * 512)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(x_batch, 2, 20_011, dtype=torch.float64, generator=g)
    fir = torch.randn(fir_batch, fir_channels, 64, dtype=torch.float64, generator=g).requires_grad_(grad)
    mid, side = (x[:, 0] + x[:, 1]) / 2, (x[:, 0] - x[:, 1]) / 2
    m = _reference(mid.unsqueeze(1), fir[:, :1])[:, 0]
    s = _reference(side.unsqueeze(1), fir[:, -1:])[:, 0]
    want = torch.stack([m + s, m - s], 1)
    with torch.set_grad_enabled(grad):
        y = overlap_save(x, fir, 512, ms=True)
    assert y.shape == want.shape
    assert (y - want).abs().max() <= 1e-13 * want.abs().max()
    if grad:
        up = torch.randn(want.shape, dtype=torch.float64, generator=g)
        (got,), (ref,) = torch.autograd.grad(y, fir, up), torch.autograd.grad(want, fir, up)
        assert (got - ref).abs().max() <= 1e-12 * ref.abs().max()


def test_mid_side_needs_two_channels():
    with pytest.raises(ValueError, match=r"fft_convolve: ms needs 2 channels"):
        with torch.no_grad():
            overlap_save(torch.zeros(1, 1, 100), torch.zeros(1, 2, 4), 64, ms=True)


def test_block_too_short_is_an_error():
    with pytest.raises(ValueError, match=r"fft_convolve: block 64 too short for a 40-tap filter"):
        overlap_save(torch.zeros(1, 1, 100), torch.zeros(1, 1, 40), 64)


def test_a_render_leaves_torch_symbolic_shapes_and_sympy_unimported():
    # torch.broadcast_shapes imports torch.fx's symbolic shapes, and with them sympy, on its
    # first call: ~0.5 s of a job that otherwise never needs them. The renders must not call it.
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, torch\n"
        "from diffmix.functional.filters import fft_convolve\n"
        "fft_convolve(torch.randn(1, 2, 400_000), torch.randn(1, 2, 8000), ms=True)\n"
        "fft_convolve(torch.randn(1, 2, 400_000), torch.randn(1, 1, 8000))\n"
        "print(sorted(m for m in ('sympy', 'torch.fx.experimental.symbolic_shapes') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip() == "[]", out.stdout
