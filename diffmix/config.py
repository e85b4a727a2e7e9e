"""Safe instantiation of Hydra configs, and presets.

A job config is user input, so ``_target_`` may name only diffmix's own classes and
torch's optimisers and learning-rate schedulers. Interpolations are resolved first and
targets checked on the result, by name before any import, so ``os.system``, an
``${oc.create:...}`` node and a module in the working folder are refused before
anything is imported or built. Presets are data from anyone: :func:`load_preset` reads
them with :mod:`diffmix.safe_yaml` (no Hydra, no interpolation, an allowlist of classes).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.errors import InstantiationException
from hydra.utils import get_object
from hydra.utils import instantiate as _hydra_instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A config or preset that diffmix refuses to build."""


# Only these packages are ever imported to look a target up; anything else is refused by name.
_TRUSTED_PREFIXES = ("diffmix.", "torch.optim.")


def _allowed(obj: Any) -> bool:
    if inspect.isclass(obj):
        if obj.__module__.split(".")[0] == "diffmix":
            return True
        return issubclass(obj, torch.optim.Optimizer) or issubclass(
            obj, torch.optim.lr_scheduler.LRScheduler
        )
    return False


def check_targets(cfg: Any, where: str = "config") -> None:
    """Raise ConfigError if any ``_target_`` in ``cfg`` is not a trusted class."""
    if isinstance(cfg, (DictConfig, dict)):
        items = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else cfg.items()
        for key, value in items:
            if key == "_target_":
                if not str(value).startswith(_TRUSTED_PREFIXES):
                    raise ConfigError(
                        f"{where}: _target_ {value!r} is not allowed; configs may build only "
                        "diffmix classes and torch optimisers or schedulers"
                    )
                try:
                    obj = get_object(str(value))
                except Exception as exc:  # hydra raises ImportError or its own errors
                    raise ConfigError(f"{where}: _target_ {value!r} cannot be found") from exc
                if not _allowed(obj):
                    raise ConfigError(
                        f"{where}: _target_ {value!r} is not allowed; configs may build only "
                        "diffmix classes and torch optimisers or schedulers"
                    )
            else:
                check_targets(value, f"{where}.{str(key)}")
    elif isinstance(cfg, (ListConfig, list, tuple)):
        for i, value in enumerate(cfg):
            check_targets(value, f"{where}[{i}]")
    elif isinstance(cfg, str) and "${" in cfg:
        # What is left after resolving (an escaped ``\${...}``) would be resolved again.
        raise ConfigError(f"{where}: {cfg!r} would be read as an interpolation")


def check_keys(cfg: Any, where: str = "config") -> None:
    """Raise ConfigError for keys the target's constructor does not take."""
    if isinstance(cfg, (DictConfig, dict)):
        target = cfg.get("_target_")
        if target is not None:
            obj = get_object(str(target))
            sig = inspect.signature(obj)
            takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
            known = set(sig.parameters)
            unknown = sorted(
                str(k) for k in cfg.keys() if not str(k).startswith("_") and str(k) not in known
            )
            if unknown and not takes_any:
                name = getattr(obj, "__name__", str(target))
                raise ConfigError(
                    f"{where}: {name} has no parameter(s) {unknown}; known: "
                    f"{sorted(k for k in known if k != 'self')}"
                )
        for key, value in cfg.items():
            if key != "_target_":
                check_keys(value, f"{where}.{str(key)}")
    elif isinstance(cfg, (ListConfig, list, tuple)):
        for i, value in enumerate(cfg):
            check_keys(value, f"{where}[{i}]")


def instantiate(cfg: Any, *args: Any, where: str = "config", **kwargs: Any) -> Any:
    """hydra.utils.instantiate after checking every ``_target_`` and key.

    >>> g = instantiate({"_target_": "diffmix.effects.gain.Gain", "sample_rate": 8000})
    >>> type(g).__name__
    'Gain'
    >>> instantiate({"_target_": "os.system", "command": "true"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    diffmix.config.ConfigError: config: _target_ 'os.system' is not allowed; ...
    """
    if isinstance(cfg, (DictConfig, ListConfig)):
        # Resolve first: instantiate would resolve ``${oc.create:{_target_: ...}}`` into a
        # node after the raw config had been checked. Check and build the resolved copy.
        try:
            cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        except Exception as exc:  # noqa: BLE001 - omegaconf raises many kinds
            raise ConfigError(f"{where}: {' '.join(str(exc).split())}") from exc
    check_targets(cfg, where)
    check_keys(cfg, where)
    try:
        return _hydra_instantiate(cfg, *args, **kwargs)
    except InstantiationException as exc:
        # A constructor refusing a value (out of range, wrong type) is a config error: report
        # the constructor's own message, which names the effect, parameter and range.
        cause = exc.__cause__
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"{where}: {cause}") from cause
        raise


def save_preset(module: Any, path: str | Path) -> None:
    """Write ``module.preset()`` as YAML (physical units), atomically."""
    from diffmix.io import atomic_write_text

    text = yaml.safe_dump(module.preset(), sort_keys=False)
    atomic_write_text(Path(path), text)


def load_preset(source: str | Path | dict[str, Any]) -> Any:
    """Build an effect, chain or console from a preset file or dict.

    The file is data from anyone: parsed without interpolation or aliases, built only from
    diffmix's allowlisted classes (:mod:`diffmix.safe_yaml`), every value checked.

    Raises:
        ConfigError: one line naming the file, key and value.
    """
    from diffmix.safe_yaml import DataError, build, load_yaml

    try:
        if isinstance(source, dict):
            return build(source, "preset")
        if not isinstance(source, (str, Path)):
            raise ConfigError(
                f"preset: expected a file path or a mapping, got {type(source).__name__}"
            )
        return build(load_yaml(source, "preset"), f"preset {Path(source)}")
    except DataError as exc:
        raise ConfigError(str(exc)) from exc
