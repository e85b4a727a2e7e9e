"""Limiter: the guaranteed ceiling on adversarial signals at 44.1, 48 and 96 kHz (4x
true-peak meter, plus an independent polyphase resampler as a cross-check), transparency
below the ceiling, release time and gradients (the effect contract is in test_contract.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F_
from scipy.signal import resample_poly

from diffmix.effects.dynamics import Limiter
from diffmix.functional import _peak_kernels as _pk
from diffmix.functional import limiter as F
from diffmix.kernels import ops
from tests.seeds import drawn_seed

SR = 44100
pytestmark = pytest.mark.usefixtures("_single_thread")

# ---- adversarial signals ------------------------------------------------------------------


def _isp(sr: int, n: int) -> torch.Tensor:
    """fs/4 tone at 45 degrees: samples at +-0.707 of a full-scale (0 dBTP) waveform."""
    t = torch.arange(n, dtype=torch.float64)
    return torch.sin(math.pi / 2 * t + math.pi / 4).expand(2, n).unsqueeze(0).clone()


def _square(sr: int, n: int, freq: float) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) / sr
    left = torch.sign(torch.sin(2 * math.pi * freq * t + 0.3))
    right = torch.sign(torch.sin(2 * math.pi * freq * 1.01 * t))
    return torch.stack([left, right]).unsqueeze(0)


def _drums(sr: int, n: int, seed: int = 0) -> torch.Tensor:
    """Kick (pitch-dropping sine) and snare (noise burst) hits, each peaking near 0 dBFS."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / sr
    out = torch.zeros(2, n, dtype=torch.float64)
    for i, start in enumerate(range(0, n, sr // 4)):
        tt = t[: n - start]
        if i % 2 == 0:
            hit = torch.sin(2 * math.pi * (50 * tt + 60 * (1 - torch.exp(-tt * 30)) / 30))
            hit = hit * torch.exp(-tt * 12)
            out[:, start:] += hit
        else:
            burst = torch.randn(2, n - start, generator=g, dtype=torch.float64) * torch.exp(-tt * 25)
            out[:, start:] += 0.35 * burst
    return (out / out.abs().max()).unsqueeze(0)


SIGNALS = {
    "isp_fs4_45deg": lambda sr, n: _isp(sr, n),
    "isp_fs4_45deg_+6dB": lambda sr, n: 2.0 * _isp(sr, n),
    "square_1k": lambda sr, n: _square(sr, n, 1000.0),
    "square_fs8": lambda sr, n: _square(sr, n, sr / 8),
    "drums": lambda sr, n: _drums(sr, n),
}


def _independent_true_peak(y: torch.Tensor, up: int = 16) -> float:
    """True peak from scipy's polyphase resampler at 16x (a different, longer filter)."""
    ups = resample_poly(y.detach().double().numpy(), up, 1, axis=-1, window=("kaiser", 14.0))
    return float(np.abs(ups).max())


def test_limiter_meters_with_the_project_meter():
    from diffmix.functional.peaks import true_peak as meter

    x = torch.cat([_drums(48000, 4800), 2 * _isp(48000, 4800), _square(48000, 4800, 997.0)], -1)
    # The contract: the limiter's meter is the project's meter, not a second one that could
    # drift from it (so a limited file reads under the ceiling on diffmix's own meter).
    assert torch.equal(F.true_peak(x, 48000), meter(x, 48000))
    # And that meter finds the inter-sample peak of a 0 dBTP tone whose samples are -3 dB.
    assert float(F.true_peak(_isp(48000, 4800), 48000).max()) == pytest.approx(1.0, abs=0.011)


@pytest.mark.parametrize("sr", [44100, 48000, 96000])
@pytest.mark.parametrize("signal", sorted(SIGNALS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_true_peak_ceiling_holds(sr, signal, dtype):
    ceiling_db = -1.0
    ceiling = 10 ** (ceiling_db / 20)
    x = SIGNALS[signal](sr, sr // 2).to(dtype)
    drive = 20.0 if signal == "drums" else 0.0
    y = F.limiter(x, sr, ceiling_db=ceiling_db, gain_db=drive, release_ms=50.0, lookahead_ms=5.0)
    assert float(F.true_peak(y, sr).max()) <= ceiling  # exact: no tolerance
    if signal.startswith("isp"):  # a tone: a 16x interpolator agrees (not so near Nyquist)
        assert 20 * math.log10(_independent_true_peak(y)) <= ceiling_db + 0.02
    # And the limiter is not cheating by crushing everything: it gets close to the ceiling.
    assert float(F.true_peak(y, sr).max()) >= ceiling * 10 ** (-1.0 / 20)


@pytest.mark.parametrize("sr", [44100, 48000, 96000])
@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_sample_peak_ceiling_holds(sr, signal):
    x = SIGNALS[signal](sr, sr // 4).float() * 10 ** (20 / 20)
    y = F.limiter(x, sr, ceiling_db=-0.3, true_peak=False)
    assert float(y.abs().max()) <= 10 ** (-0.3 / 20)
    # Driven 20 dB into it, the peaks sit at the ceiling, not far under it (measured within
    # 0.001 dB): a limiter that crushed everything would pass the line above.
    assert float(y.abs().max()) >= 10 ** (-0.4 / 20)


def test_transparent_below_the_ceiling():
    x = 0.5 * _drums(SR, SR // 4)  # peaks at -6 dBFS
    y = F.limiter(x, SR, ceiling_db=-1.0)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)


def test_release_time_after_a_single_peak():
    x = torch.full((1, 1, SR // 2), 0.1, dtype=torch.float64)
    x[..., 1000] = 2.0  # needs 1/2 gain -> -7 dB at the ceiling of -1 dBFS
    release_ms = 30.0
    y = F.limiter(x, SR, ceiling_db=-1.0, release_ms=release_ms, true_peak=False, lookahead_ms=1.0)
    gain = (y / x).flatten()
    assert float(y[0, 0, 1000]) <= 10 ** (-1 / 20)
    # Once the lookahead window has passed the peak, the gain deficit decays as exp(-t/release).
    after = 1 - gain[1000 + int(round(0.001 * SR)) :]
    k = int(round(release_ms * SR / 1000))
    ratio = float(after[k] / after[0])
    assert ratio == pytest.approx(math.exp(-1), rel=1e-3)


def test_lookahead_ramps_gain_before_the_peak():
    x = torch.full((1, 1, 4000), 0.1, dtype=torch.float64)
    x[..., 2000] = 4.0
    lead = int(round(0.005 * SR))
    y = F.limiter(x, SR, ceiling_db=0.0, true_peak=False, lookahead_ms=5.0)
    gain = (y / x).flatten()
    ramp = gain[2000 - lead : 2001]
    assert bool((torch.diff(ramp) < 0).all()), "gain falls steadily into the peak"
    assert float(gain[2000 - lead - 1]) == 1.0, "and not earlier than the lookahead"


def test_gradients_flow_through_the_exact_limiter():
    lim = Limiter(SR, ceiling_db=-1.0, gain_db=12.0, release_ms=40.0).double()
    x = _drums(SR, SR // 8).requires_grad_(True)
    lim(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, bp in lim.params.items():
        assert torch.isfinite(bp.raw.grad).all() and float(bp.raw.grad.abs()) > 0, name


def test_limiter_bad_input_raises():
    with pytest.raises(ValueError, match=r"Limiter: ceiling_db=3 is outside its range"):
        Limiter(SR, ceiling_db=3.0)
    with pytest.raises(ValueError, match=r"Limiter: true_peak must be True or False"):
        Limiter(SR, true_peak="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Limiter: lookahead_ms=80 is outside \[0, 50\]"):
        Limiter(SR, lookahead_ms=80.0)
    with pytest.raises(ValueError, match=r"limiter: channels are linked, so ceiling_db is per item"):
        F.limiter(torch.zeros(2, 2, 16), SR, ceiling_db=torch.zeros(2, 2))


@pytest.mark.skipif(not _pk.HAVE_NUMBA, reason="numba is not installed")
def test_the_render_ramp_is_the_ops_ramp_without_the_backwards_indices():
    # A render (no gradient) takes the numba ramp without the argmin indices its backward
    # needs: the same values bit for bit, and with a gradient the op still carries them.
    g = torch.Generator().manual_seed(12)
    for dtype in (torch.float32, torch.float64):
        for t, lookahead in [(7, 20), (1000, 220), (30_001, 220)]:
            req = torch.rand(3, t, generator=g, dtype=dtype).clamp_min(0.05)
            req[:, ::3] = 1.0
            ramp, arg = ops.limiter_ramp(req, lookahead, "numba")
            assert torch.equal(_pk.ramp_values(req, lookahead), ramp) and arg.shape == (3, t + lookahead)
    release = torch.full((1,), 0.999, dtype=torch.float64)
    req = torch.rand(1, 1, 5000, generator=g, dtype=torch.float64).clamp_min(0.1)
    with torch.no_grad():
        rendered = F.limiter_gain(req, 220, release)
        buffer = torch.full_like(req, float("nan"))
        into = F.limiter_gain(req, 220, release, out=buffer)  # the render's ramp and smoother in place
        torch_path = F.limiter_gain(req, 220, release, backend="torch", out=torch.empty_like(req))
    graphed = F.limiter_gain(req.clone().requires_grad_(), 220, release)
    assert torch.equal(rendered, graphed.detach()) and graphed.requires_grad
    assert into is buffer and torch.equal(into, rendered)
    assert (torch_path - rendered).abs().max() < 1e-12


def test_drive_renders_skip_only_what_cannot_change():
    # The exact drive render skips the correction of an item at rest (its driven level under
    # the target everywhere) and reuses the gain of a repeated drive: outputs bit for bit
    # the full path's, and the rest item's strict peak a bound just above its reading.
    from diffmix.functional import peaks as P
    from diffmix.functional.dynamics import _DB_PER_NEPER, ms_to_pole

    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    sr = [44100, 48000][int(torch.randint(0, 2, (), generator=g))]
    n = int(sr * (0.5 + torch.rand((), generator=g)))
    x = torch.randn(2, 2, n, generator=g) * (0.3 + torch.rand(2, 1, 1, generator=g))
    x[:, :, : n // 3] *= 0.1  # a quiet part and a loud one
    ceiling_db = -0.5 - 2.5 * torch.rand(2, generator=g, dtype=torch.float64)
    release_ms = 20.0 + 200.0 * torch.rand(2, generator=g, dtype=torch.float64)
    level = torch.maximum(F.limiter_envelope(x, sr)[:, 0], P.strict_envelope(x, sr, meter=False)).amax(-1)
    ceiling = torch.exp(ceiling_db / _DB_PER_NEPER)
    target = ceiling * (1.0 - F._LIMIT_MARGIN)
    limit = 20 * torch.log10(target / level.double())  # the drive where the limiter starts to work
    at_rest = limit - 0.01 - 6 * torch.rand(2, generator=g, dtype=torch.float64)
    drives = torch.stack([at_rest[0], limit[1] + 1 + 9 * float(torch.rand((), generator=g))])

    def renders():  # noqa: ANN202
        return F.drive_renders(x, sr, ceiling_db=ceiling_db, release_ms=release_ms, strict=True)

    smooth, exact = renders()
    y = smooth(drives)
    reference, peak = F.strict_correction(
        y.clone(), sr, target.view(-1, 1, 1).float(), ceiling.view(-1, 1, 1).float(),
        F._lookahead_samples(5.0, sr, "limiter"), ms_to_pole(release_ms, sr).float().view(-1, 1, 1),
        strict=True,
    )
    reference = y * reference
    out = exact(drives)  # after smooth at the same drives: its gain, reused
    assert torch.equal(out, reference)
    assert torch.equal(renders()[1](drives), reference)  # fresh, each gain computed
    assert torch.equal(out[:1], smooth(drives[:1].clone().expand(2))[:1])  # at rest: no correction
    got = exact.strict_peak()
    assert got[1] == float(peak[1]), (got.tolist(), peak.tolist())  # metered by the correction
    read = float(P.strict_true_peak(out[:1], sr).amax())
    assert read <= got[0] <= read * (1 + 1e-4) and got[0] < float(ceiling[0])
    # both at rest: the correction is skipped for the batch; the bound holds
    both = torch.stack([at_rest[0], at_rest[1]])
    out = exact(both)
    assert torch.equal(out, smooth(both))
    read = P.strict_true_peak(out, sr).amax(-1).double()
    assert ((read <= exact.strict_peak()) & (exact.strict_peak() < ceiling)).all()


def test_drive_renders_read_the_same_with_the_strict_levels_floor():
    # The drive renders meter the pre-limiter strict level exact only from a floor under
    # where the first drive limits (and the correction its output's from under the target):
    # every render, later drives within and beyond the floor's headroom included, and every
    # strict peak must be bit for bit those of the level metered exact everywhere. Also with
    # the worst level the floor's contract allows (exact from the floor up, 0 under it): what
    # the renders read must not depend on the levels under the floor.
    from diffmix.functional import peaks as P

    seed = drawn_seed(10**6)
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    n = int(SR * (1.6 + torch.rand((), generator=g)))  # over two of the strict meter's FFT blocks
    x = torch.randn(2, 2, n, generator=g)
    x[:, 1] -= torch.roll(x[:, 1], 1, -1)  # content near Nyquist, where the FIR rows read high
    x *= 10 ** (-1.5 * torch.rand(2, 1, -(-n // 256), generator=g)).repeat_interleave(256, -1)[..., :n]
    x /= x.abs().amax((1, 2), keepdim=True)
    ceiling_db = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    release_ms = torch.tensor([80.0, 150.0], dtype=torch.float64)
    # the first drive: item 0 at rest (its peak exact all the same), item 1 limited
    first = torch.tensor([-12.0, 2.0], dtype=torch.float64)
    first += 6.0 * torch.rand(2, generator=g, dtype=torch.float64)
    # the 4th drive is past the floor's headroom
    steps = [first, first + 0.3, first - 2.0, first + 0.8, first + 4.0, first - 20.0]
    real = P.strict_envelope
    calls = {"floored": 0, "exact": 0}

    def exact_everywhere(*args, floor=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        return real(*args, **kwargs)

    def worst_allowed(*args, floor=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        level = real(*args, **kwargs)
        calls["floored" if floor is not None else "exact"] += 1
        return level if floor is None else torch.where(level.double() >= floor[:, None], level, 0.0)

    def run(envelope) -> list:  # noqa: ANN001
        out = []
        with pytest.MonkeyPatch.context() as mp:
            if envelope is not None:
                mp.setattr(P, "strict_envelope", envelope)
            smooth, exact = F.drive_renders(x, SR, ceiling_db=ceiling_db, release_ms=release_ms, strict=True)
            for d in steps:
                out += [smooth(d).clone(), exact(d).clone(), exact.strict_peak().clone()]
        return out

    want = run(exact_everywhere)
    for envelope in (None, worst_allowed):
        for k, (a, b) in enumerate(zip(run(envelope), want, strict=True)):
            assert torch.equal(a, b), (k, (a - b).abs().max())
    assert calls["floored"] >= 2 and calls["exact"] >= 1  # both floors used; one drive went past the headroom


def test_drive_renders_level_in_one_strict_pass_reads_as_two_passes():
    # On CPU the drive renders meter the project's rows in the strict meter's pass under its
    # floor (from the samples' peak) instead of in a whole pass of their own first: every
    # render and strict peak, at drives at rest, limiting and past the floor's headroom, bit
    # for bit the two passes'.
    seed = drawn_seed(10**6)
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    n = int(SR * (0.8 + 1.5 * torch.rand((), generator=g)))
    x = torch.randn(2, 2, n, generator=g)
    x[:, 1] -= torch.roll(x[:, 1], 1, -1)  # content near Nyquist, where the meters differ
    x *= 10 ** (-1.5 * torch.rand(2, 1, -(-n // 256), generator=g)).repeat_interleave(256, -1)[..., :n]
    x /= x.abs().amax((1, 2), keepdim=True)
    ceiling_db = -0.5 - 2.5 * torch.rand(2, generator=g, dtype=torch.float64)
    release_ms = 20.0 + 200.0 * torch.rand(2, generator=g, dtype=torch.float64)
    first = torch.tensor([-12.0, 2.0], dtype=torch.float64)
    first += 6.0 * torch.rand(2, generator=g, dtype=torch.float64)  # item 0 at rest, item 1 limited
    steps = [first, first + 0.3, first + 4.0, first - 20.0]

    def run(fused: bool, corrected: bool) -> list:
        out = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(F, "_FUSED_LEVEL", fused)
            smooth, exact = F.drive_renders(x, SR, ceiling_db=ceiling_db, release_ms=release_ms, strict=True,
                                            exact=corrected)
            for d in steps:
                out += [smooth(d).clone(), exact(d).clone()]
                out += [exact.strict_peak().clone()] if corrected else []
        return out

    # and the smooth renders (exact=False): the project meter's rows alone, under the floor
    for corrected in (True, False):
        for k, (a, b) in enumerate(zip(run(True, corrected), run(False, corrected), strict=True)):
            assert torch.equal(a, b), (corrected, k, (a - b).abs().max())


@pytest.mark.parametrize("options", [{}, {"strict": True}, {"true_peak": False}, {"exact": False}])
def test_a_render_in_place_reads_as_the_differentiable_path(options):
    """Without a graph the limiter computes its gain and output in place on its own
    temporaries: the same values as with one (where the input needs a gradient), and the
    input left as it was."""
    g = torch.Generator().manual_seed(7)
    x = 0.5 * torch.randn(2, 2, 9000, generator=g)
    kept = x.clone()
    with torch.no_grad():
        rendered = F.limiter(x, 44100, gain_db=torch.tensor([6.0, 2.0]), ceiling_db=-1.0, **options)
    assert torch.equal(x, kept)
    graphed = F.limiter(x.clone().requires_grad_(), 44100, gain_db=torch.tensor([6.0, 2.0]),
                        ceiling_db=-1.0, **options)
    assert torch.equal(rendered, graphed.detach())


def _bursty(g: torch.Generator, n: int) -> torch.Tensor:
    """Two stereo items: noise with content near Nyquist, its level stepping over 30 dB from
    one 256-sample stretch to the next, peak 1."""
    x = torch.randn(2, 2, n, generator=g)
    x[:, 1] -= torch.roll(x[:, 1], 1, -1)  # content near Nyquist, where the rows read high
    x *= 10 ** (-1.5 * torch.rand(2, 1, -(-n // 256), generator=g)).repeat_interleave(256, -1)[..., :n]
    return x / x.abs().amax((1, 2), keepdim=True)


def test_driven_bound_holds_over_every_meter_row():
    # _driven_bound (what lets the exact drive render's meters skip blocks): every point of
    # the project meter's and the strict meter's FIR rows over x * gain, per 256-sample
    # block, is at most the bound; for the limiter's own gain and for a gain that jumps
    # anywhere, from the exact level and from the worst level a floor allows (0 under it).
    # And it is tight where the gain is smooth: some limited blocks are ruled out.
    from diffmix.functional import peaks as P
    from diffmix.functional.dynamics import ms_to_pole

    seed = drawn_seed(10**6)
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    sr = [44100, 48000, 96000][int(torch.randint(0, 3, (), generator=g))]
    n = int(sr * (0.3 + torch.rand((), generator=g)))
    x = _bursty(g, n)
    level = torch.maximum(F.limiter_envelope(x, sr), P.strict_envelope(x, sr, meter=False).unsqueeze(1))
    drive = 10 ** ((3.0 + 9.0 * torch.rand(2, 1, 1, generator=g)) / 20)
    target = torch.full((2, 1, 1), 0.89)
    required = (target / (drive * level)).clamp_max(1.0)
    release = ms_to_pole(torch.tensor([50.0, 200.0]), sr)
    limited = F.limiter_gain(required, F._lookahead_samples(5.0, sr, "limiter"), release) * drive
    jumpy = drive * (0.2 + 0.8 * torch.rand(2, 1, n, generator=g))
    rows = [P._strict_rows()[0], *([P.interpolation_filter(P.oversampling_factor(sr))]
                                   if P.oversampling_factor(sr) > 1 else [])]
    skipped = 0
    for gain in (limited, jumpy):
        y = x * gain
        points = torch.stack([P._fir_envelope(y, r) for r in rows]).amax(0)  # (B, T), both sides
        blocks = F_.pad(points, (0, -n % 256)).view(2, -1, 256).amax(-1).double()
        for floor in (None, 0.3 + 0.5 * torch.rand(2, generator=g, dtype=torch.float64)):
            seen = level if floor is None else torch.where(level.double() >= floor.view(-1, 1, 1), level, 0.0)
            bound = F._driven_bound(x, seen, floor, gain, sr)
            assert (blocks <= bound).all(), (sr, floor, float((blocks - bound).max()))
            if gain is limited:
                skipped += int((bound < F._floor_of(target.view(-1))[:, None]).sum())
    print("limited blocks ruled out:", skipped)
    assert skipped > 0


def test_strict_correction_with_a_bound_reads_as_without():
    # The exact drive render hands the correction _driven_bound: its meters skip the blocks
    # that can't reach the floor. Gain and strict peak bit for bit as without, on renders
    # that limit lightly and hard (the correction's passes then run), and blocks skipped.
    from diffmix.functional import peaks as P
    from diffmix.functional.dynamics import ms_to_pole

    seed = drawn_seed(10**6)
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    n = int(SR * (1.6 + torch.rand((), generator=g)))  # over two of the strict meter's FFT blocks
    x = _bursty(g, n)
    level = torch.maximum(F.limiter_envelope(x, SR), P.strict_envelope(x, SR, meter=False).unsqueeze(1))
    ceiling = torch.tensor([0.89, 0.79]).view(-1, 1, 1)
    target = ceiling * (1.0 - F._LIMIT_MARGIN)
    look = F._lookahead_samples(5.0, SR, "limiter")
    release = ms_to_pole(torch.tensor([80.0, 150.0]), SR).view(-1, 1, 1)
    real = _pk.envelope_numpy
    runs = [0, 0]

    def spy(x, taps, level=None, code=None, todo=None, want_code=True):  # noqa: ANN001, ANN202
        if todo is not None:
            runs[0] += int(todo.sum())
            runs[1] += todo.size
        return real(x, taps, level, code, todo, want_code)

    for db in (0.5 + torch.rand(2, generator=g), 6.0 + 6.0 * torch.rand(2, generator=g)):
        drive = 10 ** (db.view(-1, 1, 1) / 20)
        gain = F.limiter_gain((target / (drive * level)).clamp_max(1.0), look, release.view(-1)) * drive
        y = x * gain
        want = F.strict_correction(y.clone(), SR, target, ceiling, look, release)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_pk, "envelope_numpy", spy)
            got = F.strict_correction(y.clone(), SR, target, ceiling, look, release,
                                      bound=F._driven_bound(x, level, None, gain, SR))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), db
    print(f"project meter blocks run: {runs[0]} of {runs[1]}")
    assert 0 < runs[0] < runs[1]


def test_a_limiting_drive_render_takes_both_shortcuts(monkeypatch):
    # The exact drive render of a limiting drive meters its pre-limiter level ideal points
    # first under the floor, and hands its correction the bound from that level (the two
    # shortcuts of the loudness solve); at rest the level keeps the FIR-first order.
    from diffmix.functional import peaks as P

    g = torch.Generator().manual_seed(5)
    x = _bursty(g, int(SR * 0.8))
    envelope, correction = P.strict_envelope, F.strict_correction
    seen: dict[str, list] = {"level": [], "bound": []}

    def spy_envelope(*args, floor=None, ideal_first=False, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if floor is not None and kwargs.get("gain") is None and args[0] is x:
            seen["level"].append(ideal_first)
        return envelope(*args, floor=floor, ideal_first=ideal_first, **kwargs)

    def spy_correction(*args, bound=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen["bound"].append(bound is not None)
        return correction(*args, bound=bound, **kwargs)

    monkeypatch.setattr(P, "strict_envelope", spy_envelope)
    monkeypatch.setattr(F, "strict_correction", spy_correction)
    ceiling_db, release_ms = torch.tensor([-1.0, -1.0], dtype=torch.float64), torch.tensor([100.0, 100.0])
    for drive, limits in ((6.0, True), (-20.0, False)):
        smooth, exact = F.drive_renders(x, SR, ceiling_db=ceiling_db, release_ms=release_ms, strict=True)
        exact(torch.full((2,), drive, dtype=torch.float64))
        assert seen["level"] == [limits], (drive, seen)
        assert seen["bound"] == ([True] if limits else []), (drive, seen)
        seen = {"level": [], "bound": []}
