"""Learned-mastering checkpoints: safetensors weights plus one JSON metadata entry.

The metadata (``__metadata__["diffmix.learned"]``, JSON) holds the format, the diffmix
version, the model's dimensions, the feature spec (version, sample rate, names, window;
the normalisation statistics are the ``mean``/``std`` tensors beside the weights), the
ordered list of predicted parameters with their ranges and start values, the chain's
effect classes, the training corpus (files, SHA-256, source, licence, split) and the
validation metrics. Loading parses JSON and copies bytes; it never runs code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from diffmix.console import Bus
from diffmix.errors import UserError
from diffmix.learned import tensorfile
from diffmix.learned.model import Head, Predictor, build

FORMAT = "diffmix.learned/1"
META_KEY = "diffmix.learned"
DEFAULT_NAME = "mastering_mlp.safetensors"


def default_path() -> Path:
    """The shipped checkpoint: ``checkpoints/mastering_mlp.safetensors`` in the checkout."""
    return Path(__file__).resolve().parents[2] / "checkpoints" / DEFAULT_NAME


def save_checkpoint(path: str | Path, model: Predictor, info: Mapping[str, Any]) -> None:
    """Write ``model``'s weights and ``info`` (plus its heads and dims) to ``path``."""
    meta = dict(info)
    meta["format"] = FORMAT
    meta["model"] = {**dict(meta.get("model", {})), **model.dims()}
    meta["params"] = [h.as_dict() for h in model.heads]
    tensors = {k: v.detach().float() for k, v in model.state_dict().items()}
    tensorfile.save(path, tensors, {META_KEY: json.dumps(meta, sort_keys=True)})


def load_checkpoint(path: str | Path | None, kind: str | None = None) -> Predictor:
    """A :class:`Predictor` (or :class:`~diffmix.learned.model.MelCNN`, as its metadata
    says) from a checkpoint (None: the shipped one); UserError if unusable, or if ``kind``
    is given and the checkpoint's model is another kind.

    The metadata is on ``model.info``.
    """
    p = default_path() if path in (None, "", "null") else Path(str(path))
    if not p.exists():
        hint = " (train one with `diffmix train`, or pass model=PATH)" if path in (None, "", "null") else ""
        raise UserError(f"{p}: checkpoint not found{hint}")
    try:
        tensors, meta = tensorfile.load(p)
        info = json.loads(meta[META_KEY])
        if info.get("format") != FORMAT:
            raise ValueError(f"format {info.get('format')!r}, expected {FORMAT!r}")
        dims = info["model"]
        if kind is not None and dims.get("kind") != kind:
            found = dims.get("kind")
            raise UserError(f"{p}: model kind {found}, expected {kind} (a checkpoint loads as its own kind)")
        heads = [Head.from_dict(d) for d in info["params"]]
        model = build(dims, heads)
        model.load_state_dict(tensors, strict=True)
    except UserError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{p}: not a usable diffmix learned-mastering checkpoint ({first})") from exc
    model.info = info  # type: ignore[assignment]
    model.eval()
    return model


def chain_effects(chain: Bus, heads: list[Head]) -> dict[str, str]:
    """The class path of each chain effect a head belongs to."""
    wanted = {h.key.split(".")[0] for h in heads}
    return {
        name: f"{type(e).__module__}.{type(e).__name__}"
        for name, e in chain.effects.items()
        if name in wanted
    }


def check_chain(model: Predictor, chain: Bus, where: str = "checkpoint") -> None:
    """Refuse (UserError, one line) a model whose parameter list differs from ``chain``'s."""
    params = chain.named_values()
    for h in model.heads:
        p = params.get(h.key)
        if p is None:
            raise UserError(
                f"{where} predicts {h.key}, which the mastering chain does not have "
                f"(chain parameters: {', '.join(sorted(params))})"
            )
        shape = tuple(p.anchor.shape[1:])
        if shape != h.shape:
            raise UserError(
                f"{where} predicts {h.key} with shape {list(h.shape)}, the chain has {list(shape)}"
            )
        s = p.spec
        lo, hi = h.output_range()
        if s.scale != h.spec.scale or lo < s.min or hi > s.max:
            # What matters is that every prediction is a valid value of the chain's parameter
            # (a spec's bounds may follow the sample rate, as an EQ frequency's does).
            raise UserError(
                f"{where} predicts {h.key} in [{lo:g}, {hi:g}] ({h.spec.scale}), outside the chain's "
                f"range [{s.min:g}, {s.max:g}] ({s.scale})"
            )
    known = getattr(model, "info", {}).get("effects") or {}
    for name, cls in chain_effects(chain, model.heads).items():
        if known.get(name, cls) != cls:
            raise UserError(f"{where} was trained with {name} = {known[name]}, the chain has {cls}")


def file_sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Same names, dtypes, shapes and bits."""
    return set(a) == set(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )
