"""Match EQ module (see :func:`diffmix.functional.match_eq.match_eq`)."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from diffmix.effects.base import Effect
from diffmix.functional import match_eq as F
from diffmix.functional.filters import LinearFilter
from diffmix.params import BoundedParam, ParamSpec, ParamValue

GAIN_MAX_DB = 24.0
N_FFT = 8192  # the spectra the closed form and its refine passes measure
SIDE_MIN_DB = -60.0  # a wide mix matched to a mono-bass reference cuts its side this far


class MatchEQ(Effect):
    """Smooth mid/side match EQ: one gain per fractional-octave band, linear phase. CUDA: yes.

    Args:
        sample_rate: Hz.
        bands_per_octave: band density (option), default 3 (the third octaves the tone
            features measure); centres are IEC 61260-1 base-10 from ``low_hz`` to
            min(``high_hz``, 0.45 fs).
        low_hz, high_hz: band range in Hz (options), default 20 and 20000.
        n_fir: FIR length in taps (option, even); default ~0.75 s of audio (32768 at 44.1 kHz).
        mid_gain_db: per band, -24 to 24 dB, default 0. ``(bands,)`` or ``(B, bands)``.
        side_gain_db: per band, -60 to 24 dB, default 0.
        mix: dry/wet, 0 to 1, default 1.

    Differentiable: ``mid_gain_db``, ``side_gain_db``, ``mix``.

    Shape:
        ``(B, 2, T)`` -> ``(B, 2, T)``.

    :meth:`match` sets the gains in closed form from an input and a reference (see
    :func:`diffmix.functional.match_eq.match_gains`); a fit can refine them from there.

    >>> eq = MatchEQ(44100)
    >>> eq.num_bands
    29
    >>> eq(torch.randn(1, 2, 2000)).shape
    torch.Size([1, 2, 2000])
    """

    channels = (2,)

    def __init__(
        self,
        sample_rate: int,
        bands_per_octave: int = 3,
        low_hz: float = 20.0,
        high_hz: float = 20000.0,
        n_fir: int | None = None,
        mid_gain_db: ParamValue | None = None,
        side_gain_db: ParamValue | None = None,
        mix: ParamValue | None = None,
    ) -> None:
        name = type(self).__name__
        if (
            isinstance(bands_per_octave, bool)
            or not isinstance(bands_per_octave, int)
            or not 1 <= bands_per_octave <= 24
        ):
            raise ValueError(f"{name}: bands_per_octave must be an integer 1..24, got {bands_per_octave!r}")
        if not (
            isinstance(low_hz, (int, float)) and isinstance(high_hz, (int, float)) and 0 < low_hz < high_hz
        ):
            raise ValueError(f"{name}: need 0 < low_hz < high_hz, got {low_hz!r} and {high_hz!r}")
        if n_fir is not None and (
            isinstance(n_fir, bool) or not isinstance(n_fir, int) or n_fir < 64 or n_fir % 2
        ):
            raise ValueError(f"{name}: n_fir must be an even integer >= 64, got {n_fir!r}")
        if not (isinstance(sample_rate, int) and sample_rate > 0):
            raise ValueError(f"{name}: sample_rate must be a positive integer, got {sample_rate!r}")
        centres = F.match_centres(sample_rate, bands_per_octave, float(low_hz), float(high_hz))
        if centres.numel() < 2:
            raise ValueError(f"{name}: the range {low_hz:g}..{high_hz:g} Hz holds fewer than 2 bands")
        self.n_fir = F.fir_length(sample_rate) if n_fir is None else n_fir
        self._set_options(
            bands_per_octave=bands_per_octave, low_hz=float(low_hz), high_hz=float(high_hz), n_fir=n_fir
        )
        n = centres.numel()
        super().__init__(
            sample_rate,
            mid_gain_db=[0.0] * n if mid_gain_db is None else mid_gain_db,
            side_gain_db=[0.0] * n if side_gain_db is None else side_gain_db,
            mix=mix,
        )
        # Kept in float64 whatever the module's dtype: the design is done in float64 terms
        # and a preset must render the same after .float() or .double().
        self._centres = tuple(float(c) for c in centres.tolist())
        for key in ("mid_gain_db", "side_gain_db"):
            shape = tuple(cast(BoundedParam, self.params[key]).anchor.shape)
            if len(shape) == 0 or shape[-1] != n:
                raise ValueError(f"{name}: {key} needs a trailing band axis of {n} values, got shape {shape}")

    @property
    def num_bands(self) -> int:
        return len(self._centres)

    @property
    def centres_hz(self) -> Tensor:
        """Band centres in Hz, float64 on the CPU."""
        return torch.tensor(self._centres, dtype=torch.float64)

    def param_specs(self) -> tuple[ParamSpec, ...]:
        return (
            ParamSpec("mid_gain_db", -GAIN_MAX_DB, GAIN_MAX_DB, 0.0),
            ParamSpec("side_gain_db", SIDE_MIN_DB, GAIN_MAX_DB, 0.0),
            ParamSpec("mix", 0.0, 1.0, 1.0),
        )

    @torch.no_grad()
    def match(self, x: Tensor, reference: Tensor, refine: int = 2) -> tuple[Tensor, Tensor]:
        """Set the gains that move ``x`` ``(B, 2, T)`` toward ``reference``; returns them.

        The closed-form gains (:func:`~diffmix.functional.match_eq.match_gains`) assume
        each band's response is its centre's; ``refine`` passes then render ``x``, measure
        what is left against the reference the same way, and add it, which takes out the
        curve's variation inside each band and the bands' leakage. A pass renders
        nothing at full rate: the output's levels come from the input's spectrum and the
        FIR's response, and in the lowest bands from a render at a quarter of the rate
        (:class:`~diffmix.functional.match_eq.FilteredBandLevels`). The gains
        keep the parameters' leading shape: ``(B, bands)`` when the module holds one set
        per item, else ``(bands,)`` from item 0.
        """
        centres = self.centres_hz
        per_item = cast(BoundedParam, self.params["mid_gain_db"]).anchor.dim() > 1
        if x.requires_grad:  # (detached only then: its band levels are memoised per tensor
            x = x.detach()   # object, and the job's width fold measures the same song again)
        # The reference is analysed once for the closed form and every refine pass.
        ref_db = F.signal_band_levels_db(reference, self.sample_rate, centres)
        mix = self.p("mix").detach().reshape(-1)
        filtered = F.FilteredBandLevels(x, self.sample_rate, centres, self.n_fir, N_FFT) if refine else None
        mid, side = F.match_gains(
            x, reference, self.sample_rate, centres,
            mid_range_db=(-GAIN_MAX_DB, GAIN_MAX_DB), side_range_db=(SIDE_MIN_DB, GAIN_MAX_DB),
            reference_db=ref_db,
        )
        for step in range(refine + 1):
            if not per_item:
                mid, side = mid[:1], side[:1]
            self.load_values(
                {
                    "mid_gain_db": (mid if per_item else mid[0]).double().cpu(),
                    "side_gain_db": (side if per_item else side[0]).double().cpu(),
                }
            )
            if step == refine:
                break
            wide = (-120.0, 120.0)
            assert filtered is not None  # made above: refine > 0
            levels = filtered(torch.stack([mid, side], -2), mix)
            dm, ds = F.match_gains(
                x, reference, self.sample_rate, centres, mid_range_db=wide, side_range_db=wide,
                reference_db=ref_db, x_db=levels,
            )
            mid = (mid + dm).clamp(-GAIN_MAX_DB, GAIN_MAX_DB)
            side = (side + ds).clamp(SIDE_MIN_DB, GAIN_MAX_DB)
        return self.p("mid_gain_db").detach(), self.p("side_gain_db").detach()

    def linear(self, x: Tensor) -> LinearFilter:
        """Its zero-phase FIR (:func:`~diffmix.functional.match_eq.match_eq_filter`)."""
        self.check(x)
        return F.match_eq_filter(
            x,
            self.sample_rate,
            mid_gain_db=self.p("mid_gain_db"),
            side_gain_db=self.p("side_gain_db"),
            mix=self.p("mix"),
            centres_hz=self.centres_hz,
            n_fir=self.n_fir,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)(x)

    def extra_repr(self) -> str:
        return f"sample_rate={self.sample_rate}, bands={self.num_bands}, n_fir={self.n_fir}"
