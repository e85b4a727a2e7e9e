"""Render the built-in demo multitrack through a channel strip per stem and a master bus.

Options: ``sample_rate``, ``seconds``, ``out`` (folder; default the Hydra run dir).
Writes ``demo_mix.wav`` and ``summary.json``.
"""

from __future__ import annotations

import json
import time

import torch
from omegaconf import DictConfig

from diffmix.demo import demo_multitrack
from diffmix.effects import Chain, Gain, Pan, Width
from diffmix.io import atomic_write_text, write_audio
from diffmix.jobs._common import output_dir, positive


def run(cfg: DictConfig) -> int:
    t0 = time.perf_counter()
    sr = positive(cfg, "sample_rate", integer=True)
    seconds = positive(cfg, "seconds")
    stems, names = demo_multitrack(sr, seconds, seed=int(cfg.seed))
    n = stems.shape[1]
    gains = torch.linspace(-6.0, 0.0, n)
    pans = torch.linspace(-0.6, 0.6, n)
    # Tracks fold into the batch axis, so each effect runs once for all stems.
    strip = Chain(sr, [Gain(sr, gain_db=gains), Pan(sr, pan=pans)])
    with torch.no_grad():
        tracks = strip(stems[0])
        mix = Chain(sr, [Width(sr, width=1.2), Gain(sr, gain_db=-6.0)])(tracks.sum(0, keepdim=True))
    out = output_dir(cfg)
    audio_path = write_audio(out / "demo_mix.wav", mix[0], sr, subtype="PCM_24")
    summary = {
        "job": "demo",
        "stems": names,
        "sample_rate": sr,
        "seconds": seconds,
        "peak_dbfs": round(20 * float(torch.log10(mix.abs().max().clamp_min(1e-12))), 3),
        "output": str(audio_path),
        "runtime_s": round(time.perf_counter() - t0, 3),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0



