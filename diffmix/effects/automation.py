"""Volume automation module (see :mod:`diffmix.functional.automation`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch  # noqa: F401  (doctest namespace)
from torch import Tensor

from diffmix.checks import check_choice
from diffmix.effects.base import Effect
from diffmix.functional import automation as F
from diffmix.params import BoundedParam, ParamSpec, ParamValue


class VolumeAutomation(Effect):
    """A gain curve drawn smoothly through breakpoints (fixed times, fitted gains).

    Args:
        sample_rate: Hz.
        times_s: breakpoint times in seconds, strictly increasing (an option, not fitted).
        gain_db: gain at each breakpoint, -80 to 24 dB; default 0. ``(n_points,)``,
            ``(B, n_points)`` or ``(B, C, n_points)``.
        amount: depth of the curve, 0 (flat) to 1 (full); default 1.
        curve: ``"cosine"`` (default, raised-cosine segments) or ``"linear"`` (in dB).

    Differentiable: ``gain_db``, ``amount``. CUDA: yes.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    >>> fade = VolumeAutomation(44100, times_s=[0.0, 0.5, 1.0], gain_db=[-60.0, 0.0, -6.0])
    >>> fade(torch.ones(2, 2, 44100)).shape
    torch.Size([2, 2, 44100])
    """

    specs = (ParamSpec("gain_db", -80.0, 24.0, 0.0), ParamSpec("amount", 0.0, 1.0, 1.0))

    def __init__(
        self,
        sample_rate: int,
        times_s: Sequence[float] = (0.0,),
        gain_db: ParamValue | None = None,
        amount: ParamValue | None = None,
        curve: str = "cosine",
    ) -> None:
        self.times_s = F.check_times(times_s, "VolumeAutomation")
        self.curve = check_choice(curve, F.CURVES, "VolumeAutomation", "curve")
        self._set_options(times_s=list(self.times_s), curve=curve)
        n = len(self.times_s)
        super().__init__(sample_rate, gain_db=[0.0] * n if gain_db is None else gain_db, amount=amount)
        shape = tuple(cast(BoundedParam, self.params["gain_db"]).anchor.shape)
        if len(shape) == 0 or shape[-1] != n:
            raise ValueError(
                f"VolumeAutomation: gain_db needs a trailing axis of {n} values (one per "
                f"breakpoint time), got shape {shape}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        return F.volume_automation(
            x, self.sample_rate, times_s=self.times_s, gain_db=self.p("gain_db"),
            curve=self.curve, amount=self.p("amount"),
        )
