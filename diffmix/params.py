"""Declared, bounded parameters that an optimiser cannot push out of range.

Each effect declares every parameter once as a :class:`ParamSpec` (name with its unit,
range, default, scale). The module stores an *unconstrained* tensor ``raw`` and maps it
onto the range with a sigmoid, in the linear or the log domain, so any optimiser step
lands inside ``[min, max]``.

Presets are physical values. Mapping ``value -> raw -> value`` through logit/sigmoid is
only exact to rounding, so a :class:`BoundedParam` also keeps the exact physical value it
was set to (``anchor``) and returns that, with the sigmoid's gradient attached, until the
raw tensor is changed in place (an optimiser step). Save -> load -> render is therefore
bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

# Extreme values map to logit(+-(1 - EPS)): finite raw values whose sigmoid gradient is small
# but non-zero, so a parameter parked at its bound can still move back.
_EPS = 1e-6

ParamValue = float | int | Sequence[Any] | Tensor


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of an effect.

    Args:
        name: name carrying the unit, e.g. ``gain_db``, ``freq_hz``, ``attack_ms``.
        min: lowest allowed physical value.
        max: highest allowed physical value.
        default: value used when none is given.
        scale: ``"linear"`` or ``"log"`` (Hz, ms, ratios); log needs ``min > 0``.
        differentiable: whether gradients flow to it (fitted by the optimiser).

    >>> spec = ParamSpec("freq_hz", 20.0, 20000.0, 1000.0, scale="log")
    >>> round(float(spec.from_raw(spec.to_raw(torch.tensor(1000.0, dtype=torch.float64)))), 9)
    1000.0
    """

    name: str
    min: float
    max: float
    default: float
    scale: str = "linear"
    differentiable: bool = True

    def __post_init__(self) -> None:
        if self.scale not in ("linear", "log"):
            raise ValueError(f"ParamSpec {self.name}: scale must be 'linear' or 'log'")
        if not self.min < self.max:
            raise ValueError(f"ParamSpec {self.name}: min must be < max")
        if self.scale == "log" and self.min <= 0:
            raise ValueError(f"ParamSpec {self.name}: a log scale needs min > 0")
        if not self.min <= self.default <= self.max:
            raise ValueError(f"ParamSpec {self.name}: default outside [min, max]")

    def check(self, value: Tensor, effect: str) -> None:
        """Raise ValueError naming the effect, parameter and range if ``value`` is outside."""
        v = value.detach()
        bad = ~torch.isfinite(v) | (v < self.min) | (v > self.max)
        if bool(bad.any()):
            first = v[bad].flatten()[0].item()
            raise ValueError(
                f"{effect}: {self.name}={first:g} is outside its range "
                f"[{self.min:g}, {self.max:g}]"
            )

    def _bounds(self, like: Tensor) -> tuple[float, float]:
        if self.scale == "log":
            return math.log(self.min), math.log(self.max)
        return self.min, self.max

    def to_raw(self, value: Tensor) -> Tensor:
        """Physical value -> unconstrained tensor (inverse of :meth:`from_raw`)."""
        lo, hi = self._bounds(value)
        v = torch.log(value) if self.scale == "log" else value
        unit = ((v - lo) / (hi - lo)).clamp(_EPS, 1 - _EPS)
        return torch.logit(unit)

    def from_raw(self, raw: Tensor) -> Tensor:
        """Unconstrained tensor -> physical value inside ``[min, max]``. Differentiable."""
        lo, hi = self._bounds(raw)
        v = lo + (hi - lo) * torch.sigmoid(raw)
        return torch.exp(v) if self.scale == "log" else v


class BoundedParam(nn.Module):
    """Holds one parameter as an unconstrained ``raw`` tensor; calling it gives the value.

    Args:
        spec: the declaration.
        value: physical value: a float, ``(B,)``, ``(B, C)``, or with trailing dims such as
            ``(n_bands,)`` for multi-band effects.
        effect: the owning effect's name, for error messages.
    """

    def __init__(self, spec: ParamSpec, value: ParamValue, effect: str) -> None:
        super().__init__()
        self.spec = spec
        self.effect = effect
        v = _as_value_tensor(value, spec, effect)
        self.raw = nn.Parameter(
            spec.to_raw(v).to(torch.get_default_dtype()), spec.differentiable
        )
        self._set_anchor(v)

    def _set_anchor(self, value: Tensor) -> None:
        # Kept in float64 on the CPU, outside the state dict and untouched by .float() or
        # .half(): the exact value in any dtype. Copies per (dtype, device) are cached.
        self._exact = value.detach().to("cpu", torch.float64).clone()
        self._copies: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        self._anchor_key: tuple[Tensor, int] | None = (self.raw, self.raw._version)

    @property
    def anchor(self) -> Tensor:
        """The exact physical value last set (float64, CPU)."""
        return self._exact

    def _anchored(self) -> bool:
        key = self._anchor_key
        return key is not None and key[0] is self.raw and key[1] == self.raw._version

    def forward(self) -> Tensor:
        mapped = self.spec.from_raw(self.raw)
        # torch.compile cannot trace the version counter: a compiled graph uses the
        # mapping itself (the anchored value to rounding).
        if not torch.compiler.is_compiling() and self._anchored():
            where = (self.raw.dtype, self.raw.device)
            exact = self._copies.get(where)
            if exact is None:
                exact = self._copies[where] = self._exact.to(self.raw.device, self.raw.dtype)
            # Exactly the stored physical value, with the mapping's gradient attached.
            return exact + (mapped - mapped.detach())
        return mapped

    @torch.no_grad()
    def set(self, value: ParamValue) -> None:
        """Set the physical value (validated; the shape may change)."""
        v = _as_value_tensor(value, self.spec, self.effect)
        self.raw.data = self.spec.to_raw(v).to(self.raw.device, self.raw.dtype)
        self._set_anchor(v)

    def value(self) -> Tensor:
        """Current physical value, detached, in the parameter's dtype and device."""
        return self().detach()

    def exact(self) -> Tensor:
        """Current physical value in float64 on the CPU: what presets store."""
        if self._anchored():
            return self._exact.clone()
        with torch.no_grad():
            return self.spec.from_raw(self.raw.detach().to("cpu", torch.float64))

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        anchored = self._anchored()
        out = super()._apply(fn, recurse)
        if anchored:
            self._anchor_key = (self.raw, self.raw._version)
        else:
            self._anchor_key = None
        return out

    def extra_repr(self) -> str:
        return f"{self.spec.name}, shape={tuple(self.raw.shape)}"


def _as_value_tensor(value: ParamValue, spec: ParamSpec, effect: str) -> Tensor:
    """The value as a float64 CPU tensor, validated against the spec."""
    try:
        if isinstance(value, Tensor):
            v = value.detach().to("cpu", torch.float64)
        else:
            v = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{effect}: {spec.name} must be a number or tensor, got {value!r}") from exc
    spec.check(v, effect)
    return v


def broadcast_param(
    value: ParamValue,
    x: Tensor,
    *,
    name: str,
    effect: str,
    trailing: int = 0,
) -> Tensor:
    """Shape a parameter for ``(batch, channels, time)`` audio ``x``.

    Accepts a float, ``(B,)`` per item or ``(B, C)`` per channel (size 1 broadcasts), each
    followed by ``trailing`` dims (e.g. one band axis). Returns ``(B|1, C|1, *trailing)`` in
    ``x``'s dtype and device, keeping the autograd graph.

    >>> x = torch.zeros(4, 2, 10)
    >>> broadcast_param(3.0, x, name="gain_db", effect="Gain").shape
    torch.Size([1, 1])
    >>> broadcast_param(torch.zeros(4), x, name="gain_db", effect="Gain").shape
    torch.Size([4, 1])
    """
    if isinstance(value, Tensor):
        t = value.to(dtype=x.dtype, device=x.device)
    else:
        t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    lead = t.ndim - trailing
    if lead < 0 or lead > 2:
        raise ValueError(
            f"{effect}: {name} must be a scalar, (batch,) or (batch, channels)"
            + (f" followed by {trailing} trailing dim(s)" if trailing else "")
            + f"; got shape {tuple(t.shape)}"
        )
    for axis in range(lead):
        size, want = t.shape[axis], x.shape[axis]
        if size not in (1, want):
            what = "batch" if axis == 0 else "channels"
            raise ValueError(
                f"{effect}: {name} has {size} values along {what}, but the audio has {want}"
            )
    while t.ndim < 2 + trailing:
        t = t.unsqueeze(t.ndim - trailing)
    return t


def per_sample(value: ParamValue, x: Tensor, *, name: str, effect: str) -> Tensor:
    """:func:`broadcast_param` plus a time axis: ``(B|1, C|1, 1)``, ready to multiply ``x``."""
    return broadcast_param(value, x, name=name, effect=effect).unsqueeze(-1)
