"""The repair job: the real command as a subprocess on small files in a temporary folder."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir
from jobs_helpers import files, music, run_cli, write

from diffmix.cli import config_dir

SR = 44100


def _damaged(tmp_path, seed: int = 0):  # noqa: ANN202
    rng = np.random.default_rng(seed)
    print("seed", seed)
    clean = music(3.0, seed=seed).astype(np.float64)  # (T, 2)
    clean += 0.01  # a DC offset
    damaged = clean.copy()
    clicks = [(int(s), int(rng.integers(0, 2))) for s in (20000, 61000, 99000)]
    for s, ch in clicks:
        damaged[s : s + 4, ch] += [0.6, -0.5, 0.7, -0.4]
    path = write(tmp_path / "in" / "song.wav", damaged.astype(np.float32))
    return path, clicks


def test_config_composes():
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="repair")
    assert cfg.clicks and cfg.clipping and cfg.dc and not cfg.difference


def test_repair_writes_audio_report_and_exact_difference(tmp_path):
    src, clicks = _damaged(tmp_path)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out"
    res = run_cli("repair", f"input={src}", f"out={out}", "difference=true", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # input untouched
    assert files(out) == ["song_repaired.wav", "song_repaired_removed.wav", "song_repaired_report.html",
                          "song_repaired_report.json", "song_repaired_report_audio/input.flac"]
    report = json.loads((out / "song_repaired_report.json").read_text())
    spans = report["repairs"]["clicks"]["spans"]
    for s, ch in clicks:  # each click is covered by one listed span, a few samples wider
        assert any(sp["channel"] == ch and s - 8 <= sp["start"] <= s and s + 4 <= sp["end"] <= s + 12
                   for sp in spans)
    assert len(spans) == len(clicks)
    assert re.search(r"DC offset removed \(up to -\d+\.\d dBFS\)", res.stdout), res.stdout
    for sp in spans:
        assert sp["time_s"] == round(sp["start"] / SR, 6) and sp["samples"] == sp["end"] - sp["start"]
    assert report["repairs"]["dc"]["offset_per_channel"][0] == pytest.approx(0.01, abs=2e-3)
    inp, _ = sf.read(str(src), dtype="float64")
    outp, _ = sf.read(str(out / "song_repaired.wav"), dtype="float64")
    removed, _ = sf.read(str(out / "song_repaired_removed.wav"), dtype="float64")
    assert np.array_equal(removed + outp, inp)  # exactly, bit for bit
    assert np.abs(outp.mean(0)).max() < 1e-4  # the 0.01 offset is gone (clicks had a mean)
    for s, ch in clicks:
        assert np.abs(removed[s : s + 4, ch]).max() > 0.3  # the click is what was removed


def test_a_sound_shorter_than_a_loudness_block_is_repaired(tmp_path):
    # 0.3 s (a one-shot sample): under one 400 ms gating block, metered as one block.
    clip = music(0.3, seed=3).astype(np.float32)
    clip[5000:5003, 0] += 0.7
    src = write(tmp_path / "in" / "hit.wav", clip)
    out = tmp_path / "out"
    res = run_cli("repair", f"input={src}", f"out={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "hit_repaired_report.json").read_text())
    assert report["repairs"]["clicks"]["count"] == 1
    assert re.search(r"-\d+\.\d\d LUFS", (out / "hit_repaired_report.html").read_text())  # metered


def test_stages_can_be_turned_off(tmp_path):
    src, _ = _damaged(tmp_path)
    out = tmp_path / "out"
    res = run_cli("repair", f"input={src}", f"out={out}", "clicks=false", "dc=false",
                  "clipping=false", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    inp, _ = sf.read(str(src), dtype="float64")
    outp, _ = sf.read(str(out / "song_repaired.wav"), dtype="float64")
    assert np.array_equal(inp, outp)
    assert json.loads((out / "song_repaired_report.json").read_text())["repairs"] == {}
    assert "(nothing: every stage is off" in res.stdout  # not "dc only", as it once said
    # DC off, clicks and clipping on: the summary names what ran, no DC removal.
    res = run_cli("repair", f"input={src}", f"out={tmp_path / 'out2'}", "dc=false", cwd=tmp_path)
    assert res.returncode == 0 and "clipping 0, clicks " in res.stdout and "DC" not in res.stdout, res.stdout


BAD = ["missing", "corrupt", "nan", "inf", "empty", "directory", "flag", "difference_flag",
       "device", "overwrite", "no_input"]


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_fail_in_one_line(tmp_path, case):
    out = tmp_path / "out"
    args = [f"out={out}"]
    src = None
    if case == "missing":
        args.append(f"input={tmp_path / 'nope.wav'}")
        expect = "file not found"
    elif case == "corrupt":
        src = tmp_path / "bad.wav"
        src.write_bytes(b"RIFF not really a wav file")
        args.append(f"input={src}")
        expect = "cannot read audio"
    elif case in ("nan", "inf"):
        data = np.zeros((1000, 2), np.float32)
        data[10, 0] = np.nan if case == "nan" else np.inf
        src = write(tmp_path / f"{case}.wav", data)
        args.append(f"input={src}")
        expect = "NaN or Inf"
    elif case == "empty":
        src = write(tmp_path / "empty.wav", np.zeros((0, 2), np.float32))
        args.append(f"input={src}")
        expect = "file is empty"
    elif case == "directory":
        args.append(f"input={tmp_path}")
        expect = "is a directory"
    elif case in ("flag", "difference_flag", "device"):
        src, _ = _damaged(tmp_path)
        key, value, expect = {
            "flag": ("clicks", "maybe", "clicks must be true or false"),
            "difference_flag": ("difference", "1", "difference must be true or false"),
            "device": ("device", "tpu", "device must be auto, cpu or cuda"),
        }[case]
        args += [f"input={src}", f"{key}={value}"]
    elif case == "overwrite":
        src, _ = _damaged(tmp_path)
        out = src.parent  # the output would land on the input itself
        args = [f"input={src}", f"out={out}", "output_name=song"]
        expect = "refusing to overwrite an input file"
    else:
        expect = "missing required option(s) ['input']: pass input="
    before = _digest(src) if src is not None else None
    listed = files(out) if out.exists() else []
    res = run_cli("repair", *args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffmix repair: error: ") and expect in lines[0]
    assert (files(out) if out.exists() else []) == listed  # nothing (half-)written
    if src is not None:
        assert _digest(src) == before  # the input is never modified


def _digest(path) -> str:  # noqa: ANN001
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_master_polish_auto_repairs_and_reports(tmp_path):
    src, clicks = _damaged(tmp_path)
    out = tmp_path / "m"
    res = run_cli("master", f"input={src}", f"out={out}", "polish=auto", "fit.steps=2",
                  "fit.excerpt_s=1.5", "progress=false", "plot=false", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "song_master_report.json").read_text())
    polished = report["polish"]
    assert polished["clicks"]["count"] == len(clicks)
    for s, ch in clicks:
        assert any(sp["channel"] == ch and sp["start"] <= s and s + 4 <= sp["end"]
                   for sp in polished["clicks"]["spans"])
    assert polished["dc"]["offset_per_channel"][0] == pytest.approx(0.01, abs=2e-3)
    assert polished["clipping"]["count"] == 0
    bad = run_cli("master", f"input={src}", f"out={tmp_path / 'b'}", "polish=maybe", cwd=tmp_path)
    assert bad.returncode == 2 and "polish must be auto or off" in bad.stderr
    # A constant (a DC offset and nothing else) is no sound once polish centres it: named so,
    # in one line, not as "digital silence"; the input file itself is.
    const = write(tmp_path / "in" / "dc.wav", np.full((SR, 2), 0.1, np.float32))
    none = run_cli("master", f"input={const}", f"out={tmp_path / 'c'}", "polish=auto", cwd=tmp_path)
    lines = none.stderr.strip().splitlines()
    assert none.returncode == 2 and len(lines) == 1, none.stderr
    assert "dc.wav: nothing is left once polish removes its DC offset" in lines[0]
    assert not (tmp_path / "c").exists() or files(tmp_path / "c") == []
