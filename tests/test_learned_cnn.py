"""The mel-spectrogram CNN predictor (``diffmix train predictor=cnn``, issue 21): its heads
stay in range, a tiny run trains and its checkpoint round-trips bit-exactly, it predicts
for a song as the MLP does (features plus its spectrograms), and a checkpoint of one kind is
refused as the other in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffmix.errors import UserError
from diffmix.learned.checkpoint import load_checkpoint, save_checkpoint
from diffmix.learned.model import MEL_CHANNELS, MelCNN, Predictor
from tests.jobs_helpers import ROOT, music, run_cli
from tests.test_learned import ONE_THREAD, SEED, _bits, _heads, corpus  # noqa: F401 - a fixture

MEL = {"bands": 12, "frames": 10, "n_fft": 1024, "seconds": 1.5}


def test_cnn_predictions_stay_in_range_and_start_at_the_start() -> None:
    torch.manual_seed(SEED)
    print(f"seed {SEED}")
    model = MelCNN(10, _heads(), [16], mel=MEL, channels=[4, 8])
    n = 10 + MEL_CHANNELS * MEL["bands"] * MEL["frames"]
    v = model.values(model(torch.randn(4, n)))  # untrained: exactly the start
    assert torch.allclose(v["comp.ratio"], torch.full((4,), 1.5, dtype=torch.float64), rtol=1e-5)
    with torch.no_grad():  # any weights, any inputs: inside each range
        for p in model.parameters():
            p.normal_(0.0, 50.0)
        v = model.values(model(torch.randn(64, n) * 1e4))
    for h in model.heads:
        lo, hi = h.range if h.range is not None else (min(h.start), max(h.start))
        assert bool(((v[h.key] >= lo) & (v[h.key] <= hi)).all()), h.key
    # The spectrograms matter: change them alone and the prediction moves.
    x = torch.randn(2, n)
    y = x.clone()
    y[:, 10:] += 1.0
    assert not torch.allclose(model(x), model(y))


TINY_CNN = [
    "predictor=cnn", "model.hidden=[32]", "model.channels=[8,16]", "model.mel.bands=16",
    "model.mel.frames=16", "model.mel.n_fft=1024", "data.examples=32", "data.val_examples=16",
    "data.per_excerpt=4", "data.excerpt_s=1.5", "data.max_song_s=4", "stage1.batch_size=16",
    "stage1.lr=3e-3", "stage1.epochs=30", "progress=false", f"seed={SEED}",
]


@pytest.fixture(scope="module")
def cnn_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("train_cnn")
    r = run_cli("train", f"corpus={corpus / 'manifest.csv'}", f"out={out}", *TINY_CNN, cwd=out,
                env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_cnn_trains_and_its_checkpoint_round_trips(cnn_run: Path, tmp_path: Path) -> None:
    log = [json.loads(line) for line in (cnn_run / "log.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in log if "loss" in r]
    assert len(train) == 60 and np.mean(train[-10:]) < 0.7 * np.mean(train[:10]), (train[:10], train[-10:])
    model = load_checkpoint(cnn_run / "model.safetensors", kind="cnn")
    assert isinstance(model, MelCNN) and model.info["model"]["kind"] == "cnn"
    assert model.info["model"]["mel"] == {"bands": 16, "frames": 16, "n_fft": 1024, "seconds": 1.5}
    assert model.weight_count() == model.info["model"]["weights"]
    assert any(k.startswith("encoder.") for k in model.state_dict())
    # Saved again from what was loaded: the same bytes, so the same bits.
    save_checkpoint(tmp_path / "again.safetensors", model, model.info)
    assert (tmp_path / "again.safetensors").read_bytes() == (cnn_run / "model.safetensors").read_bytes()
    back = load_checkpoint(tmp_path / "again.safetensors")
    a, b = model.state_dict(), back.state_dict()
    assert set(a) == set(b) and all(torch.equal(_bits(a[k]), _bits(b[k])) for k in a)


def test_a_checkpoint_of_one_kind_is_refused_as_the_other(cnn_run: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"model kind cnn, expected mlp") as e:
        load_checkpoint(cnn_run / "model.safetensors", kind="mlp")
    assert len(str(e.value).splitlines()) == 1
    save_checkpoint(tmp_path / "mlp.safetensors", Predictor(10, _heads(), [16]), {})
    with pytest.raises(UserError, match=r"model kind mlp, expected cnn"):
        load_checkpoint(tmp_path / "mlp.safetensors", kind="cnn")
    assert type(load_checkpoint(tmp_path / "mlp.safetensors")) is Predictor  # no kind asked: its own
    assert type(load_checkpoint(cnn_run / "model.safetensors")) is MelCNN


def test_cnn_predicts_for_a_song_with_and_without_a_reference(cnn_run: Path) -> None:
    from hydra import compose, initialize_config_dir

    from diffmix.jobs.train import _chain_maker
    from diffmix.learned.predict import apply_prediction

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["corpus=x"])
    model = load_checkpoint(cnn_run / "model.safetensors")
    song = torch.from_numpy(music(5.0, seed=11, level=0.1).T.copy())[None]
    ref = torch.from_numpy(music(4.0, seed=12, level=0.3).T.copy())[None]
    got = []
    for refs in (None, [ref]):
        chain = _chain_maker(cfg, 44100)(1)
        values = apply_prediction(chain, [song], refs, {"lufs": -14.0, "true_peak_db": -1.0}, model)
        assert {h.key for h in model.heads} == set(values)
        for h in model.heads:
            lo, hi = h.output_range()
            assert bool(((values[h.key] >= lo - 1e-9) & (values[h.key] <= hi + 1e-9)).all()), h.key
            assert torch.equal(chain.named_values()[h.key].exact(), values[h.key])  # the chain holds them
        got.append(values)
    assert any(not torch.equal(got[0][k], got[1][k]) for k in got[0])  # the reference counts
