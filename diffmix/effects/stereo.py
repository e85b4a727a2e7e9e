"""Per-band stereo width module (see :mod:`diffmix.functional.stereo`)."""

from __future__ import annotations

import torch  # noqa: F401  (doctest namespace)
from torch import Tensor

from diffmix.effects.base import Effect
from diffmix.functional import stereo as F
from diffmix.params import ParamSpec, ParamValue

MIN_SAMPLE_RATE = 22050  # keeps the highest crossover (10 kHz) below Nyquist


class BandWidth(Effect):
    """Mid/side width per band (low, mid, high) with LR4 crossovers, for mastering.

    Args:
        sample_rate: Hz, at least 22050.
        low_width: side gain below ``low_hz``, 0 (mono) to 2, default 0: mono lows.
        mid_width: side gain between the crossovers, 0 to 2, default 1.
        high_width: side gain above ``high_hz``, 0 to 2, default 1.
        low_hz: low/mid crossover, 40 to 800 Hz (log), default 150.
        high_hz: mid/high crossover, 1000 to 10000 Hz (log), default 4000.

    Shape:
        ``(B, 2, T)`` -> ``(B, 2, T)``.

    There is no dry/wet ``mix``: the crossovers' all-pass phase would comb against the
    dry signal. Use :func:`~diffmix.functional.stereo.mono_compatibility` on the output to
    check the fold-down.

    Differentiable: every parameter. CUDA: yes.

    >>> BandWidth(44100, low_width=0.0, high_width=1.4)(torch.randn(1, 2, 4410)).shape
    torch.Size([1, 2, 4410])
    """

    specs = (
        ParamSpec("low_width", 0.0, 2.0, 0.0),
        ParamSpec("mid_width", 0.0, 2.0, 1.0),
        ParamSpec("high_width", 0.0, 2.0, 1.0),
        ParamSpec("low_hz", 40.0, 800.0, 150.0, scale="log"),
        ParamSpec("high_hz", 1000.0, 10000.0, 4000.0, scale="log"),
    )
    channels = (2,)

    def __init__(
        self,
        sample_rate: int,
        low_width: ParamValue | None = None,
        mid_width: ParamValue | None = None,
        high_width: ParamValue | None = None,
        low_hz: ParamValue | None = None,
        high_hz: ParamValue | None = None,
    ) -> None:
        super().__init__(
            sample_rate,
            low_width=low_width,
            mid_width=mid_width,
            high_width=high_width,
            low_hz=low_hz,
            high_hz=high_hz,
        )
        if self.sample_rate < MIN_SAMPLE_RATE:
            raise ValueError(
                f"BandWidth: sample_rate must be at least {MIN_SAMPLE_RATE} Hz (crossovers up "
                f"to 10 kHz), got {self.sample_rate}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        return F.band_width(x, self.sample_rate, **{n: self.p(n) for n in self.params})
