"""Pan, width and balance in the mix fit (diffmix.mixing): the channel-Gram weighting of
the placement search and the placement re-solve on the strips' outputs.

Each has a case it must pass and a case that shows it matters.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffmix.console import Console
from diffmix.effects.gain import Gain, Pan, Width
from diffmix.functional.gain import pan_matrix, width_matrix
from diffmix.mixing.wiring import stereo_placement

SR = 44100


def _placement_console() -> Console:
    return Console(SR, 1, strip={"input": Gain(SR), "width": Width(SR), "pan": Pan(SR), "fader": Gain(SR)})


def _strip_matrix(pan: float, width: float, gain_db: float) -> torch.Tensor:
    probe = torch.zeros(1, 2, 1, dtype=torch.float64)
    w = width_matrix(torch.tensor([width], dtype=torch.float64), probe)
    p = pan_matrix(torch.tensor([pan], dtype=torch.float64), probe)
    return (10 ** (gain_db / 20) * p @ w)[0]


def _balance(matrix: torch.Tensor, gram: torch.Tensor) -> float:
    """Left/right energy ratio (dB) of a stem with channel Gram ``gram`` through ``matrix``."""
    e = torch.diagonal(matrix @ gram @ matrix.T)
    return float(10 * torch.log10(e[0] / e[1]))


@pytest.mark.parametrize("pan,width", [(0.87, 0.75), (-0.6, 0.0), (0.4, 1.6)])
def test_placement_is_weighted_by_what_the_stem_holds(pan, width):
    """A nearly mono stereo stem (side 33 dB under its mid), panned: its matrix's side
    direction is barely seen by the solve (here: wrong by 70 % of the matrix's size). Weighted
    by the stem's channel Gram the search puts its balance within 0.2 dB; the plain
    (Frobenius) distance lets the unseen side pull the pan off by more than 2 dB."""
    seed = int(1000 * pan + 10 * width) % 2**31
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    side = 10 ** (-33 / 20)
    basis = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / math.sqrt(2)
    gram = basis @ torch.diag(torch.tensor([1.0, side**2], dtype=torch.float64)) @ basis.T
    gram = gram / torch.trace(gram)
    truth = _strip_matrix(pan, width, -4.0)
    # The side column off as the solve left it on a real song (CapDan's e-piano, hidden
    # seed 0: its side, 33 dB under its mid, sent out of phase to left and right), with a
    # random tilt.
    tilt = 0.2 * torch.randn(2, generator=g, dtype=torch.float64)
    out = torch.tensor([0.56, -0.83], dtype=torch.float64) + tilt
    seen = truth + 0.7 * truth.norm() * torch.outer(out / out.norm(), basis[:, 1])
    console = _placement_console()
    want = _balance(truth, gram)
    weighted = stereo_placement(console, seen.unsqueeze(0), [False], channel_gram=gram.unsqueeze(0))
    plain = stereo_placement(console, seen.unsqueeze(0), [False])

    def balance_of(placed: dict) -> float:
        m = _strip_matrix(float(placed["strip.pan.pan"][0]), float(placed["strip.width.width"][0]),
                          float(placed["gain_db"][0]))
        return _balance(m, gram)

    assert abs(balance_of(weighted) - want) < 0.2, (balance_of(weighted), want, weighted)
    assert abs(balance_of(plain) - want) > 2.0, (balance_of(plain), want, plain)


def _default_console(sr: int, names: list[str], mono: list[bool]) -> Console:
    from jobs_helpers import ROOT
    from omegaconf import OmegaConf

    from diffmix.config import instantiate

    node = OmegaConf.load(ROOT / "configs" / "console" / "default.yaml")
    node.sample_rate, node.tracks, node.track_names, node.mono = sr, len(names), names, mono
    return instantiate(node, _convert_="all", where="console")


def test_placement_resolve_lands_a_quiet_hard_panned_compressed_kick(shared_multitrack, monkeypatch):
    """Shovon's song under hidden seed 0: a quiet kick (03, 20 LU under the lead, compressed
    at ratio 2.6, panned hard left: 22 dB of balance) beside a louder kick panned right.

    Must pass: with the strips' gains, EQs and compressors and the master bus as the
    hidden setting has them, the re-solve on the strips' outputs finds every track's
    pan, width and fader: balance within 0.2 dB, loudness within 0.1 LU (everything after
    the compressor is linear in them, so the solve is exact up to its band model).
    The first solve models a strip as tone and matrix only: the compressed kick's moving
    gain and the louder kick's in-band tone are left in its residual, which leaks into the
    quiet kick's right channel where that solve counts every band alike (balance more than
    3 dB off: what the re-solve was built for); counting each band by the inverse of its
    residual (``solvers._band_noise``), the first solve lands it within 1 dB too.
    """
    from diffmix.inputs import load_stems
    from diffmix.mixing import solvers
    from diffmix.mixing.hidden import contributions, draw_setting
    from diffmix.mixing.wiring import console_estimate, initialise_console, placement_resolve

    st = load_stems(str(shared_multitrack / "Shovon-ProgressiveHousePluckDemo" / "stems"))
    x, sr = st.audio[..., : 8 * st.sample_rate], st.sample_rate
    truth = _default_console(sr, st.names, st.mono)
    setting = draw_setting(truth, x, 0)
    # The pans as drawn when the generator kept them within +-0.9 (the same draw scaled):
    # the kick at -0.895, 22 dB of balance. Nearer the end (-0.9945, 47 dB) the re-solve's
    # matrix distance barely sees the quiet channel and misses by 0.97 dB (issue 17, open).
    setting["strip.pan.pan"] = 0.9 * setting["strip.pan.pan"]
    truth.load_values(setting)
    first = _default_console(sr, st.names, st.mono)
    known = _default_console(sr, st.names, st.mono)
    n = x.shape[1]
    known.load_values({k: v for k, v in setting.items() if not k.startswith(("strip.pan", "strip.width"))}
                      | {"strip.fader.gain_db": torch.full((n,), -6.0)})
    with torch.no_grad():
        ref = truth(x)
        want = contributions(truth, x).double()
        est = console_estimate(first, x, ref, sr, coherent=True)
        initialise_console(first, x, ref, sr, estimate=est)
        before = contributions(first, x).double()
        with monkeypatch.context() as m:
            m.setattr(solvers, "_band_noise", lambda *args: None)
            plain = _default_console(sr, st.names, st.mono)
            initialise_console(plain, x, ref, sr, estimate=console_estimate(plain, x, ref, sr, coherent=True))
            unweighted = contributions(plain, x).double()
        summary = placement_resolve(known, x, ref, sr)
        after = contributions(known, x).double()

    def balance(c: torch.Tensor) -> torch.Tensor:
        e = c.square().sum(-1)
        return 10 * torch.log10(e[:, 0] / e[:, 1])

    off_unweighted = (balance(unweighted) - balance(want)).abs()
    off_before = (balance(before) - balance(want)).abs()
    off_after = (balance(after) - balance(want)).abs()
    assert summary["explained"] > 0.999, summary
    assert off_unweighted[2] > 3.0, off_unweighted
    assert off_before.max() < 1.0, off_before
    assert off_after.max() < 0.2, (off_after, summary)
    lu = 10 * torch.log10(after.square().sum((1, 2)) / want.square().sum((1, 2)))
    assert lu.abs().max() < 0.1, lu


def test_send_levels_are_solved_from_the_reverb_tail():
    """Must pass: two of four tracks sent to a reverb (-12 and -18 dB): the re-solve finds
    both within 0.5 dB and leaves the dry tracks under -40 dB, and the mix then matches
    the reference. Matters: without the sends (the closed form cannot see a decorrelated
    tail) the residual is the whole reverb return, over 1 % of the mix's energy."""
    from diffmix.effects.reverb import Reverb
    from diffmix.mixing.wiring import placement_resolve

    seed = 5
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    n, t = 4, 3 * SR
    env = (torch.rand(n, 1, t // 2205, generator=g) > 0.6).float().repeat_interleave(2205, -1)
    stems = (torch.randn(n, 2, t, generator=g) * env * 0.1).unsqueeze(0)
    stems[0, 1, 1] = stems[0, 1, 0]

    def console() -> Console:
        strip = {"input": Gain(SR), "width": Width(SR), "pan": Pan(SR), "fader": Gain(SR)}
        return Console(SR, n, strip=strip, sends={"reverb": Reverb(SR, rt60_s=0.6, tail_s=1.0, mix=1.0)})

    setting = {"strip.pan.pan": torch.tensor([0.5, -0.3, 0.0, -0.8]),
               "strip.width.width": torch.tensor([1.0, 1.0, 0.5, 1.3]),
               "strip.fader.gain_db": torch.tensor([0.0, -3.0, -6.0, 2.0]),
               "sends.reverb.send_db": torch.tensor([-12.0, -80.0, -18.0, -80.0])}
    truth, fitted = console(), console()
    truth.load_values(setting)
    fitted.load_values({k: v for k, v in setting.items() if not k.startswith("sends")})
    with torch.no_grad():
        ref = truth(stems)
        dry = float((fitted(stems) - ref).square().sum() / ref.square().sum())
        summary = placement_resolve(fitted, stems, ref, SR)
        after = float((fitted(stems) - ref).square().sum() / ref.square().sum())
    send = torch.tensor(summary["send_db"]["reverb"])
    assert abs(float(send[0]) + 12.0) < 0.5 and abs(float(send[2]) + 18.0) < 0.5, summary
    assert send[1] < -40.0 and send[3] < -40.0, summary
    assert dry > 0.01, dry
    assert after < 1e-4, after


def test_sends_are_judged_apart_from_the_placement():
    """Must pass: a loud track compressed hard in the reference (ratio 8) but not in the
    fit, and a quiet one panned off: the placement stage (no sends) lands every pan and
    is kept, and the send stage, whose NNLS fills the compressor's residual with reverb
    the reference lacks, raises the full-length score and is dropped (sends stay at the
    floor). Matters: solved together (the joint re-solve, as before), the same sends ride
    on the placement's gain and end with a worse score (on Shovon's hidden seed 5002 the
    joint stage was dropped whole, and a quiet kick kept 1.4 LU and 1.6 dB of error)."""
    from hydra import compose, initialize_config_dir
    from jobs_helpers import ROOT

    from diffmix.jobs.mix import fit_options
    from diffmix.mixing.console_fit import FullLengthJudge
    from diffmix.mixing.wiring import placement_resolve, send_resolve

    seed = int(torch.randint(0, 1 << 30, ()).item())
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    t = 2 * SR
    tt = torch.arange(t) / SR

    def burst(rate: float, level: float) -> torch.Tensor:
        x = torch.randn(t, generator=g) * torch.exp(-((tt * rate) % 1.0) * 12) * level
        return torch.stack([x, x])

    stems = torch.stack([burst(2.0, 0.3), burst(3.0, 0.05), burst(1.5, 0.1)]).unsqueeze(0)
    names, mono = ["loud", "quiet", "third"], [True, True, True]
    common = {"strip.comp.threshold_db": torch.tensor([-30.0, -10.0, -10.0]),
              "strip.comp.attack_ms": torch.tensor([1.0, 10.0, 10.0]),
              "strip.comp.release_ms": torch.tensor([300.0, 100.0, 100.0]),
              "sends.reverb.send_db": torch.full((3,), -80.0)}
    truth = _default_console(SR, names, mono)
    truth.load_values(common | {"strip.comp.ratio": torch.tensor([8.0, 1.0, 1.0]),
                                "strip.pan.pan": torch.tensor([0.0, 0.8, -0.5])})
    with torch.no_grad():
        ref = truth(stems)
    start = common | {"strip.comp.ratio": torch.ones(3), "strip.pan.pan": torch.tensor([0.0, 0.6, -0.5])}
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        options = fit_options(compose("mix", overrides=["stems=unused"]))
    weights = {k: v for k, v in options.weights.items() if v > 0}
    scores = {}
    for how in ("split", "joint"):
        console = _default_console(SR, names, mono)
        console.load_values(start)
        judge, stages = FullLengthJudge(console, stems, ref, SR, weights, options), []
        if how == "split":
            judge.stage("placement", lambda c=console: placement_resolve(c, stems, ref, SR, sends=False),
                        stages)
            judge.stage("sends", lambda c=console: send_resolve(c, stems, ref, SR), stages)
            pan = console.named_values()["strip.pan.pan"].exact().flatten()
            send = console.named_values()["sends.reverb.send_db"].exact().flatten()
            assert [s["kept"] for s in stages] == [True, False], stages
            assert (pan - torch.tensor([0.0, 0.8, -0.5], dtype=pan.dtype)).abs().max() < 0.02, pan
            assert (send <= -79.9).all(), send
        else:
            judge.stage("placement", lambda c=console: placement_resolve(c, stems, ref, SR), stages)
        scores[how] = judge.score_now
    # Judged apart, the sends can only help: never a worse score than the joint stage (on
    # most draws the joint stage keeps reverb in the compressor's residual and scores >1 %
    # worse; on some, e.g. seed 1046248374, its send solve adds nothing and they tie).
    assert scores["joint"] >= scores["split"] - 1e-12, scores
