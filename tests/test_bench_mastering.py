"""The mastering benchmark's speed table (``scripts/benchmarks/mastering.py``): a child's
peak RSS is its own, not its parent's high-water mark that Linux folds into a child's
``ru_maxrss`` at exec."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from benchmarks.mastering import _child  # noqa: E402


def test_a_childs_peak_rss_is_its_own_not_its_parents():
    parent = np.ones(400 << 17)  # 400 MiB held here while the children run
    small = _child([sys.executable, "-c", "pass"])[1]
    large = _child([sys.executable, "-c", "import numpy as np; a = np.ones(200 << 17); a += 1"])[1]
    assert small < 150 << 20  # an interpreter alone: far under this process's 400 MiB
    assert 200 << 20 < large - small < 260 << 20  # the child's own 200 MiB array
    assert parent[0] == 1.0
