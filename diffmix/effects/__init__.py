"""Thin ``nn.Module`` effects around :mod:`diffmix.functional`, and the containers."""

from diffmix.effects.automation import VolumeAutomation
from diffmix.effects.base import Chain, Effect, Parallel
from diffmix.effects.delay import Delay
from diffmix.effects.distortion import Saturation
from diffmix.effects.dynamics import Compressor, Expander, Limiter, LoudnessRide, MultibandCompressor
from diffmix.effects.eq import HighPass, LowPass, ParametricEQ
from diffmix.effects.gain import Balance, Gain, Pan, Polarity, Width
from diffmix.effects.match_eq import MatchEQ
from diffmix.effects.modulation import Chorus, Phaser
from diffmix.effects.reverb import Reverb
from diffmix.effects.stereo import BandWidth

__all__ = [
    "Balance", "BandWidth", "Chain", "Chorus", "Compressor", "Delay", "Effect", "Expander", "Gain",
    "HighPass", "Limiter", "LoudnessRide", "LowPass", "MatchEQ", "MultibandCompressor", "Pan",
    "Parallel", "ParametricEQ", "Phaser", "Polarity", "Reverb", "Saturation",
    "VolumeAutomation", "Width",
]
