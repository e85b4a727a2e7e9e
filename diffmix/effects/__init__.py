"""Thin ``nn.Module`` effects around :mod:`diffmix.functional`, and the containers."""

from diffmix.effects.base import Chain, Effect, Parallel
from diffmix.effects.gain import Balance, Gain, Pan, Polarity, Width

__all__ = ["Balance", "Chain", "Effect", "Gain", "Pan", "Parallel", "Polarity", "Width"]
