"""Stage 2: the predictor trained end to end through the differentiable mastering chain.

Each example takes one song's two halves: an excerpt of half A, as mastered, is the
*reference*; an excerpt of half B made to sound unmastered (:func:`pseudo_unmastered`:
its tone flattened, its dynamics expanded and its width narrowed, by random amounts) at a
random lower level is the *input*. The model predicts the chain's settings from their
features (:mod:`diffmix.learned.features`, as at use), the chain renders the input with
them up to the limiter (in its smooth mode, as the fit renders; the loudness solve sets
the drive later), and the loss is the objective's own terms
(:class:`~diffmix.objective.Objective`: tone, width, dynamics) against the reference.
A weighted stage-1 regression loss on the cached examples can stay on, so what stage 2
never sees (the spec-only inputs, the limiter drive) keeps what stage 1 learned.

With a match EQ (``match_eq``: the master job's node), an item is mastered as the learned
start of ``diffmix master ... fit.init=learned`` masters it: the match EQ's closed form
toward the reference, the features measured after it, the EQ at its configured start, the
width folded in closed form, and the prediction of the heads named ``trained`` (say the
compressor's). The loss is then the fit's objective where the fit would start, so stage 2
trains what the start keeps, not settings the start overwrites.

Every item is drawn from ``(seed, step, item)`` alone, so under ``torchrun`` a rank renders
only its rows and the run is one process's (:mod:`diffmix.learned.dist`).
"""

from __future__ import annotations

import fnmatch
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from diffmix.console import Bus
from diffmix.effects.dynamics import set_exact
from diffmix.fit import draw
from diffmix.functional.gain import width as width_fn
from diffmix.functional.match_eq import band_levels_db, match_centres, match_eq
from diffmix.learned import dist
from diffmix.learned.features import LUFS, feature_vector, mel_input, signal_features
from diffmix.learned.model import Predictor
from diffmix.learned.train import load_state, open_log, regression_loss, save_state, step_loss
from diffmix.mastering.chain import MATCH
from diffmix.objective import Objective


@torch.no_grad()
def pseudo_unmastered(
    x: Tensor, sample_rate: int, *, flatten: Tensor, expand: Tensor, width: Tensor
) -> Tensor:
    """A mastered excerpt made to sound unmastered, by per-item amounts.

    Args:
        x: ``(B, 2, T)`` mastered audio.
        sample_rate: Hz.
        flatten: ``(B,)`` 0..1, the fraction of the mid's third-octave tone curve's
            departure from its straight-line tilt (in log frequency) taken out, on mid and
            side alike (a zero-phase match EQ; gains within +-12 dB).
        expand: ``(B,)`` >= 0, dB added per dB of the 50 ms level above its median (and
            taken per dB below): an upward expander, the opposite of the master's
            compression (gains within -12..+6 dB).
        width: ``(B,)`` the mid/side width applied last (below 1: narrower).

    Shape:
        ``(B, 2, T)`` -> ``(B, 2, T)``.

    Not differentiable (it makes training inputs). CUDA: yes.
    """
    dev, dt = x.device, x.dtype
    centres = match_centres(sample_rate)
    mid = band_levels_db(x, sample_rate, centres)[:, 0].double()  # (B, bands)
    logf = torch.log2(centres).to(mid)
    design = torch.stack([torch.ones_like(logf), logf], -1)  # (bands, 2)
    coef = torch.linalg.pinv(design) @ mid.T  # (2, B): each item's least-squares tilt
    tilt = (design @ coef).T
    gain = (flatten.to(mid)[:, None] * (tilt - mid)).clamp(-12.0, 12.0).to(dt)
    y = match_eq(x, sample_rate, mid_gain_db=gain, side_gain_db=gain, centres_hz=centres)
    hop = max(1, round(0.01 * sample_rate))
    power = torch.nn.functional.avg_pool1d(y.square().mean(1, keepdim=True), 5 * hop, hop, ceil_mode=True)
    level = 10.0 * torch.log10(power.clamp_min(1e-10))  # (B, 1, frames)
    rel = level - level.median(-1, keepdim=True).values
    g_db = (expand.to(dev, dt)[:, None, None] * rel).clamp(-12.0, 6.0)
    g = torch.nn.functional.interpolate(10.0 ** (g_db / 20.0), size=y.shape[-1], mode="linear")
    return width_fn(y * g, sample_rate, width=width.to(dev, dt))


def raw_name(bus: Bus) -> dict[str, str]:
    """``"<effect>.<param>"`` -> the name of its raw tensor in ``bus.named_parameters()``."""
    where = {id(m): name for name, m in bus.named_modules()}
    return {key: f"{where[id(p)]}.raw" for key, p in bus.named_values().items()}


def render(bus: Bus, values: Mapping[str, Tensor], x: Tensor, until: str | None = "limiter") -> Tensor:
    """``bus`` on ``x`` with ``values`` (``{key: (B, *shape)}`` physical, differentiable)
    in place of its parameters, up to the effect ``until``; the others keep theirs.

    The values go through each parameter's own map (``ParamSpec.to_raw``, then the
    effect's ``from_raw``), so the effects see them to rounding, with their gradient.
    ``bus`` must hold ``B`` items.
    """
    names = raw_name(bus)
    params = bus.named_values()
    swapped = {}
    for key, v in values.items():
        p = params[key]
        swapped[names[key]] = p.spec.to_raw(v.to(x.device, torch.float64)).to(p.raw.dtype)
    return torch.func.functional_call(bus, swapped, (x,), {"until": until}, strict=False)


def draw_items(
    songs: Sequence[Tensor],
    rows: Sequence[int],
    *,
    seed: int,
    step: int,
    tag: str,
    length: int,
    input_gain_db: Sequence[float],
    flatten: Sequence[float],
    expand: Sequence[float],
    width: Sequence[float],
    sample_rate: int,
    device: torch.device | str = "cpu",
    cross_song: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(inputs, references)``, each ``(len(rows), 2, length)`` on ``device``: item ``i``
    of ``rows`` drawn from ``(seed, step, tag, i)`` alone (the same item on any rank).
    ``cross_song``: the reference is half A of another song (as a master toward someone
    else's record), not of the input's."""
    a_list, b_list, amounts = [], [], []
    for i in rows:
        gen = draw(seed, step, f"{tag}.{i}")
        si = int(torch.randint(len(songs), (1,), generator=gen))
        s = songs[si]
        half = s.shape[-1] // 2
        a0 = int(torch.randint(half - length + 1, (1,), generator=gen))
        b0 = half + int(torch.randint(s.shape[-1] - half - length + 1, (1,), generator=gen))
        u = torch.rand(4, generator=gen, dtype=torch.float64)
        r = s
        if cross_song and len(songs) > 1:  # drawn after the rest: the same input as without
            j = int(torch.randint(len(songs) - 1, (1,), generator=gen))
            r = songs[j + (j >= si)]
            a0 = int(torch.randint(r.shape[-1] // 2 - length + 1, (1,), generator=gen))
        lo, hi = (float(v) for v in input_gain_db)
        ranges = ((lo, hi), flatten, expand, width)
        amounts.append([float(r[0]) + (float(r[1]) - float(r[0])) * u[j] for j, r in enumerate(ranges)])
        a_list.append(r[:, a0 : a0 + length])
        b_list.append(s[:, b0 : b0 + length])
    a, b = torch.stack(a_list).to(device), torch.stack(b_list).to(device)
    k = torch.tensor(amounts, dtype=torch.float64)
    inputs = pseudo_unmastered(b, sample_rate, flatten=k[:, 1], expand=k[:, 2], width=k[:, 3])
    return inputs * (10.0 ** (k[:, 0] / 20.0)).to(inputs)[:, None, None], a


@torch.no_grad()
def as_at_use(chain: Bus, inputs: Tensor, references: Tensor, weights: Mapping[str, float],
              ceiling_db: float) -> dict[str, Any]:
    """Items set up as the learned start sets them up, for :func:`pool_losses`.

    ``chain`` (led by the match EQ, :data:`~diffmix.mastering.chain.MATCH`) gets the match
    EQ's closed form toward each item's reference and the width folded from its side gains
    (:func:`~diffmix.mastering.fit.init_match`, :func:`~diffmix.mastering.fit.fold_side_into_width`).
    Returns ``seen`` ``(B, 2, T)``: the inputs after the match EQ, which the features are
    measured on, as at use (:func:`~diffmix.learned.predict.predict_values`); ``feats``
    ``(B, F)``: the model's input; ``width`` ``(B,)``: the folded width; ``ref``: the
    objective's reference features (:class:`~diffmix.objective.Objective`), per item.

    Not differentiable (closed form, as at use).
    """
    from diffmix.mastering.fit import fold_side_into_width, init_match

    audios = [inputs[i : i + 1] for i in range(inputs.shape[0])]
    refs = [references[i : i + 1] for i in range(references.shape[0])]
    init_match(chain, audios, refs)
    if "width" in chain.effects:
        fold_side_into_width(chain, audios, refs)
    names = list(chain.effects)
    seen = chain(inputs, until=names[names.index(MATCH) + 1])
    sr = chain.sample_rate
    ins, rf = signal_features(seen, sr).cpu(), signal_features(references, sr).cpu()
    tp = torch.full((inputs.shape[0],), ceiling_db, dtype=torch.float64)
    width = chain.named_values()["width.width"].exact().reshape(-1) if "width" in chain.effects else None
    return {"seen": seen, "feats": feature_vector(ins, rf, rf[:, LUFS], tp, sr), "width": width,
            "ref": Objective(sr, weights, reference=references).to(inputs.device).ref}


def pool_losses(
    model: Predictor,
    chain: Bus,
    pool: Mapping[str, Any],
    idx: Tensor,
    objective: Objective,
    trained: Sequence[str] | None = None,
) -> Tensor:
    """``(len(idx),)`` the objective's loss of the pool's items ``idx`` (:func:`as_at_use`)
    mastered as the learned start masters them: after the match EQ, the EQ at its start,
    the folded width, and the prediction of the heads matching a glob in ``trained``
    (None: every head but the EQ's and the width's). ``chain`` is the chain without the
    match EQ, for ``len(idx)`` items; ``objective`` any with ``weights`` (its reference
    features are replaced by the items').

    Differentiable in the model's weights (through the chain).
    """
    values = model.values(model(pool["feats"][idx].to(model.mean.device)))
    values = {k: v for k, v in values.items() if not k.startswith(("eq.", "width."))
              and (trained is None or any(fnmatch.fnmatch(k, pat) for pat in trained))}
    if pool["width"] is not None:
        values["width.width"] = pool["width"][idx].reshape(values_shape(chain, "width.width", len(idx)))
    x = pool["seen"][idx]
    objective.ref = {k: v[idx.to(v.device)] for k, v in pool["ref"].items()}
    return objective(render(chain, values, x))[0]


def values_shape(chain: Bus, key: str, n: int) -> tuple[int, ...]:
    """``(n, *shape)`` of one item's value of ``key`` in ``chain``."""
    return (n, *chain.named_values()[key].exact().shape[1:])


def item_losses(
    model: Predictor,
    chain: Bus,
    inputs: Tensor,
    references: Tensor,
    weights: Mapping[str, float],
    ceiling_db: float,
) -> Tensor:
    """``(B,)`` the objective's loss of each input mastered by the model's prediction.

    Differentiable in the model's weights (through the chain).
    """
    sr = chain.sample_rate
    ins = signal_features(inputs, sr).cpu()
    refs = signal_features(references, sr).cpu()
    tp = torch.full((inputs.shape[0],), ceiling_db, dtype=torch.float64)
    feats = feature_vector(ins, refs, refs[:, LUFS], tp, sr)
    mel = getattr(model, "mel", None)
    if mel is not None:  # the CNN's spectrograms
        feats = torch.cat([feats, mel_input(inputs, references, sr, **{k: int(mel[k]) for k in
                                                                      ("bands", "frames", "n_fft")})], -1)
    feats = feats.to(model.mean.device)
    values = model.values(model(feats))
    y = render(chain, values, inputs)
    objective = Objective(sr, weights, reference=references).to(inputs.device)
    return objective(y)[0]


def train_end_to_end(
    model: Predictor,
    train_songs: Sequence[Tensor],
    val_songs: Sequence[Tensor],
    make_chain: Callable[[int], Bus],
    *,
    weights: Mapping[str, float],
    steps: int,
    batch_size: int,
    excerpt_s: float,
    lr: float,
    weight_decay: float,
    input_gain_db: Sequence[float],
    flatten: Sequence[float],
    expand: Sequence[float],
    width: Sequence[float],
    ceiling_db: float,
    regression: tuple[Tensor, Tensor, Tensor] | None,
    regression_weight: float,
    trained: Sequence[str] | None = None,
    match_chain: Callable[[int], Bus] | None = None,
    pool: int = 256,
    cross_song: bool = False,
    val_every: int,
    val_items: int,
    out: Path,
    first_step: int,
    seed: int,
    fingerprint: str,
    checkpoint_every: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Stage 2 (see the module doc): ``steps`` steps from ``model``'s weights, resuming
    from ``out/state2.safetensors`` when it belongs to this run.

    Validation (every ``val_every`` steps and before the first): the mean objective loss
    of ``val_items`` fixed items from ``val_songs``. The model ends with the weights of the
    best validation loss, the starting weights included (stage 2 can't make it worse on
    its own measure); returns that loss with ``start`` (the loss before stage 2) and the
    step. The log's steps continue stage 1's (``first_step`` + step).

    ``regression``: ``(features, targets, scales)`` of stage 1's examples; a batch of
    them adds ``regression_weight`` times the stage-1 loss at each step, on the heads
    that ``trained`` (globs; None: every head) leaves out, so what the chain trains isn't
    pulled back toward stage 1's targets.

    ``match_chain``: the chain led by the match EQ; then every item is mastered as the
    learned start masters it (:func:`as_at_use`, :func:`pool_losses`), and as that takes
    closed-form passes per item, a ``pool`` of training items is set up once (drawn from
    ``(seed, item)``) and each step takes ``batch_size`` of them, drawn from ``(seed, step)``.
    """
    sr = make_chain(1).sample_rate
    shortest = min(int(s.shape[-1]) // 2 for s in (*train_songs, *val_songs))
    length = min(int(round(excerpt_s * sr)), shortest)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    state_path = out / "state2.safetensors"
    step, best, best_state = load_state(state_path, model, opt, fingerprint)
    rank, _ = dist.world()
    log = open_log(out / "log.jsonl", first_step + step)
    bar = tqdm(total=steps, initial=step, disable=not progress or rank > 0, file=sys.stderr,
               desc="train (stage 2)", dynamic_ncols=True)
    chains: dict[int, Bus] = {}

    def chain(n: int) -> Bus:
        if n not in chains:
            chains[n] = make_chain(n).to(device)
            set_exact(chains[n], False)
        return chains[n]

    draw_opts = dict(length=length, input_gain_db=input_gain_db, flatten=flatten, expand=expand,
                     width=width, sample_rate=sr, seed=seed, device=device, cross_song=cross_song)

    pools: dict[str, dict[str, Any]] = {}
    objective: list[Objective] = []

    def setup(songs: Sequence[Tensor], rows: Sequence[int], tag: str) -> dict[str, Any]:
        parts = []
        for i in range(0, len(rows), batch_size):
            chunk = list(rows[i : i + batch_size])
            ins, refs = draw_items(songs, chunk, step=0, tag=tag, **draw_opts)  # type: ignore[arg-type]
            bus = match_chain(len(chunk)).to(device)  # type: ignore[misc]
            set_exact(bus, False)
            parts.append(as_at_use(bus, ins, refs, weights, ceiling_db))
            if not objective:
                objective.append(Objective(sr, weights, reference=refs[:1]).to(device))
        cat = lambda xs: None if xs[0] is None else torch.cat(xs)  # noqa: E731
        return {"seen": cat([q["seen"] for q in parts]), "feats": cat([q["feats"] for q in parts]),
                "width": cat([q["width"] for q in parts]),
                "ref": {k: torch.cat([q["ref"][k] for q in parts]) for k in parts[0]["ref"]}}

    def batch_loss(rows: Tensor, songs: Sequence[Tensor], at: int, tag: str) -> Tensor:
        if match_chain is None:
            ins, refs = draw_items(songs, rows.tolist(), step=at, tag=tag, **draw_opts)  # type: ignore[arg-type]
            return item_losses(model, chain(len(rows)), ins, refs, weights, ceiling_db)
        if tag not in pools:  # the validation items are this rank's rows; the training pool is whole
            pools[tag] = setup(songs, rows.tolist() if tag.endswith(".val") else range(pool), tag)
        idx = (torch.arange(len(rows)) if tag.endswith(".val")
               else torch.randperm(pool, generator=draw(seed, at, "stage2.pick"))[:batch_size][rows])
        return pool_losses(model, chain(len(rows)), pools[tag], idx, objective[0], trained)

    def validate() -> float:
        model.eval()
        rows = dist.rows(val_items)
        with torch.no_grad():
            part = batch_loss(rows, val_songs, 0, "stage2.val").sum() if len(rows) else torch.zeros(())
        return float(dist.total(part.double().to(device))) / val_items

    try:
        if not best:
            start = validate()
            best = {"loss": start, "start": start, "step": 0}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            log({"step": first_step, "stage": 2, "val2/loss": start})
        while step < steps:
            torch.manual_seed(draw(seed, step, "stage2.dropout" if rank == 0 else f"stage2.dropout.{rank}")
                              .initial_seed())
            model.train()
            loss = step_loss(
                lambda r, at=step: batch_loss(r, train_songs, at, "stage2").mean(), batch_size, params
            )
            shown = {"loss2": float(dist.total(loss.detach().double()))}
            if regression is not None and regression_weight > 0:
                x, y, scales = regression
                keep = None if trained is None else torch.cat([
                    torch.full((h.size,), not any(fnmatch.fnmatch(h.key, pat) for pat in trained),
                               dtype=torch.float64) for h in model.heads])
                idx = torch.randperm(x.shape[0], generator=draw(seed, step, "stage2.regression"))[:batch_size]

                def stage1_loss(r: Tensor, x=x, y=y, scales=scales, idx=idx, keep=keep) -> Tensor:  # noqa: ANN001
                    return regression_loss(model, x[idx[r]].float().to(device), y[idx[r]].double().to(device),
                                           scales, keep)[0]

                reg = step_loss(stage1_loss, len(idx), params)
                loss = loss + regression_weight * reg.to(loss)
                shown["loss1"] = float(dist.total(reg.detach().double()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            dist.all_reduce_grads(params)
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss2=f"{shown['loss2']:.4f}")
            log({"step": first_step + step, "stage": 2, **shown})
            if step % val_every == 0 or step == steps:
                v = validate()
                log({"step": first_step + step, "stage": 2, "val2/loss": v})
                if v < best["loss"]:
                    best = {**best, "loss": v, "step": step}
                    best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            if (step % checkpoint_every == 0 or step == steps) and rank == 0:
                save_state(state_path, model, opt, {"step": step, "fingerprint": fingerprint, "best": best},
                           best_state)
    finally:
        bar.close()
        log.close()
    if best_state:
        model.load_state_dict(best_state)
    model.eval()
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in best.items()}
