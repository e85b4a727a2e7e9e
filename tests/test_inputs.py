"""Loading stem sets and references."""

from __future__ import annotations

import logging

import pytest
import torch

from diffmix.inputs import load_mix, load_stems
from diffmix.io import AudioFileError, write_audio


def _tone(n, sr, f=440.0, ch=2):
    t = torch.arange(n) / sr
    return (0.3 * torch.sin(2 * torch.pi * f * t)).expand(ch, -1).clone()


def test_mixed_lengths_rates_and_channels(tmp_path, caplog):
    write_audio(tmp_path / "a.wav", _tone(4410, 44100), 44100, subtype="FLOAT")
    write_audio(tmp_path / "b.wav", _tone(2000, 44100, ch=1), 44100, subtype="FLOAT")
    write_audio(tmp_path / "c.wav", _tone(4800, 48000), 48000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="diffmix"):
        stems = load_stems(tmp_path)
    assert stems.audio.shape == (1, 3, 2, 4410)
    assert stems.names == ["a", "b", "c"] and stems.mono == [False, True, False]
    assert "padded with silence" in caplog.text and "resampling 48000 Hz -> 44100 Hz" in caplog.text
    assert torch.equal(stems.audio[0, 1, 0], stems.audio[0, 1, 1])


def test_mismatched_rate_can_be_an_error(tmp_path):
    write_audio(tmp_path / "a.wav", _tone(100, 44100), 44100)
    write_audio(tmp_path / "b.wav", _tone(100, 48000), 48000)
    with pytest.raises(AudioFileError, match="b.wav: sample rate 48000 Hz differs"):
        load_stems(tmp_path, resample_mismatched=False)


def test_empty_folder_and_missing_file(tmp_path):
    with pytest.raises(AudioFileError, match="no audio files found"):
        load_stems(tmp_path)
    with pytest.raises(AudioFileError, match="file not found"):
        load_stems([str(tmp_path / "missing.wav")])


def test_mono_reference_becomes_stereo(tmp_path):
    write_audio(tmp_path / "ref.wav", _tone(1000, 44100, ch=1), 44100, subtype="FLOAT")
    ref, sr = load_mix(tmp_path / "ref.wav")
    assert ref.shape == (1, 2, 1000) and sr == 44100 and torch.equal(ref[0, 0], ref[0, 1])
