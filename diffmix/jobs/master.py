"""Master a mix to a reference and/or a loudness spec (target=spotify, apple_music, ...).

Options: ``input`` (required), ``reference`` (optional), ``target`` (spotify, apple_music,
youtube, amazon, ebu_r128, atsc_a85 or none), ``fit.*`` (steps, excerpt_s, params),
``loss.weights``, ``amount.<stage>`` (0..1), ``delivery.*`` (format, bit_depth,
sample_rate, dither), ``plot``, ``out``, ``stream`` (auto, true, false: master in chunks
with bounded memory, :mod:`diffmix.streaming`; auto streams inputs longer than
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
from diffmix.jobs._mastering import Song, master_group, polish_mode
from diffmix.streaming import DiskAudio, master_file, wants_streaming


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
    if streaming:
        if polish_mode(cfg) != "off":
            raise ValueError("polish=auto needs the whole file in memory: use stream=false")
        return _run_streaming(cfg, out, stem, reference, protect, device)
    assert x is not None  # loaded above: only the streaming path leaves it None
    song = Song(
        key=stem, audio=x.to(device), out=out, stem=stem, reference=reference,
        target=to_dict(cfg.target), protect=protect,
    )
    (report,) = master_group(cfg, [song], sr)
    a = report["achieved"]
    print(
        f"master: {report['outputs']['audio']}  {a['lufs']:.2f} LUFS  "
        f"{a['true_peak_dbtp']:.2f} dBTP  LRA {a['lra_lu']:.1f} LU  ({report['runtime_s']:.1f} s)"
    )
    return 0


# --- streaming (long files, bounded memory): see diffmix.streaming ----------------------
def _run_streaming(cfg, out, stem, reference, protect, device) -> int:  # noqa: ANN001
    report = master_file(
        cfg, input=str(cfg.input), out=out, stem=stem, reference=reference,
        target=to_dict(cfg.target), protect=protect,
        device=device,
    )
    a = report["achieved"]
    print(
        f"master (streamed): {report['outputs']['audio']}  {a['lufs']:.2f} LUFS  "
        f"{a['true_peak_dbtp']:.2f} dBTP  ({report['runtime_s']:.1f} s)"
    )
    return 0
