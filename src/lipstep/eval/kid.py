"""KID: Kernel Inception Distance between two feature sets (Bińkowski et al. 2018, eq. 3).

The unbiased MMD² estimate with the cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³, averaged over
random subsets; mean and (population) std over subsets. Unlike FD (`lipstep.eval.fd`) it is unbiased
in the sample size, so prefer it below a few thousand samples. Features come from
`lipstep.eval.features`, as for FD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipstep.errors import LipstepError
from lipstep.eval.fd import as_features


@dataclass(frozen=True)
class KIDResult:
    mean: float                 # mean of the unbiased MMD² over subsets
    std: float                  # population std over subsets (torch-fidelity's convention)
    subsets: int
    subset_size: int            # after clipping to the smaller set


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3) -> np.ndarray:
    """k(x, y) = (xᵀy / d + 1)^degree for all row pairs: [m, d] x [n, d] -> [m, n]."""
    return (x @ y.T / x.shape[1] + 1.0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3) -> float:
    """Unbiased MMD² (Gretton et al. 2012, eq. 3) with the polynomial kernel; diagonals of K_xx, K_yy excluded."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x, degree), polynomial_kernel(y, y, degree), polynomial_kernel(x, y, degree)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kid(a, b, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        seed: int | np.random.Generator = 0) -> KIDResult:
    """Kernel Inception Distance between feature sets [N, dim] and [M, dim] (see the module docstring).

    Each subset draws ``min(subset_size, N, M)`` rows of each set without replacement, from
    ``np.random.default_rng(seed)`` (or the given generator).
    """
    x, y = as_features(a, "kid (first set)"), as_features(b, "kid (second set)")
    if x.shape[1] != y.shape[1]:
        raise LipstepError(f"kid: feature dims differ ({x.shape[1]} vs {y.shape[1]})")
    if subsets < 1 or degree < 1:
        raise LipstepError(f"kid: subsets and degree must be >= 1, got {subsets} and {degree}")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise LipstepError(f"kid: need at least 2 samples per set and subset_size >= 2, got {len(x)}, {len(y)}, "
                           f"{subset_size}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    values = [mmd2_unbiased(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)], degree)
              for _ in range(subsets)]
    return KIDResult(float(np.mean(values)), float(np.std(values)), subsets, m)


__all__ = ["KIDResult", "kid", "mmd2_unbiased", "polynomial_kernel"]
