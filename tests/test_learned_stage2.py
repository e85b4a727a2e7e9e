"""Stage 2 of learned mastering (issue 21): the pseudo-unmastered input does what it says,
the chain driven by a prediction is the chain set to it (with a gradient to the model),
and ``diffmix train stage2.steps=...`` lowers the objective on held-out synthetic audio."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffmix.console import Bus
from diffmix.effects.dynamics import Compressor, set_exact
from diffmix.effects.eq import ParametricEQ
from diffmix.effects.gain import Width
from diffmix.functional.eq import parametric_eq
from diffmix.functional.gain import mid_side
from diffmix.functional.match_eq import band_levels_db, match_centres
from diffmix.learned import tensorfile
from diffmix.learned.checkpoint import load_checkpoint
from diffmix.learned.stage2 import pseudo_unmastered, render
from tests.jobs_helpers import ROOT, music, run_cli
from tests.test_learned import ONE_THREAD, TINY, corpus, trained  # noqa: F401 - shared fixtures

SEED = 777
SR = 44100


def _shape_residual(x: torch.Tensor) -> torch.Tensor:
    """RMS (dB) of each item's mid third-octave levels about their least-squares tilt."""
    c = match_centres(SR)
    lv = band_levels_db(x, SR, c)[:, 0].double()
    a = torch.stack([torch.ones(c.numel()), torch.log2(c)], -1).double()
    fit = (a @ torch.linalg.pinv(a) @ lv.T).T
    return (lv - fit).square().mean(-1).sqrt()


def test_pseudo_unmastered_flattens_expands_and_narrows() -> None:
    print(f"seed {SEED}")
    x = torch.from_numpy(music(3.0, seed=SEED, level=0.3).T.copy())[None].repeat(3, 1, 1)
    none = torch.zeros(3, dtype=torch.float64)
    one = torch.ones(3, dtype=torch.float64)
    # Nothing asked: nothing done (to the match EQ's rounding).
    same = pseudo_unmastered(x, SR, flatten=none, expand=none, width=one)
    assert torch.allclose(same, x, atol=1e-5 * float(x.abs().max()))
    # Width: the side/mid energy ratio falls by width² exactly (the width law).
    w = torch.tensor([1.0, 0.7, 0.4], dtype=torch.float64)
    y = pseudo_unmastered(x, SR, flatten=none, expand=none, width=w)
    ratio = lambda s: mid_side(s)[:, 1].square().sum(-1) / mid_side(s)[:, 0].square().sum(-1)  # noqa: E731
    assert torch.allclose(ratio(y) / ratio(x), w.float() ** 2, rtol=1e-3)
    # Tone: noise given a known shape (two bells and a shelf, well inside the +-12 dB the
    # flattening may use) keeps 1 - flatten of its shape about the tilt.
    g = torch.Generator().manual_seed(SEED)
    noise = torch.randn(1, 2, 3 * SR, generator=g) * 0.1
    shaped = parametric_eq(noise, SR, bands=["peak", "peak", "high_shelf"], freq_hz=[200.0, 2500.0, 8000.0],
                           gain_db=[6.0, -5.0, 4.0], q=[0.7, 1.0, 0.7])
    y = pseudo_unmastered(shaped.repeat(3, 1, 1), SR, flatten=torch.tensor([0.0, 0.5, 1.0]), expand=none,
                          width=one)
    r = _shape_residual(y) / _shape_residual(shaped)
    assert float(r[0]) == pytest.approx(1.0, abs=1e-3) and abs(float(r[1]) - 0.5) < 0.05 and r[2] < 0.1, r
    # Dynamics: the spread of the 50 ms levels grows with the expansion.
    y = pseudo_unmastered(x, SR, flatten=none, expand=torch.tensor([0.0, 0.25, 0.5]), width=one)
    frames = torch.nn.functional.avg_pool1d(y.square().mean(1, keepdim=True), 2205, 441)
    db = 10 * torch.log10(frames.clamp_min(1e-10))[:, 0]
    spread = db.quantile(0.9, -1) - db.quantile(0.1, -1)
    assert spread[1] > 1.15 * spread[0] and spread[2] > 1.15 * spread[1], spread


def test_render_with_values_is_the_chain_set_to_them() -> None:
    g = torch.Generator().manual_seed(SEED)
    print(f"seed {SEED}")
    effects = {"eq": ParametricEQ(SR, bands=["low_shelf", "peak"], freq_hz=[100.0, 2000.0]),
               "comp": Compressor(SR), "width": Width(SR)}
    bus = Bus(SR, effects, items=2)
    set_exact(bus, False)
    values = {"eq.gain_db": (torch.rand(2, 2, generator=g, dtype=torch.float64) * 12 - 6).requires_grad_(),
              "comp.ratio": (1 + 3 * torch.rand(2, generator=g, dtype=torch.float64)).requires_grad_(),
              "width.width": (0.5 + torch.rand(2, generator=g, dtype=torch.float64)).requires_grad_()}
    x = torch.randn(2, 2, 8000, generator=g) * 0.3
    y = render(bus, values, x, until=None)
    y.square().sum().backward()
    assert all(v.grad is not None and bool(v.grad.abs().sum() > 0) for v in values.values())
    bus.load_values({k: v.detach() for k, v in values.items()})
    with torch.no_grad():
        want = bus(x)
    y = y.detach()
    assert torch.allclose(y, want, atol=1e-5 * float(want.abs().max())), float((y - want).abs().max())


STAGE2 = ["stage2.steps=12", "stage2.batch_size=4", "stage2.excerpt_s=1.0", "stage2.val_every=6",
          "stage2.val_items=4", "stage2.lr=1e-3", "checkpoint_every=4"]


def _after_stage1(stage1: Path, songs: Path, out: Path) -> list[str]:
    """The train command for ``out``, where stage 1 is the run ``stage1``'s (its examples
    and final state are copied: it is not redone)."""
    out.mkdir(exist_ok=True)
    for name in ("dataset.safetensors", "state.safetensors", "log.jsonl"):
        shutil.copy(stage1 / name, out / name)
    return ["train", f"corpus={songs / 'manifest.csv'}", f"out={out}", *TINY, *STAGE2]


@pytest.fixture(scope="module")
def stage2(corpus: Path, trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("stage2")
    r = run_cli(*_after_stage1(trained, corpus, out), cwd=out, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_stage2_lowers_the_objective_on_held_out_audio(stage2: Path, trained: Path) -> None:  # noqa: F811
    tmp_path = stage2
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    stage1 = [x for x in log if "stage" not in x]
    assert len([x for x in stage1 if "loss" in x]) == 200  # stage 1's log kept, not redone
    val = [x["val2/loss"] for x in log if "val2/loss" in x]
    train = [x["loss2"] for x in log if "loss2" in x]
    assert len(val) == 3 and len(train) == 12 and [x["step"] for x in log] == sorted(x["step"] for x in log)
    assert val[-1] < 0.8 * val[0], val  # the objective on the held-out song falls
    assert sum(train[-4:]) < 0.8 * sum(train[:4]), train
    info = load_checkpoint(tmp_path / "model.safetensors").info
    s2 = info["validation"]["stage2"]
    assert s2["start"] == pytest.approx(val[0], rel=1e-5) and s2["loss"] == pytest.approx(min(val), rel=1e-5)
    assert info["training"]["stage2"]["steps"] == 12 and "tone_mid" in info["training"]["loss"]["weights"]
    # The checkpoint holds stage 2's weights, not stage 1's.
    a, _ = tensorfile.load(trained / "model.safetensors")
    b, _ = tensorfile.load(tmp_path / "model.safetensors")
    assert not torch.equal(a["net.0.weight"], b["net.0.weight"])


def test_a_killed_stage2_run_resumes_to_the_same_weights(
    corpus: Path, trained: Path, stage2: Path, tmp_path: Path  # noqa: F811 - fixtures
) -> None:
    args = _after_stage1(trained, corpus, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **ONE_THREAD}
    proc = subprocess.Popen([sys.executable, "-m", "diffmix.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "state2.safetensors"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run ended before stage 2 wrote its first state"
    killed_at = json.loads(tensorfile.load(state)[1]["state"])["step"]
    assert killed_at < 12 and not (tmp_path / "model.safetensors").exists()
    r = run_cli(*args, cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    a, _ = tensorfile.load(stage2 / "model.safetensors")
    b, _ = tensorfile.load(tmp_path / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), f"killed at stage-2 step {killed_at}"
    log_a = (stage2 / "log.jsonl").read_text()
    assert (tmp_path / "log.jsonl").read_text() == log_a  # each step logged once, the same values


def test_stage2_as_at_use_is_the_learned_start_of_a_master() -> None:
    """With a match EQ, what stage 2 trains on (:func:`as_at_use`, :func:`pool_losses`) is
    the objective of the very start ``fit.init=learned`` gives the master chain (the match EQ's
    closed form, the EQ at its start, the width folded, the predicted compressor)."""
    from diffmix.effects.match_eq import MatchEQ
    from diffmix.learned.features import names
    from diffmix.learned.model import Predictor
    from diffmix.learned.predict import heads_for, learned_start
    from diffmix.learned.stage2 import as_at_use, pool_losses
    from diffmix.mastering.chain import MATCH
    from diffmix.objective import Objective

    print(f"seed {SEED}")
    g = torch.Generator().manual_seed(SEED)

    def effects(match: bool) -> dict:
        out = {"eq": ParametricEQ(SR, bands=["low_shelf", "peak"], freq_hz=[100.0, 2000.0], stereo="ms"),
               "comp": Compressor(SR), "width": Width(SR)}
        return {MATCH: MatchEQ(SR), **out} if match else out

    heads = heads_for(Bus(SR, effects(False)), ["eq.*", "comp.*", "width.*"],
                      {"eq.gain_db": [-6, 6], "comp.threshold_db": [-40, -4], "comp.ratio": [1, 8],
                       "comp.attack_ms": [1, 80], "width.width": [0.6, 1.6]})
    model = Predictor(len(names(SR)), heads, (16,))
    with torch.no_grad():  # a model that predicts something else than the start, item by item
        model.net[-1].weight.copy_(torch.randn(model.net[-1].weight.shape, generator=g) * 0.5)
    model.eval()
    x = torch.stack([torch.from_numpy(music(3.0, seed=SEED + i, level=0.1 + 0.3 * i).T.copy())
                     for i in range(2)])
    ref = torch.stack([torch.from_numpy(music(3.0, seed=SEED + 9 + i, level=0.4).T.copy()) for i in range(2)])
    ref = ref * torch.tensor([1.0, 0.6]).view(2, 1, 1) + 0.1 * ref.flip(1)  # another width and level
    weights = {"tone_mid": 1.0, "tone_side": 0.3, "width": 0.5, "dynamics": 0.2}
    at_use = Bus(SR, effects(True), items=2)
    set_exact(at_use, False)
    pool = as_at_use(at_use, x, ref, weights, -1.0)
    objective = Objective(SR, weights, reference=ref[:1])
    got = pool_losses(model, Bus(SR, effects(False), items=2), pool, torch.arange(2), objective, ["comp.*"])
    master = Bus(SR, effects(True), items=2)
    learned_start(model)(master, [x[:1], x[1:]], [ref[:1], ref[1:]], {"lufs": None, "true_peak_db": -1.0})
    set_exact(master, False)
    with torch.no_grad():
        want = Objective(SR, weights, reference=[ref[:1], ref[1:]])(master(x))[0]
    assert torch.allclose(got.detach().double(), want.double(), rtol=1e-4), (got, want)
    # and the compressor the loss sees is the prediction, not the start
    threshold = master.named_values()["comp.threshold_db"].exact()
    assert not torch.allclose(threshold, torch.tensor(-12.0).double()), threshold


def test_regression_keep_leaves_the_masked_heads_out() -> None:
    """Stage 2's regression term with ``keep``: a masked entry's target moves nothing, and
    with every entry kept the loss is stage 1's."""
    from diffmix.learned.model import Predictor
    from diffmix.learned.predict import heads_for
    from diffmix.learned.train import loss_scales, regression_loss

    print(f"seed {SEED}")
    g = torch.Generator().manual_seed(SEED)
    prior = {"comp.threshold_db": [-40, -4], "comp.ratio": [1, 8], "width.width": [0.6, 1.6]}
    heads = heads_for(Bus(SR, {"comp": Compressor(SR), "width": Width(SR)}), ["comp.*", "width.*"], prior)
    model = Predictor(5, heads, (8,))
    x = torch.randn(6, 5, generator=g)
    y = torch.stack([torch.tensor(h.output_range()).double().mean().expand(6) for h in heads], -1)
    scales = loss_scales(heads, prior)
    keep = torch.tensor([0.0 if h.key.startswith("comp.") else 1.0 for h in heads])
    moved = y.clone()
    moved[:, keep == 0] += 3.0  # other compressor targets
    moved[:, 1] = moved[:, 1].clamp(1.0, 8.0)
    a, b = regression_loss(model, x, y, scales, keep)[0], regression_loss(model, x, moved, scales, keep)[0]
    assert torch.equal(a, b) and float(a.detach()) > 0
    full = regression_loss(model, x, y, scales)[0]
    assert torch.allclose(regression_loss(model, x, y, scales, torch.ones(len(heads)))[0], full)
    assert not torch.allclose(regression_loss(model, x, moved, scales)[0], full)


def test_stage2_as_at_use_through_the_cli_trains_only_the_named_heads(
    corpus: Path, trained: Path, tmp_path: Path  # noqa: F811 - fixtures
) -> None:
    """``stage2.match_eq`` and ``stage2.trained`` reach the loop: a short run logs its steps
    and validations and records its options, and with the regression off the heads it
    doesn't train get no gradient: their rows of the last layer move by AdamW's decay alone
    (the bare mode would train them all)."""
    lr, wd, steps = 1e-3, 1e-2, 3
    args = _after_stage1(trained, corpus, tmp_path)
    args += [f"stage2.steps={steps}", "stage2.pool=4", "stage2.batch_size=2", "stage2.val_items=2",
             "stage2.val_every=1", "stage2.regression=0", f"stage2.lr={lr}", f"stage2.weight_decay={wd}",
             "stage2.trained=[comp.*]",
             "stage2.match_eq={_target_:diffmix.effects.match_eq.MatchEQ,sample_rate:44100,bands_per_octave:3}"]
    r = run_cli(*args, cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len([x for x in log if "loss2" in x]) == steps
    assert len([x for x in log if "val2/loss" in x]) == steps + 1
    ck = load_checkpoint(tmp_path / "model.safetensors")
    s2 = ck.info["training"]["stage2"]
    assert s2["trained"] == ["comp.*"] and s2["match_eq"]["_target_"].endswith("MatchEQ")
    a, _ = tensorfile.load(trained / "model.safetensors")
    b, _ = tensorfile.load(tmp_path / "model.safetensors")
    layers = [k for k in a if k.startswith("net.") and k.endswith(".weight")]
    last = max(layers, key=lambda k: int(k.split(".")[1]))
    comp = torch.tensor([h.key.startswith("comp.") for h in ck.heads for _ in range(h.size)])
    moved = (a[last] - b[last]).abs()
    decay = steps * lr * wd * float(a[last].abs().max()) * 1.01 + 1e-7
    assert float(moved[~comp].max()) <= decay, (float(moved[~comp].max()), decay)
    if ck.info["validation"]["stage2"]["step"] > 0:  # the kept weights are stage 2's
        assert float(moved[comp].max()) > 10 * decay


def test_cross_song_items_take_the_reference_from_another_song() -> None:
    """``cross_song``: every reference is half A of a song other than its input's, and the
    inputs are those drawn without it (the other song is drawn after them)."""
    from diffmix.learned.stage2 import draw_items

    print(f"seed {SEED}")
    # song k: a steady tone whose level names it (k + 1) / 10, so an excerpt tells its song
    t = torch.arange(4 * 4410) / 4410.0
    songs = [((k + 1) / 10 * torch.sin(2 * torch.pi * 50 * t)).expand(2, -1).contiguous() for k in range(4)]
    opts = dict(seed=SEED, step=0, tag="t", length=4410, input_gain_db=[0.0, 0.0], flatten=[0.0, 0.0],
                expand=[0.0, 0.0], width=[1.0, 1.0], sample_rate=4410)
    rows = list(range(24))
    ins, refs = draw_items(songs, rows, cross_song=True, **opts)
    same_ins, same_refs = draw_items(songs, rows, **opts)
    level = lambda x: torch.round(x.abs().amax(-1)[:, 0] * 10)  # noqa: E731
    assert torch.allclose(ins, same_ins)
    assert torch.equal(level(same_refs), level(same_ins))  # halves of one song
    assert bool((level(refs) != level(ins)).all()) and len(set(level(refs).tolist())) > 2
