"""The streamed (chunked, bounded-memory) master equals the in-memory master."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from jobs_helpers import ROOT, music, write

from diffmix.functional.loudness import integrated_loudness
from diffmix.functional.peaks import true_peak
from diffmix.jobs import master
from diffmix.jobs._mastering import wants_streaming
from diffmix.mastering.source import DiskAudio, measure_file
from diffmix.report import ChunkMeter
from tests.seeds import drawn_seed

SR = 48000
SECONDS = 40.0


def _cfg(*overrides):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("master", overrides=list(overrides))


def _meter(path):
    data, sr = sf.read(str(path), always_2d=True)
    x = torch.from_numpy(data.T.copy()).unsqueeze(0)
    return float(integrated_loudness(x, sr)[0]), 20 * np.log10(float(true_peak(x, sr).max())), data


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    audio = music(SECONDS, SR, seed=3)
    # A loud stretch and a quiet one, so the compressor and limiter work across boundaries.
    audio[: len(audio) // 3] *= 3.0
    audio[2 * len(audio) // 3 :] *= 0.3
    return write(root / "song.wav", audio, SR)


@pytest.mark.slow
def test_streamed_master_equals_the_in_memory_master(song, tmp_path):
    common = [f"input={song}", "fit.steps=8", "fit.excerpt_s=2.0", "plot=false", "progress=false"]
    mem = _cfg(*common, f"out={tmp_path / 'mem'}", "stream=false", "delivery.bit_depth=float",
               "delivery.dither=false")
    # 5 s chunks: seven boundaries, each crossed by EQ tails, compressor and limiter state.
    streamed = _cfg(*common, f"out={tmp_path / 'st'}", "stream=true", "streaming.chunk_s=5.0")
    assert master.run(mem) == 0 and master.run(streamed) == 0
    lufs_m, tp_m, y_m = _meter(tmp_path / "mem" / "song_master.wav")
    lufs_s, tp_s, y_s = _meter(tmp_path / "st" / "song_master.wav")
    assert sf.info(str(tmp_path / "st" / "song_master.wav")).subtype == "PCM_24"
    assert y_s.shape == y_m.shape == (int(SECONDS * SR), 2)
    # Stated tolerance: 2e-6 of full scale sample by sample: float32 rounding of the two
    # renders (~5e-7 measured, float out) plus 24-bit TPDF dither and rounding (<= 1.5 LSB,
    # 1.8e-7); the same loudness to 0.01 LU.
    assert np.abs(y_s - y_m).max() <= 2e-6
    assert abs(lufs_s - lufs_m) <= 0.01
    assert abs(lufs_s - -14.0) <= 0.1 and tp_s <= -1.0
    assert not list((tmp_path / "st").glob(".*partial*"))  # the cache and temporaries are gone
    # The streamed master's listening report: read back in chunks, the input played in place.
    page = (tmp_path / "st" / "song_master_report.html").read_text()
    assert 'src="song_master.wav"' in page and f'src="{os.path.relpath(song, tmp_path / "st")}"' in page
    assert page.count('<svg class="chart"') == 4 and "gain_reduction" not in page
    # One report schema: the same measurements before and after, and the same input read
    # the same either way (a tensor in one chunk, the file in 5 s chunks).
    rep_m, rep_s = (json.loads((tmp_path / d / "song_master_report.json").read_text()) for d in ("mem", "st"))
    for block in ("before", "after", "achieved", "delivery"):
        assert rep_m[block].keys() == rep_s[block].keys(), block
    for key, value in rep_m["before"].items():
        assert rep_s["before"][key] == pytest.approx(value, abs=1e-4), key


def test_chunked_meter_equals_the_whole_file_meter(song):
    from diffmix.report import summary

    got = measure_file(song, chunk_s=3.0)
    lufs, tp, data = _meter(song)
    assert abs(got["integrated_lufs"] - lufs) <= 1e-6
    # The report's summary of the whole signal is the same meter fed one chunk.
    whole = summary(torch.from_numpy(data.T.copy()).unsqueeze(0), SR)
    assert whole.keys() == got.keys()
    for key, value in whole.items():
        assert got[key] == pytest.approx(value, abs=1e-5), key
    # The chunked meter interpolates in the file's float32, the reference in float64:
    # 1e-5 dB is ~1e-6 relative, a few float32 roundings.
    assert abs(got["true_peak_dbtp"] - tp) <= 1e-5


def test_strict_chunked_meter_equals_the_whole_file_strict_meter(song):
    from diffmix.functional.peaks import strict_true_peak

    got = measure_file(song, chunk_s=3.0, strict=True)
    whole, _ = sf.read(str(song), dtype="float32", always_2d=True)
    x = torch.from_numpy(whole.T.copy()).unsqueeze(0)
    want = 20 * np.log10(float(strict_true_peak(x, SR).amax()))
    # The ideal interpolation runs in FFT blocks whose alignment differs between a chunk
    # and the whole file: ~1e-3 dB measured, far inside the limiter's margin.
    assert abs(got["true_peak_dbtp"] - want) <= 5e-3
    assert got["true_peak_dbtp"] >= measure_file(song, chunk_s=3.0)["true_peak_dbtp"] - 1e-9


def test_disk_audio_reads_slices_and_silence_outside(song):
    src = DiskAudio(song)
    whole, _ = sf.read(str(song), dtype="float32", always_2d=True)
    got = src[..., 1000:1500]
    assert torch.equal(got[0], torch.from_numpy(whole[1000:1500].T.copy()))
    edge = src.read(-5, 5)
    assert torch.equal(edge[..., :5], torch.zeros(1, 2, 5))
    assert ChunkMeter.warmup(SR) % 480 == 0


def test_stream_auto_switches_on_duration(song):
    assert not wants_streaming(_cfg(f"input={song}"))
    assert wants_streaming(_cfg(f"input={song}", "streaming.auto_above_s=10"))
    with pytest.raises(ValueError, match="stream must be"):
        wants_streaming(_cfg(f"input={song}", "stream=maybe"))


# The strict meter's ideal interpolation truncates the signal STRICT_CONTEXT samples from a
# chunk, and its own FFT blocks _IDEAL_OVERLAP samples from their cores: on this noisy music
# either moves an ideal point by up to ~1e-3 of the peak (~0.01 dB), not a bound but what
# the noise outside happens to sum to. Pieces read in 5000-frame pushes met two draws off
# the whole signal's reading by more than 5e-3 dB: seeds 4 (5.0005e-3) and 109974127
# (6.3e-3, the pieces' reading 7.7e-3 dB under the exact float64 interpolation's); seeds
# 0-14 pass otherwise, and 0-39 without the small pushes, as did 62 random draws of each
# of the other three cases.
_STRICT_OFF = (4, 109974127)


def _fresh_seed() -> int:
    return drawn_seed(2**32)


@pytest.mark.parametrize("strict, piece, seed", [
    # Exact but for float rounding: a fresh seed each run.
    (False, None, _fresh_seed()), (False, 5000, _fresh_seed()),
    # Within an interpolation's truncation error: fixed seeds.
    *((True, piece, seed) for piece in (None, 5000) for seed in (0, 1)),
    *(pytest.param(True, 5000, seed, marks=pytest.mark.xfail(
        strict=True, reason="truncation error over 5e-3 dB")) for seed in _STRICT_OFF),
])
def test_sequential_meter_equals_the_whole_signal_meter(strict, piece, seed, monkeypatch):
    """Pieces of any length, pushed with no context (as delivery writes them), meter as the
    whole signal does; so do pushes the meter itself takes ``piece`` frames at a time.
    (The strict meter to within its ideal interpolation's truncation: ``_STRICT_OFF``.)"""
    from diffmix import report
    from diffmix.report import PEAK_CONTEXT, STRICT_CONTEXT, ChunkMeter, SequentialMeter

    if piece is not None:
        monkeypatch.setattr(report, "_PUSH_FRAMES", piece)

    print("seed", seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(music(13.0, SR, seed=seed % 1000).T.copy()).float()
    meter = SequentialMeter(SR, 2, strict=strict)
    cuts = np.sort(rng.integers(1, x.shape[-1], size=6))
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, x.shape[-1]], strict=True):
        meter.push(x[:, a:b])
    got = meter.summary()
    whole = ChunkMeter(SR, 2, strict=strict)
    ctx = max(ChunkMeter.warmup(SR), STRICT_CONTEXT)
    padded = torch.nn.functional.pad(x, (ctx, STRICT_CONTEXT if strict else PEAK_CONTEXT))
    whole.add(padded[None], ctx, x.shape[-1])
    want = whole.summary()
    for key, value in want.items():
        # The strict meter's ideal interpolation runs in FFT blocks that fall elsewhere in
        # pieces than in the whole (~1e-3 dB, as test_strict_chunked_meter_... states).
        tol = 5e-3 if strict and key in ("true_peak_dbtp", "plr_db", "psr_db") else 1e-6
        assert got[key] == pytest.approx(value, abs=tol), key


def test_a_file_in_chunks_renders_as_the_song_in_memory_as_one_chunk(song, tmp_path):
    """The in-memory render is the streamed renderer's one-chunk case: over the file in 3 s
    chunks (left context, cache file) it gives the same master at the same drive."""
    from diffmix.console import Bus
    from diffmix.effects.dynamics import Compressor, Limiter
    from diffmix.effects.eq import ParametricEQ
    from diffmix.mastering import StreamRenderer

    def chain():
        return Bus(SR, {"eq": ParametricEQ(SR), "comp": Compressor(SR, threshold_db=-24.0, ratio=4.0),
                        "limiter": Limiter(SR, ceiling_db=-1.0)}, items=1)

    memory = StreamRenderer(chain(), DiskAudio(song).read(0, DiskAudio(song).frames))
    assert list(memory.chunks()) == [(0, DiskAudio(song).frames)] and memory.cache is None
    streamed = StreamRenderer(chain(), DiskAudio(song), tmp_path, chunk_s=3.0)
    try:
        assert len(list(streamed.chunks())) > 10
        ((_, _, whole),) = memory.limited(6.0)
        pieces = torch.cat(list(streamed.middles(6.0)), -1)
    finally:
        streamed.close()
    assert not list(tmp_path.glob(".stream.*"))
    # float32 renders of the same recursions from different starts: ~5e-7 of full scale
    assert float((whole[0] - pieces).abs().amax()) <= 2e-6
