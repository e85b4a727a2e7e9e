"""Master several tracks to one consistent loudness and tone, and sequence them as an album.

Options: ``inputs`` (a folder, glob or list of mixes, in album order unless ``order``
lists their stems), ``target`` (loudness spec for every track), ``reference``
(optional; default: the album itself, i.e. every track matches the album's average
tone and width), ``gaps_s`` (one value or one per gap), ``fade_in_s``, ``fade_out_s``,
``title``, ``performer``, ``delivery.*``, ``out``. Writes per-track masters, one album
file, a cue sheet and a JSON report.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from diffmix.album import cue_sheet, sequence
from diffmix.delivery import check_format, deliver
from diffmix.errors import UserError
from diffmix.functional.loudness import integrated_loudness
from diffmix.inputs import expand_paths, load_mix
from diffmix.io import atomic_write_text, read_audio
from diffmix.jobs._common import listening_report, output_dir, peak_dbtp, pick_device, summary, to_dict
from diffmix.jobs._mastering import chain_spec, fit_options, fit_start, master_options
from diffmix.listen import Take, job_warnings
from diffmix.mastering import Song, master_group
from diffmix.report import write_json

log = logging.getLogger("diffmix")


def album_reference(tracks: list[torch.Tensor], sr: int, lufs: float) -> torch.Tensor:
    """The album's average sound: every track normalised to ``lufs``, then joined."""
    parts = []
    for x in tracks:
        level = float(integrated_loudness(x, sr)[0])
        if level != float("-inf"):
            parts.append(x * 10 ** ((lufs - level) / 20))
    if not parts:
        raise UserError("every album track is silent")
    return torch.cat(parts, dim=-1)


def run(cfg: DictConfig) -> int:
    t0 = time.perf_counter()
    device = pick_device(str(cfg.device))
    fmt, depth = check_format(cfg.delivery.format, cfg.delivery.bit_depth)
    paths = expand_paths(list(cfg.inputs) if OmegaConf.is_list(cfg.inputs) else str(cfg.inputs), "album")
    if cfg.get("order"):
        by_stem = {p.stem: p for p in paths}
        missing = [s for s in cfg.order if s not in by_stem]
        if missing:
            raise UserError(f"album: order names unknown track(s) {missing}; have {sorted(by_stem)}")
        left = sorted(set(by_stem) - set(cfg.order))
        if left:
            log.warning("album: order leaves out %s: the album has %d track(s)", left, len(cfg.order))
        paths = [by_stem[s] for s in cfg.order]
    if len(paths) < 2:
        raise UserError("album: needs at least two tracks")
    first, sr = load_mix(paths[0], what=paths[0].name)
    tracks = [first] + [load_mix(p, sr, what=p.name)[0] for p in paths[1:]]
    target = to_dict(cfg.target)
    goal = target.get("lufs")
    if goal is None:
        goal = -16.0
    if cfg.get("reference"):
        reference, _ = load_mix(cfg.reference, sr, what="reference")
    else:
        reference = album_reference(tracks, sr, float(goal))
    out = output_dir(cfg)
    songs = [
        Song(key=p.stem, audio=x.to(device), out=out / "tracks", stem=f"{i:02d}-{p.stem}",
             reference=reference.to(device), target={**target, "lufs": goal},
             # its own file first: messages name a song by it (every input stays protected)
             protect=(str(p), *(str(q) for q in paths if q != p)))
        for i, (p, x) in enumerate(zip(paths, tracks, strict=True), 1)
    ]
    reports = master_group(songs, sr, chain_spec(cfg, sr), fit_options(cfg), master_options(cfg),
                           start=fit_start(cfg))
    mastered = [read_audio(r["outputs"]["audio"])[0] for r in reports]
    rate = reports[0]["delivery"]["sample_rate"]
    album, starts = sequence(
        [m.double() for m in mastered], rate,
        gaps_s=list(cfg.gaps_s) if OmegaConf.is_list(cfg.gaps_s) else float(cfg.gaps_s),
        fade_in_s=float(cfg.fade_in_s), fade_out_s=float(cfg.fade_out_s),
    )
    album_name = f"{cfg.title}.{fmt}".replace("/", "_")
    delivery = deliver(
        album.float(), rate, out / album_name, fmt=fmt, bit_depth=depth,
        dither=bool(cfg.delivery.dither), ceiling_dbtp=target.get("true_peak_db"),
        true_peak_db=peak_dbtp, seed=int(cfg.seed),
        protect=tuple(str(q) for q in paths),
    )
    cue_path = out / f"{cfg.title}.cue".replace("/", "_")
    atomic_write_text(
        cue_path,
        cue_sheet(album_name, [p.stem for p in paths], starts, rate,
                  performer=str(cfg.performer), album_title=str(cfg.title)),
    )
    loudness = [r["achieved"]["lufs"] for r in reports]
    report = {
        "job": "album",
        "tracks": [
            {"title": p.stem, "start_s": s / rate, "report": r["outputs"]["report"],
             "lufs": r["achieved"]["lufs"], "true_peak_dbtp": r["achieved"]["true_peak_dbtp"],
             "spectral_error_to_album": r.get("spectral_error", {}).get("after")}
            for p, s, r in zip(paths, starts, reports, strict=True)
        ],
        "loudness_spread_lu": max(loudness) - min(loudness),
        "album": summary(read_audio(delivery.path)[0].unsqueeze(0).double(), rate),
        "outputs": {"album": delivery.path, "cue": str(cue_path),
                    "tracks": [r["outputs"]["audio"] for r in reports]},
    }
    written, wrate = read_audio(delivery.path)
    report["qc"] = job_warnings(report["album"], written, wrate, target, target.get("name"))
    takes = [Take("result", written, Path(delivery.path))]
    if wrate == sr:  # the unmastered tracks, sequenced the same way, to compare against
        raw, _ = sequence([t[0].double().cpu() for t in tracks], sr,
                          gaps_s=list(cfg.gaps_s) if OmegaConf.is_list(cfg.gaps_s) else float(cfg.gaps_s))
        takes.insert(0, Take("input", raw))
    page = listening_report(
        cfg, out / "album_report.html", title=str(cfg.title), sample_rate=wrate, takes=takes, job="album",
        target=target, achieved={"lufs": report["album"]["integrated_lufs"],
                                 "true_peak_dbtp": report["album"]["true_peak_dbtp"]},
        measures={"album": report["album"]}, warnings=report["qc"],
        notes=[f"{len(paths)} tracks, loudness spread {report['loudness_spread_lu']:.2f} LU; "
               "each track's own page is beside its master under tracks/"],
    )
    if page:
        report["outputs"]["listening_report"] = page
    report["runtime_s"] = round(time.perf_counter() - t0, 3)
    write_json(out / "album_report.json", report)
    print(f"album: {delivery.path}  {len(paths)} tracks, loudness spread "
          f"{report['loudness_spread_lu']:.2f} LU  ({report['runtime_s']:.1f} s)")
    return 0



