"""Long-term spectrum and fractional-octave bands against scipy and the IEC centres."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from diffmix.functional.spectrum import band_centres, band_matrix, band_powers, welch_psd


def test_third_octave_centres_match_nominal_iec_values():
    nominal = [25, 31.5, 40, 50, 63, 80, 100, 125, 160, 200, 250, 315, 400, 500, 630, 800,
               1000, 1250, 1600, 2000, 2500, 3150, 4000, 5000, 6300, 8000, 10000, 12500, 16000,
               20000]
    exact = band_centres(3).tolist()
    assert len(exact) == len(nominal)
    for e, n in zip(exact, nominal, strict=False):
        assert e == pytest.approx(n, rel=0.03)


@pytest.mark.parametrize("sr, seconds", [(44100, 1.0), (48000, 1.0), (44100, 9.3)])
def test_welch_matches_scipy(sr, seconds):
    # 9.3 s is ~200 frames: past one group, so the no-gradient average runs group by group.
    x = np.random.default_rng(0).standard_normal(int(sr * seconds))
    ours = welch_psd(torch.from_numpy(x), 4096).numpy()
    _, ref = scipy.signal.welch(x, sr, window="hann", nperseg=4096, noverlap=2048,
                                scaling="density", detrend=False)
    # Ours is power per bin (sums to the mean square): scipy's density times the bin width.
    np.testing.assert_allclose(ours, ref * sr / 4096, rtol=1e-9)
    graph = welch_psd(torch.from_numpy(x).requires_grad_(), 4096).detach().numpy()
    np.testing.assert_allclose(ours, graph, rtol=1e-12)


@pytest.mark.parametrize("n_fft, hop, t", [(64, 32, 300), (64, 16, 203), (64, 32, 40), (63, 21, 200)])
def test_welch_gradient_by_its_own_backward_passes_gradcheck(n_fft, hop, t):
    # The hand-written backward (each frame: one inverse transform of its spectrum times the
    # incoming gradient, windowed and overlap-added), against finite differences; hops that
    # divide the frame, odd and even frames, a signal shorter than one frame (zero-padded).
    g = torch.Generator().manual_seed(t)
    x = torch.randn(2, 1, t, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: welch_psd(v, n_fft, hop), (x,))


def test_welch_gradient_equals_autograds_through_the_frames():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 44100, generator=g, dtype=torch.float64)
    n_fft, hop = 4096, 2048
    window = torch.hann_window(n_fft, periodic=True, dtype=x.dtype)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    spec = torch.fft.rfft(b.unfold(-1, n_fft, hop) * window, dim=-1)
    plain = (spec.real.square() + spec.imag.square()).mean(-2) / window.square().sum() / n_fft * 2.0
    plain = torch.cat([plain[..., :1] / 2, plain[..., 1:-1], plain[..., -1:] / 2], -1)
    ours = welch_psd(a, n_fft, hop)
    assert torch.equal(ours.detach(), plain.detach())  # the forward is the same arithmetic
    weights = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    (ours * weights).sum().backward()
    (plain * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_sine_power_lands_in_its_band():
    sr, f = 48000, 1000.0
    t = torch.arange(sr, dtype=torch.float64) / sr
    x = torch.sin(2 * torch.pi * f * t)
    m, centres = band_matrix(sr, 8192)
    p = band_powers(welch_psd(x, 8192), m)
    k = int(torch.argmin((centres - f).abs()))
    assert float(p[k]) == pytest.approx(0.5, rel=0.01)  # a unit sine's mean square
    assert float(p.sum()) == pytest.approx(0.5, rel=0.01)


def test_bands_partition_without_overlap():
    m, _ = band_matrix(44100, 4096)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    # Every bin from the lowest band's first to the highest band's last is in exactly one band.
    covered = m.sum(0).nonzero().flatten()
    assert torch.all(m.sum(0)[int(covered.min()) : int(covered.max()) + 1] == 1.0)


def test_gradient_is_finite_on_silence():
    x = torch.zeros(2, 10000, dtype=torch.float64, requires_grad=True)
    m, _ = band_matrix(44100, 2048)
    (10 * torch.log10(band_powers(welch_psd(x, 2048), m) + 1e-12)).sum().backward()
    assert torch.isfinite(x.grad).all()


RATES = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000]


@pytest.mark.parametrize("sr", RATES)
def test_every_band_set_is_drawn_from_band_centres(sr):
    """The analysis spectrum, the features and the match EQ take their centres from
    band_centres; the analysis set is what its own formula gave before (the IEC series
    1000 * 10^(k/10) from the 20 Hz band to 20 kHz, upper edge at or below Nyquist): the
    same bands to 1e-14, the same FFT bins in each."""
    import math

    from diffmix.features import FeatureExtractor
    from diffmix.functional.analysis import third_octave_centres
    from diffmix.functional.match_eq import match_centres
    from diffmix.functional.spectrum import band_membership

    k = torch.arange(-17, 14, dtype=torch.float64)
    before = 1000.0 * 10.0 ** (k / 10.0)
    before = before[before * 10.0 ** (1 / 20) <= sr / 2]
    now = third_octave_centres(sr)
    assert now.shape == before.shape
    assert float(((now - before).abs() / before).max()) < 1e-14
    n_fft = 1 << max(8, math.ceil(math.log2(sr * 0.37)))  # third_octave_spectrum's
    assert torch.equal(band_membership(now, sr, n_fft), band_membership(before, sr, n_fft))

    series = band_centres(3, 1.0, 100000.0)
    for centres in (now, FeatureExtractor(sr, 4096).centres, match_centres(sr)):
        assert all(bool((series == c).any()) for c in centres), "a centre not from band_centres"


@pytest.mark.parametrize("seconds", [0.1, 10.0])
def test_welch_of_a_mapped_signal_is_the_welch_of_the_map(seconds):
    # ``pre`` (mid/side in float64 here) is applied a group of frames at a time on a long
    # signal without a gradient: bit for bit the PSD of the mapped signal; and that is
    # scipy's Welch of the mid and side.
    from diffmix.functional.gain import mid_side

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, int(seconds * 44100), generator=g)

    def to_ms(part):
        return mid_side(part.double())

    with torch.no_grad():
        got = welch_psd(x, 2048, pre=to_ms)
        assert torch.equal(got, welch_psd(to_ms(x), 2048)) and got.dtype == torch.float64
    ms = to_ms(x).numpy()
    _, want = scipy.signal.welch(ms, 44100, nperseg=2048, noverlap=1024, window="hann", detrend=False)
    np.testing.assert_allclose(got.numpy(), want * 44100 / 2048, rtol=1e-9)  # power per bin


@pytest.mark.filterwarnings("error")  # an out= buffer of the wrong shape warns as it is resized
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("extra", [0, 1, 7])  # whole groups, then a shorter last group
def test_welch_no_gradient_groups_equal_one_pass(dtype, groups, extra):
    # Why: the no-gradient average runs a group of frames at a time through buffers made
    # once (fresh ones per group took fresh pages); the shorter last group gets its own.
    # Against the same frames in one pass (the graph path's arithmetic).
    import diffmix.functional.spectrum as S

    seed = 7 + groups + extra
    print("seed", seed)
    n_fft, hop = 256, 128
    frames = groups * S._PSD_GROUP + extra
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, (frames - 1) * hop + n_fft, generator=g, dtype=dtype)
    with torch.no_grad():
        got = welch_psd(x, n_fft, pre=lambda part: part * 2.0)
    want = welch_psd((x * 2.0).requires_grad_(), n_fft).detach()
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=rtol, atol=0.0)


def _welch_grad_and_transforms(x: torch.Tensor, w: torch.Tensor, monkeypatch) -> tuple[torch.Tensor, int]:  # noqa: ANN001
    calls: list[int] = []
    rfft = torch.fft.rfft

    def counted(t, *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append(1)
        return rfft(t, *args, **kwargs)

    monkeypatch.setattr(torch.fft, "rfft", counted)
    a = x.clone().requires_grad_(True)
    (welch_psd(a, 8192) * w).sum().backward()
    monkeypatch.setattr(torch.fft, "rfft", rfft)
    assert a.grad is not None
    return a.grad, len(calls)


@pytest.mark.parametrize("frames", [5, 71])  # one group of the backward's frames, and two
def test_welch_backward_reuses_the_forwards_spectrum_bit_for_bit(frames, monkeypatch):
    # Why: the backward transformed every frame again (one batched rfft of a fit step's
    # excerpt); a small forward spectrum is kept, with the same gradient bit for bit.
    import diffmix.functional.spectrum as S

    seed = 41
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, 4096 * (frames + 1), generator=g)
    w = torch.randn(2, 2, 4097, generator=g)
    monkeypatch.setattr(S, "_WELCH_KEEP_BYTES", 0)
    recomputed, n0 = _welch_grad_and_transforms(x, w, monkeypatch)
    monkeypatch.setattr(S, "_WELCH_KEEP_BYTES", 1 << 30)
    kept, n1 = _welch_grad_and_transforms(x, w, monkeypatch)
    assert torch.equal(recomputed, kept)
    assert n1 == 1 and n0 == 1 + (1 if frames <= 64 else 2)
