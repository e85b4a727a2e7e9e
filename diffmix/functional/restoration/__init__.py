"""Restoration: find and repair clicks, clipped runs and DC offset.

All functions take ``(batch, channels, time)`` audio and run batched over items and
channels, on CPU or CUDA. Detection (which samples are damaged) is a hard decision made
without gradient; the repair is least-squares autoregressive (LSAR) interpolation of the
flagged samples from their neighbours. Once the mask and the AR coefficients are fixed
the repair is *linear* in the audio, so it is differentiable with respect to the audio
(:func:`lsar_interpolate` is gradchecked).

Shared machinery:

* :func:`ar_coefficients`: an AR model per hop-length frame, fitted by the autocorrelation
  method (Hann-windowed analysis window of two hops centred on the frame, Levinson-Durbin
  batched over every frame of every channel).
* :func:`lsar_interpolate`: every run of masked samples (runs closer than the AR order
  merge into one segment) is solved jointly by least squares, batched over segments of
  similar length (one Cholesky solve per half-octave length bucket; a long segment's
  banded system block by block, :func:`_band_solve`).

The click detector (why it leaves drums alone, and its second look in stereo) is
documented in :func:`detect_clicks`; the click repair (the flagged samples read as signal
plus a click of EM-fitted variance, a stereo click repaired with a joint model of both
channels, a click in both channels with a correlated click model
(:func:`coincident_interpolate`), spans grown over missed click edges) in
:func:`repair_clicks`.

References:
    S. J. Godsill and P. J. W. Rayner, *Digital Audio Restoration*, Springer 1998,
    ch. 5 (LSAR interpolation) and ch. 5.3 (detection by the AR prediction error).
    J. Durbin, "The fitting of time-series models", Rev. Int. Stat. Inst., 1960.
"""

from __future__ import annotations

# The public API, and the private names that tests reach through the package (a test that
# patches a name patches it on the module that uses it). Modules: ``ar`` (AR models and
# their errors), ``masks`` (runs and spans), ``coincident`` (clicks in both channels),
# ``lsar`` (the interpolator), ``arx`` (the joint stereo model), ``guards`` and
# ``arx_detect`` (the detector's tests), ``detect``, ``repair`` (and ``declick``),
# ``clipping`` (``declip``, ``remove_dc``, ``defects``).
from diffmix.functional.restoration._common import (  # noqa: F401
    _ARX_SPAN,
    _GROW_GAP,
)
from diffmix.functional.restoration.ar import (  # noqa: F401
    _errors_cache,
    _frames_near,
    _residuals,
    _unique_pairs,
    ar_coefficients,
    ar_residuals,
    levinson,
)
from diffmix.functional.restoration.arx import (  # noqa: F401
    _arx_filters,
    _fir_frames,
)
from diffmix.functional.restoration.arx_detect import (  # noqa: F401
    _arx_candidates,
)
from diffmix.functional.restoration.clipping import (  # noqa: F401
    declip,
    defects,
    detect_clipping,
    remove_dc,
)
from diffmix.functional.restoration.coincident import (  # noqa: F401
    coincident_interpolate,
)
from diffmix.functional.restoration.detect import (  # noqa: F401
    detect_clicks,
)
from diffmix.functional.restoration.guards import (  # noqa: F401
    _keep_inside,
    _periodicity,
    _sliding_max,
)
from diffmix.functional.restoration.lsar import (  # noqa: F401
    _band_solve,
    _lsar_update,
    lsar_interpolate,
)
from diffmix.functional.restoration.masks import (  # noqa: F401
    runs,
    spans,
)
from diffmix.functional.restoration.repair import (  # noqa: F401
    declick,
    repair_clicks,
)

__all__ = [
    "ar_coefficients",
    "ar_residuals",
    "coincident_interpolate",
    "declick",
    "declip",
    "defects",
    "detect_clicks",
    "detect_clipping",
    "levinson",
    "lsar_interpolate",
    "remove_dc",
    "repair_clicks",
    "runs",
    "spans",
]
