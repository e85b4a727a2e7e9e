"""Compressor and expander/gate: a float64 reference loop, the static curve against theory,
measured attack/release times, the torch fallback against the kernel, and bad input (the
effect contract is in test_contract.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffmix.effects.dynamics import Compressor, Expander
from diffmix.functional import dynamics as F
from diffmix.functional._dynamics_kernels import smooth

SR = 44100
pytestmark = pytest.mark.usefixtures("_single_thread")

# ---- a float64 per-sample reference ---------------------------------------------------


def reference(x, sr, *, kind, thr, ratio, knee, att, rel, makeup=0.0, mix=1.0, hold=0.0,
              rng=0.0, detector="peak", rms_ms=10.0, link="max", lookahead=0.0, side=None):
    """Textbook loop in float64 (Giannoulis et al. 2012, smooth branching in the log domain)."""
    x = np.asarray(x, dtype=np.float64)
    s = x if side is None else np.asarray(side, dtype=np.float64)
    b, c, n = x.shape
    la = int(round(lookahead * sr / 1000))
    a_att, a_rel = math.exp(-1000 / (att * sr)), math.exp(-1000 / (rel * sr))
    h = int(round(hold * sr / 1000))
    out = np.empty_like(x)
    for i in range(b):
        power = s[i] ** 2
        if detector == "rms":
            a = math.exp(-1000 / (rms_ms * sr))
            acc = np.zeros(c)
            for t in range(n):
                acc = a * acc + (1 - a) * power[:, t]
                power[:, t] = acc
        if link == "max":
            power = power.max(0, keepdims=True)
        elif link == "mean":
            power = power.mean(0, keepdims=True)
        power = np.concatenate([power, np.zeros((power.shape[0], la))], 1)
        for j in range(power.shape[0]):
            y, run, gains = 0.0, 0, []
            for t in range(n + la):
                level = 10 * math.log10(max(power[j, t], 1e-20))
                d = level - thr if kind == "comp" else thr - level
                if d <= -knee / 2:
                    f = 0.0
                elif d >= knee / 2:
                    f = d
                else:
                    f = (d + knee / 2) ** 2 / (2 * knee)
                if kind == "comp":
                    gc = (1 / ratio - 1) * f
                    down, up = a_att, a_rel
                else:
                    gc = max((1 - ratio) * f, -rng)
                    down, up = a_rel, a_att
                if gc < y:
                    run += 1
                    if run > h:
                        y = down * y + (1 - down) * gc
                else:
                    run = 0
                    y = up * y + (1 - up) * gc
                gains.append(y)
            g = 10 ** ((np.array(gains[la:]) + makeup) / 20)
            rows = slice(None) if power.shape[0] == 1 else slice(j, j + 1)
            out[i, rows] = x[i, rows] * (1 + mix * (g - 1))
    return out


def _music(channels: int, n: int, seed: int = 0) -> torch.Tensor:
    """Noise with a 20 Hz tremolo and a loud burst: crosses the threshold both ways."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / SR
    env = 0.05 + 0.45 * (0.5 + 0.5 * torch.sin(2 * math.pi * 20 * t)) ** 2
    env[n // 3 : n // 3 + n // 10] *= 3.0
    return env * torch.randn(1, channels, n, generator=g, dtype=torch.float64)


EXACT = {
    "comp_knee_makeup_mix_lookahead": dict(
        kind="comp", thr=-18.0, ratio=5.0, knee=8.0, att=1.5, rel=30.0, makeup=4.0, mix=0.8,
        lookahead=1.0,
    ),
    "comp_hard_knee_unlinked": dict(
        kind="comp", thr=-24.0, ratio=20.0, knee=0.0, att=0.2, rel=5.0, link="none"
    ),
    "comp_rms_mean": dict(kind="comp", thr=-22.0, ratio=3.0, knee=4.0, att=3.0, rel=60.0,
                          detector="rms", rms_ms=5.0, link="mean"),
    "gate_hold_range": dict(kind="exp", thr=-10.0, ratio=30.0, knee=2.0, att=0.5, rel=5.0,
                            hold=1.0, rng=40.0),
}


@pytest.mark.parametrize("name", sorted(EXACT))
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_forward_equals_float64_reference_loop(name, backend, dtype):
    cfg = EXACT[name]
    x = _music(2, 3000)
    want = reference(x.numpy(), SR, **cfg)
    kw = dict(threshold_db=cfg["thr"], ratio=cfg["ratio"], knee_db=cfg["knee"],
              attack_ms=cfg["att"], release_ms=cfg["rel"], detector=cfg.get("detector", "peak"),
              rms_ms=cfg.get("rms_ms", 10.0), link=cfg.get("link", "max"),
              lookahead_ms=cfg.get("lookahead", 0.0), backend=backend)
    if cfg["kind"] == "comp":
        got = F.compressor(x.to(dtype), SR, makeup_db=cfg.get("makeup", 0.0), mix=cfg.get("mix", 1.0), **kw)
    else:
        got = F.expander(x.to(dtype), SR, hold_ms=cfg["hold"], range_db=cfg["rng"], **kw)
    err = np.abs(got.double().numpy() - want).max()
    assert err <= 1e-5, f"max abs error {err:.3g} against the float64 loop"
    assert np.abs(want - x.numpy()).max() > 0.05, "the case does not actually process the signal"


def test_sidechain_ducks_the_input_exactly():
    x = 0.1 * _music(2, 2000, seed=1)
    key = _music(2, 2000, seed=2)
    cfg = dict(kind="comp", thr=-20.0, ratio=10.0, knee=0.0, att=1.0, rel=20.0)
    want = reference(x.numpy(), SR, side=key.numpy(), **cfg)
    got = F.compressor(x, SR, threshold_db=-20.0, ratio=10.0, knee_db=0.0, attack_ms=1.0,
                       release_ms=20.0, sidechain=key)
    assert np.abs(got.numpy() - want).max() <= 1e-9
    # x alone (-20 dB quieter) is barely touched; keyed from the loud signal it is ducked.
    alone = F.compressor(x, SR, threshold_db=-20.0, ratio=10.0, knee_db=0.0)
    assert float((got.square().sum() / alone.square().sum()).log10() * 10) < -6.0


# ---- static curve ---------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1.5, 4.0, 20.0])
@pytest.mark.parametrize("knee", [0.0, 6.0, 12.0])
def test_static_curve_slope_and_knee(ratio, knee):
    thr = -20.0
    level = torch.linspace(-60.0, 0.0, 6001, dtype=torch.float64)
    t = torch.tensor(thr, dtype=torch.float64)
    out = level + F.compressor_curve(level, t, torch.tensor(ratio, dtype=torch.float64),
                                     torch.tensor(knee, dtype=torch.float64))
    slope = torch.diff(out) / torch.diff(level)
    above = level[1:] > thr + knee / 2 + 0.01
    below = level[1:] < thr - knee / 2 - 0.01
    torch.testing.assert_close(slope[above], torch.full_like(slope[above], 1 / ratio), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(slope[below], torch.ones_like(slope[below]), rtol=1e-9, atol=1e-9)
    # The slope never steps: it moves monotonically from 1 to 1/ratio through the knee.
    assert bool((torch.diff(slope) <= 1e-9).all())
    # At the threshold the knee sits (1 - 1/ratio) * knee / 8 dB under the hard-knee corner.
    at = int(torch.argmin((level - thr).abs()))
    assert float(out[at] - thr) == pytest.approx(-(1 - 1 / ratio) * knee / 8, abs=1e-9)


@pytest.mark.parametrize("sr", [44100, 48000])
def test_static_curve_through_the_effect_on_steady_tones(sr):
    """Steady square waves (|x| constant): output level follows the curve, slope 1/ratio."""
    comp = Compressor(sr, threshold_db=-30.0, ratio=4.0, knee_db=0.0, attack_ms=0.1, release_ms=1.0)
    levels = torch.tensor([-20.0, -10.0, 0.0], dtype=torch.float64)
    n = sr // 10
    square = torch.sign(torch.sin(2 * math.pi * 100 * torch.arange(n, dtype=torch.float64) / sr + 0.1))
    x = (10 ** (levels / 20)).view(3, 1, 1) * square.view(1, 1, -1)
    y = comp.double()(x)
    out_db = 20 * torch.log10(y[..., -100:].abs().amax(-1)).flatten()
    torch.testing.assert_close(out_db, -30.0 + (levels + 30.0) / 4.0, rtol=0, atol=1e-6)


# ---- behaviour against pedalboard (JUCE's compressor and noise gate, compiled C++) ------

# JUCE's ballistics filter reaches 1 - e^(-2 pi) of a step in the time it is set to, so its
# time constant is that time / 2 pi; ours are time constants (63.2 % of a step).
_JUCE_TAU = 1.0 / (2.0 * math.pi)


def _steady_tone_change_db(effect, peer, level_db: float, sr: int) -> tuple[float, float]:
    """Level change (dB, RMS of the last half second) that diffmix ``effect`` and pedalboard
    ``peer`` apply to a steady 1 kHz sine whose peak is ``level_db`` dBFS."""
    t = np.arange(int(1.5 * sr)) / sr
    x = (10 ** (level_db / 20) * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    ours = effect(torch.from_numpy(x).view(1, 1, -1)).detach().numpy()[0, 0]
    theirs = peer(x[None], sr)[0]

    def change(y: np.ndarray) -> float:
        tail = slice(sr, None)
        return float(10 * np.log10(np.mean(y[tail] ** 2) / np.mean(x[tail] ** 2)))

    return change(ours), change(theirs)


@pytest.mark.parametrize("ratio", [2.0, 4.0, 10.0])
@pytest.mark.parametrize("level_db", [-30.0, -14.0, -6.0, 0.0])
def test_compressor_matches_pedalboard_on_steady_tones(ratio, level_db):
    """Gain reduction on a steady sine, peak detector and hard knee, agrees with pedalboard's
    Compressor to 0.1 dB, and sits within 0.3 dB of the static curve at the peak level (the
    gain ripples a little within each cycle, as the release acts between peaks)."""
    import pedalboard as pb

    sr, thr, attack, release = 48000, -20.0, 1.0, 200.0
    ours, theirs = _steady_tone_change_db(
        Compressor(sr, threshold_db=thr, ratio=ratio, knee_db=0.0, attack_ms=attack * _JUCE_TAU,
                   release_ms=release * _JUCE_TAU),
        pb.Compressor(threshold_db=thr, ratio=ratio, attack_ms=attack, release_ms=release),
        level_db, sr,
    )
    assert ours == pytest.approx(theirs, abs=0.1)
    theory = min(0.0, (1 / ratio - 1) * (level_db - thr))
    assert ours == pytest.approx(theory, abs=0.3)
    if level_db > thr:
        assert ours < -1.0  # the tone really is compressed, not passed through


@pytest.mark.parametrize("ratio", [2.0, 4.0, 10.0])
@pytest.mark.parametrize("level_db", [-50.0, -45.0, -40.0, -30.0])
def test_gate_matches_pedalboard_noise_gate_on_steady_tones(ratio, level_db):
    """Downward expansion of a steady sine agrees with pedalboard's NoiseGate to 0.05 dB: the
    hold bridges the sine's zero crossings, so the gate follows the peak level as JUCE's
    envelope does."""
    import pedalboard as pb

    sr, thr, attack, release = 48000, -40.0, 1.0, 200.0
    ours, theirs = _steady_tone_change_db(
        Expander(sr, threshold_db=thr, ratio=ratio, knee_db=0.0, attack_ms=attack * _JUCE_TAU,
                 release_ms=release * _JUCE_TAU, hold_ms=10.0, range_db=120.0),
        pb.NoiseGate(threshold_db=thr, ratio=ratio, attack_ms=attack, release_ms=release),
        level_db, sr,
    )
    assert ours == pytest.approx(theirs, abs=0.05)
    assert ours == pytest.approx(min(0.0, (ratio - 1) * (level_db - thr)), abs=0.05)


def test_knee_zero_at_threshold_has_finite_gradients():
    x = torch.full((1, 1, 64), 0.1, dtype=torch.float64)  # exactly -20 dB
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in dict(threshold_db=-20.0, ratio=4.0, knee_db=0.0).items()}
    for backend in ("auto", "torch"):
        y = F.compressor(x, SR, **params, backend=backend)
        grads = torch.autograd.grad(y.sum(), list(params.values()))
        assert all(torch.isfinite(g).all() for g in grads)


# ---- ballistics -----------------------------------------------------------------------


def _crossing_ms(curve: torch.Tensor, change: float, fraction: float, sr: int) -> float:
    """Time (ms, linearly interpolated) for ``curve`` to cover ``fraction`` of a total
    ``change`` from ``curve[0]``, its value on the last sample before the step."""
    curve = curve.detach() - float(curve[0])
    target = fraction * change
    idx = int(torch.nonzero(curve <= target if target < 0 else curve >= target)[0])
    prev, cur = float(curve[idx - 1]), float(curve[idx])
    return (idx - 1 + (target - prev) / (cur - prev)) * 1000.0 / sr


@pytest.mark.parametrize("sr", [44100, 48000])
@pytest.mark.parametrize("attack_ms, release_ms", [(1.0, 50.0), (10.0, 200.0)])
def test_attack_and_release_times_on_steps(sr, attack_ms, release_ms):
    """Gain (dB) covers 1 - 1/e of a step after exactly attack_ms, and of the recovery
    after release_ms (time-constant convention)."""
    n = int(sr * 2.0 * release_ms / 1000) + int(sr * 10 * attack_ms / 1000)
    on = int(sr * 10 * attack_ms / 1000)
    x = torch.full((1, 1, on + n), 1e-3, dtype=torch.float64)
    x[..., :on] = 1.0  # loud (compressed) for 10 attack constants, then quiet
    x = torch.cat([torch.full((1, 1, 200), 1e-3, dtype=torch.float64), x], -1)
    comp = Compressor(sr, threshold_db=-20.0, ratio=10.0, knee_db=0.0, attack_ms=attack_ms,
                      release_ms=release_ms).double()
    gain_db = (20 * torch.log10(comp(x) / x)).detach().flatten()
    attack_part = gain_db[199 : 200 + on]  # starts at the last quiet sample (0 dB)
    got_attack = _crossing_ms(attack_part, (1 / 10 - 1) * 20.0, 1 - math.exp(-1), sr)
    assert got_attack == pytest.approx(attack_ms, rel=0.01, abs=1000 / sr)
    rec = gain_db[200 + on - 1 :]
    got_release = _crossing_ms(rec, -float(rec[0]), 1 - math.exp(-1), sr)
    assert got_release == pytest.approx(release_ms, rel=0.01, abs=1000 / sr)


def test_gate_opens_holds_then_closes():
    sr = 48000
    quiet, loud = 1e-4, 0.5
    x = torch.full((1, 1, sr // 4), quiet, dtype=torch.float64)
    x[..., 4800:7200] = loud
    hold_ms, release_ms, attack_ms = 20.0, 5.0, 0.5
    gate = Expander(sr, threshold_db=-40.0, ratio=50.0, range_db=60.0, attack_ms=attack_ms,
                    release_ms=release_ms, hold_ms=hold_ms).double()
    gain_db = (20 * torch.log10(gate(x) / x)).detach().flatten()
    assert float(gain_db[4000:4800].max()) <= -59.99  # closed before the burst
    opened = _crossing_ms(gain_db[4799:7200], 60.0, 1 - math.exp(-1), sr)
    assert opened == pytest.approx(attack_ms, rel=0.02, abs=1000 / sr)
    hold = int(hold_ms * sr / 1000)
    held = gain_db[7200 : 7200 + hold]
    assert float(held.max() - held.min()) < 1e-9 and float(held.max()) > -1e-6
    closing = gain_db[7200 + hold - 1 :]
    got = _crossing_ms(closing, -60.0, 1 - math.exp(-1), sr)
    assert got == pytest.approx(release_ms, rel=0.02, abs=1000 / sr)
    assert float(gain_db[-1]) == pytest.approx(-60.0, abs=1e-4)  # 16 time constants on


# ---- behaviour --------------------------------------------------------------------------


def test_stereo_link_modes():
    x = _music(2, 4000)
    x[:, 1] *= 0.05  # right channel 26 dB quieter
    kw = dict(threshold_db=-30.0, ratio=8.0, attack_ms=1.0, release_ms=20.0)
    linked = F.compressor(x, SR, link="max", **kw) / x
    torch.testing.assert_close(linked[:, 0], linked[:, 1], rtol=1e-12, atol=0)
    unlinked = F.compressor(x, SR, link="none", **kw) / x
    assert float((unlinked[:, 1] - linked[:, 1]).abs().max()) > 0.1  # quiet side untouched
    mean = F.compressor(x, SR, link="mean", **kw) / x
    assert bool((mean[:, 0] >= linked[:, 0] - 1e-12).all())  # mean power <= max power
    # ... and strictly less here: the quiet side halves the mean power (-3 dB at the
    # detector), so "mean" compresses the loud side visibly less (measured 0.08).
    assert float((mean[:, 0] - linked[:, 0]).max()) > 0.02


def test_mix_blends_dry_and_wet():
    x = _music(2, 2000)
    wet = F.compressor(x, SR, threshold_db=-30.0)
    half = F.compressor(x, SR, threshold_db=-30.0, mix=0.5)
    torch.testing.assert_close(half, 0.5 * (x + wet), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(F.compressor(x, SR, threshold_db=-30.0, mix=0.0), x)


def test_lookahead_reacts_before_the_transient_without_latency():
    x = torch.full((1, 1, 2000), 1e-3, dtype=torch.float64)
    x[..., 1000:] = 1.0
    y0 = F.compressor(x, SR, threshold_db=-20.0, ratio=10.0, knee_db=0.0, attack_ms=0.5)
    y5 = F.compressor(x, SR, threshold_db=-20.0, ratio=10.0, knee_db=0.0, attack_ms=0.5, lookahead_ms=2.0)
    torch.testing.assert_close(y0[..., :1000], x[..., :1000])
    lead = int(round(0.002 * SR))
    assert float(y5[0, 0, 1000 - lead]) < 1e-3 and float(y5[0, 0, 1000 - lead - 1]) == 1e-3
    assert float(y5[0, 0, 1000]) < float(y0[0, 0, 1000])  # already ducked when the step hits


def test_torch_solver_matches_kernel_values_and_gradients():
    g = torch.Generator().manual_seed(3)
    target = (-20 * torch.rand(4, 3000, generator=g, dtype=torch.float64)).cumsum(-1) % 40 - 40
    a_down = torch.tensor([0.3, 0.9, 0.99, 0.0], dtype=torch.float64, requires_grad=True)
    a_up = torch.tensor([0.999, 0.5, 0.95, 0.9], dtype=torch.float64, requires_grad=True)
    hold = torch.tensor([0, 3, 40, 0])
    outs = []
    for backend in ("numba", "torch"):
        t = target.clone().requires_grad_(True)
        y = smooth(t, a_down, a_up, hold=hold, backend=backend)
        grads = torch.autograd.grad((y * torch.cos(torch.arange(3000.0))).sum(), (t, a_down, a_up))
        outs.append((y, grads))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=1e-10)
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_smoother_gradcheck(backend):
    g = torch.Generator().manual_seed(4)
    t = torch.randn(2, 80, generator=g, dtype=torch.float64).cumsum(-1).requires_grad_(True)
    a_down = torch.tensor([0.6, 0.9], dtype=torch.float64, requires_grad=True)
    a_up = torch.tensor([0.95, 0.3], dtype=torch.float64, requires_grad=True)
    hold = torch.tensor([2, 0])
    assert torch.autograd.gradcheck(lambda *a: smooth(*a, hold=hold, backend=backend), (t, a_down, a_up))


# ---- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Compressor(SR, detector="loudness"), r"Compressor: unknown detector 'loudness'"),
        (lambda: Compressor(SR, link="left"), r"Compressor: unknown link 'left'"),
        (lambda: Compressor(SR, ratio=0.5), r"Compressor: ratio=0.5 is outside its range \[1, 100\]"),
        (lambda: Compressor(SR, attack_ms=0.0), r"Compressor: attack_ms=0 is outside its range"),
        (lambda: Compressor(SR, lookahead_ms=-1.0), r"Compressor: lookahead_ms=-1 is outside"),
        (lambda: Expander(SR, range_db=-3.0), r"Expander: range_db=-3 is outside its range"),
        (lambda: Expander(SR, rms_ms="fast"), r"Expander: rms_ms must be a number"),
    ],
)
def test_bad_settings_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_sidechain_and_functional_options_raise():
    x = torch.zeros(1, 2, 100)
    with pytest.raises(ValueError, match=r"Compressor: sidechain must have the input's shape \(1, 2, 100\)"):
        Compressor(SR)(x, torch.zeros(1, 1, 100))
    with pytest.raises(ValueError, match=r"Expander: sidechain contains NaN or Inf"):
        Expander(SR)(x, torch.full((1, 2, 100), float("nan")))
    with pytest.raises(ValueError, match=r"compressor: unknown detector 'vu'"):
        F.compressor(x, SR, detector="vu")
    with pytest.raises(ValueError, match=r"expander: lookahead_ms must be a non-negative float"):
        F.expander(x, SR, lookahead_ms=-2.0)


@pytest.mark.parametrize("fn", ["compressor", "expander"])
@pytest.mark.parametrize("link", ["max", "mean", "none"])
@pytest.mark.parametrize("detector", ["peak", "rms"])
def test_fused_kernel_equals_composite_path_with_gradients(fn, link, detector):
    """The fused CPU kernel and the pure-PyTorch path (used on CUDA) agree in value and in
    every gradient, with lookahead and an external side-chain."""
    g = torch.Generator().manual_seed(5)
    x = 0.3 * torch.randn(2, 2, 400, generator=g, dtype=torch.float64)
    key = 0.3 * torch.randn(2, 2, 400, generator=g, dtype=torch.float64)
    weights = torch.randn(2, 2, 400, generator=g, dtype=torch.float64)
    if fn == "compressor":
        values = dict(threshold_db=-20.0, ratio=4.0, knee_db=6.0, attack_ms=2.0, release_ms=30.0,
                      makeup_db=2.0, mix=0.8)
    else:
        values = dict(threshold_db=-15.0, ratio=3.0, knee_db=4.0, attack_ms=1.0, release_ms=20.0,
                      range_db=20.0)
    outs = []
    for backend in ("auto", "torch"):
        params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in values.items()}
        inp, side = x.clone().requires_grad_(True), key.clone().requires_grad_(True)
        y = getattr(F, fn)(inp, SR, detector=detector, link=link, lookahead_ms=0.3, sidechain=side,
                           backend=backend, rms_ms=1.0, **params)
        outs.append((y, torch.autograd.grad((y * weights).sum(), [inp, side, *params.values()])))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=1e-12)
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("fn", "channels", "link"), [("compressor", 1, "max"), ("compressor", 2, "max"),
                                                      ("expander", 2, "mean")])
def test_fused_kernel_blocks_match_composite_path_on_long_signals(fn, channels, link, dtype):
    """Signals spanning several kernel blocks (512 samples) with a lookahead that straddles
    block edges: the blocked kernel (float32 runs its polynomial log/exp) agrees with the
    composite torch path in value and in every gradient."""
    g = torch.Generator().manual_seed(11)
    n = 2000
    env = 0.05 + 0.5 * torch.sin(torch.arange(n, dtype=torch.float64) * (2 * math.pi / 700)) ** 2
    x = (env * torch.randn(2, channels, n, generator=g, dtype=torch.float64)).to(dtype)
    weights = torch.randn(2, channels, n, generator=g, dtype=torch.float64).to(dtype)
    if fn == "compressor":
        values = dict(threshold_db=-22.0, ratio=5.0, knee_db=6.0, attack_ms=0.5, release_ms=8.0,
                      makeup_db=3.0, mix=0.9)
    else:
        values = dict(threshold_db=-12.0, ratio=3.0, knee_db=4.0, attack_ms=0.3, release_ms=5.0,
                      range_db=24.0, hold_ms=0.2)
    outs = []
    for backend in ("auto", "torch"):
        params = {k: torch.tensor(v, dtype=dtype, requires_grad=k != "hold_ms") for k, v in values.items()}
        inp = x.clone().requires_grad_(True)
        y = getattr(F, fn)(inp, SR, link=link, lookahead_ms=5.0, backend=backend, **params)
        wrt = [inp, *(p for p in params.values() if p.requires_grad)]
        outs.append((y, torch.autograd.grad((y * weights).sum(), wrt)))
    scale = x.abs().max()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=tol * scale)
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9 if dtype == torch.float64 else 2e-3,
                                   atol=1e-10 * max(float(b.abs().max()), 1.0) if dtype == torch.float64
                                   else 2e-3 * max(float(b.abs().max()), 1e-6))
    assert (outs[0][0] - x).abs().max() > 0.05 * scale, "the case does not actually process the signal"
