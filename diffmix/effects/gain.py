"""Modules for gain, polarity, pan, balance and width (see :mod:`diffmix.functional.gain`)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffmix.effects.base import Effect
from diffmix.functional import gain as F
from diffmix.params import ParamSpec, ParamValue, per_sample


class Gain(Effect):
    """Gain in dB. Differentiable: ``gain_db``. CUDA: yes.

    Args:
        sample_rate: Hz.
        gain_db: -80 to 24 dB, default 0.

    >>> Gain(44100, gain_db=-6.0)(torch.ones(2, 1, 8)).shape
    torch.Size([2, 1, 8])
    """

    specs = (ParamSpec("gain_db", -80.0, 24.0, 0.0),)

    def __init__(self, sample_rate: int, gain_db: ParamValue | None = None) -> None:
        super().__init__(sample_rate, gain_db=gain_db)

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        return F.gain(x, self.sample_rate, gain_db=self.p("gain_db"))

    def channel_matrix(self, x: Tensor) -> Tensor:
        """This gain as a channel matrix ``(B|1, C, C)`` for ``x`` (see
        :func:`~diffmix.functional.gain.apply_matrix`); lets a console fold it into its sum."""
        self.check(x)
        g = F.db_to_amp(per_sample(self.p("gain_db"), x, name="gain_db", effect="gain"))
        return torch.diag_embed(g[..., 0].expand(-1, x.shape[1]))


class Polarity(Effect):
    """Polarity inversion of all channels or of chosen ones. No parameters to fit."""

    def __init__(self, sample_rate: int, invert: bool | list[bool] = True) -> None:
        self._set_options(invert=invert)
        super().__init__(sample_rate)
        self.invert = invert

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        return F.polarity(x, self.sample_rate, invert=self.invert)


class Pan(Effect):
    """Constant-power pan of a mono or stereo source to stereo. Differentiable: ``pan``.

    Args:
        pan: -1 (hard left) to 1 (hard right), default 0.
    """

    specs = (ParamSpec("pan", -1.0, 1.0, 0.0),)
    channels = (1, 2)

    def __init__(self, sample_rate: int, pan: ParamValue | None = None) -> None:
        super().__init__(sample_rate, pan=pan)
        # Set by the console: items that are mono sources carried as two equal channels.
        self.mono_items: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        return F.pan(x, self.sample_rate, pan=self.p("pan"), mono_items=self.mono_items)

    def channel_matrix(self, x: Tensor) -> Tensor:
        """This pan as a channel matrix ``(B|1, 2, C)`` for ``x`` (see
        :func:`~diffmix.functional.gain.apply_matrix`); lets a console fold it into its sum."""
        self.check(x)
        return F.pan_matrix(self.p("pan"), x, mono_items=self.mono_items)


class Balance(Effect):
    """Constant-power stereo balance. Differentiable: ``balance`` (-1 to 1)."""

    specs = (ParamSpec("balance", -1.0, 1.0, 0.0),)
    channels = (2,)

    def __init__(self, sample_rate: int, balance: ParamValue | None = None) -> None:
        super().__init__(sample_rate, balance=balance)

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        return F.balance(x, self.sample_rate, balance=self.p("balance"))

    def channel_matrix(self, x: Tensor) -> Tensor:
        """This balance as a channel matrix ``(B|1, 2, 2)`` for ``x``."""
        self.check(x)
        return F.balance_matrix(self.p("balance"), x)


class Width(Effect):
    """Mid/side width, level-compensated. Differentiable: ``width`` (0 mono to 4)."""

    specs = (ParamSpec("width", 0.0, 4.0, 1.0),)
    channels = (2,)

    def __init__(self, sample_rate: int, width: ParamValue | None = None) -> None:
        super().__init__(sample_rate, width=width)

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        return F.width(x, self.sample_rate, width=self.p("width"))

    def channel_matrix(self, x: Tensor) -> Tensor:
        """This width as a channel matrix ``(B|1, 2, 2)`` for ``x``."""
        self.check(x)
        return F.width_matrix(self.p("width"), x)
