"""Saturation module (see :mod:`diffmix.functional.distortion`)."""

from __future__ import annotations

import torch  # noqa: F401  (doctest namespace)
from torch import Tensor

from diffmix.checks import check_choice
from diffmix.effects.base import Effect
from diffmix.functional import distortion as F
from diffmix.params import ParamSpec, ParamValue


class Saturation(Effect):
    """Oversampled saturation with a choice of curve, tone, output gain and mix.

    Args:
        sample_rate: Hz.
        drive_db: 0 to 36 dB, default 12.
        tone_hz: one-pole low-pass after the curve, 500 to 20000 Hz (log), default 20000.
        output_db: -36 to 12 dB, default 0.
        mix: 0 dry to 1 wet, default 1.
        curve: ``"tanh"`` (default), ``"soft"`` (cubic soft clip) or ``"tube"`` (asymmetric,
            even harmonics, DC-blocked).
        oversample: 1, 2, 4, 8 (default) or 16.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    Differentiable: ``drive_db``, ``tone_hz``, ``output_db``, ``mix``. CUDA: yes.

    >>> Saturation(44100, drive_db=18.0, curve="soft")(torch.randn(2, 1, 512)).shape
    torch.Size([2, 1, 512])
    """

    specs = (
        ParamSpec("drive_db", 0.0, 36.0, 12.0),
        ParamSpec("tone_hz", 500.0, 20000.0, 20000.0, scale="log"),
        ParamSpec("output_db", -36.0, 12.0, 0.0),
        ParamSpec("mix", 0.0, 1.0, 1.0),
    )

    def __init__(
        self,
        sample_rate: int,
        drive_db: ParamValue | None = None,
        tone_hz: ParamValue | None = None,
        output_db: ParamValue | None = None,
        mix: ParamValue | None = None,
        curve: str = "tanh",
        oversample: int = 8,
    ) -> None:
        check_choice(curve, F.CURVES, "Saturation", "curve")
        if isinstance(oversample, bool) or oversample not in F.OVERSAMPLE:
            raise ValueError(
                f"Saturation: oversample must be one of {list(F.OVERSAMPLE)}, got {oversample!r}"
            )
        self._set_options(curve=curve, oversample=oversample)
        super().__init__(
            sample_rate, drive_db=drive_db, tone_hz=tone_hz, output_db=output_db, mix=mix
        )
        self.curve = curve
        self.oversample = oversample

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        return F.saturate(
            x,
            self.sample_rate,
            drive_db=self.p("drive_db"),
            tone_hz=self.p("tone_hz"),
            output_db=self.p("output_db"),
            mix=self.p("mix"),
            curve=self.curve,
            oversample=self.oversample,
        )
