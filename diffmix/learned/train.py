"""The training loop of the predictor: parameter regression on cached examples, with a
JSONL log, validation every epoch, a resumable state every N steps, and seeded,
reproducible batches (the same seed gives the same weights on CPU).

The resumable state (``state.safetensors``: weights, Adam moments, step) is safetensors
as well, so nothing in a run folder is unpickled.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from diffmix.fit import draw
from diffmix.io import atomic_write_text
from diffmix.learned import dist, tensorfile
from diffmix.learned.model import Head, Predictor


def loss_scales(heads: Sequence[Head], prior: Mapping[str, Sequence[float]]) -> Tensor:
    """Per output entry: the width of its training range in its warped domain (so an
    error of a whole prior range costs 1 for every parameter)."""
    out = []
    for h in heads:
        lo, hi = prior.get(h.key, (h.spec.min, h.spec.max))
        lo, hi = max(float(lo), h.spec.min), min(float(hi), h.spec.max)
        w = math.log(hi / lo) if h.spec.scale == "log" else hi - lo
        out.append(torch.full((h.size,), max(w, 1e-6), dtype=torch.float64))
    return torch.cat(out)


def warp_flat(heads: Sequence[Head], y: Tensor) -> Tensor:
    """Physical ``(n, n_out)`` in head order -> each entry in its warped (log) domain."""
    parts, i = [], 0
    for h in heads:
        parts.append(h.warp(y[:, i : i + h.size]))
        i += h.size
    return torch.cat(parts, -1)


def regression_loss(
    model: Predictor, x: Tensor, y: Tensor, scales: Tensor, keep: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mean squared scaled error, and the per-entry absolute warped error ``(n_out,)``;
    ``keep`` ``(n_out,)``: a weight per entry (0 leaves it out of the mean)."""
    raw = model(x)
    pred = torch.cat([v.reshape(v.shape[0], -1) for v in model.values(raw).values()], -1)
    scales = scales.to(pred)
    err = (warp_flat(model.heads, pred) - warp_flat(model.heads, y.to(pred))) / scales
    if keep is None:
        return err.square().mean(), (err.detach().abs() * scales).mean(0)
    keep = keep.to(err)
    loss = (err.square() * keep).sum(-1).mean() / keep.sum().clamp_min(1.0)
    return loss, (err.detach().abs() * scales).mean(0)


def head_errors(heads: Sequence[Head], per_entry: Tensor) -> dict[str, float]:
    """Mean absolute error per head (dB, LU, ... ; log-scaled heads as a ratio in dB... of
    the natural log: reported as ``x`` factor)."""
    out, i = {}, 0
    for h in heads:
        e = float(per_entry[i : i + h.size].mean())
        out[h.key] = math.exp(e) if h.spec.scale == "log" else e
        i += h.size
    return out


def _state_tensors(
    model: Predictor, opt: torch.optim.Optimizer, best: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    tensors = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in (best or {}).items()})
    for i, p in enumerate(model.parameters()):
        st = opt.state.get(p, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in st:
                tensors[f"opt.{i}.{name}"] = st[name].detach().clone()
        if "step" in st:
            tensors[f"opt.{i}.step"] = torch.as_tensor(st["step"]).detach().clone().reshape(1).double()
    return tensors


def save_state(
    path: Path,
    model: Predictor,
    opt: torch.optim.Optimizer,
    info: Mapping[str, Any],
    best: Mapping[str, Tensor] | None = None,
) -> None:
    """Weights, Adam moments, the best-validation weights so far, and ``info`` (JSON)."""
    meta = {"state": json.dumps(dict(info), sort_keys=True)}
    tensorfile.save(path, _state_tensors(model, opt, best), meta)


def load_state(
    path: Path, model: Predictor, opt: torch.optim.Optimizer, fingerprint: str
) -> tuple[int, dict[str, Any], dict[str, Tensor]]:
    """Restore weights and Adam moments saved by :func:`save_state`; returns the step
    reached, the best validation metrics and the best weights (``0, {}, {}`` for a fresh
    run: no state, or another run's)."""
    if not path.exists():
        return 0, {}, {}
    tensors, meta = tensorfile.load(path)
    info = json.loads(meta.get("state", "{}"))
    if info.get("fingerprint") != fingerprint:
        return 0, {}, {}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    for i, p in enumerate(model.parameters()):
        if f"opt.{i}.exp_avg" in tensors:
            opt.state[p] = {
                "step": tensors[f"opt.{i}.step"].reshape(()).float(),
                "exp_avg": tensors[f"opt.{i}.exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"].to(p.device),
            }
    best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return int(info["step"]), dict(info.get("best", {})), best_state


class _NoLog:
    """What ranks other than 0 log: nothing."""

    def __call__(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def open_log(path: Path, keep_until: int) -> _Log | _NoLog:
    """Rank 0's log (see :class:`_Log`); the other ranks' is silent."""
    return _Log(path, keep_until) if dist.world()[0] == 0 else _NoLog()


def step_loss(loss_of, n: int, params: Sequence[Tensor]) -> Tensor:  # noqa: ANN001
    """This rank's share of the mean loss of a global batch of ``n`` items.

    ``loss_of(rows)`` is the mean loss over ``rows`` (this rank's, :func:`dist.rows`);
    scaled by their share of ``n``, the shares add up over ranks to the global batch's
    mean, so the summed gradients (:func:`dist.all_reduce_grads`) are one process's. A
    rank with no rows (a batch smaller than the world) contributes zero.
    """
    rows = dist.rows(n)
    if len(rows) == 0:
        return sum(p.sum() for p in params) * 0.0  # type: ignore[return-value]
    return loss_of(rows) * (len(rows) / n)


class _Log:
    """JSON lines, plus TensorBoard scalars when tensorboard is installed."""

    def __init__(self, path: Path, keep_until: int) -> None:
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= keep_until]
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))  # a resumed run drops what it redoes
        self.f = path.open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package

            self.tb: Any = SummaryWriter(str(path.parent / "tensorboard"), purge_step=keep_until + 1)
        except ImportError:
            self.tb = None

    def __call__(self, record: dict[str, Any]) -> None:
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()


def train_regression(
    model: Predictor,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    prior: Mapping[str, Sequence[float]],
    *,
    out: Path,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    fingerprint: str,
    checkpoint_every: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Stage 1: fit ``model`` to predict the targets from the features, resuming from
    ``out/state.safetensors`` when it belongs to this run (same ``fingerprint``).

    Validation runs every epoch; the model ends with the weights of the best validation
    loss (early stopping without stopping), whose metrics are returned. Batches and dropout
    are drawn from ``(seed, epoch)`` and ``(seed, step)`` only, so a resumed run takes the
    same steps as an uninterrupted one.
    """
    x, y = train
    scales = loss_scales(model.heads, prior)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = max(1, math.ceil(x.shape[0] / batch_size))
    total = epochs * per_epoch
    state_path = out / "state.safetensors"
    step, best, best_state = load_state(state_path, model, opt, fingerprint)
    rank, _ = dist.world()
    log = open_log(out / "log.jsonl", step if step < total else sys.maxsize)  # done: stage 2's lines stay
    bar = tqdm(
        total=total, initial=step, disable=not progress or rank > 0, file=sys.stderr, desc="train",
        dynamic_ncols=True,
    )
    device = model.mean.device
    xf, yf = x.float().to(device), y.double().to(device)
    params = list(model.parameters())
    try:
        while step < total:
            epoch, k = divmod(step, per_epoch)
            order = torch.randperm(x.shape[0], generator=draw(seed, epoch, "order"))
            idx = order[k * batch_size : (k + 1) * batch_size]
            # Dropout masks: one process draws them from the step; a rank from (step, rank).
            torch.manual_seed(draw(seed, step, "dropout" if rank == 0 else f"dropout.{rank}").initial_seed())
            model.train()
            loss = step_loss(
                lambda r, idx=idx: regression_loss(model, xf[idx[r]], yf[idx[r]], scales)[0], len(idx), params
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            dist.all_reduce_grads(params)
            opt.step()
            step += 1
            shown = float(dist.total(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{shown:.4f}")
            log({"step": step, "epoch": epoch, "loss": shown})
            if step % per_epoch == 0:
                metrics = validate(model, val, scales)
                log({"step": step, "epoch": epoch, **{f"val/{k}": v for k, v in metrics.items()}})
                if not best or metrics["loss"] < best["loss"]:
                    best = {**metrics, "epoch": epoch, "step": step}
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if (step % checkpoint_every == 0 or step == total) and rank == 0:
                state = {"step": step, "fingerprint": fingerprint, "best": best}
                save_state(state_path, model, opt, state, best_state)
    finally:
        bar.close()
        log.close()
    if best_state:
        model.load_state_dict(best_state)
    model.eval()
    return best


@torch.no_grad()
def validate(model: Predictor, val: tuple[Tensor, Tensor], scales: Tensor) -> dict[str, Any]:
    """Validation loss and mean absolute error per head (log-scaled heads: as a factor)."""
    model.eval()
    device = model.mean.device
    loss, per_entry = regression_loss(model, val[0].float().to(device), val[1].double().to(device), scales)
    return {
        "loss": float(loss),
        **{f"mae/{k}": round(v, 4) for k, v in head_errors(model.heads, per_entry).items()},
    }
