"""Mastering: fit a chain to references and/or loudness specs, then hit each target exactly.

1. **Fit** (optional, :mod:`~diffmix.mastering.fit`): tone, width and dynamics parameters
   are fitted on random excerpts against the objective's terms, with the limiter in its
   smooth mode, several songs at once (one parameter set per song).
2. **Loudness solve** (:mod:`~diffmix.mastering.loudness`): on the full-length render
   (:mod:`~diffmix.mastering.render`), each song's drive into the true-peak limiter is
   adjusted in closed loop (secant steps) until its integrated loudness is within
   ``tolerance_lu`` of its target; the limiter runs in its exact mode, so the ceiling holds.
3. **Delivery and report** (:mod:`~diffmix.mastering.deliver`,
   :mod:`~diffmix.mastering.report`): the written file is checked on the strict
   true-peak meter and re-limited if it crosses the ceiling; one report schema.

The chain (:mod:`~diffmix.mastering.chain`) ends with the limiter named ``limiter``, whose
``gain_db`` is the drive. A song is read through one interface
(:mod:`~diffmix.mastering.source`): a tensor in memory, or a file on disk read a slice at a
time, so :func:`master_file` masters files of any length in bounded memory with the same
stages as :func:`master_group`. The library takes typed arguments
(:class:`ChainSpec`, :class:`FitOptions`, :class:`MasterOptions`); the jobs build them
from their configs.
"""

from diffmix.effects.dynamics import set_exact
from diffmix.mastering.chain import LIMITER, MATCH, ChainSpec, LimiterStage
from diffmix.mastering.deliver import DeliveryOptions
from diffmix.mastering.fit import (
    FitOptions,
    available_weights,
    fit_chain,
    fit_stage,
    init_match,
    match_start,
    pad_batch,
    refine_match,
    song_excerpts,
)
from diffmix.mastering.loudness import (
    DRIVE_RANGE,
    LoudnessSolve,
    loudness_goals,
    measure_lufs,
    rough_lufs,
    solve,
    solve_loudness,
)
from diffmix.mastering.pipeline import (
    MIN_JOB_RATE,
    MIN_SECONDS,
    MasterOptions,
    Song,
    master_file,
    master_group,
    polish_auto,
)
from diffmix.mastering.render import StreamRenderer, render_with_drive
from diffmix.mastering.source import DiskAudio, chunk_bounds, measure_file
from diffmix.report import ChunkMeter

__all__ = [
    "DRIVE_RANGE", "LIMITER", "MATCH", "MIN_JOB_RATE", "MIN_SECONDS", "ChainSpec", "ChunkMeter",
    "DeliveryOptions", "DiskAudio", "FitOptions", "LimiterStage", "LoudnessSolve", "MasterOptions",
    "Song", "StreamRenderer", "available_weights", "chunk_bounds", "fit_chain", "fit_stage",
    "init_match", "loudness_goals", "master_file", "master_group", "match_start", "measure_file",
    "measure_lufs", "pad_batch", "polish_auto", "refine_match", "render_with_drive", "rough_lufs",
    "set_exact", "solve", "solve_loudness", "song_excerpts",
]
