"""Mixing stems toward a reference: the mix fit's library.

- :mod:`~diffmix.mixing.analysis`: bands, band powers, complex statistics, lag, K-weighting.
- :mod:`~diffmix.mixing.solvers`: the closed-form start (per-band least squares, EQ gains).
- :mod:`~diffmix.mixing.wiring`: the estimate as the console sees it, written onto it.
- :mod:`~diffmix.mixing.style`: toward another song's mix: its feature distances.
- :mod:`~diffmix.mixing.style_master`: toward another song's mix: the master-bus stages.
- :mod:`~diffmix.mixing.hidden`: random realisable settings for tests and benchmarks.
- :mod:`~diffmix.mixing.console_fit`: :func:`fit_console`, every stage in order.
"""

from diffmix.mixing.console_fit import MixFitOptions, equal_loudness_gains, excerpt_pool, fit_console
from diffmix.mixing.solvers import MixEstimate, estimate_mix, fit_eq_gains
from diffmix.mixing.style import style_distances
from diffmix.mixing.wiring import (
    console_estimate,
    initialise_console,
    placement_resolve,
    polish_levels,
    send_resolve,
)

__all__ = [
    "MixEstimate",
    "MixFitOptions",
    "console_estimate",
    "equal_loudness_gains",
    "estimate_mix",
    "excerpt_pool",
    "fit_console",
    "fit_eq_gains",
    "initialise_console",
    "placement_resolve",
    "polish_levels",
    "send_resolve",
    "style_distances",
]
