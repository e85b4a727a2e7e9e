"""Files that travel between people are data, never code.

Presets, manifests and ``target`` specs may come from strangers (a mastering service runs
presets its customers send). They are read here:

- YAML is parsed by PyYAML's safe loader with **no aliases** (a YAML bomb is refused at
  its first ``*alias``, before anything is expanded), a size limit and a nesting limit.
  There is no interpolation and no resolver: ``${oc.create:...}`` is an inert string.
- Objects are built by :func:`build` from :data:`REGISTRY`, a fixed name -> class table
  of diffmix's effects and containers. A ``_target_`` is looked up in the table, never
  imported, so naming ``os.system`` or ``./evilmod.py`` does nothing but raise.
- Keys are checked against the constructor, ``_args_``/``_partial_``-style keys are
  refused, and every ``sample_rate`` must be a supported rate, all before anything is
  built (each constructor then checks its own ranges).

Job configs people write themselves still go through Hydra (:mod:`diffmix.config`).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import yaml

from diffmix.checks import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

MAX_BYTES = 8 << 20  # a console preset of 64 tracks is about 200 kB
MAX_DEPTH = 32
MAX_COUNT = 1024  # songs, items and tracks a preset may ask to allocate


class DataError(ValueError):
    """A data file (preset, manifest, target) that diffmix refuses to read or build."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and with a nesting limit."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise DataError(f"YAML aliases (*{event.anchor}) are not allowed in data files")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise DataError(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_text(path: str | Path, what: str, *, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of a data file, or DataError naming it (missing, folder, too big, binary)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} {p}: file not found")
    if p.is_dir():
        raise DataError(f"{what} {p}: is a folder, not a file")
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise DataError(f"{what} {p}: {size} bytes, more than the {max_bytes} allowed")
        data = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{what} {p}: cannot read ({exc.strerror or exc})") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {p}: not UTF-8 text (byte {exc.start})") from exc


def parse_yaml(text: str, where: str) -> Any:
    """Plain data (dicts, lists, scalars) from untrusted YAML text; DataError otherwise.

    >>> parse_yaml("a: [1, 2]", "x")
    {'a': [1, 2]}
    >>> parse_yaml("a: &x [1]\\nb: *x", "x")
    Traceback (most recent call last):
    ...
    diffmix.safe_yaml.DataError: x: YAML aliases (*x) are not allowed in data files
    """
    if len(text) > MAX_BYTES:
        raise DataError(f"{where}: more than {MAX_BYTES} characters")
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise DataError(f"{where}: not valid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise DataError(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, what: str) -> Any:
    """:func:`read_text` then :func:`parse_yaml`, errors naming ``what`` and the file."""
    return parse_yaml(read_text(path, what), f"{what} {Path(path)}")


def _registry() -> dict[str, type]:
    # Imported here, not at module level: the effects import diffmix.config, which uses us.
    from diffmix import console
    from diffmix.effects import (
        automation,
        base,
        delay,
        distortion,
        dynamics,
        eq,
        gain,
        match_eq,
        modulation,
        reverb,
        stereo,
    )

    table: dict[str, type] = {}
    for module in (automation, base, delay, distortion, dynamics, eq, gain, match_eq,
                   modulation, reverb, stereo, console):
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and obj.__module__ == module.__name__
                    and not name.startswith("_") and hasattr(obj, "preset")
                    and name != "Effect"):
                table[f"{module.__name__}.{name}"] = obj
    return table


_REGISTRY: dict[str, type] | None = None


def registry() -> dict[str, type]:
    """``"diffmix.effects.gain.Gain"`` -> the class: everything a preset may build."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _registry()
    return _REGISTRY


def _at(where: str, loc: str) -> str:
    """``preset x.yaml: effects[0].gain_db`` from the file and the place inside it."""
    return f"{where}: {loc.lstrip('.')}" if loc else where


def _check_plain(value: Any, where: str, loc: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise DataError(f"{_at(where, loc)}: key {k!r} is not a string")
            _check_plain(v, where, f"{loc}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(v, where, f"{loc}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{_at(where, loc)}: {value!r} is not a finite number")
    elif not (value is None or isinstance(value, (str, int, float, bool))):
        raise DataError(f"{_at(where, loc)}: {type(value).__name__} values are not allowed")


def check_sample_rate(value: Any, where: str) -> int:
    """``value`` as an int rate within the supported range, else DataError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or int(value) != value or not MIN_SAMPLE_RATE <= value <= MAX_SAMPLE_RATE:
        raise DataError(
            f"{where}: sample_rate={value!r} is not a supported rate "
            f"(an integer from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz)"
        )
    return int(value)


def _check_node(node: Any, top: str, loc: str = "") -> None:
    """Everything :func:`build` would refuse, found before anything is built."""
    table = registry()
    where = _at(top, loc)
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None:
            if not isinstance(target, str) or target not in table:
                raise DataError(
                    f"{where}: _target_ {target!r} is not allowed; presets may build only "
                    "diffmix effects and containers (diffmix.effects.*, diffmix.console.*)"
                )
            cls = table[target]
            sig = inspect.signature(cls)
            known = set(sig.parameters) - {"self"}
            private = sorted(k for k in node if k.startswith("_") and k != "_target_")
            if private:
                raise DataError(f"{where}: keys {private} are not allowed in a preset")
            unknown = sorted(k for k in node if k != "_target_" and k not in known)
            if unknown:
                raise DataError(
                    f"{where}: {cls.__name__} has no parameter(s) {unknown}; known: "
                    f"{sorted(known)}"
                )
        elif any(k.startswith("_") for k in node):
            raise DataError(f"{where}: keys starting with '_' are not allowed here")
        for key, value in node.items():
            if key == "sample_rate":
                check_sample_rate(value, where)
            elif key in ("songs", "items", "tracks") and target is not None:
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
                    raise DataError(
                        f"{where}: {key}={value!r} must be an integer from 1 to {MAX_COUNT}"
                    )
            if key != "_target_":
                _check_node(value, top, f"{loc}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_node(value, top, f"{loc}[{i}]")


def _build(node: Any) -> Any:
    if isinstance(node, dict):
        kwargs = {k: _build(v) for k, v in node.items() if k != "_target_"}
        if "_target_" in node:
            return registry()[node["_target_"]](**kwargs)
        return kwargs
    if isinstance(node, list):
        return [_build(v) for v in node]
    return node


def build(node: Any, where: str = "preset") -> Any:
    """Build a diffmix effect, chain or console from plain data, allowlisted targets only.

    Raises:
        DataError: naming where in the node, the key and the value; a constructor's own
        ``ValueError``/``TypeError`` (a value out of range) is re-raised as DataError.

    >>> type(build({"_target_": "diffmix.effects.gain.Gain", "sample_rate": 48000})).__name__
    'Gain'
    >>> build({"_target_": "os.system", "command": "true"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    diffmix.safe_yaml.DataError: preset: _target_ 'os.system' is not allowed; ...
    """
    if not isinstance(node, dict) or "_target_" not in node:
        raise DataError(f"{where}: expected a mapping with a _target_")
    _check_plain(node, where)
    _check_node(node, where)
    try:
        return _build(node)
    except (ValueError, TypeError) as exc:
        text = str(exc).strip().splitlines()
        raise DataError(f"{where}: {text[0] if text else type(exc).__name__}") from exc
