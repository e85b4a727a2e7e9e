"""Report JSON and plot."""

from __future__ import annotations

import json

import pytest
import torch

from diffmix.report import gain_reduction_db, plain, plot, write_json


def test_non_finite_numbers_are_unambiguous(tmp_path):
    path = write_json(tmp_path / "r.json", {"lufs": float("-inf"), "x": torch.tensor([1.0, float("nan")])})
    data = json.loads(path.read_text())
    assert data == {"lufs": "-inf", "x": [1.0, "nan"]}
    assert plain({"a": (1, float("inf"))}) == {"a": [1, "inf"]}


def test_gain_reduction_reads_the_level_change():
    before = torch.ones(1, 2, 4410)
    after = before * 0.5
    gr = gain_reduction_db(before, after, 44100)
    assert torch.allclose(gr, torch.full_like(gr, -6.0206), atol=1e-3)


def test_plot_writes_a_png(tmp_path):
    x = torch.randn(1, 2, 44100) * 0.1
    out = plot(tmp_path / "p.png", 44100, curves={"in": x, "out": x * 0.5},
               short_term={"in": torch.randn(30) - 20}, gain_reduction=torch.zeros(20))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


def test_summary_in_chunks_reads_as_one_chunk():
    # summary meters a chunk at a time (memory); the figures must not depend on the chunking.
    from diffmix.report import summary

    g = torch.Generator().manual_seed(3)
    t = torch.arange(7 * 44100 + 123) / 44100
    x = 0.05 * torch.randn(1, 2, t.numel(), generator=g) * (1 + torch.sin(2 * torch.pi * 0.3 * t))
    x[0, 1] = 0.7 * x[0, 1] + 0.3 * x[0, 0]
    x[0, 0, 1000] = 1.0  # a clipped sample, counted once
    parts, whole = summary(x, 44100, chunk_s=1.0), summary(x, 44100, chunk_s=60.0)
    assert parts.keys() == whole.keys() and parts["clipped_samples"] == whole["clipped_samples"] == 1
    for k, v in whole.items():
        assert parts[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
