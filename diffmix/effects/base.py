"""The effect base class and the containers every chain is built from.

An :class:`Effect` declares its parameters as :class:`~diffmix.params.ParamSpec` s, holds
them as :class:`~diffmix.params.BoundedParam` s, and its ``forward`` calls one function of
:mod:`diffmix.functional`. Its :meth:`Effect.preset` is a Hydra node whose keys are the
constructor's arguments, in physical units, so a preset *is* a config.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import Tensor, nn

from diffmix.checks import check_audio, check_sample_rate
from diffmix.params import BoundedParam, ParamSpec, ParamValue

if TYPE_CHECKING:
    from diffmix.functional.filters import LinearFilter


class Effect(nn.Module):
    """Base class: an audio effect on ``(batch, channels, time)`` with declared parameters.

    Subclasses set ``specs`` (or override :meth:`param_specs` when the set depends on the
    options, e.g. the number of EQ bands), pass their options to :meth:`_set_options` and
    call the functional core in ``forward``.

    Args:
        sample_rate: audio sample rate in Hz.
        **values: physical parameter values by name; missing ones take the spec default.
    """

    specs: ClassVar[tuple[ParamSpec, ...]] = ()
    # Allowed channel counts; None = any. A class default that an instance may override
    # (Delay with ping_pong, ParametricEQ in mid/side), so not a ClassVar.
    channels: tuple[int, ...] | None = None

    def __init__(self, sample_rate: int, **values: ParamValue | None) -> None:
        super().__init__()
        self.sample_rate = check_sample_rate(sample_rate, self.name)
        self._options: dict[str, Any] = getattr(self, "_options", {})
        specs = {s.name: s for s in self.param_specs()}
        unknown = sorted(set(values) - set(specs))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown parameter(s) {unknown}; known: {sorted(specs)}"
            )
        self.params = nn.ModuleDict()
        for name, spec in specs.items():
            value = values.get(name)
            self.params[name] = BoundedParam(
                spec, spec.default if value is None else value, self.name
            )

    @property
    def name(self) -> str:
        return type(self).__name__

    def param_specs(self) -> tuple[ParamSpec, ...]:
        return self.specs

    def _set_options(self, **options: Any) -> None:
        """Record non-parameter constructor arguments so :meth:`preset` can emit them."""
        self._options = dict(options)

    @property
    def options(self) -> dict[str, Any]:
        """The effect's options (not parameters), as passed to its functional core."""
        return dict(self._options)

    def p(self, name: str) -> Tensor:
        """The physical value of parameter ``name`` (differentiable through ``raw``)."""
        return self.params[name]()

    def values(self) -> dict[str, Any]:
        """Every parameter's physical value by name (differentiable), for the functional
        core's keyword arguments."""
        return {name: self.p(name) for name in self.params}

    def check(self, x: Tensor) -> None:
        check_audio(x, self.name, channels=self.channels)

    def linear(self, x: Tensor) -> LinearFilter | None:
        """This effect on audio shaped like ``x`` as the
        :class:`~diffmix.functional.filters.LinearFilter` its ``forward`` applies (``x``
        checked as ``forward`` checks it), where it is one; else None (the default). A run
        of such effects can render as one filter (:func:`run_effects`)."""
        return None

    def preset(self) -> dict[str, Any]:
        """Constructor arguments in physical units, as a Hydra node with ``_target_``."""
        cls = type(self)
        node: dict[str, Any] = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
        node["sample_rate"] = self.sample_rate
        node.update({k: _plain(v) for k, v in self._options.items()})
        for name, param in self.params.items():
            node[name] = _plain(cast(BoundedParam, param).exact())
        return node

    def load_values(self, values: dict[str, ParamValue]) -> None:
        """Set parameters from physical values (validated; unknown names raise)."""
        unknown = sorted(set(values) - set(self.params.keys()))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown parameter(s) {unknown}; known: {sorted(self.params)}"
            )
        for name, value in values.items():
            cast(BoundedParam, self.params[name]).set(value)

    def extra_repr(self) -> str:
        return f"sample_rate={self.sample_rate}"


def run_effects(effects: Iterable[nn.Module], x: Tensor) -> Tensor:
    """``x`` through ``effects`` in order, each run of adjacent linear effects
    (:meth:`Effect.linear`) as one filter: one FFT convolution over the signal instead of
    one per effect (:meth:`~diffmix.functional.filters.LinearFilter.then`), the same as the
    effects in turn but for float rounding. A run of one is the effect's own ``forward``.
    Differentiable as the effects are."""
    run: LinearFilter | None = None
    for effect in effects:
        lin = effect.linear(x) if isinstance(effect, Effect) else None
        joined = None if lin is None or run is None else run.then(lin)
        if joined is not None:
            run = joined
            continue
        if run is not None:
            x = run(x)
        run = lin
        if lin is None:
            x = effect(x)
    return x if run is None else run(x)


def _plain(value: Any) -> Any:
    """Tensors -> floats or nested lists, for YAML."""
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Chain(nn.Module):
    """Effects in series, list-like and nestable, with a dry/wet ``mix``.

    Args:
        sample_rate: audio sample rate in Hz (passed on in presets).
        effects: the effects, applied first to last.
        mix: 0 gives the dry input, 1 the processed output. Differentiable.

    Shape:
        ``(batch, channels, time)`` in and out.

    >>> from diffmix.effects.gain import Gain
    >>> chain = Chain(44100, [Gain(44100, gain_db=-6.0), Gain(44100, gain_db=6.0)])
    >>> chain(torch.ones(1, 2, 4)).shape
    torch.Size([1, 2, 4])
    """

    def __init__(self, sample_rate: int, effects: Iterable[nn.Module] = (), mix: float = 1.0):
        super().__init__()
        self.sample_rate = check_sample_rate(sample_rate, "Chain")
        self.effects = nn.ModuleList(effects)
        self.mix = BoundedParam(ParamSpec("mix", 0.0, 1.0, 1.0), mix, "Chain")

    def __len__(self) -> int:
        return len(self.effects)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.effects)

    def __getitem__(self, index: int) -> nn.Module:
        return self.effects[index]

    def append(self, effect: nn.Module) -> Chain:
        self.effects.append(effect)
        return self

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for effect in self.effects:
            y = effect(y)
        return _blend(x, y, self.mix())

    def preset(self) -> dict[str, Any]:
        return {
            "_target_": "diffmix.effects.base.Chain",
            "sample_rate": self.sample_rate,
            "effects": [e.preset() for e in self.effects],  # type: ignore[operator]
            "mix": _plain(self.mix.exact()),
        }


class Parallel(Chain):
    """Effects side by side on the same input; their outputs are summed (as pedalboard's Mix).

    ``mix`` crossfades between the dry input (0) and the sum of the branches (1).

    >>> from diffmix.effects.gain import Gain
    >>> par = Parallel(44100, [Gain(44100, gain_db=0.0), Gain(44100, gain_db=0.0)])
    >>> par(torch.ones(1, 1, 2)).tolist()
    [[[2.0, 2.0]]]
    """

    def forward(self, x: Tensor) -> Tensor:
        if len(self.effects) == 0:
            return x
        wet = torch.stack([effect(x) for effect in self.effects]).sum(0)
        return _blend(x, wet, self.mix())

    def preset(self) -> dict[str, Any]:
        node = super().preset()
        node["_target_"] = "diffmix.effects.base.Parallel"
        return node


def _blend(dry: Tensor, wet: Tensor, mix: Tensor) -> Tensor:
    """``dry + mix * (wet - dry)`` with ``mix`` a scalar or ``(B,)`` tensor."""
    if mix.ndim == 1:
        mix = mix.view(-1, 1, 1)
    return dry + mix.to(wet.dtype) * (wet - dry)
