"""The listening report: time axes in seconds, QC findings, and the page in a real browser."""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from browser import Page, find_browser
from jobs_helpers import ROOT, music, run_cli, write

from diffmix.functional.loudness import meter_unit, short_term_loudness
from diffmix.listen import Take, draw_file, draw_tensor, write_listening_report
from diffmix.qc import findings

SR = 44100
# Where a person finds the browser's screenshot after a CI run (CI keeps the clone's outputs/).
ARTIFACTS = Path(os.environ.get("DIFFMIX_ARTIFACTS", ROOT / "outputs" / "ci"))


def _tone(seconds: float, level: float = 0.1) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    left = level * torch.sin(2 * math.pi * 440 * t)
    return torch.stack([left, 0.5 * left]).unsqueeze(0)


@pytest.mark.parametrize("seconds", [0.7, 4.0, 8.0, 61.3])
def test_short_term_axis_is_in_seconds_and_spans_the_audio(seconds):
    x = _tone(seconds)
    drawn = draw_tensor(x, SR)
    times, values = drawn.short_term
    n = short_term_loudness(x, SR).shape[-1]
    step = meter_unit(SR) / SR
    # The last value's window ends at the audio's end; the first's at 3 s (or the end).
    assert times[0] == pytest.approx(min(3.0, seconds), abs=step * (math.ceil(n / 600) + 1))
    assert times[-1] == pytest.approx(seconds, abs=step * math.ceil(n / 600) + 1e-9)
    assert len(values) <= 600 and drawn.seconds == pytest.approx(seconds, abs=1 / SR)
    ctimes, _ = drawn.correlation
    if ctimes:
        assert 0 < ctimes[0] and ctimes[-1] <= seconds


def test_chunked_measurement_equals_the_whole_signal(tmp_path):
    # The streamed page reads files in chunks; in memory is the one-chunk case of the same meter.
    g = torch.Generator().manual_seed(7)
    seconds = 23.0
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    noise = torch.randn(2, t.numel(), generator=g, dtype=torch.float64) * 0.05
    x = noise * (1 + torch.sin(2 * math.pi * 0.2 * t)) + 0.1 * torch.sin(2 * math.pi * 220 * t)
    x[1] = 0.6 * x[1] + 0.4 * x[0]
    path = tmp_path / "x.wav"
    sf.write(str(path), x.T.numpy(), SR, subtype="DOUBLE")
    whole = draw_tensor(x, SR)
    chunked, rate = draw_file(path, chunk_s=5.0)
    assert rate == SR and chunked.seconds == pytest.approx(whole.seconds)
    assert chunked.short_term[0] == pytest.approx(whole.short_term[0], abs=1e-9)
    # Files are read as float32: 1e-4 LU is that rounding, far below a drawn pixel.
    assert chunked.short_term[1] == pytest.approx(whole.short_term[1], abs=1e-4)
    assert chunked.correlation[1] == pytest.approx(whole.correlation[1], abs=1e-6)
    assert chunked.lufs == pytest.approx(whole.lufs, abs=1e-4)
    assert chunked.dc_offset == pytest.approx(whole.dc_offset, abs=1e-8)
    # Welch frames that straddle a chunk edge are lost: the spectra agree to a fraction of a dB.
    assert max(abs(a - b) for a, b in zip(chunked.mid_db, whole.mid_db, strict=True)) < 0.3
    assert chunked.side_mid_db == pytest.approx(whole.side_mid_db, abs=0.2)


def test_png_plot_axis_matches_the_audio_length():
    pytest.importorskip("matplotlib")
    from diffmix.report import figure

    x = _tone(8.0).float()
    fig = figure(
        SR,
        curves={"in": x},
        short_term={"in": short_term_loudness(x, SR)[0]},
        gain_reduction=torch.zeros(160),
    )
    st_line = fig.axes[1].get_lines()[0].get_xdata()
    gr_line = fig.axes[2].get_lines()[0].get_xdata()
    assert st_line[0] == pytest.approx(3.0) and st_line[-1] == pytest.approx(8.0, abs=0.011)
    assert gr_line[-1] == pytest.approx(8.0, abs=0.05)


def test_qc_findings_name_each_problem_and_only_real_ones():
    assert (
        findings(
            lufs=-14.0, true_peak_dbtp=-1.0, dc_offset=[0.001, -0.001], clipped_samples=0, target_lufs=-14.0
        )
        == []
    )
    over = findings(true_peak_dbtp=-0.5)
    assert len(over) == 1 and "-0.50 dBTP is over the -1.0 dBTP ceiling" in over[0]
    assert findings(true_peak_dbtp=-1.5, ceiling_dbtp=-2.0)[0].startswith("True peak -1.50 dBTP")
    dc = findings(dc_offset=[0.02, 0.0])
    assert len(dc) == 1 and "DC offset on L is -34.0 dBFS" in dc[0]
    assert "clipped run" in findings(clipped_runs=3)[0]
    assert "3 sample(s) at full scale" in findings(clipped_samples=3)[0]
    assert "clicks per minute" in findings(clicks_per_minute=4.0)[0]
    assert findings(clicks_per_minute=0.5) == []
    far = findings(lufs=-17.2, target_lufs=-14.0, target_name="spotify")
    assert far == [far[0]] and "3.2 LU under spotify's -14.0 LUFS" in far[0]
    assert findings(lufs=-14.8, target_lufs=-14.0) == []
    assert "digital silence" in findings(lufs=-math.inf, true_peak_dbtp=-math.inf)[0]
    quiet = findings(lufs=-math.inf, true_peak_dbtp=-60.1)  # sound, every block under the gate
    assert quiet == [quiet[0]] and "under BS.1770's -70 LUFS gate (true peak -60.1 dBTP)" in quiet[0]
    assert "digital silence" not in quiet[0]
    assert findings(side_mid_db=-8.0) == [] and findings(side_mid_db=0.0) == []
    assert "The channels cancel" in findings(side_mid_db=math.inf)[0]


def test_an_out_of_phase_finding_states_what_a_mono_fold_down_loses():
    # Physical check: stereo whose side is 3 dB over its mid; the mono fold-down, (L+R)/2 on
    # both speakers, keeps the mid alone, and its power against the stereo's is the loss the
    # finding states.
    g = torch.Generator().manual_seed(0)
    mid, side = torch.randn(2, 200_000, generator=g, dtype=torch.float64)
    side = side * (10 ** (3.0 / 20) * mid.norm() / side.norm())
    left, right = (mid + side) / math.sqrt(2), (mid - side) / math.sqrt(2)
    ratio = 10 * math.log10(float(side.square().sum() / mid.square().sum()))
    fold = (left + right) / 2
    loss = 10 * math.log10(float((left.square().sum() + right.square().sum()) / (2 * fold.square().sum())))
    (text,) = findings(side_mid_db=ratio)
    assert f"{ratio:+.1f} dB over the mid" in text and f"loses {loss:.1f} dB" in text


def test_page_is_self_contained_and_loudness_matched(tmp_path):
    x = _tone(2.0)
    out = tmp_path / "o"
    out.mkdir()
    result = out / "result.wav"
    sf.write(str(result), (2 * x[0]).T.numpy(), SR, subtype="FLOAT")
    page = write_listening_report(
        out / "song_report.html",
        title="song <&>",
        sample_rate=SR,
        job="master",
        takes=[Take("input", x), Take("result", 2 * x, result)],
        target={"lufs": -14.0, "true_peak_db": -1.0},
        achieved={"lufs": -20.0, "true_peak_dbtp": -3.0},
        warnings=["a finding"],
    )
    text = page.read_text()
    assert "song &lt;&amp;&gt;" in text and "a finding" in text
    # No network: nothing is fetched from anywhere but the folder itself.
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    srcs = re.findall(r'<audio class="take"[^>]* src="([^"]+)"', text)
    assert srcs == ["song_report_audio/input.flac", "result.wav"]
    lufs = [float(v) for v in re.findall(r'data-lufs="([^"]+)"', text)]
    assert lufs[1] - lufs[0] == pytest.approx(20 * math.log10(2), abs=0.01)
    preview, rate = sf.read(str(out / srcs[0]))
    assert rate == SR and preview.shape == (x.shape[-1], 2)
    assert preview[:, 0] == pytest.approx(x[0, 0].numpy(), abs=2**-15)


@pytest.fixture(scope="module")
def browser() -> str:
    path = find_browser()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must test the listening report in Chromium: apt-get install chromium")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return path


def test_master_report_plays_and_draws_in_chromium(tmp_path, browser):
    src = write(tmp_path / "song.wav", music(5.0, seed=1))
    ref = write(tmp_path / "ref.wav", music(5.0, seed=2, level=0.4))
    out = run_cli(
        "master",
        f"input={src}",
        f"reference={ref}",
        "target=spotify",
        "fit.steps=2",
        "fit.excerpt_s=2.0",
        "match_refine=0",
        f"out={tmp_path / 'o'}",
        "progress=false",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    # The folder moves as one: the page reads its audio by relative path.
    moved = shutil.move(str(tmp_path / "o"), str(tmp_path / "moved"))
    src.unlink()
    ref.unlink()
    page_path = Path(moved) / "song_master_report.html"
    with Page(browser) as page:
        page.open(page_path.as_uri())
        page.wait_for(
            "document.getElementById('audio-status').dataset.loaded === '3' || "
            "document.getElementById('audio-status').dataset.failed !== '0'"
        )
        state = page.evaluate(
            "(() => { const a = [...document.querySelectorAll('audio.take')];"
            " return {failed: document.getElementById('audio-status').dataset.failed,"
            " durations: a.map(e => e.duration), volumes: a.map(e => e.volume),"
            " labels: a.map(e => e.dataset.label),"
            " charts: [...document.querySelectorAll('svg.chart')].map(s => ({kind: s.dataset.kind,"
            "   x1: parseFloat(s.dataset.x1), lines: s.querySelectorAll('polyline').length,"
            "   w: s.getBoundingClientRect().width, h: s.getBoundingClientRect().height}))}; })()"
        )
        assert state["failed"] == "0"
        assert state["labels"] == ["input", "result", "reference"]
        assert state["durations"] == pytest.approx([5.0, 5.0, 5.0], abs=0.01)
        # Loudness-matched by default: the master (-14 LUFS) is turned down, the quietest is not.
        assert min(state["volumes"]) < 0.9 and max(state["volumes"]) == 1.0
        page.evaluate("document.getElementById('matched').click()")
        assert page.evaluate("[...document.querySelectorAll('audio.take')].map(e => e.volume)") == [1, 1, 1]
        kinds = {c["kind"]: c for c in state["charts"]}
        assert set(kinds) == {"spectrum", "loudness", "gain_reduction", "correlation", "width"}
        for chart in state["charts"]:
            assert chart["lines"] >= 1 and chart["w"] > 300 and chart["h"] > 100, chart
        for kind in ("loudness", "gain_reduction", "correlation"):
            assert kinds[kind]["x1"] == pytest.approx(5.0, abs=0.01)
        page.evaluate("document.querySelectorAll('button.take')[1].click()")
        assert page.evaluate("document.querySelector('button.take.on').textContent").startswith("2. result")
        assert page.errors() == []
        shot = page.screenshot(ARTIFACTS / "listening_report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"listening report screenshot: {shot}")


def test_report_false_writes_no_page(tmp_path):
    src = write(tmp_path / "song.wav", music(3.0, seed=3))
    out = run_cli(
        "master",
        f"input={src}",
        "target=spotify",
        "report=false",
        f"out={tmp_path / 'o'}",
        "progress=false",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["song_master.wav", "song_master_preset.yaml", "song_master_report.json"]
