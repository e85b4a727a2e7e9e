"""The test matrix: dtype (float32, float64) x device (CPU always, CUDA when present)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
# ../shared beside the checkout, as for the benchmarks; DIFFMIX_SHARED points elsewhere
# (e.g. from a git worktree).
_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIFFMIX_SHARED", _ROOT.parent / "shared")) / "data" / "multitrack"

torch.set_num_threads(max(1, torch.get_num_threads()))


def pytest_report_header(config) -> str:  # noqa: ANN001
    from tests.seeds import salt

    return f"diffmix test seeds: salt {salt()} (tests/seeds.py; DIFFMIX_TEST_SEED=fresh draws anew)"


def pytest_collection_modifyitems(config, items):  # noqa: ANN001
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request) -> torch.dtype:  # noqa: ANN001
    return request.param


@pytest.fixture(params=DEVICES)
def device(request) -> str:  # noqa: ANN001
    return request.param


@pytest.fixture(scope="module")
def _single_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("_single_thread")``).

    Effect tests run on short signals: threads buy nothing, and on a loaded 2-core machine
    OpenMP barriers made them ~10x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_multitrack() -> Path:
    """The shared real multitrack sets; skipped where ../shared is absent (a user's machine)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared multitrack data not found at {SHARED} (only CI and devs have it)")
    return SHARED
