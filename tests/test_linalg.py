"""diffmix.linalg.nnls against scipy.optimize.nnls on random problems (seed printed)."""

from __future__ import annotations

import numpy as np
import pytest

from diffmix.linalg import nnls
from tests.seeds import drawn_seed

scipy_optimize = pytest.importorskip("scipy.optimize")


def test_nnls_matches_scipy_on_random_problems():
    seed = drawn_seed(2**32)
    print(f"nnls seed {seed}")
    rng = np.random.default_rng(seed)
    for _ in range(500):
        m, n = int(rng.integers(1, 60)), int(rng.integers(1, 25))
        a = rng.standard_normal((m, n)) * np.exp(rng.standard_normal(n))
        b = rng.standard_normal(m) * rng.exponential()
        if rng.random() < 0.3:  # two identical columns: a singular normal matrix
            a[:, rng.integers(n)] = a[:, 0]
        x, r = nnls(a, b, maxiter=50 * n)
        xs, rs = scipy_optimize.nnls(a, b, maxiter=50 * n)
        assert (x >= 0).all()
        assert r == pytest.approx(np.linalg.norm(a @ x - b), rel=1e-12, abs=1e-15)
        # Optimal: no worse than scipy's residual (the minimiser can differ when singular).
        assert r <= rs + 1e-9 * np.linalg.norm(b), (seed, m, n)


def test_nnls_known_solution_and_bad_shapes():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    x, _ = nnls(a, a @ np.array([0.5, 2.0]))
    np.testing.assert_allclose(x, [0.5, 2.0], atol=1e-12)
    x, _ = nnls(a, np.array([-1.0, -1.0, -1.0]))
    np.testing.assert_array_equal(x, [0.0, 0.0])
    with pytest.raises(ValueError, match="nnls"):
        nnls(np.ones(3), np.ones(3))
