"""Parametric EQ and high/low-pass modules (see :func:`diffmix.functional.eq.parametric_eq`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import cast

import torch
from torch import Tensor

from diffmix.checks import check_choice
from diffmix.effects.base import Effect
from diffmix.functional import eq as E
from diffmix.functional import filters as F
from diffmix.params import BoundedParam, ParamSpec, ParamValue

DEFAULT_BANDS = ("low_shelf", "peak", "peak", "peak", "peak", "high_shelf")
FREQ_MIN_HZ, FREQ_MAX_HZ = 20.0, 20000.0
Q_MIN, Q_MAX = 0.1, 10.0
GAIN_MAX_DB = 24.0


def _freq_spec(sample_rate: int, default: float = 1000.0) -> ParamSpec:
    # Designs above ~0.45 fs warp badly (the bilinear transform squeezes everything into
    # the last few hundred Hz), so the range stops there at low sample rates.
    top = min(FREQ_MAX_HZ, 0.45 * sample_rate)
    return ParamSpec("freq_hz", FREQ_MIN_HZ, top, min(default, top), scale="log")


def _default_freqs(bands: Sequence[str], top: float) -> list[float]:
    """Musically placed defaults: shelves and passes at the edges, bells spread log-evenly."""
    kinds = [E.parse_band(b)[0] for b in bands]
    bells = [i for i, k in enumerate(kinds) if k not in ("low_shelf", "high_shelf", "highpass", "lowpass")]
    spread = (
        [200.0 * (25.0 ** (j / max(1, len(bells) - 1))) for j in range(len(bells))]
        if len(bells) > 1
        else [1000.0]
    )
    edge = {"low_shelf": 100.0, "high_shelf": 8000.0, "highpass": 30.0, "lowpass": 18000.0}
    out, it = [], iter(spread)
    for kind in kinds:
        out.append(min(top, edge[kind] if kind in edge else next(it)))
    return out


@lru_cache(maxsize=64)
def range_tail_bound(bands: tuple[str, ...], sample_rate: int, freq_min: float) -> int:
    """Longest impulse response (samples to -120 dB) any setting inside the ranges can give.

    Evaluated at the corners of the parameter box: a pole's radius grows as the frequency
    falls and the Q rises, and for bells and shelves with the gain's sign, so the slowest
    decay sits on a corner.
    """
    corners = list(itertools.product((freq_min,), (Q_MIN, Q_MAX), (-GAIN_MAX_DB, 0.0, GAIN_MAX_DB)))
    f, q, g = (torch.tensor([[c[i]] * len(bands) for c in corners], dtype=torch.float64) for i in range(3))
    _, a = E.eq_coeffs(list(bands), f, q, g, sample_rate)
    return F.iir_tail(a)


class ParametricEQ(Effect):
    """Parametric EQ with any number of RBJ bands in series. CUDA: yes.

    Args:
        sample_rate: Hz.
        bands: band types, first applied first: ``"peak"``, ``"low_shelf"``,
            ``"high_shelf"``, ``"highpass"``, ``"lowpass"`` (resonant 2nd order, using
            ``q``), ``"highpassN"``/``"lowpassN"`` (Butterworth of order N = 1..8, ``q``
            unused), ``"notch"``, ``"bandpass"``. Default: low shelf, four bells, high shelf.
        freq_hz: per band, 20 Hz to min(20 kHz, 0.45 fs), log scale; default spread
            over the spectrum. ``(n_bands,)``, ``(B, n_bands)`` or ``(B, C, n_bands)``.
        q: per band, 0.1 to 10, log scale; default 0.7071.
        gain_db: per band, -24 to 24 dB; default 0 (used by bells and shelves).
        mix: dry/wet, 0 to 1; default 1. Float, ``(B,)`` or ``(B, C)``.
        mode: ``"fft"`` (default; frequency sampling, fast for fitting) or ``"exact"``
            (time-domain recursion).
        stereo: ``"lr"`` (default) or ``"ms"`` (mid/side: channel 0 of per-channel
            values sets the mid, channel 1 the side; needs stereo audio).
        fft_tail_s: FFT mode: seconds the impulse response may ring before it is cut
            (the agreement with ``"exact"`` is set by what rings past it). ``None``
            (default): on CPU, read from the current poles (-120 dB; reading a CPU tensor
            costs no device sync); on CUDA, the bound over the whole parameter range, so
            the forward never syncs.

    Differentiable: ``freq_hz``, ``q``, ``gain_db``, ``mix``.

    Shape:
        ``(B, C, T)`` -> ``(B, C, T)``.

    >>> eq = ParametricEQ(44100, bands=["highpass4", "peak", "high_shelf"],
    ...                   freq_hz=[40.0, 2500.0, 9000.0], gain_db=[0.0, -3.0, 2.0])
    >>> eq(torch.randn(2, 2, 1000)).shape
    torch.Size([2, 2, 1000])
    """

    def __init__(
        self,
        sample_rate: int,
        bands: Sequence[str] = DEFAULT_BANDS,
        freq_hz: ParamValue | None = None,
        q: ParamValue | None = None,
        gain_db: ParamValue | None = None,
        mix: ParamValue | None = None,
        mode: str = "fft",
        stereo: str = "lr",
        fft_tail_s: float | None = None,
    ) -> None:
        if isinstance(bands, str) or not isinstance(bands, Sequence) or len(bands) == 0:
            raise ValueError(f"ParametricEQ: bands must be a non-empty list of band types, got {bands!r}")
        self.bands = tuple(str(b) for b in bands)
        for band in self.bands:
            E.parse_band(band, "ParametricEQ")
        self.mode = check_choice(mode, F.EQ_MODES, "ParametricEQ", "mode")
        self.stereo = check_choice(stereo, E.STEREO_MODES, "ParametricEQ", "stereo mode")
        if fft_tail_s is not None and (
            isinstance(fft_tail_s, bool) or not isinstance(fft_tail_s, (int, float)) or not fft_tail_s > 0
        ):
            raise ValueError(
                f"ParametricEQ: fft_tail_s must be a positive number of seconds, got {fft_tail_s!r}"
            )
        self.fft_tail_s = None if fft_tail_s is None else float(fft_tail_s)
        self._set_options(bands=list(self.bands), mode=mode, stereo=stereo, fft_tail_s=self.fft_tail_s)
        # Computed here, outside any traced code: torch.compile then reads a constant.
        self._range_tail = range_tail_bound(self.bands, sample_rate, FREQ_MIN_HZ)
        n = len(self.bands)
        top = min(FREQ_MAX_HZ, 0.45 * sample_rate) if sample_rate > 0 else FREQ_MAX_HZ
        super().__init__(
            sample_rate,
            freq_hz=_default_freqs(self.bands, top) if freq_hz is None else freq_hz,
            q=[1.0 / math.sqrt(2.0)] * n if q is None else q,
            gain_db=[0.0] * n if gain_db is None else gain_db,
            mix=mix,
        )
        for name in ("freq_hz", "q", "gain_db"):
            shape = tuple(cast(BoundedParam, self.params[name]).anchor.shape)
            if len(shape) == 0 or shape[-1] != n:
                raise ValueError(
                    f"ParametricEQ: {name} needs a trailing band axis of {n} values, got shape {shape}"
                )
        if self.stereo == "ms":
            self.channels = (2,)

    def param_specs(self) -> tuple[ParamSpec, ...]:
        return (
            _freq_spec(self.sample_rate),
            ParamSpec("q", Q_MIN, Q_MAX, 1.0 / math.sqrt(2.0), scale="log"),
            ParamSpec("gain_db", -GAIN_MAX_DB, GAIN_MAX_DB, 0.0),
            ParamSpec("mix", 0.0, 1.0, 1.0),
        )

    def tail(self, x: Tensor) -> int | None:
        """The FFT mode's tail in samples for audio ``x`` (``None``: read from the poles)."""
        if self.fft_tail_s is not None:
            return max(1, round(self.fft_tail_s * self.sample_rate))
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            return None  # reading the poles is cheap on the CPU (no graph to keep whole)
        return self._range_tail

    def linear(self, x: Tensor) -> F.LinearFilter | None:
        """The FFT mode's filter (:func:`~diffmix.functional.eq.parametric_eq_filter`); the
        exact recursion is none."""
        if self.mode != "fft":
            return None
        self.check(x)
        return E.parametric_eq_filter(
            x, self.sample_rate, bands=self.bands, freq_hz=self.p("freq_hz"), q=self.p("q"),
            gain_db=self.p("gain_db"), mix=self.p("mix"), stereo=self.stereo, tail=self.tail(x),
        )

    def forward(self, x: Tensor) -> Tensor:
        lin = self.linear(x)
        if lin is not None:
            return lin(x)
        self.check(x)
        return E.parametric_eq(
            x, self.sample_rate, bands=self.bands, freq_hz=self.p("freq_hz"), q=self.p("q"),
            gain_db=self.p("gain_db"), mix=self.p("mix"), mode=self.mode, stereo=self.stereo,
        )

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, bands={list(self.bands)}, mode={self.mode!r}, "
            f"stereo={self.stereo!r}"
        )


class _Pass(Effect):
    kind = "highpass"

    def __init__(
        self,
        sample_rate: int,
        freq_hz: ParamValue | None = None,
        q: ParamValue | None = None,
        order: int = 2,
        mode: str = "exact",
    ) -> None:
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= F.MAX_ORDER:
            raise ValueError(
                f"{type(self).__name__}: order must be an integer 1..{F.MAX_ORDER}, got {order!r}"
            )
        self.order = order
        self.mode = check_choice(mode, F.EQ_MODES, type(self).__name__, "mode")
        self._set_options(order=order, mode=mode)
        super().__init__(sample_rate, freq_hz=freq_hz, q=q)
        band = self.kind if order == 2 else f"{self.kind}{order}"
        self._range_tail = range_tail_bound((band,), self.sample_rate, FREQ_MIN_HZ)

    def param_specs(self) -> tuple[ParamSpec, ...]:
        default = 80.0 if self.kind == "highpass" else 12000.0
        return (
            _freq_spec(self.sample_rate, default),
            ParamSpec("q", Q_MIN, Q_MAX, 1.0 / math.sqrt(2.0), scale="log"),
        )

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        band = self.kind if self.order == 2 else f"{self.kind}{self.order}"
        return E.parametric_eq(
            x,
            self.sample_rate,
            bands=[band],
            freq_hz=self.p("freq_hz").unsqueeze(-1),
            q=self.p("q").unsqueeze(-1),
            gain_db=0.0,
            mode=self.mode,
            tail=None if x.device.type == "cpu" and not torch.compiler.is_compiling()
            else self._range_tail,
        )


class HighPass(_Pass):
    """High-pass filter: RBJ 2nd order with resonance ``q`` (order 2), else Butterworth.

    Args:
        sample_rate: Hz.
        freq_hz: -3 dB corner (at ``q = 0.7071`` for order 2), 20 Hz to min(20 kHz,
            0.45 fs), log scale; default 80 Hz.
        q: resonance of the order-2 filter, 0.1 to 10; default 0.7071 (Butterworth).
            Unused for other orders.
        order: 1..8 (default 2); orders other than 2 are Butterworth cascades.
        mode: ``"exact"`` (default) or ``"fft"``.

    Differentiable: ``freq_hz``, ``q``. CUDA: yes.

    >>> HighPass(48000, freq_hz=100.0, order=4)(torch.randn(1, 2, 480)).shape
    torch.Size([1, 2, 480])
    """

    kind = "highpass"


class LowPass(_Pass):
    """Low-pass filter: RBJ 2nd order with resonance ``q`` (order 2), else Butterworth.

    Args: as :class:`HighPass`; ``freq_hz`` defaults to 12 kHz.

    >>> LowPass(48000, freq_hz=5000.0)(torch.randn(1, 1, 480)).shape
    torch.Size([1, 1, 480])
    """

    kind = "lowpass"
