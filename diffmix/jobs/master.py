"""Master a mix to a reference and/or a loudness spec (target=spotify, apple_music, ...).

Options: ``input`` (required), ``reference`` (optional), ``target`` (spotify, apple_music,
youtube, amazon, ebu_r128, atsc_a85 or none), ``fit.*`` (steps, excerpt_s, params),
``loss.weights``, ``amount.<stage>`` (0..1), ``delivery.*`` (format, bit_depth,
sample_rate, dither), ``plot``, ``out``, ``stream`` (auto, true, false: master in chunks
with bounded memory, :func:`diffmix.mastering.master_file`; auto streams inputs longer than
``streaming.auto_above_s``), ``polish`` (off or auto: repair the clicks, clipped runs
and DC offset that analysis finds before the chain; the report's ``polish`` lists every
repaired span). Writes the master, its preset (YAML, physical units), a JSON
report and a PNG plot (no plot when streamed).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from diffmix.inputs import load_mix
from diffmix.jobs._common import output_dir, pick_device, to_dict
from diffmix.jobs._mastering import (
    chain_spec,
    fit_options,
    fit_start,
    master_options,
    polish_mode,
    wants_streaming,
)
from diffmix.mastering import DiskAudio, Song, master_file, master_group


def run(cfg: DictConfig) -> int:
    device = pick_device(str(cfg.device))
    streaming = wants_streaming(cfg)
    # Master at the delivery rate: the limiter then holds the ceiling, and the solve the
    # loudness, on the very samples delivered (resampling after them missed both).
    rate = int(cfg.delivery.sample_rate) if cfg.delivery.get("sample_rate") else None
    x, sr = (
        (None, DiskAudio(cfg.input).sample_rate) if streaming
        else load_mix(cfg.input, rate, what="input")
    )
    reference = None
    if cfg.get("reference"):
        reference, _ = load_mix(cfg.reference, sr, what="reference")
        reference = reference.to(device)
    out = output_dir(cfg)
    stem = cfg.get("output_name") or f"{Path(str(cfg.input)).stem}_master"
    protect = tuple(str(p) for p in (cfg.input, cfg.get("reference")) if p)
    if streaming and polish_mode(cfg) != "off":
        raise ValueError("polish=auto needs the whole file in memory: use stream=false")
    spec, fit, options = chain_spec(cfg, sr), fit_options(cfg), master_options(cfg)
    if streaming:
        report = master_file(
            str(cfg.input), out, stem, spec, fit, options, reference=reference, target=to_dict(cfg.target),
            protect=protect, device=device, start=fit_start(cfg),
        )
        print(
            f"master (streamed): {report['outputs']['audio']}  {report['achieved']['lufs']:.2f} LUFS  "
            f"{report['achieved']['true_peak_dbtp']:.2f} dBTP  ({report['runtime_s']:.1f} s)"
        )
        return 0
    assert x is not None  # loaded above: only the streaming path leaves it None
    song = Song(
        key=stem, audio=x.to(device), out=out, stem=stem, reference=reference,
        target=to_dict(cfg.target), protect=protect,
    )
    (report,) = master_group([song], sr, spec, fit, options, start=fit_start(cfg))
    a = report["achieved"]
    print(
        f"master: {report['outputs']['audio']}  {a['lufs']:.2f} LUFS  "
        f"{a['true_peak_dbtp']:.2f} dBTP  LRA {a['lra_lu']:.1f} LU  ({report['runtime_s']:.1f} s)"
    )
    return 0
