"""Learned mastering settings (issue 21): the shipped predictor beside today's fit and matchering.

Held-out songs: the shared multitracks' ``mix.flac`` (not in the training corpus). Each mix
is mastered toward each other one (``target=none``: the reference's loudness, -1 dBTP), by
five arms: the predictor alone (``fit.init=learned fit.steps=0``), the predictor plus 10
and plus 30 fit steps (on ``fit.learned.excerpt_s`` excerpts), today's default fit
(``fit.init=default``: at most 120 steps on the fixed excerpt pool, stopping after 24 without
a 0.5 % gain) and ``matchering.process`` (skipped with a note when matchering isn't importable). Every
diffmix arm runs the master job in this process (``diffmix.jobs.master.run`` on the
composed config), so its time is the job's own (load, predict/fit, solve, write; Python
start-up and imports excluded, one warm-up run first). Metrics on the written files as in
the mastering benchmark (b). Table (b) reads the +30 arm at several step counts (``PROBES``:
one job each) and takes the first at or under the default's final objective, with that
job's time. Then a 3-minute song (a shared mix looped) toward another mix, timed per arm.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._data import ROOT, SR, loop_to, measure, read, shared_sets, write
from benchmarks._timing import fmt_s, table
from benchmarks.mastering import _matchering, _pair_metrics

TITLE = "Learned mastering settings: predictor, predictor + fit, default fit, matchering"
ARMS = {  # name -> overrides
    "predictor only": ["fit.init=learned", "fit.steps=0"],
    "predictor + 10 steps": ["fit.init=learned", "fit.steps=10"],
    "predictor + 30 steps": ["fit.init=learned", "fit.steps=30"],
    "default fit (120 steps)": ["fit.init=default"],
}
METRICS = ("lufs_err", "over", "mid", "side", "sm")
# Table (b): the predictor + k steps for these k (within the +30 arm's budget); the time at
# which the +30 arm first reaches the default's objective is the smallest such k's job.
PROBES = (0, 5, 10, 15, 20, 25, 30)
NOTE_C = (
    "With `fit.steps=0` the job's `fit` stage is the closed-form match-EQ start plus the prediction "
    "(features of a 30 s window and the MLP); the rest of the job is the full-length render, the "
    "loudness solve (with the match-EQ refinement passes), delivery and measurement, which every arm pays."
)
MODEL: list[Path] = []  # the checkpoint the arms use (set by run)


def _master(inp: Path, ref: Path, out: Path, overrides: list[str]) -> tuple[float, dict]:
    """Run the master job in this process; its wall seconds and report (``cpu_s`` added:
    this process's CPU seconds over the job, all threads: the time on an idle machine)."""
    from hydra import compose, initialize_config_dir

    from diffmix.jobs import master

    args = [f"input={inp}", f"reference={ref}", "target=none", f"out={out}", "progress=false",
            "report=false", "plot=false", f"model={MODEL[0]}", *overrides]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="master", overrides=args)
    t0, c0 = time.perf_counter(), time.process_time()
    master.run(cfg)
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    report = json.loads(next(out.glob("*_report.json")).read_text())
    report["cpu_s"] = cpu
    return took, report


WEIGHTS = {"tone_mid": 1.0, "tone_side": 0.3, "width": 0.5, "dynamics": 0.2}  # configs/match/master.yaml


def _objective(inp: Path, ref: Path, report: dict) -> tuple[float, dict[str, float]]:
    """The fit's objective (the master config's terms, no prior) for the final settings,
    on the whole song rendered up to the limiter, as the fit renders: no excerpt noise and no
    smoothing lag, so a short and a long fit compare fairly. Returns it and its weighted terms."""
    import torch

    from diffmix.config import load_preset
    from diffmix.inputs import load_mix
    from diffmix.mastering import set_exact
    from diffmix.objective import Objective

    chain = load_preset(report["outputs"]["preset"])
    x, sr = load_mix(inp)
    r, _ = load_mix(ref, sr)
    set_exact(chain, False)
    with torch.no_grad():
        loss, terms = Objective(sr, WEIGHTS, reference=r)(chain(x, until="limiter", fuse=True))
    return float(loss[0]), {k: WEIGHTS[k] * float(v[0]) for k, v in terms.items()}


def _seconds(text: str) -> float:
    value, unit = text.split()
    return float(value) * (1e-3 if unit == "ms" else 1.0)


def _matchering_ok() -> str | None:
    import importlib.util

    if importlib.util.find_spec("matchering") is None:
        return "matchering is not importable here; its arm is skipped"
    return None


def run(quick: bool) -> str | None:
    sets = shared_sets()
    if len(sets) < 2:
        return "Fewer than 2 shared mixes: not run."
    # DIFFMIX_BENCH_LEARNED_MODEL: another checkpoint than the shipped one.
    shipped = ROOT / "checkpoints" / "mastering_mlp.safetensors"
    ckpt = Path(os.environ.get("DIFFMIX_BENCH_LEARNED_MODEL", shipped))
    if not ckpt.exists():
        return f"No checkpoint at {ckpt}: not run."
    MODEL[:] = [ckpt]
    load = os.getloadavg()
    mg_note = _matchering_ok()
    tmp = Path(tempfile.mkdtemp(prefix="diffmix-bench-learned-"))
    try:
        pairs = [(a, b) for a in sets for b in sets if a != b][: 1 if quick else None]
        _master(pairs[0][0] / "mix.flac", pairs[0][1] / "mix.flac", tmp / "warm", ARMS["predictor only"])
        rows, wins, fits = [], {m: 0 for m in METRICS}, []
        per_arm: dict[str, list[dict]] = {}
        for k, (a, b) in enumerate(pairs):
            ref, _ = read(b / "mix.flac")
            ref_m = measure(ref, SR)
            results = {}
            for i, (arm, overrides) in enumerate(ARMS.items()):
                out = tmp / f"pair{k}" / f"arm{i}"
                took, report = _master(a / "mix.flac", b / "mix.flac", out, overrides)
                audio, sr = read(Path(report["outputs"]["audio"]))
                m = _pair_metrics(audio, ref, ref_m, sr)
                objective, terms = _objective(a / "mix.flac", b / "mix.flac", report)
                fit = {"objective": objective, "terms": terms,
                       "fit_stage_s": report["timings_s"]["fit"], **(report.get("fit") or {})}
                results[arm] = (m, took, fit, report["cpu_s"])
            if mg_note is None:
                mg_path = tmp / f"pair{k}_matchering.wav"
                c0 = time.process_time()
                t_mg = _matchering(a / "mix.flac", b / "mix.flac", mg_path)
                c_mg = time.process_time() - c0
                audio, sr = read(mg_path)
                results["matchering 2.0.6"] = (_pair_metrics(audio, ref, ref_m, sr), t_mg, None, c_mg)
                p = results["predictor only"][0]
                m = results["matchering 2.0.6"][0]
                for key in METRICS:
                    wins[key] += p[key] < m[key] or (key == "over" and p[key] == m[key] == 0.0)
            first = True
            for arm, (m, took, _, cpu) in results.items():
                per_arm.setdefault(arm, []).append(m)
                rows.append([f"{a.name} -> {b.name}" if first else "", arm, f"{m['lufs_err']:.2f}",
                             f"{m['over']:.2f}", f"{m['mid']:.2f}", f"{m['side']:.2f}", f"{m['sm']:.2f}",
                             fmt_s(took), fmt_s(cpu)])
                first = False
            probes = {0: results["predictor only"][2], 10: results["predictor + 10 steps"][2],
                      30: results["predictor + 30 steps"][2]}
            for steps in PROBES:
                if steps not in probes:
                    out = tmp / f"pair{k}" / f"probe{steps}"
                    _, report = _master(a / "mix.flac", b / "mix.flac", out,
                                        ["fit.init=learned", f"fit.steps={steps}"])
                    objective, terms = _objective(a / "mix.flac", b / "mix.flac", report)
                    probes[steps] = {"objective": objective, "terms": terms,
                                     "fit_stage_s": report["timings_s"]["fit"], **(report.get("fit") or {})}
            fits.append((f"{a.name} -> {b.name}", results["default fit (120 steps)"][2], probes,
                         results["predictor only"][2]))
        for arm, ms in per_arm.items():
            means = [f"{np.mean([m[k] for m in ms]):.2f}" for k in METRICS]
            rows.append(["mean over pairs", arm, *means, "", ""])
        head = ["pair (input -> reference)", "arm", "|LUFS err| LU", "over -1 dBTP (dB)",
                "mid 1/3-oct RMS dB", "side 1/3-oct RMS dB", "side/mid err dB", "job wall time",
                "job CPU time"]
        text = [
            f"Load average while measuring (1/5/15 min): {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
            f"{os.cpu_count()} cores (shared machine). Checkpoint: `{ckpt.name}`. "
            "Held-out songs: the shared multitracks' mix.flac (not in the training corpus).",
            "### (a) Held-out reference pairs\n\n" + table(rows, head),
        ]
        if mg_note is None:
            n = len(pairs)
            verdict = "met" if all(v == n for v in wins.values()) else "**not met**"
            text.append("Predictor only better than matchering (overs: better or both zero): " + ", ".join(
                f"{k} {v}/{n}" for k, v in wins.items()) + f". Bar (every metric, every pair): {verdict}.")
        else:
            text.append(mg_note + ".")
        frows, ok = [], 0
        for name, d, probes, p0 in fits:
            p = probes[30]
            first = next((k for k in PROBES if probes[k]["objective"] <= d["objective"]), None)
            at = probes[first]["fit_stage_s"] if first is not None else math.nan
            fast = first is not None and at <= d["fit_stage_s"] / 3
            ok += fast
            frows.append([name, f"{p0['objective']:.3f}", f"{d['objective']:.3f}", fmt_s(d["fit_stage_s"]),
                          str(d["steps"]), " / ".join(f"{probes[k]['objective']:.3f}" for k in PROBES),
                          "no" if first is None else f"+{first}", "" if first is None else fmt_s(at),
                          "" if first is None else f"{at / max(d['fit_stage_s'], 1e-9):.2f}",
                          ", ".join(f"{k} {p['terms'][k] - d['terms'][k]:+.3f}" for k in WEIGHTS)])
        text.append(
            "### (b) Predictor + 30 steps against the default fit's objective\n\n"
            "The objective is the fit's own (the master config's terms: tone_mid, tone_side, width, "
            "dynamics; no prior) for the final settings, on the whole song rendered up to the limiter. "
            f"The +30 arm is read at {', '.join(f'+{k}' for k in PROBES)} steps (one master job each, "
            "+0 being the predictor-only arm's and +10, +30 those of table (a): a k-step fit is the "
            "30-step fit's first k steps, which depend on nothing after them, as no schedule or "
            "plateau stop acts within 30 steps); it reaches the default when the first of these is at "
            "or under the default's final objective, and the time it takes is that job's. Until "
            "session 13 the bench read +30 alone (its final objective and time). Times are the job's "
            "whole `fit` stage (match-EQ start, prediction, fit), wall. The last column splits the "
            "+30 arm's final objective minus the default's into its weighted terms.\n\n"
            + table(frows, ["pair", "predictor only: objective", "default: objective", "default: fit stage",
                            "default: steps", "+k objective (" + " / ".join(f"+{k}" for k in PROBES) + ")",
                            "first +k at or under default", "its fit stage", "time ratio",
                            "+30 minus default, by term"])
            + "\n\nBar (the +30 arm reaches the default's objective in at most 1/3 of its time): "
            + ("met" if ok == len(fits) else f"**not met** ({ok}/{len(fits)} pairs)") + "."
        )
        # (c) a 3-minute song
        a, b = sets[0], sets[1]
        audio, sr = read(a / "mix.flac")
        long = write(tmp / "song_3min.wav", loop_to(audio, 180 * sr), sr)
        trow = []
        for i, (arm, overrides) in enumerate(ARMS.items()):
            if quick and arm != "predictor only":
                continue
            took, report = _master(long, b / "mix.flac", tmp / "long" / f"arm{i}", overrides)
            stages = ", ".join(f"{k} {v:.2f}" for k, v in report["timings_s"].items())
            trow.append([arm, fmt_s(took), fmt_s(report["cpu_s"]), stages])
        if mg_note is None and not quick:
            c0 = time.process_time()
            t_mg = _matchering(long, b / "mix.flac", tmp / "long_mg.wav")
            trow.append(["matchering 2.0.6", fmt_s(t_mg), fmt_s(time.process_time() - c0), ""])
        took = _seconds(trow[0][1])
        cpu = _seconds(trow[0][2])
        text.append(
            f"### (c) A 3-minute song ({a.name} looped) toward {b.name}: job time\n\n"
            + table(trow, ["arm", "job wall time (in process; start-up excluded)", "job CPU time",
                           "report timings_s (wall, s)"])
            + "\n\n" + NOTE_C
            + f"\n\nBar (predictor only <= 1.5 s): {'met' if took <= 1.5 else '**not met**'} "
            f"(wall {fmt_s(took)}, CPU {fmt_s(cpu)} on this loaded machine)."
        )
        return "\n\n".join(text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
