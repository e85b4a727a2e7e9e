"""Kill a batch run with SIGKILL part-way, rerun it, and check nothing is lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from jobs_helpers import ROOT, music, write

pytestmark = pytest.mark.slow

NAMES = [f"song{i}" for i in range(6)]
SR = 44100
SECONDS = 3.0


def _batch(manifest, out):
    return [
        sys.executable, "-m", "diffmix.cli", "batch", f"manifest={manifest}", f"out={out}",
        "fit.steps=15", "fit.excerpt_s=1.0", "group_size=1", "progress=false", "plot=false",
    ]


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


def test_sigkill_part_way_then_rerun_completes_every_item_once(tmp_path):
    rows = ["id,input"]
    for i, name in enumerate(NAMES):
        write(tmp_path / f"{name}.wav", music(SECONDS, SR, seed=i))
        rows.append(f"{name},{name}.wav")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    part = out / "results.rank0.jsonl"

    proc = subprocess.Popen(_batch(manifest, out), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not _lines(part) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the batch ended before it could be killed part-way"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    finished = [json.loads(x)["id"] for x in _lines(part) if x.endswith("}")]
    assert 1 <= len(finished) < len(NAMES), finished
    stamps = {n: os.path.getmtime(out / "items" / n / f"{n}_master.wav") for n in finished}

    # A kill can land anywhere; make the worst instants certain rather than lucky: a
    # temporary left mid-write in an unfinished item's folder and beside the merged
    # results, and a results line torn mid-append.
    todo = next(n for n in NAMES if n not in finished)
    (out / "items" / todo).mkdir(parents=True, exist_ok=True)
    (out / "items" / todo / f".{todo}_master.k1ll.partial.wav").write_bytes(b"RIFF\x00\x00")
    (out / ".results.k1ll.partial.jsonl").write_text('{"id": "song0"')
    with part.open("a") as fh:
        fh.write('{"id": "' + todo + '", "status": "o')

    rerun = subprocess.run(_batch(manifest, out), cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    merged = [json.loads(x) for x in _lines(out / "results.jsonl")]
    assert [r["id"] for r in merged] == NAMES  # one row per item, manifest order, no duplicate
    assert all(r["status"] == "ok" for r in merged)
    for name in finished:  # work done before the kill was kept, not redone
        assert os.path.getmtime(out / "items" / name / f"{name}_master.wav") == stamps[name]
    for row in merged:
        audio = row["outputs"]["audio"]
        info = sf.info(audio)
        assert (info.frames, info.channels, info.samplerate) == (int(SECONDS * SR), 2, SR)
        data, _ = sf.read(audio, dtype="float32")
        assert data.shape == (int(SECONDS * SR), 2) and np.isfinite(data).all()
        assert np.abs(data).max() > 1e-3  # a real master, not a zero-filled stub
        report = json.loads(open(row["outputs"]["report"]).read())
        assert report["id"] == row["id"] and report["achieved"]["under_ceiling"]
        assert os.path.getsize(row["outputs"]["preset"]) > 0
    leftovers = [str(p) for p in out.rglob("*") if ".partial" in p.name]
    assert leftovers == []
