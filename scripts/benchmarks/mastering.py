"""Mastering: loudness-spec accuracy, reference matching beside matchering, and speed.

Workloads (issue 6 "Quality bars" and "Speed", issue 7 workload 4), each through the real
CLI (``python -m diffmix.cli master ...`` as a subprocess, so load and write are timed):

(a) **Loudness spec.** Each shared ``mix.flac`` and synthetic songs (a steady one and one
    with a 12 dB quiet/loud step) are mastered to several named targets. The WRITTEN file
    (24-bit WAV, dithered) is measured with diffmix's BS.1770 meter and, independently,
    with pyloudnorm; true peak with diffmix's 4x-oversampled meter. Bar: within 0.1 LU of
    the target and at or under the ceiling in every case.
(b) **Reference matching beside matchering.** Each shared mix is mastered toward each
    other shared mix (``target=none``: the reference's loudness, a -1 dBTP ceiling) and
    with ``matchering.process`` on the same pair. Metrics on the written files:
    integrated-loudness error vs the reference; true-peak over = max(0, output dBTP minus
    the ceiling), ceiling = -1 dBTP (the delivery ceiling both are asked to respect; we
    also show the over against the reference's own true peak); RMS error of the
    level-free 1/3-octave spectrum in mid and in side and the side/mid ratio error
    (``diffmix.features.spectral_errors``); wall time.
(c) **Speed** (issue 19). 3-minute songs (shared mixes looped), each CLI run a child
    process: to Spotify (median of 3 after a warm-up; goal <= 5 s), and to a reference
    beside matchering on the same pair in the same run (wall time and each child's own
    peak RSS from ``os.wait4``; goal: at most matchering's).
(d) **Toward released music outside the shared set**, as (b): pairs drawn at random (a
    printed seed) from mastered tracks that are not the shared multitracks' (Debian's
    ``warzone2100-music`` and ``singularity-music`` where installed, or
    ``DIFFMIX_BENCH_MUSIC``), 30 s excerpts, the input turned down 4-12 dB. Skipped, saying
    so, where there are none.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._data import (
    MUSIC,
    ROOT,
    SR,
    cli,
    loop_to,
    measure,
    music_seed,
    read,
    released_music,
    shared_sets,
    synthetic_song,
    write,
)
from benchmarks._timing import fmt_s, table
from diffmix.features import spectral_errors

TITLE = "Mastering: loudness specs, reference matching beside matchering, speed"
TARGETS = {  # name -> (LUFS, dBTP), as in configs/target
    "spotify": (-14.0, -1.0),
    "apple_music": (-16.0, -1.0),
    "amazon": (-14.0, -2.0),
    "ebu_r128": (-23.0, -1.0),
}
SPEC_TARGETS = ["spotify", "amazon", "ebu_r128"]  # -14/-1, -14/-2, -23/-1 on the real mixes
CEILING_DB = -1.0
# Which reference pairs (b) runs: "all" (every mix toward every other, 6 with 3 mixes) or
# "cycle" (each mix once as input and once as reference, 3): DIFFMIX_BENCH_MASTER_PAIRS.
PAIRS = os.environ.get("DIFFMIX_BENCH_MASTER_PAIRS", "all")


def _spec_cases(tmp: Path, quick: bool) -> list[tuple[str, Path, str]]:
    cases: list[tuple[str, Path, str]] = []
    for folder in shared_sets()[: 1 if quick else None]:
        for t in ["spotify"] if quick else SPEC_TARGETS:
            cases.append((folder.name, folder / "mix.flac", t))
    if quick and cases:
        return cases
    steady = write(tmp / "synth_steady.wav", synthetic_song(20.0, 1, level_db=-24.0), SR)
    dynamic = write(tmp / "synth_dynamic.wav", synthetic_song(20.0, 2, level_db=-30.0, dynamic=True), SR)
    cases += [("synthetic steady", steady, "spotify"), ("synthetic quiet/loud", dynamic, "apple_music")]
    return cases


def _loudness_spec(tmp: Path, quick: bool, steps: list[str]) -> str:
    rows, worst_lu, worst_over, failures = [], 0.0, -np.inf, 0
    for k, (name, path, target) in enumerate(_spec_cases(tmp, quick)):
        out = tmp / f"spec{k}"
        lufs, ceiling = TARGETS[target]
        try:
            took = cli("master", f"input={path}", f"target={target}", f"out={out}", "plot=false", *steps)
        except RuntimeError as exc:  # a failed case is a failed case: record it, go on
            failures += 1
            rows.append(
                [
                    name,
                    f"{target} ({lufs:g} LUFS, {ceiling:g} dBTP)",
                    "failed",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    f"**no**: {str(exc).splitlines()[-1][:160]}",
                ]
            )
            continue
        written = next(out.glob("*_master.wav"))
        audio, sr = read(written)
        m = measure(audio, sr)
        err = m["lufs"] - lufs
        err_pyln = m["lufs_pyln"] - lufs
        over = m["tp_dbtp"] - ceiling
        ok = abs(err) <= 0.1 and abs(err_pyln) <= 0.1 and over <= 0.0
        failures += not ok
        worst_lu = max(worst_lu, abs(err), abs(err_pyln))
        worst_over = max(worst_over, over)
        rows.append(
            [
                name,
                f"{target} ({lufs:g} LUFS, {ceiling:g} dBTP)",
                f"{m['lufs']:.2f}",
                f"{err:+.2f}",
                f"{m['lufs_pyln']:.2f}",
                f"{err_pyln:+.2f}",
                f"{m['tp_dbtp']:.2f}",
                fmt_s(took),
                "yes" if ok else "**no**",
            ]
        )
    head = [
        "input",
        "target",
        "LUFS (diffmix meter)",
        "error LU",
        "LUFS (pyloudnorm)",
        "error LU (pyln)",
        "true peak dBTP",
        "wall time",
        "within 0.1 LU and ceiling",
    ]
    verdict = "met" if failures == 0 else f"**not met** ({failures} of {len(rows)} cases fail)"
    return (
        "### (a) Master to a loudness spec (the written 24-bit file, re-measured)\n\n"
        + table(rows, head)
        + f"\n\nBar (within 0.1 LU and at/under the ceiling in every case): {verdict}; "
        f"worst loudness error {worst_lu:.2f} LU, worst true peak vs ceiling {worst_over:+.2f} dB."
    )


def _tp_over(tp_dbtp: float, ceiling: float) -> float:
    return max(0.0, tp_dbtp - ceiling)


def _pair_metrics(out: np.ndarray, ref: np.ndarray, ref_m: dict, sr: int) -> dict[str, float]:
    n = min(out.shape[-1], ref.shape[-1])
    m = measure(out, sr)
    spec = spectral_errors(
        torch.from_numpy(out[:, :n]).unsqueeze(0), torch.from_numpy(ref[:, :n]).unsqueeze(0), sr
    )
    return {
        "lufs_err": abs(m["lufs"] - ref_m["lufs"]),
        "over": _tp_over(m["tp_dbtp"], CEILING_DB),
        "over_ref": _tp_over(m["tp_dbtp"], ref_m["tp_dbtp"]),
        "tp": m["tp_dbtp"],
        "mid": spec["tone_mid_rms_db"],
        "side": spec["tone_side_rms_db"],
        "sm": spec["side_mid_ratio_error_db"],
    }


def _matchering(target: Path, reference: Path, out: Path) -> float:
    import matchering

    matchering.log(
        warning_handler=lambda *_: None, info_handler=lambda *_: None, debug_handler=lambda *_: None
    )
    t0 = time.perf_counter()
    matchering.process(target=str(target), reference=str(reference), results=[matchering.pcm24(str(out))])
    return time.perf_counter() - t0


def _reference_pairs(tmp: Path, quick: bool, steps: list[str]) -> str:
    sets = shared_sets()
    if len(sets) < 2:
        return "### (b) Master to a reference beside matchering\n\nFewer than 2 shared mixes: not run."
    pairs = list(itertools.permutations(sets, 2))
    if PAIRS == "cycle" and len(sets) > 2:  # every mix once as input and once as reference
        pairs = [(sets[0], sets[-1])] + [(sets[i + 1], sets[i]) for i in range(len(sets) - 1)]
    pairs = pairs[: 1 if quick else None]
    return (
        "### (b) Master to a reference, beside matchering "
        f"(matchering {__import__('matchering').__version__})\n\n"
        + _pairs_table([(f"{a.name} -> {b.name}", a / "mix.flac", b / "mix.flac") for a, b in pairs],
                       tmp / "b", steps)
    )


# (d): released, mastered music outside the shared set (`_data.released_music`).
MUSIC_PAIRS = 6
MUSIC_EXCERPT_S = 30.0


def _released_music_pairs(tmp: Path, quick: bool, steps: list[str]) -> str:
    title = "### (d) Master toward released music outside the shared set, beside matchering"
    files = released_music()
    if len(files) < 2 * MUSIC_PAIRS:
        return (f"{title}\n\nNot run: fewer than {2 * MUSIC_PAIRS} audio files under {MUSIC} "
                "(DIFFMIX_BENCH_MUSIC).")
    seed = music_seed("mastering (d)")
    rng = np.random.default_rng(seed)
    picks = [files[i] for i in rng.choice(len(files), 2 * MUSIC_PAIRS, replace=False)]
    pairs, cuts = [], []
    for k in range(1 if quick else MUSIC_PAIRS):
        paths = []
        for role, f in (("input", picks[2 * k]), ("reference", picks[2 * k + 1])):
            x, sr = read(f)
            x = torch.from_numpy(x if x.shape[0] == 2 else np.repeat(x[:1], 2, 0))
            if sr != SR:
                import torchaudio

                x = torchaudio.functional.resample(x, sr, SR)
            n, want = x.shape[-1], int(MUSIC_EXCERPT_S * SR)
            x = x[:, max(0, n // 2 - want // 2):][:, :want].numpy()
            if role == "input":  # an unmastered level: turned down 4-12 dB
                cut = float(rng.uniform(4.0, 12.0))
                x, _ = x * 10 ** (-cut / 20), cuts.append(cut)
            paths.append(write(tmp / f"d{k}_{role}.wav", x, SR, subtype="FLOAT"))
        pairs.append((f"{picks[2 * k].name} -> {picks[2 * k + 1].name} (input -{cuts[-1]:.1f} dB)", *paths))
    return (
        f"{title} (matchering {__import__('matchering').__version__})\n\n"
        f"Seed {seed} (`DIFFMIX_BENCH_MUSIC_SEED`): {len(pairs)} pairs drawn from {len(files)} files under "
        f"`{MUSIC}`; each side a {MUSIC_EXCERPT_S:.0f} s excerpt from the middle of its track, resampled to "
        f"{SR} Hz, the input turned down by a random 4-12 dB. Metrics as in (b).\n\n"
        + _pairs_table(pairs, tmp / "d", steps)
    )


def _pairs_table(pairs: list[tuple[str, Path, Path]], tmp: Path, steps: list[str]) -> str:
    """diffmix (the CLI, default config) and matchering on each ``(name, input, reference)``:
    the table, the means and the verdict of (b) and (d)."""
    rows, wins, total, done = [], {k: 0 for k in ("lufs_err", "over", "mid", "side", "sm")}, 0, 0
    failed: list[str] = []
    sums: dict[str, dict[str, float]] = {"diffmix": {}, "matchering": {}}
    for k, (name, a, b) in enumerate(pairs):
        ref, sr = read(b)
        ref_m = measure(ref, sr)
        out = tmp / f"pair{k}"
        mg_path = tmp / f"pair{k}_matchering.wav"
        mg_path.parent.mkdir(parents=True, exist_ok=True)
        t_mg = _matchering(a, b, mg_path)
        mg = _pair_metrics(read(mg_path)[0], ref, ref_m, sr)
        total += 1
        try:
            t_dm = cli(
                "master",
                f"input={a}",
                f"reference={b}",
                "target=none",
                f"out={out}",
                "plot=false",
                *steps,
            )
        except RuntimeError as exc:  # diffmix failed on this pair: matchering wins every metric
            failed.append(f"{name}: {str(exc).splitlines()[-1][:200]}")
            rows.append([name, "diffmix", "**failed**"] + ["-"] * 7)
            rows.append(
                [
                    "",
                    "matchering",
                    f"{mg['lufs_err']:.2f}",
                    f"{mg['tp']:.2f}",
                    f"{mg['over']:.2f}",
                    f"{mg['over_ref']:.2f}",
                    f"{mg['mid']:.2f}",
                    f"{mg['side']:.2f}",
                    f"{mg['sm']:.2f}",
                    fmt_s(t_mg),
                ]
            )
            continue
        dm = _pair_metrics(read(next(out.glob("*_master.wav")))[0], ref, ref_m, sr)
        done += 1
        for key in wins:
            # A tie at zero (no overs for either) counts for diffmix: "no worse" there.
            wins[key] += dm[key] < mg[key] or (key == "over" and dm[key] == mg[key] == 0.0)
        for engine, m, t in (("diffmix", dm, t_dm), ("matchering", mg, t_mg)):
            for key, v in {**m, "time": t}.items():
                sums[engine][key] = sums[engine].get(key, 0.0) + v
            rows.append(
                [
                    name if engine == "diffmix" else "",
                    engine,
                    f"{m['lufs_err']:.2f}",
                    f"{m['tp']:.2f}",
                    f"{m['over']:.2f}",
                    f"{m['over_ref']:.2f}",
                    f"{m['mid']:.2f}",
                    f"{m['side']:.2f}",
                    f"{m['sm']:.2f}",
                    fmt_s(t),
                ]
            )
    head = [
        "pair (input -> reference)",
        "engine",
        "|LUFS err| LU",
        "true peak dBTP",
        "over -1 dBTP (dB)",
        "over ref TP (dB)",
        "mid 1/3-oct RMS dB",
        "side 1/3-oct RMS dB",
        "side/mid err dB",
        "wall time",
    ]
    means = (
        []
        if not done
        else [
            ["mean over pairs diffmix finished", engine]
            + [
                f"{sums[engine][k] / done:.2f}"
                for k in ("lufs_err", "tp", "over", "over_ref", "mid", "side", "sm")
            ]
            + [fmt_s(sums[engine]["time"] / done)]
            for engine in ("diffmix", "matchering")
        ]
    )
    labels = {
        "lufs_err": "loudness error",
        "over": "true-peak overs",
        "mid": "mid spectrum",
        "side": "side spectrum",
        "sm": "side/mid ratio",
    }
    score = ", ".join(f"{labels[k]} {v}/{total}" for k, v in wins.items())
    allwin = all(v == total for v in wins.values())
    return (
        table(rows + means, head)
        + ("\n\n**diffmix failed on:** " + "; ".join(failed) if failed else "")
        + f"\n\nPairs where diffmix is better (overs: better or both zero): {score}. "
        f"Bar (better on every metric): {'met' if allwin else '**not met**'}. "
        "Overs are measured against -1 dBTP, the ceiling diffmix is given; matchering's own "
        "limiter aims at 0 dBFS sample peak, so its -1 dBTP overs are by design."
    )


# A child's peak RSS, read by the child itself at exit: ``ru_maxrss`` from wait4 is no use
# here, as Linux folds the parent's high-water mark into a child's at exec (this process
# holds torch and the parts above, ~1.2 GB, and read so for every child, matchering too).
_HWM_HOOK = (
    "import atexit, os\n"
    "def _hwm():\n"
    "    with open('/proc/self/status') as f, open(os.environ['DIFFMIX_BENCH_HWM'], 'w') as out:\n"
    "        out.write(next(line.split()[1] for line in f if line.startswith('VmHWM:')))\n"
    "atexit.register(_hwm)\n"
)


def _child(argv: list[str]) -> tuple[float, int]:
    """Run ``argv`` (a Python child) from this checkout; (wall seconds, the child's own
    peak RSS in bytes: its ``VmHWM`` at exit, written by a ``sitecustomize`` hook)."""
    with tempfile.TemporaryDirectory() as hook:
        (Path(hook) / "sitecustomize.py").write_text(_HWM_HOOK)
        hwm = Path(hook) / "hwm"
        env = dict(os.environ, DIFFMIX_BENCH_HWM=str(hwm),
                   PYTHONPATH=os.pathsep.join([hook, str(ROOT), os.environ.get("PYTHONPATH", "")]))
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = proc.communicate()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[2:5]} failed: {err.decode(errors='replace')[-1500:]}")
        if not hwm.exists():
            raise RuntimeError(f"{argv[2:5]}: the child wrote no peak RSS (its exit hooks did not run)")
        return wall, int(hwm.read_text()) * 1024


def _master_cli(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "diffmix.cli", "master", *overrides, "progress=false"]


_MATCHERING = (
    "import sys, matchering; matchering.log(lambda *a, **k: None, lambda *a, **k: None, "
    "lambda *a, **k: None); matchering.process(target=sys.argv[1], reference=sys.argv[2], "
    "results=[matchering.pcm24(sys.argv[3])])"
)


def _speed(tmp: Path, quick: bool) -> str:
    """3-minute songs end to end, each a child process (start-up, load, fit, write, report):
    to a spec (median of 3 after a warm-up run), and to a reference beside matchering on
    the same pair in the same run (wall time and the child's own peak RSS)."""
    sets = shared_sets()
    seconds = 10.0 if quick else 180.0
    if sets:
        mix, sr = read(sets[0] / "mix.flac")
        song, source = loop_to(mix, int(seconds * sr)), f"{sets[0].name} looped"
    else:
        song, sr, source = synthetic_song(seconds, 3), SR, "synthetic"
    path = write(tmp / "song_3min.wav", song, sr)
    load0 = os.getloadavg()
    spec = [_master_cli(f"input={path}", "target=spotify", f"out={tmp / f'speed{k}'}") for k in range(4)]
    runs = [_child(argv) for argv in spec]  # the first is the warm-up (numba's caches, disk)
    walls = sorted(w for w, _ in runs[1:])
    took, rss = walls[len(walls) // 2], max(r for _, r in runs[1:])
    report = json.loads(next((tmp / "speed1").glob("*_report.json")).read_text())
    inner = report.get("runtime_s")
    stages = report.get("timings_s") or {}
    split = ", ".join(f"{k} {v:.2f} s" for k, v in stages.items())
    rows = [[f"to Spotify: {seconds:g} s stereo 44.1 kHz ({source})", "diffmix", fmt_s(took),
             f"{rss / 2**20:.0f} MiB", f"{inner:.2f} s" if isinstance(inner, (int, float)) else "n/a"]]
    ref_rows: list[list[str]] = []
    ratio = ""
    if len(sets) >= 2:
        other, _ = read(sets[-1] / "mix.flac")
        ref = write(tmp / "ref_3min.wav", loop_to(other, int(seconds * sr)), sr)
        pair = f"to a reference: {sets[0].name} -> {sets[-1].name}, both looped to {seconds:g} s"
        dm = _child(_master_cli(f"input={path}", f"reference={ref}", "target=none", f"out={tmp / 'ref'}"))
        ref_report = json.loads(next((tmp / "ref").glob("*_report.json")).read_text())
        fit = ref_report.get("fit") or {}
        try:
            import matchering  # noqa: F401

            mg = _child([sys.executable, "-c", _MATCHERING, str(path), str(ref), str(tmp / "mg.wav")])
        except ImportError:
            mg = None
        ref_rows.append([pair, "diffmix", fmt_s(dm[0]), f"{dm[1] / 2**20:.0f} MiB",
                         f"{ref_report.get('runtime_s', float('nan')):.2f} s (fit: {fit.get('steps')} steps, "
                         f"{fit.get('stopped')}, {fit.get('seconds', float('nan')):.1f} s)"])
        if mg is not None:
            ref_rows.append(["", "matchering", fmt_s(mg[0]), f"{mg[1] / 2**20:.0f} MiB", "-"])
            ratio = (f" Reference master: diffmix takes {dm[0] / mg[0]:.2f}x matchering's time and "
                     f"{dm[1] / mg[1]:.2f}x its peak RSS (goal: at most 1x each: "
                     f"{'met' if dm[0] <= mg[0] and dm[1] <= mg[1] else '**not met**'}).")
    load1 = os.getloadavg()
    goal = "met" if took <= 5.0 else "**not met**"
    return (
        "### (c) Speed: 3-minute masters end to end (CLI child processes)\n\n"
        + table(rows + ref_rows, ["master", "engine", "wall time", "peak RSS (child)", "job's own runtime_s"])
        + (f"\n\nTo a spec, inside the job (report's `timings_s`): {split}; the rest of the wall "
           "time is Python start, imports, Hydra and loading." if split else "")
        + f"\n\nLoad average (1 min) at the start {load0[0]:.1f}, at the end {load1[0]:.1f} "
        "(2 cores; the rows share the machine with whatever else runs)."
        + (f"\n\nGoal (3-minute song to a spec <= 5 s): {goal}.{ratio}" if not quick
           else "\n\n(quick run: 10 s song)")
    )


def run(quick: bool) -> str:
    steps = ["fit.steps=5"] if quick else []
    tmp = Path(tempfile.mkdtemp(prefix="diffmix_bench_master_"))
    try:
        parts = [
            "Every case runs the real CLI with its default config"
            + (" (quick: fit.steps=5)" if quick else "")
            + "; outputs are 24-bit WAV with TPDF dither.",
            _loudness_spec(tmp, quick, steps),
            _reference_pairs(tmp, quick, steps),
            _speed(tmp, quick),
            _released_music_pairs(tmp, quick, steps),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return "\n\n".join(parts)
