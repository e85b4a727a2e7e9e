"""The console command, run for real as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def diffmix(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "diffmix.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_jobs(tmp_path):
    out = diffmix("--help", cwd=tmp_path)
    assert out.returncode == 0
    assert "demo" in out.stdout and "usage: diffmix <job>" in out.stdout


def test_python_dash_m_diffmix_is_the_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "diffmix", "demo", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "sample_rate: 44100" in out.stdout


def test_job_help_shows_defaults(tmp_path):
    out = diffmix("demo", "--help", cwd=tmp_path)
    assert out.returncode == 0 and "sample_rate: 44100" in out.stdout


def test_demo_mixes_then_masters(tmp_path):
    out = diffmix(
        "demo", "seconds=3.0", "mix_steps=3", "progress=false", f"out={tmp_path / 'o'}", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["mix"]["fit"]["steps"] == 3
    assert abs(summary["master"]["achieved"]["lufs"] - -14.0) <= 0.1
    assert summary["master"]["achieved"]["true_peak_dbtp"] <= -1.0
    info = sf.info(summary["master"]["audio"])
    assert info.frames == 3 * 44100 and info.channels == 2
    assert len(list((tmp_path / "o" / "stems").iterdir())) == 8


def test_a_run_finds_its_job_without_reading_the_jobs_help(monkeypatch, capsys):
    # Only the usage text parses each job module's source for its docstring.
    import diffmix.cli as cli

    assert cli.job_names() == list(cli.jobs())

    def no_parse(path):  # noqa: ANN001, ANN202
        raise AssertionError(f"{path} parsed on the run path")

    monkeypatch.setattr(cli, "_first_docstring_line", no_parse)
    assert cli.main(["nope"]) == cli.EXIT_USER_ERROR
    assert "unknown job; choose one of ['album', " in capsys.readouterr().err
    assert cli.main(["demo", "--help"]) == 0  # a known job: imported and composed, no parsing
    assert "sample_rate: 44100" in capsys.readouterr().out


def test_only_the_command_sets_its_imports_aside_from_the_garbage_collector(tmp_path):
    # main() as the process's command freezes what is imported (gc.freeze), so the
    # collector's full passes skip it; called from Python with argv it leaves gc alone.
    import gc

    import diffmix.cli as cli

    before = gc.get_freeze_count()
    assert cli.main(["nope"]) == cli.EXIT_USER_ERROR and gc.get_freeze_count() == before
    code = ("import atexit, gc, sys\nfrom diffmix import cli\nsys.argv = ['diffmix', 'nope']\n"
            "n = gc.get_freeze_count()\natexit.register(lambda: print(n, gc.get_freeze_count()))\ncli.main()")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    n0, n1 = (int(v) for v in out.stdout.split())
    assert n0 == 0 and n1 > 10_000 and out.returncode == cli.EXIT_USER_ERROR, out.stderr


def test_the_command_ends_its_process_after_the_exit_handlers_and_flushed_output(tmp_path):
    # main() as the process's command ends it without the interpreter's teardown: exit
    # handlers still run, buffered output still arrives, the code is the job's; while
    # another Python thread runs it returns and the interpreter ends as usual.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import atexit, sys, threading, time\nfrom diffmix import cli\n"
        "atexit.register(lambda: print('handler', flush=True))\n"
        "sys.stdout.write('buffered ')\n"
        "if sys.argv[1] == 'thread':\n    threading.Thread(target=time.sleep, args=(1.0,)).start()\n"
        "sys.argv = ['diffmix', 'nope']\nrc = cli.main()\nprint('returned', rc)\n"
    )
    ended = subprocess.run([sys.executable, "-c", code, "alone"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert ended.returncode == 2 and ended.stdout == "buffered handler\n", (ended.stdout, ended.stderr)
    assert "diffmix nope: error: unknown job" in ended.stderr
    waited = subprocess.run([sys.executable, "-c", code, "thread"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert waited.returncode == 0 and waited.stdout == "buffered returned 2\nhandler\n", waited.stdout


def test_unknown_job_and_bad_values_fail_in_one_line(tmp_path):
    out = diffmix("nope", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip().startswith("diffmix nope: error: unknown job")
    out = diffmix("demo", "sample_rate=0", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "diffmix demo: error: sample_rate must be a positive integer, got 0"
    assert not any((tmp_path / "outputs").rglob("*.wav"))


def test_unknown_config_key_is_refused(tmp_path):
    out = diffmix("demo", "sampel_rate=1", cwd=tmp_path)
    assert out.returncode != 0 and "sampel_rate" in out.stderr


def test_preset_with_a_value_out_of_range_fails_in_one_line(tmp_path):
    # Hydra wraps a constructor's ValueError in its own multi-line exception; the CLI must
    # still report the effect's message in one line, exit 2 and write nothing.
    preset = tmp_path / "bad.yaml"
    preset.write_text("_target_: diffmix.effects.gain.Pan\nsample_rate: 44100\npan: 3.0\n")
    song = tmp_path / "song.wav"
    sf.write(str(song), [[0.1, -0.1]] * 4410, 44100)
    before = song.read_bytes()
    out = diffmix("render", f"preset={preset}", f"input={song}", "out=o", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"diffmix render: error: preset {preset}: Pan: pan=3 is outside its range [-1, 1]"
    )
    assert song.read_bytes() == before and not (tmp_path / "o").exists()


def test_a_single_run_into_out_gets_the_config_hydras_runner_would_give(tmp_path, monkeypatch):
    """``out=`` without hydra.* options runs the job on the config composed for the checks
    (Hydra's runner would compose it twice more); with a hydra.* option Hydra runs it. The
    job sees the same config either way, without Hydra's node, and logs as under Hydra."""
    import logging

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    import diffmix.cli as cli
    import diffmix.jobs.analyze as job

    wav = tmp_path / "in.wav"
    sf.write(wav, [[0.1, -0.1]] * 4410, 44100)
    seen: list[dict] = []
    under_hydra: list[bool] = []

    def record(cfg) -> int:
        seen.append(OmegaConf.to_container(cfg))
        under_hydra.append(HydraConfig.initialized())
        return 0

    monkeypatch.setattr(job, "run", record)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # an earlier in-process run's
    monkeypatch.setattr(logging.root, "handlers", [])
    args = ["analyze", f"input={wav}", "seed=3"]
    assert cli.main([*args, f"out={tmp_path / 'a'}"]) == 0
    direct_handlers = [type(h).__name__ for h in logging.root.handlers]
    assert cli.main([*args, f"out={tmp_path / 'b'}", "hydra.job.chdir=false"]) == 0
    assert under_hydra == [False, True]
    assert len(seen) == 2 and "hydra" not in seen[0]
    assert seen[0] == {**seen[1], "out": str(tmp_path / "a")}
    assert direct_handlers == ["StreamHandler"] and logging.root.level == logging.INFO


_HUGE_PAGES_PROBE = """
import importlib, sys
import diffmix.cli as cli
job = sys.argv[1]
cli.job_names()
cli._allocator_for(job)  # as the command's own process does, before the job's imports
importlib.import_module(f"diffmix.jobs.{job}")
import torch
a = torch.empty(16 << 20)
a.fill_(1.0)
rollup = open("/proc/self/smaps_rollup").read().splitlines()
print(next(int(line.split()[1]) for line in rollup if line.startswith("AnonHugePages")))
"""


def _huge_kb(job: str, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "DIFFMIX_THP_DEFAULT")}
    out = subprocess.run([sys.executable, "-c", _HUGE_PAGES_PROBE, job],
                         env={**clean, **env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_mastering_jobs_turn_huge_pages_off_unless_the_user_set_them():
    import pytest

    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not Path("/proc/self/smaps_rollup").exists() or not mode.exists() or "[never]" in mode.read_text():
        pytest.skip("no transparent huge pages on this kernel")
    if _huge_kb("mix") == 0:  # import diffmix's default (a fit's loop), where the kernel gives them
        pytest.skip("the kernel gave no huge page to a 64 MB tensor (fragmented memory?)")
    assert _huge_kb("master") == 0  # a 64 MB tensor, touched: no huge page behind it
    assert _huge_kb("master", THP_MEM_ALLOC_ENABLE="1") > 0  # the user's choice is kept
    # run from a program that imported diffmix: its default is not taken for the user's
    assert _huge_kb("master", THP_MEM_ALLOC_ENABLE="1", DIFFMIX_THP_DEFAULT="1") == 0
