"""The analyze job: composed with hydra.compose and run in-process, and the real command
run as a subprocess on tiny files in a temporary directory."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir

from diffmix.cli import config_dir
from diffmix.io import AudioFileError
from diffmix.jobs import analyze

ROOT = Path(__file__).resolve().parents[1]


def write_tone(path: Path, *, sr: int = 48000, seconds: float = 4.0, channels: int = 2,
               level_db: float = -23.0) -> Path:
    t = np.arange(int(sr * seconds)) / sr
    x = 10 ** (level_db / 20) * np.sin(2 * math.pi * 1000 * t)
    subtype = "FLOAT" if path.suffix == ".wav" else "PCM_24"
    sf.write(str(path), np.tile(x[:, None], (1, channels)), sr, subtype=subtype)
    return path


def compose_cfg(**overrides):  # noqa: ANN201
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(config_name="analyze",
                       overrides=[f"{k}={v}" for k, v in overrides.items()])


def test_config_composes_with_required_input():
    cfg = compose_cfg()
    assert cfg.plot is False and cfg.json is None and cfg.table is True
    with pytest.raises(ValueError, match="input=<audio file> is required"):
        analyze.run(cfg)


def test_run_writes_json_png_and_table(tmp_path, capsys):
    src = write_tone(tmp_path / "tone.wav")
    cfg = compose_cfg(input=str(src), json=str(tmp_path / "r.json"), plot=str(tmp_path / "p.png"))
    assert analyze.run(cfg) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["integrated_lufs"] == pytest.approx(-23.0, abs=0.02)
    assert report["true_peak_dbtp"] == pytest.approx(-23.0, abs=0.05)
    assert report["stereo"]["correlation"] == pytest.approx(1.0, abs=1e-6)
    assert report["format"] == "WAV" and report["input"] == str(src)
    for key in ("loudness_range_lu", "plr_db", "psr_db", "crest_factor_db_per_channel",
                "third_octave", "dc_offset_per_channel", "clipped_samples", "series"):
        assert key in report
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    table = capsys.readouterr().out
    assert "Integrated loudness" in table and "-23.0 LUFS" in table and "True peak" in table


def test_silence_and_mono_and_short_files(tmp_path):
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros((4800, 2)), 48000)
    analyze.run(compose_cfg(input=str(silent), json=str(tmp_path / "s.json"), table=False))
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["silent"] is True and report["integrated_lufs"] == "-inf"
    assert report["findings"] == ["The audio is digital silence: there is nothing to hear or measure."]
    quiet = tmp_path / "quiet.wav"  # sound, but every block under the -70 LUFS gate: not silence
    sf.write(str(quiet), 10 ** (-75 / 20) * np.sin(np.arange(48000) * 0.1)[:, None].repeat(2, 1), 48000,
             subtype="FLOAT")
    analyze.run(compose_cfg(input=str(quiet), json=str(tmp_path / "q.json"), table=False))
    report = json.loads((tmp_path / "q.json").read_text())
    assert report["silent"] is False and report["integrated_lufs"] == "-inf"
    assert len(report["findings"]) == 1 and "under BS.1770's -70 LUFS gate (true peak -75.0 dBTP)" in (
        report["findings"][0])
    mono = write_tone(tmp_path / "mono.flac", sr=44100, seconds=0.25, channels=1)
    analyze.run(compose_cfg(input=str(mono), json=str(tmp_path / "m.json"), table=False))
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["stereo"] is None and report["channels"] == 1
    assert report["integrated_lufs"] == pytest.approx(-26.0, abs=0.1)  # one channel at -23 dBFS


@pytest.mark.parametrize("case", ["missing", "unreadable", "empty"])
def test_bad_files_raise_audio_file_error(tmp_path, case):
    path = tmp_path / "in.wav"
    if case == "unreadable":
        path.write_text("not audio")
    elif case == "empty":
        sf.write(str(path), np.zeros((0, 2)), 48000)
    with pytest.raises(AudioFileError):
        analyze.run(compose_cfg(input=str(path)))


def test_bad_plot_value_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside Hydra the default output folder is the cwd
    src = write_tone(tmp_path / "tone.wav", seconds=0.5)
    with pytest.raises(ValueError, match="plot must be"):
        analyze.run(compose_cfg(input=str(src), plot=str(tmp_path / "x.jpg"), table=False))
    assert [p.name for p in tmp_path.iterdir()] == ["tone.wav"]


def diffmix(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "diffmix.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_command_writes_under_the_run_dir(tmp_path):
    src = write_tone(tmp_path / "tone.flac", sr=44100, seconds=3.5)
    out = diffmix("analyze", f"input={src}", "plot=true", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    reports = list((tmp_path / "outputs" / "analyze").rglob("analysis.json"))
    assert len(reports) == 1 and (reports[0].parent / "analysis.png").is_file()
    report = json.loads(reports[0].read_text())
    assert report["sample_rate"] == 44100
    assert report["integrated_lufs"] == pytest.approx(-23.0, abs=0.02)
    assert "Integrated loudness" in out.stdout


# "file not found" is checked in-process above; the CLI turns every AudioFileError alike.
@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.write_text("not audio"), "cannot read audio"),
    (lambda p: sf.write(str(p), np.zeros((0, 2)), 48000), "file is empty"),
])
def test_command_fails_in_one_line(tmp_path, make, message):
    path = tmp_path / "in.wav"
    make(path)
    out = diffmix("analyze", f"input={path}", cwd=tmp_path)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffmix analyze: error: ")
    assert message in lines[0]


def test_findings_say_what_needs_attention_and_why(tmp_path, capsys):
    sr = 48000
    t = np.arange(sr * 4) / sr
    # A hot tone (true peak over -1 dBTP) riding on a 2 % DC offset on the left channel.
    x = np.stack([0.97 * np.sin(2 * math.pi * 997 * t) * 0.95 + 0.02, 0.5 * np.sin(2 * math.pi * 997 * t)], 1)
    src = tmp_path / "hot.wav"
    sf.write(str(src), x, sr, subtype="FLOAT")
    analyze.run(compose_cfg(input=str(src), json=str(tmp_path / "r.json"), target="spotify"))
    report = json.loads((tmp_path / "r.json").read_text())
    text = " | ".join(report["findings"])
    assert "True peak" in text and "over the -1.0 dBTP ceiling" in text
    assert "DC offset on L is -34.0 dBFS" in text and "DC offset on R" not in text
    assert "over spotify's -14.0 LUFS" in text
    assert "Attention" in capsys.readouterr().out
    clean = write_tone(tmp_path / "clean.wav", level_db=-20.0)
    analyze.run(compose_cfg(input=str(clean), json=str(tmp_path / "c.json"), table=False))
    assert json.loads((tmp_path / "c.json").read_text())["findings"] == []
