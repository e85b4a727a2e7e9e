"""Training in several processes (issue 21): two real gloo processes on the CPU.

- The gradient all-reduce: each of 2 ranks sees only its rows of the global batch, and
  the summed gradient equals one process's gradient on the whole batch (checked on the
  raw gradient, which Adam's scale invariance would hide).
- ``torchrun --nproc-per-node=2 -m diffmix.cli train``, SIGKILLed mid-training and run
  again, draws the same examples as one process (bit for bit) and ends with the weights
  of a one-process run on the same global batches, within float summation order, after
  stage 1 and after a few steps of stage 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from diffmix.learned import tensorfile
from diffmix.learned.model import Head, Predictor
from diffmix.params import ParamSpec
from tests.jobs_helpers import ROOT, run_cli
from tests.test_learned import ONE_THREAD, TINY, corpus, trained  # noqa: F401 - shared fixtures

SEED = 4711


def _problem() -> tuple[Predictor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(SEED)
    heads = [
        Head("eq.gain_db", (3,), ParamSpec("gain_db", -24.0, 24.0, 0.0), (0.0,) * 3, (-6.0, 6.0)),
        Head("comp.ratio", (), ParamSpec("ratio", 1.0, 100.0, 4.0, scale="log"), (1.5,), (1.0, 4.0)),
    ]
    model = Predictor(12, heads, [16])
    with torch.no_grad():  # the zero-initialised last layer would give zero first-layer gradients
        model.net[-1].weight.normal_(0.0, 0.5)
    x = torch.randn(11, 12)  # an odd batch: the ranks get 6 and 5 rows
    y = torch.cat([torch.rand(11, 3) * 12 - 6, 1 + 3 * torch.rand(11, 1)], -1).double()
    scales = torch.ones(4, dtype=torch.float64)
    return model, x, y, scales


def _worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as td

    from diffmix.learned import dist
    from diffmix.learned.train import regression_loss, step_loss

    torch.set_num_threads(1)
    td.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    model, x, y, scales = _problem()
    params = list(model.net.parameters())
    rows = dist.rows(x.shape[0])
    step_loss(lambda r: regression_loss(model, x[r], y[r], scales)[0], x.shape[0], params).backward()
    local = [p.grad.clone() for p in params]
    dist.all_reduce_grads(params)
    tensorfile.save(
        Path(out) / f"rank{rank}.safetensors",
        {"rows": rows, **{f"local.{i}": g for i, g in enumerate(local)},
         **{f"summed.{i}": p.grad for i, p in enumerate(params)}},
    )
    td.destroy_process_group()


def test_all_reduced_gradients_equal_one_process(tmp_path: Path) -> None:
    from diffmix.learned.train import regression_loss

    print(f"seed {SEED}")
    mp.spawn(_worker, args=(f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=2, join=True)
    model, x, y, scales = _problem()
    regression_loss(model, x, y, scales)[0].backward()
    want = [p.grad for p in model.net.parameters()]
    got = [tensorfile.load(tmp_path / f"rank{r}.safetensors")[0] for r in (0, 1)]
    assert got[0]["rows"].tolist() == [0, 2, 4, 6, 8, 10] and got[1]["rows"].tolist() == [1, 3, 5, 7, 9]
    for i, w in enumerate(want):
        scale = float(w.abs().max())
        for r in (0, 1):  # every rank holds the whole batch's gradient after the all-reduce
            assert torch.allclose(got[r][f"summed.{i}"], w, rtol=1e-5, atol=1e-6 * scale), (r, i)
        # and before it, only its own rows' share: the two shares add up to the whole
        assert not torch.allclose(got[0][f"local.{i}"], w, rtol=1e-3, atol=1e-3 * scale), i
        assert torch.allclose(got[0][f"local.{i}"] + got[1][f"local.{i}"], w, rtol=1e-5, atol=1e-6 * scale), i


# --- torchrun through the real CLI --------------------------------------------------------
STEPS = 100
EXACT = [*(a for a in TINY if not a.startswith(("stage1.epochs", "checkpoint_every"))),
         "model.dropout=0", f"stage1.epochs={STEPS // 2}", "checkpoint_every=20",
         # and two steps of stage 2, its items split by rank too
         "stage2.steps=2", "stage2.batch_size=3", "stage2.excerpt_s=0.5", "stage2.val_every=2",
         "stage2.val_items=3"]


def _torchrun(args: list[str]) -> list[str]:
    # torchrun itself: --standalone picks a free port for the rendezvous.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "diffmix.cli", *args]


def test_torchrun_two_processes_resume_and_match_one_process(
    corpus: Path, trained: Path, tmp_path: Path  # noqa: F811 - fixtures
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    # One process, on the examples the fixture drew (the example cache's fingerprint covers
    # the data options only, so it is reused).
    shutil.copy(trained / "dataset.safetensors", one / "dataset.safetensors")
    r = run_cli("train", f"corpus={corpus / 'manifest.csv'}", f"out={one}", *EXACT, cwd=one, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 process(es)" in r.stdout
    # Two processes: they draw the examples themselves (half the batches each), are killed
    # (the whole process group, SIGKILL) once the first state is written, and run again.
    args = ["train", f"corpus={corpus / 'manifest.csv'}", f"out={two}", *EXACT]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **ONE_THREAD}
    proc = subprocess.Popen(_torchrun(args), cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = two / "state.safetensors"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run ended before its first state was written"
    killed_at = json.loads(tensorfile.load(state)[1]["state"])["step"]
    assert killed_at < STEPS and not (two / "model.safetensors").exists()
    r = subprocess.run(_torchrun(args), cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("train: ") == 1 and "2 process(es)" in r.stdout  # rank 0 alone reports
    # The examples: bit for bit those one process drew.
    a, _ = tensorfile.load(trained / "dataset.safetensors")
    b, _ = tensorfile.load(two / "dataset.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # The weights after all steps (the states) and the losses: one process's, to rounding.
    for state in ("state.safetensors", "state2.safetensors"):
        a, _ = tensorfile.load(one / state)
        b, _ = tensorfile.load(two / state)
        for k in (k for k in a if k.startswith("model.net.")):
            gap = float((a[k] - b[k]).abs().max())
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (state, k, gap)
    a, _ = tensorfile.load(one / "state.safetensors")
    assert not torch.allclose(a["model.net.0.weight"], tensorfile.load(trained / "state.safetensors")[0][
        "model.net.0.weight"], atol=1e-3)  # the comparison can tell runs apart (dropout 0.3 there)
    log_a = [json.loads(line) for line in (one / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log_b] == [x["step"] for x in log_a]  # each step once: rank 0 logs
    losses = [(x[k], y[k]) for x, y in zip(log_a, log_b, strict=True) for k in ("loss", "loss2", "val2/loss")
              if k in x]
    assert len(losses) == STEPS + 2 + 2
    assert all(abs(p - q) <= 1e-4 * abs(p) + 1e-6 for p, q in losses), losses[-3:]
