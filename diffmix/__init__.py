"""diffmix: differentiable mixing and mastering effects for PyTorch.

Audio is ``(batch, channels, time)``; multitrack audio is ``(batch, tracks, channels, time)``.
Every effect is a pure function in :mod:`diffmix.functional` plus a thin ``nn.Module`` in
:mod:`diffmix.effects`.
"""

import os

# torch's CPU allocator is left on its default (no transparent huge pages,
# THP_MEM_ALLOC_ENABLE unset): on virtual machines that hand free memory back to the host
# (free page reporting), each fresh huge page is a fault on the host, and a 3-minute master
# ran 1.5-2 s slower with them (README, "Tests and benchmarks").
# torch and numba each load their own OpenMP runtime, whose idle threads spin between
# parallel regions by default; the fit and the limiter alternate the two, so each pool's
# spinning threads stole the cores the other was computing on. Read when each runtime
# loads (torch's on import, numba's at its first parallel kernel). A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from diffmix._compat import check_torch_pair  # noqa: E402

check_torch_pair()

from diffmix.checks import input_checks  # noqa: E402
from diffmix.params import ParamSpec  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ParamSpec", "input_checks", "__version__"]
