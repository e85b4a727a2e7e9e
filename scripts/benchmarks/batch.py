"""Batch mastering throughput: songs per minute with the batch job, one song per optimiser
step against larger groups.

Workload (issue 7, workload 5): N synthetic 3-minute stereo songs at 44.1 kHz (different
seeds, levels and one quiet/loud song) listed in a folder manifest, mastered to Spotify
by ``python -m diffmix.cli batch`` (a subprocess, default config: 60 fit steps on 6 s
excerpts, full-length render, 24-bit delivery). Throughput counts the whole job: start,
load, fit, render, write and the results manifest. Each written file is re-measured so a
fast but wrong batch can't pass unnoticed. On CPU the run is kept small (3 songs); with a
CUDA device the same job runs on the GPU with 16 songs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from benchmarks._data import SR, cli, measure, read, synthetic_song, write
from benchmarks._timing import table

TITLE = "Batch mastering throughput (songs per minute)"
# Song length on CPU. The workload is 3-minute songs; on the shared 2-core machine a
# full run of those takes longer than a session allows, so DIFFMIX_BENCH_BATCH_SECONDS
# sets it (default 60 s; the lead's quiet re-run uses 180).
SECONDS = float(os.environ.get("DIFFMIX_BENCH_BATCH_SECONDS", "60"))


def _songs(folder: Path, n: int, seconds: float) -> None:
    for k in range(n):
        audio = synthetic_song(seconds, 10 + k, level_db=-18.0 - 3 * (k % 4), dynamic=k % 3 == 2)
        write(folder / f"song{k:03d}.wav", audio, SR)


def _run(manifest: Path, out: Path, device: str, group: int, extra: list[str]) -> tuple[float, list[dict]]:
    took = cli(
        "batch", f"manifest={manifest}", f"out={out}", f"device={device}", f"group_size={group}", *extra
    )
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return took, rows


def _check(rows: list[dict]) -> tuple[int, float, float]:
    """ok items, worst |LUFS error| vs -14 and worst true peak (dBTP) of the written files."""
    ok, worst_lu, worst_tp = 0, 0.0, -120.0
    for r in rows:
        if r.get("status") != "ok":
            continue
        ok += 1
        audio, sr = read(Path(r["outputs"]["audio"]))
        m = measure(audio, sr)
        worst_lu = max(worst_lu, abs(m["lufs"] + 14.0))
        worst_tp = max(worst_tp, m["tp_dbtp"])
    return ok, worst_lu, worst_tp


def run(quick: bool) -> str:
    seconds = 10.0 if quick else SECONDS
    extra = ["fit.steps=5"] if quick else []
    plans = [("cpu", 2 if quick else 3, [1, 2 if quick else 3])]
    if torch.cuda.is_available():
        plans.append(("cuda", 4 if quick else 16, [1, 4 if quick else 16]))
    tmp = Path(tempfile.mkdtemp(prefix="diffmix_bench_batch_"))
    rows = []
    try:
        for device, n, groups in plans:
            songs = tmp / f"songs_{device}"
            _songs(songs, n, seconds)
            base = None
            for group in groups:
                took, results = _run(songs, tmp / f"out_{device}_{group}", device, group, extra)
                ok, worst_lu, worst_tp = _check(results)
                per_min = 60.0 * n / took
                base = base or per_min
                rows.append(
                    [
                        device,
                        str(n),
                        f"{seconds:g} s",
                        str(group),
                        f"{took:.1f} s",
                        f"{per_min:.2f}",
                        f"{per_min / base:.2f}x",
                        f"{ok}/{n}",
                        f"{worst_lu:.2f}",
                        f"{worst_tp:.2f}",
                    ]
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    note = (
        ""
        if torch.cuda.is_available()
        else "\n\nNo GPU in this run: GPU throughput and the 64-song batch goal (>= 50x this CPU) "
        "are not measured here."
    )
    return (
        f"Synthetic stereo songs at {SR} Hz mastered to Spotify (-14 LUFS, -1 dBTP) by the batch job"
        + (" (quick: 5 fit steps)" if quick else "")
        + ". Wall time includes process start and every write.\n\n"
        + table(
            rows,
            [
                "device",
                "songs",
                "length",
                "group size",
                "wall time",
                "songs / minute",
                "vs group 1",
                "ok",
                "worst |LUFS - target| LU",
                "worst true peak dBTP",
            ],
        )
        + note
    )
