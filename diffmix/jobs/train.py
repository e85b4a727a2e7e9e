"""Learn mastering settings from a corpus of mastered audio and write a checkpoint.

Options: ``corpus`` (required: folder, glob or manifest), ``source``/``licence`` (recorded
in the checkpoint), ``out`` (run folder; the same command again resumes a killed run),
``checkpoint`` (where the model goes), ``predictor`` (``mlp`` or ``cnn``: ``configs/predictor/``,
the ``model`` node), ``data.*`` (examples, excerpts, levels), ``prior.*`` (training ranges of the settings),
``stage1.*`` (parameter regression: epochs, batch size, learning rate), ``stage2.*`` (end to
end through the chain against ``loss.weights``; ``stage2.steps=0`` skips it), ``device``,
``seed``. Writes ``log.jsonl`` (losses, validation every epoch), ``state.safetensors`` /
``state2.safetensors`` (every ``checkpoint_every`` steps) and the checkpoint (safetensors
weights + JSON metadata). Several processes: ``torchrun --nproc-per-node=N -m diffmix.cli
train ...`` (:mod:`diffmix.learned.dist`). Use it with ``diffmix master ... fit.init=learned
model=PATH``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import diffmix
from diffmix.config import instantiate
from diffmix.console import Bus
from diffmix.errors import UserError
from diffmix.jobs._common import pick_device
from diffmix.learned import dist, tensorfile
from diffmix.learned.checkpoint import chain_effects, save_checkpoint
from diffmix.learned.data import list_corpus, load_songs, make_examples, split, usable
from diffmix.learned.features import FEATURE_VERSION, names
from diffmix.learned.model import KINDS, build
from diffmix.learned.predict import heads_for
from diffmix.learned.stage2 import train_end_to_end
from diffmix.learned.train import loss_scales, train_regression

log = logging.getLogger("diffmix")

def _chain_maker(cfg: DictConfig, sample_rate: int):  # noqa: ANN202
    OmegaConf.update(cfg, "sample_rate", sample_rate, force_add=True)

    def make(items: int) -> Bus:
        return Bus(sample_rate, instantiate(cfg.chain, _convert_="all", where="chain"), items=items)

    return make


DATA_KEYS = ("chain", "params", "data", "prior", "seed", "sample_rate", "val_fraction", "target")


def _fingerprint(cfg: DictConfig, files: list, keys: tuple[str, ...]) -> str:
    """A hash of the config nodes ``keys`` and the corpus's content."""
    nodes = {k: OmegaConf.select(cfg, k) for k in keys}
    keep = {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in nodes.items()
    }
    keep["files"] = [f.sha256 for f in files]
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _dataset(path: Path, fingerprint: str, make):  # noqa: ANN001, ANN202
    """The examples, cached in the run folder (a resumed run doesn't draw them again)."""
    if path.exists():
        tensors, meta = tensorfile.load(path)
        if meta.get("fingerprint") == fingerprint:
            return (tensors["train_x"], tensors["train_y"]), (tensors["val_x"], tensors["val_y"])
    train, val = make()
    if dist.world()[0] == 0:
        tensorfile.save(
            path,
            {"train_x": train[0], "train_y": train[1], "val_x": val[0], "val_y": val[1]},
            {"fingerprint": fingerprint},
        )
    return train, val


def _stage2(cfg, model, make_chain, train_songs, val_songs, train, prior, out, files, device):  # noqa: ANN001, ANN202, PLR0913
    """Stage 2 from ``cfg.stage2`` and ``cfg.loss`` (:mod:`diffmix.learned.stage2`)."""
    from diffmix.mastering.fit import available_weights

    s2, d, sr = cfg.stage2, cfg.data, int(cfg.sample_rate)
    match_eq, match_chain = s2.get("match_eq"), None
    if match_eq is not None:  # as the master job builds its chain with a reference
        from diffmix.mastering.chain import MATCH

        def match_chain(items: int) -> Bus:
            stage = instantiate(match_eq, _convert_="all", where="stage2.match_eq")
            effects = instantiate(cfg.chain, _convert_="all", where="chain")
            return Bus(sr, {MATCH: stage, **effects}, items=items)
    trained = s2.get("trained")
    weights = available_weights({str(k): float(v) for k, v in cfg.loss.weights.items()},
                                reference=True, target={})
    if not weights:
        raise UserError(f"stage2: loss.weights {dict(cfg.loss.weights)} has no reference term to train on")
    scales = loss_scales(model.heads, prior)
    return train_end_to_end(
        model,
        train_songs,
        val_songs,
        make_chain,
        weights=weights,
        steps=int(s2.steps),
        batch_size=int(s2.batch_size),
        excerpt_s=float(s2.excerpt_s),
        lr=float(s2.lr),
        weight_decay=float(s2.weight_decay),
        input_gain_db=list(d.input_gain_db),
        flatten=list(s2.flatten),
        expand=list(s2.expand),
        width=list(s2.width),
        ceiling_db=float(cfg.target.true_peak_db),
        regression=(train[0], train[1], scales),
        regression_weight=float(s2.regression),
        trained=None if trained is None else [str(t) for t in trained],
        match_chain=match_chain,
        pool=int(s2.get("pool", 256)),
        cross_song=bool(s2.get("cross_song", False)),
        val_every=int(s2.val_every),
        val_items=int(s2.val_items),
        out=out,
        first_step=_stage1_steps(cfg, int(train[0].shape[0])),
        seed=int(cfg.seed),
        fingerprint=_fingerprint(cfg, files, DATA_KEYS + ("model", "stage1", "stage2", "loss")),
        checkpoint_every=int(cfg.checkpoint_every),
        device=device,
        progress=bool(cfg.progress),
    )


def _stage1_steps(cfg: DictConfig, examples: int) -> int:
    return int(cfg.stage1.epochs) * max(1, math.ceil(examples / int(cfg.stage1.batch_size)))


def run(cfg: DictConfig) -> int:
    """The job; under ``torchrun`` every rank runs it (:mod:`diffmix.learned.dist`)."""
    device = dist.init(pick_device(str(cfg.device)))
    ok = False
    try:
        code = _run(cfg, device)
        ok = True
        return code
    finally:
        dist.close(wait=ok)  # a failing rank leaves at once (torchrun then stops the others)


def _run(cfg: DictConfig, device: torch.device) -> int:
    t0 = time.perf_counter()
    rank, world = dist.world()
    torch.manual_seed(int(cfg.seed))
    sr = int(cfg.sample_rate)
    kind = str(cfg.model.get("kind", "mlp"))
    if kind not in KINDS:
        raise UserError(f"model.kind={kind}: choose one of {sorted(KINDS)} (configs/predictor/)")
    mel = OmegaConf.to_container(cfg.model.mel, resolve=True) if kind == "cnn" else None
    out = Path(str(cfg.out))
    make_chain = _chain_maker(cfg, sr)
    prior = {str(k): [float(v) for v in r] for k, r in (cfg.prior or {}).items()}
    heads = heads_for(make_chain(1), list(cfg.params), prior)
    if not heads:
        raise UserError(f"params={list(cfg.params)} match no parameter of the chain")
    unknown = sorted(set(prior) - {h.key for h in heads})
    if unknown:
        raise UserError(f"prior names {unknown}, which are not predicted (params: {[h.key for h in heads]})")
    d, s2 = cfg.data, cfg.stage2
    listed = list_corpus(str(cfg.corpus), cfg.get("source"), cfg.get("licence"))
    # Every song is read once, here: those no example can be drawn from are left out (and
    # named) before the split, so neither side holds one.
    excerpt_s = max(float(d.excerpt_s), float(s2.excerpt_s) if int(s2.steps) > 0 else 0.0)
    files, songs, skipped = usable(listed, load_songs(listed, sr, float(d.max_song_s)), sr, 2.0 * excerpt_s)
    for s in skipped:
        log.warning("corpus: leaving out %s: %s", s["file"], s["reason"])
    if len(files) < 2:
        left = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3])
        left += f"; {len(skipped) - 3} more, named above" if len(skipped) > 3 else ""
        raise UserError(f"corpus: {len(files)} of {len(listed)} songs can be trained on; need at least 2"
                        + (f" (left out: {left})" if left else ""))
    song_of = {f.path: x for f, x in zip(files, songs, strict=True)}
    train_files, val_files = split(files, float(cfg.val_fraction), int(cfg.seed))
    # The examples depend on the data options only (a new model width reuses them); a
    # resumable state on everything that shapes the weights.
    data_print = _fingerprint(cfg, files, DATA_KEYS + (("model.mel",) if "mel" in cfg.model else ()))
    fingerprint = _fingerprint(cfg, files, DATA_KEYS + ("model", "stage1"))
    out.mkdir(parents=True, exist_ok=True)  # only once the corpus is known good
    if not cfg.resume and rank == 0:
        for stale in ("state.safetensors", "state2.safetensors", "dataset.safetensors", "log.jsonl"):
            (out / stale).unlink(missing_ok=True)
    dist.barrier()  # every rank sees the run folder as rank 0 left it

    def make():  # noqa: ANN202
        common = dict(
            device=device,
            per_excerpt=int(d.per_excerpt),
            excerpt_s=float(d.excerpt_s),
            input_gain_db=list(d.input_gain_db),
            spec_only=float(d.spec_only),
            ceiling_db=float(cfg.target.true_peak_db),
            seed=int(cfg.seed),
            mel=mel,
            until=d.get("reference_until"),
        )
        from tqdm import tqdm

        sets = []
        for what, fs, count in (
            ("train", train_files, int(d.examples)),
            ("val", val_files, int(d.val_examples)),
        ):
            shown = bool(cfg.progress) and rank == 0
            with tqdm(total=count, desc=f"examples ({what})", disable=not shown, leave=False) as bar:
                sets.append(
                    make_examples(
                        [song_of[f.path] for f in fs], make_chain, heads, prior, count=count, tag=what,
                        progress=bar.update, **common
                    )
                )
        return sets

    train, val = _dataset(out / "dataset.safetensors", data_print, make)
    t_data = time.perf_counter() - t0
    mean = train[0].mean(0)
    std = train[0].std(0).clamp_min(1e-3)
    dims = {**OmegaConf.to_container(cfg.model, resolve=True), "n_features": len(names(sr))}  # type: ignore[dict-item]
    model = build(dims, heads, mean, std).to(device)
    s1 = cfg.stage1
    metrics = train_regression(
        model,
        train,
        val,
        prior,
        out=out,
        epochs=int(s1.epochs),
        batch_size=int(s1.batch_size),
        lr=float(s1.lr),
        weight_decay=float(s1.weight_decay),
        seed=int(cfg.seed),
        fingerprint=fingerprint,
        checkpoint_every=int(cfg.checkpoint_every),
        progress=bool(cfg.progress),
    )
    if int(s2.steps) > 0:
        train_songs, val_songs = ([song_of[f.path] for f in fs] for fs in (train_files, val_files))
        metrics = {**metrics, "stage2": _stage2(cfg, model, make_chain, train_songs, val_songs, train, prior,
                                                 out, files, device)}
    spec = Path(str(cfg.corpus))
    root = spec if spec.is_dir() else spec.parent if spec.is_file() else None
    corpus = [{**f.as_dict(root), "split": "train"} for f in train_files]
    corpus += [{**f.as_dict(root), "split": "val"} for f in val_files]
    info = {
        "diffmix_version": diffmix.__version__,
        "features": {
            "version": FEATURE_VERSION,
            "sample_rate": sr,
            "window_s": float(d.window_s),
            "names": names(sr),
            "normalisation": "tensors mean and std (train-split statistics)",
        },
        "effects": chain_effects(make_chain(1), heads),
        "corpus": {"spec": Path(str(cfg.corpus)).name, "files": corpus, "left_out": skipped},
        "training": {
            "seed": int(cfg.seed),
            "processes": world,
            "examples": int(train[0].shape[0]),
            "val_examples": int(val[0].shape[0]),
            "prior": prior,
            "stage1": OmegaConf.to_container(s1, resolve=True),
            "stage2": OmegaConf.to_container(s2, resolve=True) if int(s2.steps) > 0 else None,
            "loss": OmegaConf.to_container(cfg.loss, resolve=True) if int(s2.steps) > 0 else None,
            "data": OmegaConf.to_container(d, resolve=True),
            "fingerprint": fingerprint,
        },
        "validation": metrics,
    }
    path = Path(str(cfg.checkpoint)) if cfg.get("checkpoint") else out / "model.safetensors"
    if rank > 0:
        return 0
    save_checkpoint(path, model, info)
    print(
        f"train: {path}  ({model.weight_count()} weights, {len(train_files)} train / {len(val_files)} val "
        f"songs, val loss {metrics.get('loss', float('nan')):.4f}, {world} process(es), data {t_data:.0f} s, "
        f"total {time.perf_counter() - t0:.0f} s)"
    )
    return 0
