"""Set a mastering chain's parameters from a learned prediction (the fit's start, or the
whole answer with ``fit.steps=0``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffmix.console import Bus
from diffmix.learned.checkpoint import check_chain, load_checkpoint
from diffmix.learned.features import LUFS, at_rate, feature_vector, mel_input, signal_features, window
from diffmix.learned.model import MEL_CHANNELS, Head, Predictor

_CACHE: dict[tuple[str, float], Predictor] = {}


def heads_for(
    chain: Bus, patterns: Sequence[str], ranges: Mapping[str, Sequence[float]] | None = None
) -> list[Head]:
    """The chain's differentiable parameters matching any glob in ``patterns``, in chain
    order, with their current (configured) values as start and their training ``ranges``
    (physical ``[lo, hi]``; a parameter without one stays at its start). One-item chain."""
    heads = []
    for key, p in chain.named_values().items():
        if p.spec.differentiable and any(fnmatch.fnmatch(key, pat) for pat in patterns):
            start = p.exact()[0]
            rng = (ranges or {}).get(key)
            heads.append(
                Head(
                    key,
                    tuple(start.shape),
                    p.spec,
                    tuple(float(v) for v in start.reshape(-1)),
                    None if rng is None else (float(rng[0]), float(rng[1])),
                )
            )
    return heads


def cached_checkpoint(path: str | Path | None) -> Predictor:
    """:func:`load_checkpoint`, kept while the file is unchanged (a batch loads it once)."""
    from diffmix.learned.checkpoint import default_path

    p = default_path() if path in (None, "", "null") else Path(str(path))
    key = (str(p.resolve()), p.stat().st_mtime if p.exists() else -1.0)
    if key not in _CACHE:
        _CACHE[key] = load_checkpoint(path)
    return _CACHE[key]


def _pad(xs: Sequence[Tensor]) -> Tensor:
    n = max(int(x.shape[-1]) for x in xs)
    return torch.cat([torch.nn.functional.pad(x, (0, n - x.shape[-1])) for x in xs])


@torch.no_grad()
def predict_values(
    model: Predictor,
    chain: Bus,
    audios: Sequence[Any],
    references: Sequence[Tensor] | None,
    target: Mapping[str, Any],
) -> dict[str, Tensor]:
    """``{key: (songs, *shape)}`` physical values the model predicts for ``chain``'s songs.

    ``audios`` are ``(1, 2, T)`` tensors (or anything sliced like them); the features of
    each are measured on a centred window after the chain's effects that precede the first
    predicted one (the match EQ, when there is one), as those effects will have shaped it.
    """
    info = getattr(model, "info", {})
    fr = int(info.get("features", {}).get("sample_rate", chain.sample_rate))
    window_s = float(info.get("features", {}).get("window_s", 30.0))
    sr = chain.sample_rate
    device = next(chain.parameters()).device
    wins = [torch.as_tensor(window(a, window_s, sr)[...]).to(device, torch.float32) for a in audios]
    lengths = [int(w.shape[-1]) for w in wins]
    names = list(chain.effects)
    first = min(names.index(h.key.split(".")[0]) for h in model.heads)
    x = _pad(wins)
    if first > 0:
        x = chain(x, until=names[first])
    ins = torch.cat(
        [signal_features(at_rate(x[i : i + 1, :, :n], sr, fr), fr).cpu() for i, n in enumerate(lengths)]
    )
    refs = None
    if references is not None:
        refs = torch.cat(
            [
                signal_features(at_rate(window(r, window_s, sr).to(device), sr, fr), fr).cpu()
                for r in references
            ]
        )
    goal = target.get("lufs")
    if goal is not None:
        lufs = torch.full((len(wins),), float(goal), dtype=torch.float64)
    else:  # the reference's loudness (as the job's goal), else the input's own
        lufs = (refs if refs is not None else ins)[:, LUFS].clone()
    ceiling = target.get("true_peak_db")
    tp = torch.full((len(wins),), -1.0 if ceiling is None else float(ceiling), dtype=torch.float64)
    feats = feature_vector(ins, refs, lufs, tp, fr)
    mel = getattr(model, "mel", None)
    if mel is not None:  # the CNN: spectrograms of a centred excerpt as long as it was trained on
        opts = {k: int(mel[k]) for k in ("bands", "frames", "n_fft")}
        sec = float(mel["seconds"])
        half = MEL_CHANNELS // 2 * opts["bands"] * opts["frames"]
        m_in = torch.cat([mel_input(at_rate(window(x[i : i + 1, :, :n], sec, sr), sr, fr), None, fr, **opts)
                          for i, n in enumerate(lengths)])[:, :half]
        m_ref = torch.zeros_like(m_in)
        if references is not None:
            m_ref = torch.cat([mel_input(at_rate(window(window(r, window_s, sr), sec, sr).to(device), sr, fr),
                                         None, fr, **opts) for r in references])[:, :half]
        feats = torch.cat([feats, m_in, m_ref], -1)
    model = model.to(device)
    raw = model(feats.to(device))
    return {k: v.double().cpu() for k, v in model.values(raw).items()}


def apply_prediction(
    chain: Bus,
    audios: Sequence[Any],
    references: Sequence[Tensor] | None,
    target: Mapping[str, Any],
    checkpoint: str | Path | Predictor | None = None,
) -> dict[str, Tensor]:
    """Set ``chain``'s predicted parameters in place (one row per song); returns them.

    Args:
        chain: the mastering :class:`~diffmix.console.Bus`, one item per song.
        audios: each song's input, ``(1, 2, T)`` at ``chain.sample_rate``.
        references: each song's reference ``(1, 2, T_i)``, or None (spec only).
        target: the loudness spec (``lufs``, ``true_peak_db``; either may be None).
        checkpoint: a path, a loaded :class:`Predictor`, or None for the shipped one.

    Raises:
        UserError: a missing or malformed checkpoint, or one whose parameter list differs
            from the chain's (the message names the difference).
    """
    model = checkpoint if isinstance(checkpoint, Predictor) else cached_checkpoint(checkpoint)
    check_chain(model, chain)
    values = predict_values(model, chain, audios, references, target)
    chain.load_values(values)
    return values


def learned_start(checkpoint: str | Path | Predictor | None = None):  # noqa: ANN201
    """A fit start (:data:`diffmix.mastering.fit.Start`) from a checkpoint: the match EQ's
    closed-form gains as by default, then the prediction (:func:`apply_prediction`) for
    what has no closed form (compressor, limiter drive; the EQ where there is no match EQ),
    then, with a reference, the width in closed form with the match EQ's side gains
    (:func:`fold_side_into_width`). With ``fit.steps=0`` the master is this start, its
    drive set by the loudness solve.

    With a match EQ the parametric EQ keeps its configured start, as in the default start:
    the match EQ's closed form (and its refinement on the whole master) already sets the
    tone band by band, and a predicted EQ on top of it only adds error the match EQ then
    has to take out (on the held-out benchmark pairs the start's objective was lower with
    the EQ flat on 4 of 6, e.g. 0.45 -> 0.24; BENCHMARKS.md, learned settings)."""
    from diffmix.mastering.chain import MATCH
    from diffmix.mastering.fit import fold_side_into_width, init_match

    def start(bus: Bus, audios: Sequence[Any], references: Sequence[Tensor] | None,
              target: Mapping[str, Any]) -> None:
        # As the default start (match_start), with the prediction between the match EQ's
        # closed form and the width's: the width is folded once, from the gains at width 1.
        match = references is not None and MATCH in bus.effects
        refs = references or []
        values = bus.named_values()
        kept = {k: p.exact().clone() for k, p in values.items() if match and k.startswith("eq.")}
        if match:
            init_match(bus, audios, refs)
        apply_prediction(bus, audios, references, target, checkpoint)
        if kept:
            bus.load_values(kept)
        if match and "width" in bus.effects:
            fold_side_into_width(bus, audios, refs)

    return start
