"""diffmix: differentiable mixing and mastering effects for PyTorch.

Audio is ``(batch, channels, time)``; multitrack audio is ``(batch, tracks, channels, time)``.
Every effect is a pure function in :mod:`diffmix.functional` plus a thin ``nn.Module`` in
:mod:`diffmix.effects`.
"""

import os

# Read at torch's first CPU allocation: its allocator then backs buffers of 2 MB and more with
# transparent huge pages. A loop that frees and reallocates its buffers (a fit; the console
# and compressor benchmarks, ~3x) gains; the CLI's mastering jobs, which touch each
# full-length buffer once, turn them off (diffmix.cli). A value the user set is kept; the
# default is marked as diffmix's, so a child process (a CLI job run from a program that
# imported diffmix) does not take it for the user's.
_thp = os.environ.get("THP_MEM_ALLOC_ENABLE")
_HUGE_PAGES_FROM_USER = _thp is not None and _thp != os.environ.get("DIFFMIX_THP_DEFAULT")
if _thp is None:
    os.environ["THP_MEM_ALLOC_ENABLE"] = os.environ["DIFFMIX_THP_DEFAULT"] = "1"
del _thp
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
