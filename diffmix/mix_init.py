"""Former home of the mix fit's closed-form start, kept so old imports work.

The code lives in :mod:`diffmix.mixing` (``analysis``, ``solvers``, ``wiring``); new code
imports from there. The per-frame band powers are ``band_frame_powers`` (once
``band_powers``, the name :func:`diffmix.functional.spectrum.band_powers` keeps).
"""

from diffmix.mixing.analysis import (  # noqa: F401
    BANDS_PER_OCTAVE,
    LOW_HZ,
    N_FFT,
    STATS_BLOCK_FRAMES,
    band_edges,
    band_frame_powers,
    coherent_band_stats,
    estimate_lag,
    k_weight_power,
)
from diffmix.mixing.solvers import (  # noqa: F401
    GAIN_DB_RANGE,
    INCOHERENT_RATIO,
    LOUD_SHARE,
    MIN_COHERENT_EXPLAINED,
    MixEstimate,
    estimate_mix,
    fit_eq_gains,
)
from diffmix.mixing.wiring import console_estimate, initialise_console, polish_levels  # noqa: F401
