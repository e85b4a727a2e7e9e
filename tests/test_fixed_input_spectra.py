"""fft_convolve's fixed-input spectra (issue 19): a fit cycling through fixed excerpts under a
fitted filter transforms each excerpt once, with the same values and gradients bit for bit."""

from __future__ import annotations

import torch

from diffmix.functional import filters
from diffmix.functional.filters import fft_convolve, fixed_input_spectra


def _case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2, 20000, generator=g)
    fir = (torch.randn(1, 2, 512, generator=g) * torch.linspace(1.0, 0.0, 512)).requires_grad_(True)
    return x, fir


def _run(x: torch.Tensor, fir: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fir.grad = None
    y = fft_convolve(x, fir, ms=True)
    (y.square().sum() + y[..., ::7].sum()).backward()
    assert fir.grad is not None
    return y.detach(), fir.grad.clone()


def test_the_same_values_and_gradients_with_one_transform_per_excerpt(monkeypatch):
    seed = 3
    print("seed", seed)
    x, fir = _case(seed)
    other, _ = _case(seed + 1)
    plain = [_run(v, fir) for v in (x, other)]
    calls: list[int] = []
    rfft = torch.fft.rfft

    def counted(t, *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append(t.shape[-1])
        return rfft(t, *args, **kwargs)

    monkeypatch.setattr(torch.fft, "rfft", counted)
    with fixed_input_spectra():
        for _ in range(3):  # three passes through a pool of two excerpts
            for v, (y0, g0) in zip((x, other), plain, strict=True):
                y, g = _run(v, fir)
                assert torch.equal(y, y0) and torch.equal(g, g0)
    # Forward: each excerpt once (2) plus the filter at every call (6); the filter's and the
    # output gradient's transforms are autograd's and are not counted here.
    assert calls.count(x.shape[-1]) == 2 and len(calls) == 8
    calls.clear()
    _run(x, fir)  # outside the block: transformed again, and nothing is kept
    assert calls.count(x.shape[-1]) == 1 and getattr(filters._FIXED, "inputs", None) is None


def test_nothing_is_kept_for_an_input_with_a_gradient_or_a_fixed_filter():
    x, fir = _case(5)
    with fixed_input_spectra():
        fft_convolve(x.clone().requires_grad_(True), fir, ms=True)
        fft_convolve(x, fir.detach(), ms=True)
        with torch.no_grad():
            fft_convolve(x, fir, ms=True)
        cache = filters._FIXED.inputs
        assert cache is not None and len(cache._items) == 0


def test_another_thread_keeps_nothing():
    import threading

    x, fir = _case(7)
    seen: list[object] = []
    with fixed_input_spectra():
        worker = threading.Thread(target=lambda: (fft_convolve(x, fir, ms=True),
                                                  seen.append(getattr(filters._FIXED, "inputs", None))))
        worker.start()
        worker.join()
        assert len(filters._FIXED.inputs._items) == 0
    assert seen == [None]
