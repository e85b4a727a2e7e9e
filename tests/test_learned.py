"""Learned mastering settings (issue 21): the safetensors reader/writer, the predictor's
ranges, a tiny ``diffmix train`` run through the real CLI (the loss falls, a SIGKILLed run
resumes to the same weights, the checkpoint round-trips bit-exactly), a mismatched or
malformed checkpoint is refused, and ``diffmix master fit.init=learned fit.steps=0`` masters
from the prediction."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffmix.errors import UserError
from diffmix.learned import tensorfile
from diffmix.learned.checkpoint import check_chain, load_checkpoint, save_checkpoint
from diffmix.learned.model import Head, Predictor
from diffmix.params import ParamSpec
from tests.jobs_helpers import ROOT, music, run_cli, write

SEED = 2112


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as integers, so NaN payloads and -0.0 compare too."""
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    return t.contiguous().reshape(-1).view(torch.uint8)


def _random_tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    print(f"seed {seed}")
    out = {
        "f64": torch.randn(3, 5, generator=g, dtype=torch.float64),
        "f32": torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, 3.4e38]),
        "f16": torch.randn(7, generator=g).half(),
        "i64": torch.randint(-(2**62), 2**62, (4, 2), generator=g),
        "i32": torch.randint(-(2**31), 2**31 - 1, (6,), generator=g, dtype=torch.int32),
        "u8": torch.randint(0, 256, (9,), generator=g, dtype=torch.uint8),
        "bool": torch.rand(5, generator=g) > 0.5,
        "scalar": torch.tensor(3.25, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(4, 6, generator=g)[:, ::2],
    }
    return out


def test_tensorfile_round_trips_bit_exactly(tmp_path: Path) -> None:
    tensors = _random_tensors(SEED)
    meta = {"a": "1", "json": json.dumps({"x": [1, 2]})}
    tensorfile.save(tmp_path / "t.safetensors", tensors, meta)
    back, meta_back = tensorfile.load(tmp_path / "t.safetensors")
    assert meta_back == meta and set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert torch.equal(_bits(back[k]), _bits(v)), k
    tensorfile.save(tmp_path / "u.safetensors", tensors, meta)  # same input, same bytes
    assert (tmp_path / "t.safetensors").read_bytes() == (tmp_path / "u.safetensors").read_bytes()


def test_tensorfile_reads_a_file_built_from_the_format_spec(tmp_path: Path) -> None:
    # Built by hand, as the format's README lays it out: u64 LE header size, JSON, raw LE bytes.
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.array([-1, 7], dtype="<i8")
    header = {"b": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]},
              "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [16, 40]},
              "__metadata__": {"k": "v"}}
    raw = json.dumps(header).encode()
    (tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b.tobytes() + a.tobytes())
    t, meta = tensorfile.load(tmp_path / "h.safetensors")
    assert meta == {"k": "v"}
    assert torch.equal(t["a"], torch.from_numpy(a)) and torch.equal(t["b"], torch.from_numpy(b))
    # And what we write puts the header length first and aligns the data to 8 bytes.
    tensorfile.save(tmp_path / "w.safetensors", {"a": torch.from_numpy(a)})
    data = (tmp_path / "w.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    assert n % 8 == 0 and data[8 + n :] == a.tobytes()


def test_tensorfile_agrees_with_the_safetensors_package(tmp_path: Path) -> None:
    import safetensors.torch as st  # the format's reference implementation (a test extra)

    tensors = {k: v.contiguous() for k, v in _random_tensors(SEED + 1).items() if k != "empty"}
    tensorfile.save(tmp_path / "ours.safetensors", tensors)
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    assert all(torch.equal(_bits(theirs[k]), _bits(v)) for k, v in tensors.items())
    st.save_file(tensors, str(tmp_path / "theirs.safetensors"))
    ours, _ = tensorfile.load(tmp_path / "theirs.safetensors")
    assert all(torch.equal(_bits(ours[k]), _bits(v)) for k, v in tensors.items())


@pytest.mark.parametrize("payload", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00not json", b"\xff" * 8 + b"{}"])
def test_tensorfile_refuses_malformed_files(tmp_path: Path, payload: bytes) -> None:
    (tmp_path / "bad.safetensors").write_bytes(payload)
    with pytest.raises(tensorfile.TensorFileError, match="bad.safetensors"):
        tensorfile.load(tmp_path / "bad.safetensors")


def _heads() -> list[Head]:
    return [
        Head("eq.gain_db", (3,), ParamSpec("gain_db", -24.0, 24.0, 0.0), (0.0, 0.0, 0.0), (-6.0, 6.0)),
        Head("comp.ratio", (), ParamSpec("ratio", 1.0, 100.0, 4.0, scale="log"), (1.5,), (1.0, 4.0)),
        Head("width.width", (), ParamSpec("width", 0.0, 4.0, 1.0), (1.0,), (0.6, 1.6)),
        Head("eq.q", (3,), ParamSpec("q", 0.1, 10.0, 0.7, scale="log"), (0.7, 0.8, 0.9)),  # fixed
    ]


def test_predictions_stay_in_range_and_start_at_the_start() -> None:
    torch.manual_seed(SEED)
    print(f"seed {SEED}")
    model = Predictor(10, _heads(), [16])
    # Untrained: exactly the configured start (to the logit/sigmoid round trip).
    v = model.values(model(torch.randn(4, 10)))
    assert torch.allclose(v["comp.ratio"], torch.full((4,), 1.5, dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(v["eq.gain_db"], torch.zeros(4, 3, dtype=torch.float64), atol=1e-4)
    # Any weights, any features: every value inside its training range (inside its
    # ParamSpec), both ends reached; a head without a range stays at its start.
    with torch.no_grad():
        for p in model.net.parameters():
            p.normal_(0.0, 50.0)
    with torch.no_grad():
        v = model.values(model(torch.randn(64, 10, dtype=torch.float32) * 1e4))
    for h in model.heads:
        lo, hi = h.range if h.range is not None else (min(h.start), max(h.start))
        assert h.spec.min <= lo and hi <= h.spec.max
        assert bool(((v[h.key] >= lo) & (v[h.key] <= hi)).all()), h.key
    assert torch.equal(v["eq.q"], torch.tensor([0.7, 0.8, 0.9], dtype=torch.float64).expand(64, 3))
    assert float(v["comp.ratio"].min()) == 1.0 and float(v["comp.ratio"].max()) == pytest.approx(4.0)


def test_checkpoint_round_trips_and_refuses_a_mismatch(tmp_path: Path) -> None:
    from diffmix.console import Bus
    from diffmix.effects.dynamics import Compressor
    from diffmix.effects.eq import ParametricEQ
    from diffmix.effects.gain import Width

    torch.manual_seed(SEED)
    model = Predictor(10, _heads(), [16], mean=torch.randn(10), std=torch.rand(10) + 0.5)
    save_checkpoint(tmp_path / "m.safetensors", model, {"effects": {}, "validation": {"loss": 0.5}})
    back = load_checkpoint(tmp_path / "m.safetensors")
    a, b = model.state_dict(), back.state_dict()
    assert set(a) == set(b) and all(torch.equal(_bits(a[k]), _bits(b[k])) for k in a)
    assert back.info["validation"] == {"loss": 0.5} and back.heads == model.heads

    def chain(bands: list[str]) -> Bus:
        sr = 44100
        effects = {"eq": ParametricEQ(sr, bands=bands, freq_hz=[100.0 * (i + 1) for i in range(len(bands))]),
                   "comp": Compressor(sr), "width": Width(sr)}
        return Bus(sr, effects)

    check_chain(back, chain(["peak", "peak", "peak"]))  # matches: no error
    with pytest.raises(UserError, match=r"eq.gain_db with shape \[3\], the chain has \[4\]"):
        check_chain(back, chain(["peak"] * 4))
    spec = ParamSpec("gain_db", -48.0, 48.0, 0.0)
    wide = Predictor(10, [Head("eq.gain_db", (3,), spec, (0.0,) * 3, (-30.0, 30.0))])
    message = r"eq.gain_db in \[-30, 30\] \(linear\), outside the chain's range \[-24, 24\]"
    with pytest.raises(UserError, match=message):
        check_chain(wide, chain(["peak", "peak", "peak"]))
    with pytest.raises(UserError, match="predicts width.width, which the mastering chain does not have"):
        check_chain(back, Bus(44100, {"eq": ParametricEQ(44100, bands=["peak"] * 3, freq_hz=[1e2, 1e3, 5e3]),
                                      "comp": Compressor(44100)}))


def test_a_pickle_or_foreign_file_is_refused_without_running_it(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):  # noqa: ANN204 - would run on unpickling
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"x": Boom()}, tmp_path / "evil.safetensors")
    with pytest.raises(UserError, match="not a usable diffmix learned-mastering checkpoint"):
        load_checkpoint(tmp_path / "evil.safetensors")
    assert not (tmp_path / "pwned").exists()
    tensorfile.save(tmp_path / "other.safetensors", {"w": torch.zeros(2)}, {"format": "x"})
    with pytest.raises(UserError, match="other.safetensors"):
        load_checkpoint(tmp_path / "other.safetensors")


# --- a tiny training run through the real CLI -------------------------------------------
TINY = [
    "data.examples=32", "data.val_examples=16", "data.per_excerpt=4", "data.excerpt_s=1.5",
    "data.max_song_s=4", "model.hidden=[32]", "stage1.batch_size=16", "stage1.lr=3e-3",
    "progress=false", f"seed={SEED}", "stage1.epochs=100", "checkpoint_every=20",
]
STEPS = 200  # 100 epochs of 2 batches
# One thread for torch and numba: on a busy 2-core machine a second numba worker only waits.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(3):  # three songs of 4 s at different levels and colours
        audio = music(4.0, seed=i, level=0.1 + 0.15 * i)
        write(root / f"song{i}.wav", audio)
    (root / "manifest.csv").write_text(
        "path,source,licence\n" + "".join(f"song{i}.wav,synthetic (tests),CC0-1.0\n" for i in range(3)))
    return root


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train_a")
    r = run_cli("train", f"corpus={corpus / 'manifest.csv'}", f"out={out}", *TINY, cwd=out, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_train_loss_falls(trained: Path) -> None:
    log = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    val = [r["val/loss"] for r in log if "val/loss" in r]
    train = [r["loss"] for r in log if "loss" in r]
    assert len(val) == STEPS // 2 and len(train) == STEPS
    assert np.mean(train[-20:]) < 0.5 * np.mean(train[:20]), (train[:20], train[-20:])
    info = load_checkpoint(trained / "model.safetensors").info
    assert {f["licence"] for f in info["corpus"]["files"]} == {"CC0-1.0"}
    assert {f["split"] for f in info["corpus"]["files"]} == {"train", "val"}
    assert len(info["features"]["names"]) == load_checkpoint(trained / "model.safetensors").n_features
    # The checkpoint keeps the best validation epoch's weights, and says so.
    assert info["validation"]["loss"] == pytest.approx(min(val))
    assert val[info["validation"]["epoch"]] == pytest.approx(min(val))


def test_songs_no_example_can_come_from_are_left_out_and_named(corpus: Path, tmp_path: Path) -> None:
    # A silent file, one under the -70 LUFS gate, one shorter than two excerpts (1.5 s
    # each in TINY) and one no decoder reads: each would give examples with nothing to learn
    # (or cut its batch's excerpts to its own length, or end the run over one file of a
    # catalogue). They are left out before the split, each named once.
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(3):
        shutil.copy(corpus / f"song{i}.wav", folder / f"song{i}.wav")
    write(folder / "silence.wav", np.zeros((4 * 44100, 2)))
    write(folder / "gated.wav", music(4.0, seed=7, level=10 ** (-75 / 20)))
    write(folder / "short.wav", music(2.5, seed=8, level=0.2))
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio at all")
    out = tmp_path / "out"
    few = [a for a in TINY if not a.startswith("stage1.epochs")] + ["stage1.epochs=2"]
    r = run_cli("train", f"corpus={folder}", f"out={out}", *few, cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    for name, why in (("silence.wav", "silent or under"), ("gated.wav", "silent or under"),
                      ("short.wav", "2.50 s long; an example needs 3 s"),
                      ("broken.wav", "unreadable: cannot read audio")):
        said = r.stdout + r.stderr  # the log's console handler
        assert said.count(f"leaving out {name}: ") == 1 and why in said, said[-2000:]
    info = load_checkpoint(out / "model.safetensors").info["corpus"]
    assert sorted(f["file"] for f in info["files"]) == ["song0.wav", "song1.wav", "song2.wav"]
    left = sorted(f["file"] for f in info["left_out"])
    assert left == ["broken.wav", "gated.wav", "short.wav", "silence.wav"]
    # With fewer than two songs left, one line says how many and why.
    for name in ("song1.wav", "song2.wav"):
        (folder / name).unlink()
    r = run_cli("train", f"corpus={folder}", f"out={tmp_path / 'out2'}", *few, cwd=tmp_path, env=ONE_THREAD)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "corpus: 1 of 5 songs can be trained on; need at least 2" in last, last
    assert not (tmp_path / "out2").exists()


def test_a_killed_run_resumes_to_the_same_weights(corpus: Path, trained: Path, tmp_path: Path) -> None:
    # Same command as the fixture's run; its example cache is copied in, so the kill lands
    # in the training loop (the cache's fingerprint covers the config and the corpus).
    shutil.copy(trained / "dataset.safetensors", tmp_path / "dataset.safetensors")
    args = ["train", f"corpus={corpus / 'manifest.csv'}", f"out={tmp_path}", *TINY]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **ONE_THREAD}
    proc = subprocess.Popen([sys.executable, "-m", "diffmix.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "state.safetensors"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run ended before its first state was written"
    killed_at = json.loads(tensorfile.load(state)[1]["state"])["step"]
    assert killed_at < STEPS and not (tmp_path / "model.safetensors").exists()
    r = run_cli(*args, cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    a, _ = tensorfile.load(trained / "model.safetensors")
    b, _ = tensorfile.load(tmp_path / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), f"killed at step {killed_at}"
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == STEPS  # the log holds each step once, in order


def test_master_in_one_pass_from_the_prediction(corpus: Path, trained: Path, tmp_path: Path) -> None:
    from diffmix.learned.predict import predict_values

    song = write(tmp_path / "mix.wav", music(3.0, seed=7, level=0.1))
    r = run_cli("master", f"input={song}", f"out={tmp_path}", "fit.init=learned", "fit.steps=0",
                f"model={trained / 'model.safetensors'}", "progress=false", "report=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "mix_master_report.json").read_text())
    assert abs(report["achieved"]["lufs"] - (-14.0)) < 0.05  # the loudness solve has the last word
    # The preset holds the prediction (the limiter drive excepted: the solve sets it).
    from hydra import compose, initialize_config_dir

    from diffmix.inputs import load_mix
    from diffmix.jobs._mastering import chain_spec

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="master", overrides=[f"input={song}"])
    x, sr = load_mix(song)
    model = load_checkpoint(trained / "model.safetensors")
    target = {"lufs": -14.0, "true_peak_db": -1.0}
    want = predict_values(model, chain_spec(cfg, sr).build(1), [x], None, target)
    got = report["params"]["values"]
    # The job measures its input on a worker thread while it predicts, and float32 sums on
    # the CPU may then round differently (seen: 3e-7 dB on an EQ gain): the same prediction
    # to 1e-6 relative or 1e-5 in the parameter's unit (dB, Hz, ms, ratio).
    for key, value in want.items():
        if key != "limiter.gain_db":
            fitted = torch.tensor(got[key], dtype=torch.float64)
            assert torch.allclose(fitted, value, rtol=1e-6, atol=1e-5), key
    bad = run_cli("master", f"input={song}", f"out={tmp_path / 'bad'}", "fit.init=learned",
                  f"model={tmp_path / 'missing.safetensors'}", cwd=tmp_path)
    assert bad.returncode == 2 and "checkpoint not found" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_side_width_shift_minimises_what_the_clipped_side_gains_miss() -> None:
    from scipy.optimize import minimize_scalar

    from diffmix.mastering.fit import side_width_db

    seed = SEED + 5
    g = torch.Generator().manual_seed(seed)
    print(f"seed {seed}")
    lo, hi, top = -60.0, 24.0, 20.0 * np.log10(4.0)
    # Inside the range: nothing to move (width 1), whatever the gains.
    inside = torch.rand(3, 29, generator=g, dtype=torch.float64) * 80.0 - 58.0
    assert torch.equal(side_width_db(inside, lo, hi, 4.0), torch.zeros(3, dtype=torch.float64))
    # A reference wider than the mix: gains past +24 dB in some bands. The oracle minimises
    # the same convex piecewise-quadratic miss with scipy, inside the width's reach.
    need = torch.rand(6, 29, generator=g, dtype=torch.float64) * 30.0
    need = need + torch.linspace(0.0, 20.0, 6, dtype=torch.float64).view(-1, 1)
    got = side_width_db(need, lo, hi, 4.0)
    for row, s in zip(need.numpy(), got.tolist(), strict=True):
        def miss(v: float, row: np.ndarray = row) -> float:
            return float(np.square(row - v - np.clip(row - v, lo, hi)).sum())
        best = minimize_scalar(miss, bounds=(-(hi - lo), top), method="bounded", options={"xatol": 1e-6})
        # on a 0.01 dB grid the miss (curvature at most 2 per band) is within bands * 0.01^2
        assert miss(s) <= best.fun + row.size * 1e-4, (s, best.x)
        assert miss(s - 0.02) > best.fun  # of the best shifts, the one nearest 0 dB
        assert 0.0 < s <= top + 1e-9
    # Every band 30 dB past the top: the width's whole reach (+12.04 dB), the rest clipped.
    assert abs(float(side_width_db(torch.full((1, 29), hi + 30.0), lo, hi, 4.0)[0]) - top) < 1e-12


def test_a_narrow_mix_matched_to_a_wide_reference_gets_its_side_from_the_width() -> None:
    from hydra import compose, initialize_config_dir

    from diffmix.features import FeatureExtractor
    from diffmix.jobs._mastering import chain_spec
    from diffmix.mastering.fit import fold_side_into_width, init_match, match_start

    sr, seed = 44100, SEED + 6
    print(f"seed {seed}")
    x = torch.as_tensor(music(6.0, seed=seed, level=0.1)).float().T.unsqueeze(0).contiguous()
    mid, side = (x[:, 0] + x[:, 1]) / 2, (x[:, 0] - x[:, 1]) / 2
    # Side 54 dB down: 30 dB past the side gains' +24 dB (the mid's range can't make it up,
    # so match_gains leaves the mid at its level); the width's reach takes 12 of them.
    narrow = torch.stack([mid + 0.002 * side, mid - 0.002 * side], 1)
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="master", overrides=["input=x.wav"])
    bus = chain_spec(cfg, sr).build(1, match=True)
    init_match(bus, [narrow], [x])
    params = bus.named_values()
    assert float(params["match.side_gain_db"].exact().amax()) == params["match.side_gain_db"].spec.max
    feats = FeatureExtractor(sr)

    def width_error() -> torch.Tensor:  # (4,) dB: each coarse band's side/mid against the reference's
        with torch.no_grad():
            y = bus(narrow, until="comp")
            y = bus.effects["width"](y)
        return (feats(y).width_db - feats(x).width_db)[0]

    clipped = width_error()
    fold_side_into_width(bus, [narrow], [x])
    w = float(bus.named_values()["width.width"].exact())
    assert w == 4.0
    # every band 30 dB short before, 12.04 dB (the width's reach) less after, to 1 dB
    assert (clipped + 30.0).abs().max() < 1.0
    assert (width_error() - clipped - 20 * np.log10(4.0)).abs().max() < 1.0
    # Per song in a batch: the same narrow mix beside one matched to itself (width 1).
    pair = chain_spec(cfg, sr).build(2, match=True)
    match_start(pair, [narrow, x], [x, x])  # the default start folds the width too
    assert pair.named_values()["width.width"].exact().reshape(-1).tolist() == [4.0, 1.0]


@pytest.mark.parametrize("until", ["limiter", None])
def test_references_render_as_the_fit_sees_them(until: str | None) -> None:
    # With until="limiter" the reference is the chain up to the limiter with the drawn drive
    # as a plain gain: its level moves by the drive exactly and its dynamics not at all (the
    # compressor alone shapes them, as in the fit's objective). Through the limiter (None),
    # the drive squashes the peaks: the same draw's crest factor moves (the check can fail).
    from diffmix.console import Bus
    from diffmix.effects.dynamics import Compressor, Limiter
    from diffmix.learned.data import make_examples
    from diffmix.learned.features import names
    from diffmix.learned.predict import heads_for

    sr = 44100
    songs = [torch.from_numpy(music(3.0, seed=SEED + i, level=0.5).T.copy()) for i in range(2)]

    def chain_for(n: int) -> Bus:
        return Bus(sr, {"comp": Compressor(sr, threshold_db=-6.0, ratio=2.0),
                        "limiter": Limiter(sr, ceiling_db=-1.0)}, items=n)

    prior = {"limiter.gain_db": [4.0, 16.0]}
    heads = heads_for(chain_for(1), ["comp.threshold_db", "limiter.gain_db"], prior)
    feats, targets = make_examples(songs, chain_for, heads, prior, count=4, per_excerpt=4, excerpt_s=1.0,
                                   input_gain_db=[0.0, 0.0], spec_only=0.0, ceiling_db=-1.0, seed=SEED,
                                   tag="t", batch=4, until=until)
    col = {n: i for i, n in enumerate(names(sr))}
    drive = targets[:, 1]
    assert torch.all(targets[:, 0] == -6.0) and float(drive.max() - drive.min()) > 4.0, targets
    lufs = feats[:, col["reference.lufs"]]
    assert torch.equal(feats[:, col["target_lufs"]], lufs)  # the goal is the reference's loudness
    crest = feats[:, col["reference.crest_db"]]
    if until == "limiter":
        level = (lufs - lufs[0]) - (drive - drive[0])
        assert float(level.abs().max()) < 0.01, (lufs, drive)
        for name in ("crest_db", "plr_db", "st_q10", "st_q95"):
            v = feats[:, col[f"reference.{name}"]]
            assert float(v.max() - v.min()) < 0.01, (name, v)
    else:
        assert float(crest.max() - crest.min()) > 0.5, (crest, drive)


def test_with_a_match_eq_the_learned_start_keeps_the_eq_and_predicts_the_rest(trained: Path,
                                                                               tmp_path: Path) -> None:
    # With a reference the match EQ sets the tone in closed form; the parametric EQ keeps its
    # configured start (as in the default start) and the compressor is the model's.
    from hydra import compose, initialize_config_dir

    from diffmix.jobs._mastering import chain_spec
    from diffmix.learned.predict import learned_start, predict_values
    from diffmix.mastering.fit import init_match

    song = torch.from_numpy(music(3.0, seed=11, level=0.1).T.copy())[None]
    ref = torch.from_numpy(music(3.0, seed=12, level=0.3).T.copy())[None]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="master", overrides=[f"input={tmp_path / 'x.wav'}"])
    model = load_checkpoint(trained / "model.safetensors")
    target = {"lufs": None, "true_peak_db": -1.0}
    bus = chain_spec(cfg, 44100).build(1, match=True)
    configured = {k: p.exact().clone() for k, p in bus.named_values().items()}
    learned_start(model)(bus, [song], [ref], target)
    probe = chain_spec(cfg, 44100).build(1, match=True)
    init_match(probe, [song], [ref])
    want = predict_values(model, probe, [song], [ref], target)
    got = bus.named_values()
    moved = [k for k in want if k.startswith("comp.") and not torch.equal(want[k], configured[k])]
    assert moved, "the model predicts the configured compressor: the check could not fail"
    for key in want:
        if key.startswith("eq."):
            assert torch.equal(got[key].exact(), configured[key]), key
        elif key.startswith("comp."):
            assert torch.allclose(got[key].exact(), want[key], rtol=1e-6, atol=1e-5), key


@pytest.mark.parametrize(("overrides", "want"), [
    ([], 8.0),
    (["fit.init=learned"], 20.0),
    (["fit.init=learned", "fit.learned.excerpt_s=null"], 8.0),
    (["fit.init=learned", "fit.learned.excerpt_s=12", "fit.excerpt_s=4"], 12.0),
])
def test_a_fit_from_the_prediction_takes_its_own_excerpt_length(overrides: list[str], want: float,
                                                                 tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    from diffmix.jobs._mastering import fit_options

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="master", overrides=[f"input={tmp_path / 'x.wav'}", *overrides])
    assert fit_options(cfg).excerpt_s == want


_PROBE = """
import json, sys
import torch.optim
built = []
init = torch.optim.Optimizer.__init__
def record(self, *args, **kwargs):
    built.append(type(self).__name__)
    init(self, *args, **kwargs)
torch.optim.Optimizer.__init__ = record
from diffmix.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "built": built, "dynamo": "torch._dynamo" in sys.modules}))
"""


@pytest.mark.parametrize("steps", [0, 1])
def test_a_one_pass_master_builds_no_optimiser_and_imports_no_compiler(trained: Path, tmp_path: Path,
                                                                      steps: int) -> None:
    # fit.steps=0: the start (match EQ in closed form, the prediction, the width) and no fit,
    # so no optimiser is built and torch._dynamo (its import alone costs about a second) is
    # never loaded; with one step the optimisers are built (the steps', then the whole-song
    # compressor's), which shows the probe sees them.
    song = write(tmp_path / "mix.wav", music(3.0, seed=11, level=0.1))
    ref = write(tmp_path / "ref.wav", music(3.0, seed=12, level=0.2))
    args = ["master", f"input={song}", f"reference={ref}", "target=none", f"out={tmp_path / 'out'}",
            "fit.init=learned", f"fit.steps={steps}", f"model={trained / 'model.safetensors'}",
            "progress=false", "report=false"]
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    probe = json.loads(r.stdout.strip().splitlines()[-1])
    assert probe["code"] == 0
    if steps == 0:
        assert probe["built"] == [] and not probe["dynamo"], probe
    else:
        assert probe["built"] == ["Adam", "Adam"], probe
