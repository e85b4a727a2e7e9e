"""Job glue for mastering: the master, batch and album configs turned into the typed
arguments of :mod:`diffmix.mastering` (the config stops here)."""

from __future__ import annotations

from typing import Any, cast

import soundfile as sf
from omegaconf import DictConfig, OmegaConf

from diffmix.config import ConfigError, instantiate
from diffmix.errors import UserError
from diffmix.mastering import ChainSpec, DeliveryOptions, FitOptions, MasterOptions
from diffmix.mastering.fit import Start, match_start


def _plain(node: Any, where: str) -> dict[str, Any]:
    """A config node resolved into plain containers (a bad interpolation: ConfigError)."""
    try:
        return cast(dict, OmegaConf.to_container(node, resolve=True))
    except Exception as exc:  # noqa: BLE001 - omegaconf raises many kinds
        raise ConfigError(f"{where}: {' '.join(str(exc).split())}") from exc


def chain_spec(cfg: DictConfig, sample_rate: int) -> ChainSpec:
    """``cfg.chain`` (and ``cfg.match_eq``) at ``sample_rate``."""
    OmegaConf.update(cfg, "sample_rate", sample_rate, force_add=True)
    match_eq = _plain(cfg.match_eq, "match_eq") if cfg.get("match_eq") else None
    return ChainSpec(sample_rate, _plain(cfg.chain, "chain"), match_eq)


def fit_options(cfg: DictConfig) -> FitOptions:
    """``cfg.fit``, ``cfg.loss``, ``cfg.optim``, ``cfg.scheduler`` and ``cfg.amount``."""
    fit = cfg.fit
    excerpt_s = fit.excerpt_s
    if fit.get("init", "default") == "learned" and (fit.get("learned") or {}).get("excerpt_s") is not None:
        excerpt_s = fit.learned.excerpt_s  # a fit from a prediction: longer excerpts (configs/mastering)
    return FitOptions(
        steps=fit.get("steps"),
        excerpt_s=float(excerpt_s),
        pool=int(fit.pool),
        patience=int(fit.patience),
        min_delta=float(fit.min_delta),
        params=list(fit.params),
        weights={str(k): v for k, v in cfg.loss.weights.items()},
        prior_weight=float(cfg.loss.get("prior", 0.0)),
        optimizer=instantiate(cfg.optim, where="optim"),
        scheduler=instantiate(cfg.scheduler, where="scheduler") if cfg.get("scheduler") else None,
        seed=int(cfg.seed),
        progress=bool(cfg.progress),
        amount={str(k): float(v) for k, v in (cfg.get("amount") or {}).items()},
        song_dynamics=bool(fit.get("song_dynamics", True)),
    )


def fit_start(cfg: DictConfig) -> Start:
    """``cfg.fit.init``: ``default`` (the chain's configured start, the match EQ in closed
    form) or ``learned`` (then the prediction of ``cfg.model``, null: the shipped one)."""
    init = cfg.fit.get("init", "default")
    if init not in ("default", "learned"):
        raise UserError(f"fit.init must be default or learned, got {init!r}")
    if init == "default":
        return match_start
    from diffmix.learned import learned_start

    model = cfg.get("model")
    return learned_start(None if model is None else str(model))


def polish_mode(cfg: DictConfig) -> str:
    """``cfg.polish`` as ``"off"`` or ``"auto"`` (ValueError otherwise)."""
    value = cfg.get("polish", False)
    if value in (False, None, "off", "none", "false"):
        return "off"
    if value in (True, "auto", "true"):
        return "auto"
    raise ValueError(f"polish must be auto or off, got {value!r}")


def master_options(cfg: DictConfig) -> MasterOptions:
    """The options of the master, batch and album jobs beyond the chain and the fit."""
    d = cfg.delivery
    streaming = cfg.get("streaming") or {}
    return MasterOptions(
        tolerance_lu=float(cfg.tolerance_lu),
        match_refine=int(cfg.get("match_refine", 2)),
        polish=polish_mode(cfg),
        plot=bool(cfg.get("plot")),
        report=bool(cfg.get("report", True)),
        seed=int(cfg.seed),
        delivery=DeliveryOptions(d.format, d.bit_depth, d.get("sample_rate"), bool(d.dither)),
        chunk_s=float(streaming.get("chunk_s", 30.0)),
        context_s=float(streaming.get("context_s", 2.0)),
    )


def wants_streaming(cfg: DictConfig) -> bool:
    """``cfg.stream``: ``true``/``false``, or ``auto`` (stream above ``streaming.auto_above_s``)."""
    mode = cfg.get("stream", "auto")
    if isinstance(mode, bool):
        return mode
    if str(mode).lower() in ("true", "false"):
        return str(mode).lower() == "true"
    if str(mode) != "auto":
        raise ValueError(f"stream must be auto, true or false, got {mode!r}")
    try:
        seconds = sf.info(str(cfg.input)).duration
    except (sf.LibsndfileError, RuntimeError):
        return False  # let the in-memory path report the unreadable file
    return seconds > float((cfg.get("streaming") or {}).get("auto_above_s", 600.0))
