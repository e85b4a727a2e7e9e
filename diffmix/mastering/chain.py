"""The mastering chain: built from its effects' settings, and split at its limiter.

The chain's effects run in a :class:`~diffmix.console.Bus` (one parameter set per song;
named ``bus`` throughout this package, as :class:`~diffmix.effects.Chain` is another
thing) whose last effect is the true-peak :class:`~diffmix.effects.dynamics.Limiter` named ``limiter``; its
``gain_db`` is the drive the loudness solve sets. With a reference, a
:class:`~diffmix.effects.match_eq.MatchEQ` leads as stage ``match``.
:class:`LimiterStage` is the surface the solve and the renders drive it through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from diffmix.config import instantiate
from diffmix.console import Bus
from diffmix.effects.base import Effect, run_effects
from diffmix.effects.dynamics import Limiter, set_exact
from diffmix.params import BoundedParam

Render = Callable[[Tensor], Tensor]  # drives (S,) dB -> output (S, C, T)
MATCH = "match"  # the chain's reference-matching EQ stage (absent without a reference)
LIMITER = "limiter"  # the chain's last stage, whose drive the loudness solve sets


@dataclass(frozen=True)
class ChainSpec:
    """The settings a mastering chain is built from, at one sample rate.

    Args:
        sample_rate: Hz.
        effects: stage name -> plain settings node (``{"_target_": "diffmix.effects...",
            ...}``, resolved), in processing order; ``configs/chain/mastering.yaml``.
        match_eq: the settings of the reference-matching EQ (a MatchEQ), or None.
    """

    sample_rate: int
    effects: Mapping[str, Mapping[str, Any]]
    match_eq: Mapping[str, Any] | None = None

    def build(self, items: int, *, match: bool = False) -> Bus:
        """The chain for ``items`` songs, led by the match EQ (as stage ``match``) when
        ``match`` is true and the spec has one.

        A match EQ has nothing to match without a reference, so it is left out rather than
        run neutral (and the streamed master, whose chunks carry no right-hand context for
        its zero-phase FIR, leaves it out too).
        """
        effects = instantiate(dict(self.effects), _convert_="all", where="chain")
        if match and self.match_eq:
            effects = {MATCH: instantiate(dict(self.match_eq), _convert_="all", where="match_eq"), **effects}
        return Bus(self.sample_rate, effects, items=items)


class LimiterStage:
    """A mastering chain split at its limiter: the effects before it, the limiter, and
    those after it, so a render can run the first part once and the rest at many drives.

    Puts the chain's limiters in their exact mode (the ceiling holds).

    Args:
        bus: the mastering chain's :class:`~diffmix.console.Bus`, with an effect named ``limiter``.
        limiter: the limiter's stage name.
    """

    def __init__(self, bus: Bus, limiter: str = LIMITER) -> None:
        names = list(bus.effects)
        if limiter not in names:
            raise ValueError(f"master chain needs an effect named {limiter!r}; it has {names}")
        idx = names.index(limiter)
        set_exact(bus, True)
        self.pre = [cast(Effect, bus.effects[n]) for n in names[:idx]]
        self.limiter = cast(Effect, bus.effects[limiter])
        self.post = [cast(Effect, bus.effects[n]) for n in names[idx + 1 :]]

    @property
    def drive_range(self) -> tuple[float, float]:
        """The limiter's ``gain_db`` range, dB: where the loudness solve may set the drive."""
        spec = cast(BoundedParam, self.limiter.params["gain_db"]).spec
        return float(spec.min), float(spec.max)

    @contextmanager
    def smooth(self) -> Iterator[None]:
        """The stock limiter in its smooth mode (no metered correction) inside the block."""
        set_exact(self.limiter, False)
        try:
            yield
        finally:
            set_exact(self.limiter, True)

    def set_drive(self, drives: Tensor) -> None:
        """Set the limiter's drive, one value per song (dB); the preset keeps it."""
        self.limiter.load_values({"gain_db": drives.detach().cpu().double()})

    @torch.no_grad()
    def before(self, x: Tensor) -> Tensor:
        """The effects before the limiter, adjacent linear ones as one filter (as the fit
        renders them: :func:`~diffmix.effects.base.run_effects`)."""
        return run_effects(self.pre, x)

    @torch.no_grad()
    def after(self, pre: Tensor) -> Tensor:
        """The limiter (at its drive) and the effects after it, on the pre-limiter signal."""
        y = self.limiter(pre)
        for effect in self.post:
            y = effect(y)
        return y

    def drive_renders(self, pre: Tensor) -> tuple[Render, Render] | None:
        """Cheap ``drives -> output`` renders over ``pre``, ``(smooth, exact)``
        (:meth:`~diffmix.effects.dynamics.Limiter.drive_renders`); ``exact`` equals
        :meth:`after` at that drive to float rounding. None when the limiter isn't the
        stock one or effects follow it."""
        if type(self.limiter) is not Limiter or self.post:
            return None
        return cast(Limiter, self.limiter).drive_renders(pre)
