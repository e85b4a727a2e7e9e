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
