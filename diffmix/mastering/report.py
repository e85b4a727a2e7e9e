"""A master's report: one schema for the in-memory and the streamed master.

Keys: ``job``, ``id``, ``outputs``, ``target``, ``achieved`` (``lufs``,
``true_peak_dbtp``, ``lra_lu``, ``lufs_error_lu``, ``under_ceiling``), ``before`` and
``after`` (the input and the delivered file, each a :meth:`~diffmix.report.ChunkMeter.summary`;
``after``'s true peak is the strict meter's, the one the ceiling holds on), ``loudness_solve``,
``delivery``, ``fit``, ``params``, ``qc``, ``runtime_s``; the in-memory master adds
``timings_s`` (and ``polish``, ``reference``, ``spectral_error`` where they apply), the
streamed one ``streaming``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from diffmix.report import gain_reduction_db, plot, write_json


def master_report(
    key: str, target: dict[str, Any], goal: float | None, *, before: dict[str, Any], after: dict[str, Any],
    solve: dict[str, Any] | None, delivery: dict[str, Any], fit: dict[str, Any] | None,
) -> dict[str, Any]:
    """The report of one master: what it aimed at (``target``, loudness ``goal``), what
    was measured before and after, and what each stage did."""
    ceiling = target.get("true_peak_db")
    return {
        "job": "master",
        "id": key,
        "outputs": {"audio": delivery["path"]},
        "target": target,
        "achieved": {
            "lufs": after["integrated_lufs"],
            "true_peak_dbtp": after["true_peak_dbtp"],
            "lra_lu": after["lra_lu"],
            "lufs_error_lu": None if goal is None else after["integrated_lufs"] - goal,
            "under_ceiling": ceiling is None or after["true_peak_dbtp"] <= ceiling,
        },
        "before": before,
        "after": after,
        "loudness_solve": solve,
        "delivery": delivery,
        "fit": fit,
    }


def finish(report: dict[str, Any], path: Path, t0: float, songs: int = 1,
           timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Add the runtime (per song, since ``t0``) and the seconds per stage (``timings``, if
    kept), and write ``report`` as JSON to ``path``."""
    report["runtime_s"] = round((time.perf_counter() - t0) / songs, 3)
    if timings is not None:
        report["timings_s"] = dict(timings)
    write_json(path, report)
    report["outputs"]["report"] = str(path)
    return report


def draw(path: Path, title: str, sample_rate: int, audio: torch.Tensor, master: torch.Tensor,
         pre: torch.Tensor, reference: torch.Tensor | None) -> str:
    """The PNG plot of one master: spectra, short-term loudness and the limiter's gain
    reduction (``pre``: its input). Returns the path."""
    from diffmix.functional.loudness import short_term_loudness

    curves = {"input": audio.cpu(), "master": master.cpu()}
    st = {k: short_term_loudness(v, sample_rate)[0] for k, v in curves.items()}
    if reference is not None:
        curves["reference"] = reference.cpu()
    gr = gain_reduction_db(pre.cpu(), master.cpu(), sample_rate)
    return str(plot(path, sample_rate, curves=curves, short_term=st, gain_reduction=gr, title=title))
