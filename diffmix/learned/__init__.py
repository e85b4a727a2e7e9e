"""Learned mastering settings: features -> a small MLP -> the chain's parameters.

A :class:`~diffmix.learned.model.Predictor` is trained by ``diffmix train``
(:mod:`diffmix.learned.train`) and stored as safetensors weights plus JSON metadata
(:mod:`diffmix.learned.checkpoint`). :func:`apply_prediction` sets a chain's parameters
from it: the fit then starts there (``fit.init=learned``), or, with ``fit.steps=0``, the
prediction is the answer. The loudness solve keeps the last word on the limiter drive.
"""

from diffmix.learned.checkpoint import load_checkpoint, save_checkpoint
from diffmix.learned.predict import apply_prediction, heads_for, learned_start

__all__ = ["apply_prediction", "heads_for", "learned_start", "load_checkpoint", "save_checkpoint"]
