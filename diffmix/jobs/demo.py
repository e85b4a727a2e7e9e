"""Mix, then master, the built-in demo multitrack: the whole product in one command.

The demo stems are synthesised (no files shipped). A reference mix is rendered from
them with hidden console settings (seeded); the mix job fits the console toward it from
neutral, and the master job masters the result to ``target`` (default Spotify).
Options: ``seconds``, ``sample_rate``, ``mix_steps``, ``target``, ``out``.
Writes ``stems/``, ``reference.wav``, ``mix/``, ``master/`` and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from hydra import compose
from omegaconf import DictConfig

from diffmix.console import Console
from diffmix.demo import demo_multitrack
from diffmix.effects import Gain, Pan, ParametricEQ
from diffmix.io import atomic_write_text, write_audio
from diffmix.jobs import master, mix
from diffmix.jobs._common import output_dir, positive
from diffmix.report import plain


def hidden_reference(stems: torch.Tensor, sr: int, seed: int) -> tuple[torch.Tensor, dict]:
    """Render the stems through seeded random gains, pans and EQ: the 'producer's mix'."""
    g = torch.Generator().manual_seed(seed)
    n = stems.shape[1]
    gains = (torch.rand(n, generator=g) * 12 - 9).double()
    pans = (torch.rand(n, generator=g) * 1.6 - 0.8).double()
    eq_gain = (torch.rand(n, 2, generator=g) * 12 - 6).double()
    console = Console(sr, n, strip={
        "eq": ParametricEQ(sr, bands=["low_shelf", "high_shelf"], freq_hz=[150.0, 6000.0]),
        "pan": Pan(sr), "fader": Gain(sr),
    })
    console.load_values({"strip.fader.gain_db": gains, "strip.pan.pan": pans, "strip.eq.gain_db": eq_gain})
    with torch.no_grad():
        ref = console(stems)
    ref = ref / ref.abs().max() * 0.7
    return ref, {"fader_db": gains.tolist(), "pan": pans.tolist(), "eq_gain_db": eq_gain.tolist()}


def run(cfg: DictConfig) -> int:
    t0 = time.perf_counter()
    sr = int(positive(cfg, "sample_rate", integer=True))
    seconds = positive(cfg, "seconds")
    out = output_dir(cfg)
    stems, names = demo_multitrack(sr, seconds, seed=int(cfg.seed))
    for i, name in enumerate(names):
        write_audio(out / "stems" / f"{i:02d}-{name}.wav", stems[0, i], sr, subtype="FLOAT")
    ref, hidden = hidden_reference(stems, sr, int(cfg.seed))
    write_audio(out / "reference.wav", ref[0], sr, subtype="FLOAT")
    print(f"demo: {len(names)} stems x {seconds:g} s -> {out}")
    mix_cfg = compose("mix", overrides=[
        f"stems={out / 'stems'}", f"reference={out / 'reference.wav'}", f"out={out / 'mix'}",
        f"fit.steps={int(cfg.mix_steps)}", f"seed={int(cfg.seed)}", f"progress={cfg.progress}",
    ])
    mix.run(mix_cfg)
    master_cfg = compose("master", overrides=[
        f"input={out / 'mix' / 'mix.wav'}", f"target={cfg.target}", f"out={out / 'master'}",
        f"seed={int(cfg.seed)}", f"progress={cfg.progress}",
    ])
    master.run(master_cfg)
    mix_report = json.loads((out / "mix" / "mix_report.json").read_text())
    master_report = json.loads((out / "master" / "mix_master_report.json").read_text())
    summary: dict[str, Any] = {
        "job": "demo",
        "stems": names,
        "hidden_settings": hidden,
        "mix": {"audio": mix_report["outputs"]["audio"], "fit": mix_report["fit"],
                "spectral_error": mix_report.get("spectral_error")},
        "master": {"audio": master_report["outputs"]["audio"], "target": master_report["target"],
                   "achieved": master_report["achieved"]},
        "listening_reports": [r["outputs"].get("listening_report") for r in (mix_report, master_report)],
        "runtime_s": round(time.perf_counter() - t0, 3),
    }
    atomic_write_text(out / "summary.json", json.dumps(plain(summary), indent=2) + "\n")
    a = master_report["achieved"]
    print(f"demo: master {a['lufs']:.2f} LUFS, {a['true_peak_dbtp']:.2f} dBTP "
          f"({summary['runtime_s']:.1f} s) -> {out / 'summary.json'}")
    for page in summary["listening_reports"]:
        if page:
            print(f"demo: listen and compare in a browser: {page}")
    return 0
