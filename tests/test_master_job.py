"""The master and render jobs, run as real subprocesses on small synthetic files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch
from jobs_helpers import files, music, run_cli, write

from diffmix.functional.loudness import integrated_loudness
from diffmix.functional.peaks import true_peak

pytestmark = pytest.mark.slow


def measure(path):
    data, sr = sf.read(str(path), always_2d=True)
    x = torch.from_numpy(data.T.copy()).unsqueeze(0)
    lufs = float(integrated_loudness(x, sr)[0])
    tp = 20 * np.log10(float(true_peak(x, sr).max()))
    return lufs, tp


@pytest.mark.parametrize(
    "target, lufs, ceiling", [("spotify", -14.0, -1.0), ("amazon", -14.0, -2.0), ("ebu_r128", -23.0, -1.0)]
)
def test_master_to_a_loudness_spec_lands_on_target(tmp_path, target, lufs, ceiling):
    src = write(tmp_path / "in" / "song.wav", music(4.0))
    before = src.read_bytes()
    out = run_cli(
        "master",
        f"input={src}",
        f"target={target}",
        f"out={tmp_path / 'o'}",
        "progress=false",
        "plot=false",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    achieved, tp = measure(tmp_path / "o" / "song_master.wav")
    assert abs(achieved - lufs) <= 0.1 and tp <= ceiling + 1e-6
    report = json.loads((tmp_path / "o" / "song_master_report.json").read_text())
    assert report["target"]["lufs"] == lufs and report["achieved"]["under_ceiling"]
    assert "match" not in report["params"]["effects"]  # no reference: no match EQ stage
    assert src.read_bytes() == before


def test_master_to_a_reference_writes_preset_report_and_plot(tmp_path):
    src = write(tmp_path / "song.wav", music(4.0, seed=1))
    ref = write(tmp_path / "ref.wav", music(4.0, seed=2, level=0.4))
    out = run_cli(
        "master",
        f"input={src}",
        f"reference={ref}",
        "target=none",
        "fit.steps=4",
        "fit.excerpt_s=2.0",
        f"out={tmp_path / 'o'}",
        "progress=false",
        "plot=true",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "o" / "song_master_report.json").read_text())
    assert report["fit"]["steps"] == 4
    # Then the compressor was set on the whole song, kept only where it lowered the term.
    whole = report["fit"]["song_dynamics"]["songs"]["song_master"]
    assert whole["term_after"] <= whole["term_before"]
    assert whole["kept"] == (whole["term_after"] < whole["term_before"])
    assert set(report["spectral_error"]["after"]) == {
        "tone_mid_rms_db",
        "tone_side_rms_db",
        "side_mid_ratio_error_db",
    }
    assert abs(report["achieved"]["lufs"] - report["reference"]["integrated_lufs"]) < 0.1
    # The match EQ stage ran: closed-form start, fit, refined on the whole master.
    assert "match" in report["params"]["effects"]
    before, after = report["spectral_error"]["before"], report["spectral_error"]["after"]
    assert after["tone_mid_rms_db"] < 0.5 * before["tone_mid_rms_db"]
    assert after["tone_side_rms_db"] < 1.0 and after["side_mid_ratio_error_db"] < 0.5
    assert files(tmp_path / "o") == sorted(
        ["song_master.wav", "song_master_preset.yaml", "song_master_report.json", "song_master.png",
         "song_master_report.html", "song_master_report_audio/input.flac",
         "song_master_report_audio/reference.flac"]
    )
    assert report["outputs"]["listening_report"] == str(tmp_path / "o" / "song_master_report.html")

    # render: the saved preset applied to new audio, no fitting
    other = write(tmp_path / "other.wav", music(3.0, seed=5))
    out = run_cli(
        "render",
        f"preset={tmp_path / 'o' / 'song_master_preset.yaml'}",
        f"input={other}",
        f"out={tmp_path / 'r'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    info = sf.info(str(tmp_path / "r" / "other_render.wav"))
    assert info.frames == 3 * 44100 and info.channels == 2


def test_mono_and_48k_reference_is_handled(tmp_path):
    src = write(tmp_path / "song.wav", music(3.0))
    ref = write(tmp_path / "ref.wav", music(3.0, sr=48000, seed=3)[:, :1], sr=48000)
    out = run_cli(
        "master",
        f"input={src}",
        f"reference={ref}",
        "fit.steps=2",
        "fit.excerpt_s=1.5",
        f"out={tmp_path / 'o'}",
        "progress=false",
        "plot=false",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "o" / "song_master_report.json").read_text())
    assert "match" in report["params"]["effects"]  # the reference was used: match EQ stage
    # The mono reference is used as centred dual mono (one-sided would be 3 LU quieter),
    # resampled to 44.1 kHz (its sample peak then lies 0.3 dB below the 48 kHz file's).
    measured = report["reference"]
    assert measured["correlation"] == 1.0 and measured["side_mid_db"] == "-inf"
    mono, _ = sf.read(str(ref), always_2d=True)
    at_44k = scipy.signal.resample_poly(mono, 147, 160, axis=0)
    dual = torch.from_numpy(np.repeat(at_44k.T, 2, axis=0)).unsqueeze(0)
    assert measured["integrated_lufs"] == pytest.approx(float(integrated_loudness(dual, 44100)[0]), abs=0.1)
    assert measured["sample_peak_dbfs"] == pytest.approx(20 * np.log10(np.abs(at_44k).max()), abs=0.15)
    info = sf.info(str(tmp_path / "o" / "song_master.wav"))
    assert (info.frames, info.channels, info.samplerate) == (3 * 44100, 2, 44100)


def test_a_mono_mix_masters_toward_a_stereo_reference_and_an_antiphase_one_is_refused(tmp_path):
    # Regression (session 26): a mono mix toward a stereo reference failed ("at the limiter's
    # largest drive ... too quiet"): the side terms chased a side that is not there by turning
    # the EQ down. It now masters at the reference's loudness with its EQ where it was.
    mono = music(3.0)[:, :1]
    src = write(tmp_path / "mono.wav", np.repeat(mono, 2, axis=1))
    ref = write(tmp_path / "ref.wav", music(3.0, seed=3))
    args = ("target=none", "fit.steps=120", "fit.patience=1000", "fit.excerpt_s=1.5", "progress=false",
            "plot=false", "report=false")
    out = run_cli("master", f"input={src}", f"reference={ref}", f"out={tmp_path / 'o'}", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "o" / "mono_master_report.json").read_text())
    assert abs(report["achieved"]["lufs"] - report["reference"]["integrated_lufs"]) <= 0.1
    assert np.mean(report["params"]["values"]["eq.gain_db"]) > -3.0
    # One channel's polarity flipped: no mid for any chain to shape; refused in one line.
    flipped = write(tmp_path / "flipped.wav", np.concatenate([mono, -mono], axis=1))
    out = run_cli("master", f"input={flipped}", f"reference={ref}", f"out={tmp_path / 'f'}", *args,
                  cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "flipped.wav: its channels cancel" in lines[0]
    assert not (tmp_path / "f").exists() or files(tmp_path / "f") == []


@pytest.mark.parametrize("stream", ["false", "true"])
def test_a_mix_too_quiet_for_the_drive_range_is_named_with_the_level_to_add(tmp_path, stream):
    # A mix at about -100 LUFS needs more than the limiter's +48 dB of drive to reach -14:
    # in memory and streamed alike, one line naming the file, the range and what to add.
    src = write(tmp_path / "quiet.wav", music(3.0) * 10 ** (-80 / 20))
    out = run_cli("master", f"input={src}", "target=spotify", f"stream={stream}", f"out={tmp_path / 'o'}",
                  "progress=false", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"({src}): at the limiter's largest drive, +48 dB" in lines[0], lines
    assert "raise its level by at least" in lines[0]


@pytest.mark.parametrize("stream", ["false", "true"])
def test_a_reference_louder_than_the_ceiling_allows_is_matched_in_density_and_a_spec_fails(tmp_path, stream):
    # The reference peaks at -1 dBTP; under a -12 dBTP ceiling its loudness would need a
    # peak-to-loudness ratio 11 dB under its own, past what any limiter makes. Matched to
    # the reference, the master takes the reference's PLR under the ceiling instead, says
    # so and delivers; the same loudness asked for as a spec fails in one line.
    src = write(tmp_path / "song.wav", music(4.0, seed=1))
    raw = music(4.0, seed=2, level=0.4)
    peak = float(true_peak(torch.from_numpy(raw.T.copy())[None], 44100).amax())
    ref = write(tmp_path / "ref.wav", raw * (10 ** (-1.0 / 20) / peak))
    args = [f"input={src}", f"reference={ref}", "target=none", "target.true_peak_db=-12", "fit.steps=2",
            "fit.excerpt_s=2.0", "progress=false", "plot=false", f"stream={stream}"]
    out = run_cli("master", *args, f"out={tmp_path / 'o'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "out of reach under the -12 dBTP ceiling" in out.stdout + out.stderr
    report = json.loads((tmp_path / "o" / "song_master_report.json").read_text())
    reference = report.get("reference")
    x, _ = sf.read(str(ref), always_2d=True, dtype="float64")
    lufs = float(integrated_loudness(torch.from_numpy(x.T.copy())[None], 44100)[0])
    tp = 20 * np.log10(float(true_peak(torch.from_numpy(x.T.copy())[None], 44100).amax()))
    assert tp == pytest.approx(-1.0, abs=1e-3)
    goal = -12.0 - (tp - lufs)
    assert report["loudness_solve"]["target_lufs"] == pytest.approx(goal, abs=1e-6)
    assert "peak-to-loudness ratio" in report["loudness_solve"]["fallback"]
    assert report["qc"][0] == f"Loudness: {report['loudness_solve']['fallback']}."
    assert report["achieved"]["lufs"] == pytest.approx(goal, abs=0.05)
    assert report["achieved"]["true_peak_dbtp"] <= -12.0 and report["achieved"]["under_ceiling"]
    assert abs(report["achieved"]["lufs_error_lu"]) <= 0.05
    assert reference is None or reference["integrated_lufs"] == pytest.approx(lufs, abs=0.01)
    spec = run_cli("master", *args, f"target.lufs={lufs:.3f}", f"out={tmp_path / 's'}", cwd=tmp_path)
    assert spec.returncode == 2
    lines = spec.stderr.strip().splitlines()
    assert len(lines) == 1 and "under the ceiling (" in lines[0] and "target.true_peak_db" in lines[0], lines
    assert not (tmp_path / "s").exists() or files(tmp_path / "s") == []


@pytest.mark.parametrize("stream", ["false", "true"])
def test_a_reference_denser_than_the_master_can_be_made_is_met_where_the_limiter_takes_its_share(
        tmp_path, stream):
    # A hard-clipped reference: its peaks sit under the -1 dBTP ceiling, so its
    # peak-to-loudness ratio under the ceiling asks for no less loudness, and its loudness
    # is past what the limiter reaches on this input. The master aims where the limiter
    # takes LIMITED_LU of the loudness (its linear loudness read at the drive range's
    # bottom), says so, and delivers under the ceiling.
    from diffmix.mastering.loudness import LIMITED_LU

    src = write(tmp_path / "song.wav", music(4.0, seed=1))
    ref = write(tmp_path / "ref.wav", np.clip(music(4.0, seed=2, level=8.0), -0.45, 0.45))
    args = [f"input={src}", f"reference={ref}", "target=none", "fit.steps=2", "fit.excerpt_s=2.0",
            "progress=false", "plot=false", f"stream={stream}"]
    out = run_cli("master", *args, f"out={tmp_path / 'o'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "o" / "song_master_report.json").read_text())
    why = report["loudness_solve"]["fallback"]
    assert "out of reach under the -1 dBTP ceiling" in why and f"the limiter takes {LIMITED_LU:g} LU" in why
    assert report["qc"][0] == f"Loudness: {why}."
    x, _ = sf.read(str(ref), always_2d=True, dtype="float64")
    lufs = float(integrated_loudness(torch.from_numpy(x.T.copy())[None], 44100)[0])
    goal = report["loudness_solve"]["target_lufs"]
    assert goal < lufs - 1.0 and report["achieved"]["lufs"] == pytest.approx(goal, abs=0.05)
    assert report["achieved"]["true_peak_dbtp"] <= -1.0 and report["achieved"]["under_ceiling"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.wav", "missing.wav: file not found"),
        (
            lambda d: (d / "bad.wav").write_bytes(b"RIFFjunkjunkjunk") and d / "bad.wav",
            "bad.wav: cannot read audio",
        ),
        (
            lambda d: write(d / "nan.wav", np.full((44100, 2), np.nan, np.float32)),
            "nan.wav: audio contains NaN or Inf",
        ),
        (
            lambda d: write(d / "silent.wav", np.zeros((44100 * 2, 2), np.float32)),
            "is silent (digital silence): no gain can reach a loudness target",
        ),
        (lambda d: write(d / "short.wav", music(0.3)), "too short to master"),
    ],
    ids=["missing", "corrupt", "nan", "silent", "short"],
)
def test_bad_inputs_fail_in_one_line_and_leave_nothing(tmp_path, make, message):
    src = make(tmp_path)
    out = run_cli("master", f"input={src}", f"out={tmp_path / 'o'}", "progress=false", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffmix master: error: ") and message in lines[0]
    assert not (tmp_path / "o").exists() or files(tmp_path / "o") == []


def test_unknown_key_and_untrusted_target_are_refused(tmp_path):
    src = write(tmp_path / "song.wav", music(2.0))
    out = run_cli("master", f"input={src}", "fit.stepz=3", cwd=tmp_path)
    assert out.returncode != 0 and "stepz" in out.stderr
    out = run_cli(
        "master",
        f"input={src}",
        "chain.width._target_=os.system",
        "+chain.width.command=touch pwned",
        f"out={tmp_path / 'o'}",
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "is not allowed" in out.stderr
    assert not (tmp_path / "pwned").exists()
