"""Small dense solvers the library needs beyond numpy and torch.

Everything here is float64 numpy on a few dozen unknowns (one per stem): set-up code,
never a hot path, and not differentiable.
"""

from __future__ import annotations

import numpy as np


def nnls(a: np.ndarray, b: np.ndarray, maxiter: int | None = None) -> tuple[np.ndarray, float]:
    """Non-negative least squares: ``x >= 0`` minimising ``|a x - b|_2``.

    Lawson and Hanson's active-set method, on the normal equations (as scipy >= 1.12
    runs it), so its cost is set by the number of unknowns, not of rows.

    Args:
        a: ``(m, n)`` matrix.
        b: ``(m,)`` right-hand side.
        maxiter: inner-loop limit (default ``3 n``).

    Returns:
        ``(x, residual)``: ``x`` of shape ``(n,)`` and the residual norm ``|a x - b|``.

    References:
        Lawson & Hanson, "Solving Least Squares Problems", 1974, ch. 23.

    >>> x, r = nnls(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([2.0, -1.0]))
    >>> x.tolist(), round(r, 12)
    ([2.0, 0.0], 1.0)
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 1 or a.shape[0] != b.shape[0]:
        raise ValueError(f"nnls: expected a (m, n) matrix and an (m,) vector, got {a.shape} and {b.shape}")
    n = a.shape[1]
    maxiter = 3 * n if maxiter is None else maxiter
    ata = a.T @ a
    atb = a.T @ b
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = (
        10.0
        * max(a.shape)
        * np.finfo(np.float64).eps
        * max(float(np.abs(ata).sum(axis=0).max(initial=0.0)), 1.0)
    )
    w = atb.copy()
    outer = 0
    while (~passive).any() and (w[~passive] > tol).any() and outer < max(maxiter, n) * 3:
        outer += 1
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        s = _solve_passive(ata, atb, passive)
        inner = 0
        while inner < maxiter and (s[passive] <= 0).any():
            inner += 1
            neg = passive & (s <= 0)
            alpha = float(np.min(x[neg] / (x[neg] - s[neg])))
            x = x + alpha * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
            s = _solve_passive(ata, atb, passive)
        x = s
        w = atb - ata @ x
    return x, float(np.linalg.norm(a @ x - b))


def _solve_passive(ata: np.ndarray, atb: np.ndarray, passive: np.ndarray) -> np.ndarray:
    """The unconstrained least-squares solution on the passive set, zero elsewhere."""
    s = np.zeros(ata.shape[0])
    idx = np.flatnonzero(passive)
    if idx.size:
        s[idx] = np.linalg.lstsq(ata[np.ix_(idx, idx)], atb[idx], rcond=None)[0]
    return s
