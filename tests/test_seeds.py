"""The test seeds' draw (tests/seeds.py): reproducible from the tree, one per call."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.seeds import ROOT, drawn_seed


def _draw() -> list[int]:
    return [drawn_seed(10**9) for _ in range(3)]


def test_each_call_draws_its_own_seed_and_a_fresh_process_draws_the_same():
    here = _draw()
    assert len(set(here)) == 3, here
    # Another process on the same tree, under the same test name, draws the same seeds.
    test = os.environ["PYTEST_CURRENT_TEST"]
    code = (f"import os; os.environ['PYTEST_CURRENT_TEST'] = {test!r}\n"
            "from tests.test_seeds import _draw; print(_draw())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "DIFFMIX_TEST_SEED": os.environ.get("DIFFMIX_TEST_SEED", "")},
                         check=True).stdout
    if os.environ.get("DIFFMIX_TEST_SEED") != "fresh":
        assert out.strip() == str(here)
    # A salt mixed in draws others.
    salted = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "DIFFMIX_TEST_SEED": "12345"}, check=True).stdout
    assert salted.strip() != str(here)
