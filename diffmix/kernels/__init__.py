"""Hand-written kernels behind one backend switch.

:mod:`diffmix.kernels.backend` decides which implementation serves an op
(``"numba"`` on CPU, ``"triton"`` on CUDA, the composite ``"torch"`` path elsewhere);
:mod:`diffmix.kernels.triton_ops` holds the Triton kernels' launchers. The functional
core (:mod:`diffmix.functional`) calls these; nothing here imports it at module level.
"""
