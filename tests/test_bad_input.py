"""Issue 16's bad-input cases, each a test at the level where it occurs.

The CLI cases share subprocesses: one interpreter runs the CLI's ``main`` on many cases in
turn (each costs a Hydra compose, not a Python start-up) and reports one exit code and one
stderr line per case.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from diffmix.errors import UserError
from diffmix.io import AudioFileError, atomic_write_text, check_outputs, read_audio

ROOT = Path(__file__).resolve().parents[1]
SR = 44100


def tone(path: Path, seconds: float = 3.0, sr: int = SR, level: float = 0.3) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    x = level * np.sin(2 * np.pi * 440 * t)
    sf.write(str(path), np.stack([x, x], 1), sr)
    return path


# --- library level -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused_in_one_line(dtype):
    from diffmix.effects import Compressor
    from diffmix.functional.loudness import integrated_loudness
    from diffmix.functional.peaks import true_peak

    x = torch.zeros(1, 2, 4410, dtype=dtype)
    for call in (lambda: Compressor(SR)(x), lambda: true_peak(x, SR), lambda: integrated_loudness(x, SR)):
        want = rf"must be float32 or float64, got {dtype}; convert with x.float\(\)$"
        with pytest.raises(ValueError, match=want):
            call()


def test_empty_batch_is_refused():
    from diffmix.functional.peaks import true_peak

    with pytest.raises(ValueError, match=r"true_peak: audio is an empty batch \(0 items\)$"):
        true_peak(torch.zeros(0, 2, 100), SR)


def test_saturation_of_huge_input_matches_float64():
    # Fully driven, the output is the saturated curve, a few tenths above 1 after the
    # resampler and tone filter. It was zeros at 1e8 (x + mix (wet - x) cancels in float32);
    # float64, where the old blend did not cancel, is the oracle.
    from diffmix.effects import Saturation

    sat = Saturation(SR)
    x = torch.sin(2 * math.pi * 100 * torch.arange(4410, dtype=torch.float64) / SR).expand(1, 2, -1)
    with torch.no_grad():
        for scale in (1e8, 1e10):
            ref = sat.double()(scale * x)
            got = sat.float()(scale * x.float())
            assert 0.9 < float(ref.abs().amax()) < 1.5
            # float32's 1e-7 of 1e10 moves zero crossings by part of an oversampled sample,
            # so compare level, not waveform: peak and RMS within 2 % (it read 0 and 0.52).
            for stat in (lambda v: v.abs().amax(), lambda v: v.square().mean().sqrt()):
                assert float(stat(got.double())) == pytest.approx(float(stat(ref)), rel=0.02)


def test_outputs_get_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o022)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_truncated_wav_is_refused_naming_the_file(tmp_path):
    whole = tone(tmp_path / "whole.wav")
    cut = tmp_path / "cut.wav"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    want = rf"^{cut}: truncated: its header declares \d+ bytes of audio but the file holds \d+ \(50%\)$"
    with pytest.raises(AudioFileError, match=want):
        read_audio(cut)
    read_audio(whole)  # the intact file reads


def test_flac_whose_header_lies_is_refused_when_streamed(tmp_path):
    from diffmix.mastering.source import DiskAudio

    flac = tmp_path / "song.flac"
    t = np.arange(3 * SR) / SR
    sf.write(str(flac), np.stack([np.sin(2 * np.pi * 440 * t)] * 2, 1) * 0.3, SR)
    raw = bytearray(flac.read_bytes())
    total = 2 * 3600 * SR  # STREAMINFO's 36-bit total: claim two hours
    raw[21] = (raw[21] & 0xF0) | ((total >> 32) & 0x0F)
    raw[22:26] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    flac.write_bytes(bytes(raw))
    audio = DiskAudio(flac)
    assert audio.frames == total
    with pytest.raises(AudioFileError, match=rf"^{flac}: (cannot read samples|truncated)"):
        audio.read(0, 10 * SR)


def test_outputs_that_would_overwrite_any_input_are_refused(tmp_path):
    preset = tmp_path / "x_report.json"
    preset.write_text("{}")
    with pytest.raises(AudioFileError, match="refusing to overwrite an input"):
        check_outputs((tmp_path / "x.wav", tmp_path / "x_report.json"), (str(preset),))
    check_outputs((tmp_path / "y_report.json",), (str(preset),))


def test_delivery_refuses_a_file_a_relimit_moved_off_target(tmp_path):
    from diffmix.delivery import deliver
    from diffmix.functional.loudness import integrated_loudness
    from diffmix.jobs._common import peak_dbtp

    g = torch.Generator().manual_seed(16)
    x = 0.5 * torch.randn(2, 3 * SR, generator=g, dtype=torch.float64)
    x = x / x.abs().amax() * 10 ** (-0.5 / 20)  # 0.5 dB over a -1 dBTP ceiling, at least
    goal = float(integrated_loudness(x.unsqueeze(0), SR)[0])
    want = r"^delivery: out.wav would measure .* LU off the .* nothing was written$"
    with pytest.raises(UserError, match=want):
        deliver(x, SR, tmp_path / "out.wav", ceiling_dbtp=-1.0, true_peak_db=peak_dbtp, lufs_goal=goal)
    assert list(tmp_path.iterdir()) == []
    # The same audio under a ceiling it already meets is written.
    deliver(x, SR, tmp_path / "ok.wav", ceiling_dbtp=1.0, true_peak_db=peak_dbtp, lufs_goal=goal)
    assert (tmp_path / "ok.wav").exists()


def test_silent_song_is_named_by_its_file():
    from diffmix.mastering import solve_loudness

    with pytest.raises(UserError, match=r"^quiet.wav is silent \(digital silence\)"):
        solve_loudness(lambda d: torch.zeros(1, 2, SR), [SR], SR, torch.tensor([-14.0]), names=["quiet.wav"])


def test_failed_job_leaves_nothing_it_wrote_and_keeps_what_was_there(tmp_path):
    from diffmix.cli import _files, _undo

    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    before = _files(out)
    (out / "fit_log.jsonl").write_text("{}")
    (out / "items" / "a").mkdir(parents=True)
    (out / "items" / "a" / "a_master.wav").write_text("half")
    _undo(out, before, existed=True)
    assert sorted(p.name for p in out.rglob("*")) == ["mine.txt"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "fit_log.jsonl").write_text("{}")
    _undo(fresh, set(), existed=False)
    assert not fresh.exists()


# --- the CLI ------------------------------------------------------------------------------


def _run_cases(cases: list[list[str]], cwd: Path) -> list[tuple[int, str]]:
    """Run ``diffmix.cli.main`` on each argument list in one subprocess: (code, stderr)."""
    script = (
        "import contextlib, io, json, sys\n"
        "from diffmix.cli import main\n"
        "rows = []\n"
        f"for args in json.loads({json.dumps(json.dumps(cases))}):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        code = main(args)\n"
        "    rows.append([code, err.getvalue()])\n"
        "print('ROWS' + json.dumps(rows))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("ROWS")), None)
    assert line is not None, done.stderr[-3000:]
    return [(code, err) for code, err in json.loads(line[4:])]


def test_cli_bad_input_cases_end_in_one_line_with_exit_2(tmp_path):
    song = tone(tmp_path / "song.wav")
    tone(tmp_path / "low.wav", sr=8000)
    sf.write(str(tmp_path / "silent.wav"), np.zeros((3 * SR, 2)), SR)
    quiet = 10 ** (-75 / 20) * np.sin(np.arange(3 * SR) * 0.05)  # sound, every block under the gate
    sf.write(str(tmp_path / "quiet.wav"), np.stack([quiet, quiet], 1), SR, subtype="FLOAT")
    (tmp_path / "hush").mkdir()
    for k in range(2):
        sf.write(str(tmp_path / "hush" / f"s{k}.wav"), np.zeros((3 * SR, 2)), SR)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(song.read_bytes()[: song.stat().st_size // 2])
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "presets").mkdir()
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    (tmp_path / "binary.csv").write_bytes(b"input\n\xff\xfe\x00")
    preset = tmp_path / "x_report.json"
    preset.write_text("_target_: diffmix.effects.gain.Gain\nsample_rate: 44100\ngain_db: -3.0\n")
    preset_bytes = preset.read_bytes()
    (tmp_path / "escape.csv").write_text("id,input\n../../../x,song.wav\n")
    uni = tmp_path / "ünï"
    uni.mkdir()
    tone(uni / "sóng.wav")
    master = ["master", "progress=false"]
    cases = {
        "unknown key": ([*master, "input=song.wav", "fit.stepz=5", "out=o"],
                        "unknown option fit.stepz (see `diffmix master --help`; "
                        "+fit.stepz=... adds a new key)"),
        "unknown target": ([*master, "input=song.wav", "target=tidal", "out=o"],
                           "target=tidal: no such option; choose one of ['amazon', 'apple_music', "
                           "'atsc_a85', 'ebu_r128', 'none', 'spotify', 'youtube']"),
        "out is a file": ([*master, "input=song.wav", "out=a_file"], "out=a_file is a file, not a folder"),
        "out not writable": ([*master, "input=song.wav", "out=/proc/diffmix/o"],
                             "out=/proc/diffmix/o: /proc is not writable (No such file or directory)"),
        "input not given": ([*master, "out=o"], "missing required option(s) ['input']: pass input=..."),
        "input missing": ([*master, "input=nope.wav", "out=o"], "nope.wav: file not found"),
        "preset a folder": (["render", "preset=presets", "input=song.wav", "out=o"],
                            "preset presets: is a folder, not a file"),
        "binary preset": (["render", "preset=binary.yaml", "input=song.wav", "out=o"],
                          "preset binary.yaml: not UTF-8 text (byte 0)"),
        "binary manifest": (["batch", "manifest=binary.csv", "out=o"],
                            "manifest binary.csv: not UTF-8 text (byte 6)"),
        "escaping id": (["batch", "manifest=escape.csv", "out=o"],
                        "manifest escape.csv: row 1: id '../../../x' must name one folder "
                        "(no '/', '\\', leading '.' or control characters)"),
        "steps negative": ([*master, "input=song.wav", "fit.steps=-5", "out=o"],
                           "fit.steps must be a whole number >= 0 (0: no fit), got -5"),
        "steps text": ([*master, "input=song.wav", "fit.steps=abc", "out=o"],
                       "fit.steps must be a whole number >= 0 (0: no fit), got 'abc'"),
        "8 kHz": ([*master, "input=low.wav", "out=o"],
                  "low.wav: 8000 Hz is below the 22050 Hz the mastering chain is designed for "
                  "(supported: 22050 to 192000 Hz); pass delivery.sample_rate=44100 to master "
                  "it at 44.1 kHz"),
        "silent": ([*master, "input=silent.wav", "out=o"],
                   "silent.wav is silent (digital silence): no gain can reach a loudness target"),
        "truncated": ([*master, "input=cut.wav", "out=o"], "cut.wav: truncated: its header declares"),
        "quiet reference": ([*master, "input=song.wav", "reference=quiet.wav", "target=none", "out=o"],
                            "reference is too quiet to measure: every 400 ms block is under BS.1770's "
                            "-70 LUFS gate, so its loudness can't be matched; raise its level"),
        "silent stems": (["mix", "stems=hush", "reference=song.wav", "progress=false", "out=o"],
                             "stems: every stem is digital silence: there is nothing to mix"),
        "quiet mix reference": (["mix", "stems=ünï", "reference=quiet.wav", "progress=false", "out=o"],
                                "reference is too quiet to measure"),
        "render over its preset": (["render", "preset=x_report.json", "input=song.wav",
                                    "output_name=x", "out=."],
                                   "x_report.json: refusing to overwrite an input (x_report.json)"),
    }
    results = _run_cases([args for args, _ in cases.values()], tmp_path)
    for (name, (_, want)), (code, err) in zip(cases.items(), results, strict=True):
        lines = err.strip().splitlines()
        job = cases[name][0][0]
        assert code == 2 and len(lines) == 1, (name, code, err)
        assert lines[0].startswith(f"diffmix {job}: error: {want}"), (name, lines[0])
    # Inputs untouched, nothing left behind: no out folder, no Hydra run dir in the cwd.
    assert preset.read_bytes() == preset_bytes
    assert not (tmp_path / "o").exists() and not (tmp_path / "outputs").exists()
    assert not (tmp_path / "x.wav").exists()
    assert not Path("/proc/diffmix").exists()


def test_cli_non_ascii_paths_work_and_no_run_dir_appears(tmp_path):
    uni = tmp_path / "ünï"
    uni.mkdir()
    tone(uni / "sóng.wav")
    ((code, err),) = _run_cases([["analyze", "input=ünï/sóng.wav", "out=ö"]], tmp_path)
    assert code == 0, err
    assert (tmp_path / "ö" / "analysis.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ö", "ünï"]  # no outputs/<job>/<time>


def test_cli_file_size_limit_fails_in_one_line_and_writes_nothing(tmp_path):
    # ulimit -f: without SIGXFSZ ignored the kernel killed the process mid-write.
    tone(tmp_path / "song.wav", seconds=3.0)
    (tmp_path / "gain.yaml").write_text("_target_: diffmix.effects.gain.Gain\nsample_rate: 44100\n")
    limit = 200 * 1024  # the 24-bit master of 3 s stereo is about 800 kB

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "diffmix.cli", "render", "preset=gain.yaml", "input=song.wav", "out=o"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, preexec_fn=cap,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("diffmix render: error: o/song_render.wav: cannot write audio ("), lines[0]
    assert lines[0].endswith("is the disk full or a file-size limit (ulimit -f) reached?"), lines[0]
    assert not (tmp_path / "o").exists()
