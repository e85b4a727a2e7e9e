"""Collection rules for pytest's doctest run over ``diffmix/`` (pyproject's testpaths)."""

import importlib.util

# The Triton kernel sources import triton at module level (the package loads them only
# through diffmix.kernels.triton_ops, on first use); where Triton is not installed (torch's
# macOS wheels) they are not collected.
collect_ignore_glob = [] if importlib.util.find_spec("triton") else ["diffmix/kernels/_triton_*.py"]
