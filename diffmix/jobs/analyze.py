"""Meter an audio file: loudness, loudness range, true peak, stereo image, spectrum, defects.

Options: ``input`` (required; any file soundfile reads), ``json`` (report path; default
``<out>/analysis.json``), ``plot`` (``true`` for ``<out>/analysis.png`` or a PNG path),
``table`` (print the table), ``out`` (folder; default the Hydra run dir), ``device``.

The JSON holds every measurement of :func:`diffmix.functional.analysis.analysis_report`,
including ``defects``: clicks per minute, and the clicks and clipped runs with their times.
Values that are minus or plus infinity (the loudness and peaks of digital silence) are the
strings ``"-inf"`` / ``"inf"``, so the file stays strict JSON; nothing is ever NaN.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import soundfile as sf
from omegaconf import DictConfig, OmegaConf

from diffmix.errors import UserError
from diffmix.functional.analysis import analysis_report
from diffmix.io import atomic_path, atomic_write_text, read_audio
from diffmix.jobs._common import output_dir, pick_device
from diffmix.qc import findings

CHANNEL_NAMES = {1: ["M"], 2: ["L", "R"], 6: ["L", "R", "C", "LFE", "Ls", "Rs"],
                 5: ["L", "R", "C", "Ls", "Rs"]}


def run(cfg: DictConfig) -> int:
    if OmegaConf.is_missing(cfg, "input") or not cfg.get("input"):
        raise ValueError("input=<audio file> is required")
    path = Path(str(cfg.input))
    plot = cfg.get("plot", False)
    plot_on = plot is True or (isinstance(plot, str) and plot.lower() == "true")
    plot_path = None
    if not plot_on and plot and not (isinstance(plot, str) and plot.lower() == "false"):
        plot_path = Path(str(plot))
        if plot_path.suffix.lower() != ".png":
            raise ValueError(f"plot must be true, false or a .png path, got {plot!r}")
    device = pick_device(str(cfg.get("device", "auto")))
    audio, sr = read_audio(path)
    report = analysis_report(audio[None].to(device), sr)[0]
    info = sf.info(str(path))
    report = {"input": str(path), "format": info.format, "subtype": info.subtype, **report}
    target = OmegaConf.to_container(cfg.target) if cfg.get("target") else None
    report["findings"] = analysis_findings(report, target)  # type: ignore[arg-type]

    # A run directory only when something is written there by default.
    out = output_dir(cfg) if plot_on or not cfg.get("json") else None
    json_path = Path(str(cfg.json)) if out is None or cfg.get("json") else out / "analysis.json"
    atomic_write_text(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    png_path = out / "analysis.png" if out is not None and plot_on else plot_path
    if png_path is not None:
        write_plot(report, png_path)

    if cfg.get("table", True):
        print(format_table(report, json_path, png_path))
    return 0


def _num(value: float | str, unit: str = "", digits: int = 1) -> str:
    if isinstance(value, str):
        return f"{value} {unit}".strip()
    return f"{value:.{digits}f} {unit}".strip()


def _per_channel(values: list, names: list[str], digits: int = 1) -> str:
    return ", ".join(f"{n} {_num(v, digits=digits)}" for n, v in zip(names, values, strict=True))


def format_table(report: dict, json_path: Path | None = None, png_path: Path | None = None) -> str:
    """The report as an aligned plain-text table."""
    ch = report["channels"]
    names = CHANNEL_NAMES.get(ch, [f"ch{i + 1}" for i in range(ch)])
    minutes, seconds = divmod(report["duration_s"], 60.0)
    rows = [
        ("Integrated loudness", _num(report["integrated_lufs"], "LUFS")),
        ("Loudness range", _num(report["loudness_range_lu"], "LU")),
        ("Max momentary", _num(report["momentary_max_lufs"], "LUFS")),
        ("Max short-term", _num(report["short_term_max_lufs"], "LUFS")),
        ("True peak", f"{_num(report['true_peak_dbtp'], 'dBTP')}  "
                      f"({_per_channel(report['true_peak_dbtp_per_channel'], names)})"),
        ("Sample peak", f"{_num(report['sample_peak_dbfs'], 'dBFS')}  "
                        f"({_per_channel(report['sample_peak_dbfs_per_channel'], names)})"),
        ("PLR / PSR", f"{_num(report['plr_db'])} / {_num(report['psr_db'], 'dB')}"),
        ("Crest factor", _per_channel(report["crest_factor_db_per_channel"], names) + " dB"),
    ]
    stereo = report["stereo"]
    if stereo is not None:
        rows.append(("Correlation", _num(stereo["correlation"], digits=2)))
        rows.append(("Side/mid ratio", _num(stereo["side_mid_db"], "dB")))
        rows.append(("  per band (corr, S/M)", "; ".join(
            f"{b['name']} {_num(b['correlation'], digits=2)}, {_num(b['side_mid_db'], 'dB')}"
            for b in stereo["bands"])))
    rows += [
        ("DC offset", _per_channel(report["dc_offset_per_channel"], names, digits=5)),
        ("Clipped samples", f"{report['clipped_samples']}  "
                            f"({_per_channel(report['clipped_samples_per_channel'], names, 0)})"),
    ]
    found = report.get("defects")
    if found is not None:
        rows.append(("Clicks", f"{found['clicks_count']}  ({found['clicks_per_minute']:.1f} per minute)"
                     + _first_times(found["clicks"])))
        rows.append(("Clipped runs", f"{found['clipped_runs_count']}"
                     + _first_times(found["clipped_runs"])))
    if json_path is not None:
        rows.append(("JSON report", str(json_path)))
    if png_path is not None:
        rows.append(("Plot", str(png_path)))
    for i, finding in enumerate(report.get("findings", [])):
        rows.append(("Attention" if i == 0 else "", finding))
    if not report.get("findings"):
        rows.append(("QC", "nothing needs attention"))
    width = max(len(k) for k, _ in rows)
    head = (f"{report['input']}: {report['sample_rate']} Hz, {ch} channel(s), "
            f"{int(minutes)}:{seconds:06.3f}" + ("  [digital silence]" if report["silent"] else ""))
    return "\n".join([head, *(f"  {k:<{width}}  {v}" for k, v in rows)])


def analysis_findings(report: dict, target: dict | None = None) -> list[str]:
    """QC findings in words (:func:`diffmix.qc.findings`) for an analysis report.

    ``target``: a loudness spec (``lufs``, ``true_peak_db``, ``name``) to judge against.
    """
    spec = target or {}
    lufs, true_peak = _floats([report["integrated_lufs"], report["true_peak_dbtp"]])
    return findings(
        lufs=lufs,
        true_peak_dbtp=true_peak,
        dc_offset=_floats(report["dc_offset_per_channel"]),
        clipped_samples=int(report["clipped_samples"]),
        clipped_runs=(report.get("defects") or {}).get("clipped_runs_count"),
        clicks_per_minute=(report.get("defects") or {}).get("clicks_per_minute"),
        side_mid_db=_floats([report["stereo"]["side_mid_db"]])[0] if report.get("stereo") else None,
        target_lufs=spec.get("lufs"),
        target_name=spec.get("name"),
        ceiling_dbtp=spec.get("true_peak_db"),
    )


def _first_times(listed: list[dict], n: int = 5) -> str:
    if not listed:
        return ""
    times = ", ".join(f"{s['time_s']:.3f} s" for s in listed[:n])
    return f"  at {times}" + (", ..." if len(listed) > n else "")


def _floats(values: list) -> list[float]:
    return [-math.inf if v == "-inf" else math.inf if v == "inf" else float(v) for v in values]


def write_plot(report: dict, path: Path) -> Path:
    """PNG: momentary and short-term loudness over time, true and sample peaks per channel,
    and the long-term 1/3-octave spectrum."""
    try:
        import matplotlib
    except ImportError as exc:
        raise UserError("plot needs matplotlib: pip install 'diffmix[plot]' (or plot=false)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ch = report["channels"]
    names = CHANNEL_NAMES.get(ch, [f"ch{i + 1}" for i in range(ch)])
    series = report["series"]
    fig, axes = plt.subplots(3, 1, figsize=(10, 10), constrained_layout=True)
    ax = axes[0]
    step = series["step_s"]
    for key, label, window in (("momentary_lufs", "momentary (400 ms)", 0.4),
                               ("short_term_lufs", "short-term (3 s)", 3.0)):
        values = _floats(series[key])
        times = [window + i * step for i in range(len(values))]
        ax.plot(times, [v if math.isfinite(v) else float("nan") for v in values], label=label)
    if report["integrated_lufs"] != "-inf":
        ax.axhline(report["integrated_lufs"], color="k", ls="--",
                   label=f"integrated {report['integrated_lufs']:.1f} LUFS")
    ax.set(xlabel="time (s, window end)", ylabel="loudness (LUFS)", title="Loudness")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)

    ax = axes[1]
    tp = _floats(report["true_peak_dbtp_per_channel"])
    sp = _floats(report["sample_peak_dbfs_per_channel"])
    idx = list(range(ch))
    floor = -60.0
    ax.bar([i - 0.2 for i in idx], [max(v, floor) - floor for v in tp], 0.4, bottom=floor,
           label="true peak (dBTP)")
    ax.bar([i + 0.2 for i in idx], [max(v, floor) - floor for v in sp], 0.4, bottom=floor,
           label="sample peak (dBFS)")
    ax.axhline(-1.0, color="r", ls=":", label="-1 dBTP (EBU R 128)")
    ax.set_xticks(idx, names)
    ax.set(ylabel="level (dB)", title=f"Peaks: true peak {_num(report['true_peak_dbtp'], 'dBTP')}",
           ylim=(floor, 3.0))
    ax.legend(loc="lower right")

    ax = axes[2]
    centres = report["third_octave"]["centre_hz"]
    for name, levels in zip(names, report["third_octave"]["level_db_per_channel"], strict=True):
        vals = _floats(levels)
        ax.semilogx(centres, [v if math.isfinite(v) else float("nan") for v in vals], marker="o",
                    ms=3, label=name)
    ax.set(xlabel="frequency (Hz)", ylabel="band level (dBFS)",
           title="Long-term 1/3-octave spectrum")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left")
    fig.suptitle(Path(report["input"]).name)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path

