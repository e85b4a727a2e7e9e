"""diffmix: differentiable mixing and mastering effects for PyTorch.

Audio is ``(batch, channels, time)``; multitrack audio is ``(batch, tracks, channels, time)``.
Every effect is a pure function in :mod:`diffmix.functional` plus a thin ``nn.Module`` in
:mod:`diffmix.effects`.
"""

from diffmix._compat import check_torch_pair

check_torch_pair()

from diffmix.checks import input_checks  # noqa: E402
from diffmix.params import ParamSpec  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ParamSpec", "input_checks", "__version__"]
