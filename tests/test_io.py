"""Reading and writing audio: clear errors, atomic writes, inputs protected."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from diffmix.io import AudioFileError, read_audio, write_audio


def test_round_trip_float(tmp_path):
    x = torch.linspace(-0.5, 0.5, 200).reshape(2, 100)
    path = write_audio(tmp_path / "a.wav", x, 44100, subtype="FLOAT")
    y, sr = read_audio(path)
    assert sr == 44100 and torch.equal(x, y)
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]


@pytest.mark.parametrize("fmt, subtype", [("wav", "PCM_16"), ("wav", "PCM_24"), ("flac", "PCM_24"),
                                           ("wav", "FLOAT")])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_read_in_blocks_is_soundfiles_read(tmp_path, monkeypatch, fmt, subtype, channels):
    # Why: read_audio decodes a block at a time into (channels, time) (no full-length
    # interleaved copy); the samples are soundfile's own, bit for bit: several blocks, a
    # ragged last one, and a file shorter than one block.
    import diffmix.io as io

    monkeypatch.setattr(io, "_READ_FRAMES", 1000)
    seed = channels * 10 + len(subtype)
    print("seed", seed)
    rng = np.random.default_rng(seed)
    for n in (4321, 999, 1):
        path = tmp_path / f"a{n}.{fmt}"
        sf.write(str(path), rng.uniform(-0.9, 0.9, (n, channels)).astype(np.float32), 48000, subtype=subtype)
        want, sr_want = sf.read(str(path), dtype="float32", always_2d=True)
        got, sr = read_audio(path)
        assert sr == sr_want == 48000 and got.dtype == torch.float32 and got.is_contiguous()
        assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(want.T)))
    silent = tmp_path / f"silent.{fmt}"
    sf.write(str(silent), np.zeros((2500, channels), dtype=np.float32), 48000, subtype=subtype)
    with pytest.raises(AudioFileError, match="audio is digital silence"):
        read_audio(silent, allow_silence=False)


def test_errors_name_the_file_and_problem(tmp_path):
    with pytest.raises(AudioFileError, match="nope.wav: file not found"):
        read_audio(tmp_path / "nope.wav")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioFileError, match="corrupt.wav: cannot read audio"):
        read_audio(corrupt)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros((0, 2), dtype=np.float32), 44100)
    with pytest.raises(AudioFileError, match="empty.wav: file is empty"):
        read_audio(empty)
    nan = tmp_path / "nan.wav"
    sf.write(str(nan), np.array([[0.0], [np.nan]], dtype=np.float32), 44100, subtype="FLOAT")
    with pytest.raises(AudioFileError, match="nan.wav: audio contains NaN"):
        read_audio(nan)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="NaN or Inf"):
        write_audio(tmp_path / "out.wav", torch.tensor([[float("inf")]]), 44100)
    with pytest.raises(ValueError, match="NOT_A_SUBTYPE"):
        write_audio(tmp_path / "out.wav", torch.zeros(1, 10), 44100, subtype="NOT_A_SUBTYPE")
    assert list(tmp_path.iterdir()) == []


def test_input_is_never_overwritten(tmp_path):
    src = write_audio(tmp_path / "in.wav", torch.zeros(1, 10), 8000)
    before = src.read_bytes()
    with pytest.raises(AudioFileError, match="refusing to overwrite an input"):
        write_audio(src, torch.ones(1, 10) * 0.5, 8000, protect=(src,))
    assert src.read_bytes() == before
