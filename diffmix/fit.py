"""The fitting loop: seeded, on random excerpts, with plateau stopping and resumable checkpoints.

The loop knows nothing about audio: it gets the tensors to optimise and a closure that
returns ``(loss, terms)`` for step ``k``. Random excerpts are drawn from generators seeded
by ``(seed, item, step)`` (:func:`draw`), so a resumed fit continues exactly and an item
fitted inside a batch sees the same excerpts as when fitted alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from diffmix.checks import input_checks

Closure = Callable[[int], tuple[Tensor, dict[str, float]]]


@dataclass
class FitResult:
    """What a fit did: steps run, final and best smoothed loss, per-step terms, why it stopped."""

    steps: int
    loss: float
    best_loss: float
    stopped: str
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def draw(seed: int, step: int, item: str = "") -> torch.Generator:
    """A generator seeded by ``(seed, item, step)`` alone: no state to save or share."""
    key = zlib.crc32(f"{int(seed)}|{item}|{int(step)}".encode())
    return torch.Generator().manual_seed(key)


def excerpt_starts(
    length: int, excerpt: int, count: int, generator: torch.Generator
) -> list[int]:
    """``count`` random start samples of ``excerpt``-long windows inside ``length`` samples."""
    if excerpt >= length:
        return [0] * count
    return torch.randint(0, length - excerpt + 1, (count,), generator=generator).tolist()


def excerpt_pool(length_all: int, length: int, count: int) -> list[int]:
    """``count`` excerpt starts spread evenly over ``length_all`` samples (the same every
    run, whatever the song is called); one start at 0 when the song is no longer than an
    excerpt."""
    if length >= length_all:
        return [0]
    return sorted({int(round(v)) for v in torch.linspace(0, length_all - length, count).tolist()})


def _fingerprint(params: Sequence[Tensor], tag: str) -> str:
    shapes = ";".join(str(tuple(p.shape)) for p in params)
    return hashlib.sha256(f"{tag}|{shapes}".encode()).hexdigest()[:16]


def fit(
    params: Sequence[Tensor],
    closure: Closure,
    *,
    steps: int,
    optimizer: Callable[[Sequence[Tensor]], torch.optim.Optimizer],
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    patience: int = 50,
    min_delta: float = 1e-4,
    cycle: int = 1,
    checkpoint: Path | None = None,
    checkpoint_every: int = 25,
    tag: str = "",
    progress: bool = True,
    log_path: Path | None = None,
) -> FitResult:
    """Minimise ``closure``'s loss over ``params``.

    Args:
        params: leaf tensors (raw, unconstrained parameters) to optimise.
        closure: ``step -> (loss, terms)``; draws its excerpts with :func:`draw`.
        steps: maximum optimiser steps.
        optimizer: ``params -> Optimizer`` (a Hydra ``_partial_``).
        scheduler: ``optimizer -> LR scheduler`` or None.
        patience: stop when the smoothed loss has not improved by ``min_delta``
            (relative) for this many steps.
        cycle: the closure scores a repeating cycle of this many excerpts (a fixed pool);
            the smoothed loss is then the mean over the last whole cycle, so that easy and
            hard excerpts don't read as progress or as a plateau. 1: an exponential average.
        checkpoint: file to save to every ``checkpoint_every`` steps and resume from.
        tag: identifies the problem; a checkpoint from another problem is not resumed.
        log_path: JSON-lines file receiving every step's loss terms.
    """
    if steps < 0:
        raise ValueError(f"fit: steps must be >= 0, got {steps}")
    params = list(params)
    opt = optimizer(params)
    sched = scheduler(opt) if scheduler is not None else None
    state: dict[str, Any] = {"step": 0, "ema": math.inf, "best": math.inf, "since_best": 0}
    history: list[dict[str, float]] = []
    key = _fingerprint(params, tag)
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        if saved.get("key") == key:
            with torch.no_grad():
                for p, v in zip(params, saved["params"], strict=True):
                    p.copy_(v)
            opt.load_state_dict(saved["optimizer"])
            if sched is not None and saved.get("scheduler") is not None:
                sched.load_state_dict(saved["scheduler"])
            state, history = saved["state"], saved["history"]
    t0 = time.perf_counter()
    stopped = "steps"
    log = log_path.open("a") if log_path is not None else None
    bar = tqdm(
        total=steps, initial=state["step"], disable=not progress, file=sys.stderr,
        desc="fit", dynamic_ncols=True, leave=False,
    )
    try:
        while state["step"] < steps:
            opt.zero_grad(set_to_none=True)
            # Inputs were validated when loaded; the per-call NaN scan would sync every step.
            with input_checks(False):
                loss, terms = closure(state["step"])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fit: loss became {float(loss.detach())} at step {state['step']}")
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            value = float(loss.detach())
            state["step"] += 1
            row = {"step": state["step"], "loss": value, **terms}
            history.append(row)
            if cycle > 1:
                smooth = sum(h["loss"] for h in history[-cycle:]) / cycle if len(history) >= cycle else None
            else:
                smooth = value if math.isinf(state["ema"]) else 0.9 * state["ema"] + 0.1 * value
            if smooth is not None:
                state["ema"] = smooth
                if smooth < state["best"] * (1 - min_delta):
                    state["best"], state["since_best"] = smooth, 0
                else:
                    state["since_best"] += 1
            if log is not None:
                log.write(json.dumps(row) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4g}")
            if checkpoint is not None and state["step"] % checkpoint_every == 0:
                _save(checkpoint, key, params, opt, sched, state, history)
            if state["since_best"] >= patience:
                stopped = "plateau"
                break
    finally:
        bar.close()
        if log is not None:
            log.close()
    if checkpoint is not None:
        _save(checkpoint, key, params, opt, sched, state, history)
    return FitResult(
        steps=state["step"],
        loss=history[-1]["loss"] if history else math.nan,
        best_loss=state["best"],
        stopped=stopped,
        seconds=time.perf_counter() - t0,
        history=history,
    )


def _save(path: Path, key: str, params, opt, sched, state, history) -> None:  # noqa: ANN001
    from diffmix.io import atomic_path

    blob = {
        "key": key,
        "params": [p.detach().cpu().clone() for p in params],
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict() if sched is not None else None,
        "state": dict(state),
        "history": history,
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
