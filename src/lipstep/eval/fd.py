"""Fréchet distance (FID / FVD formula) between Gaussians fitted to two feature sets.

**Fréchet distance** (Heusel et al. 2017, eq. 6; Dowson & Landau 1982)::

    d² = ||μ₁ - μ₂||² + Tr(Σ₁) + Tr(Σ₂) - 2 Tr((Σ₁ Σ₂)^{1/2})

with Σ the unbiased sample covariance, everything in float64. The matrix square root is taken by
the *symmetric route* (TF-GAN, VideoGPT, cd-fvd): with A = Σ₁^{1/2} (eigendecomposition of a
symmetric PSD matrix, negative rounding eigenvalues clamped to 0), Σ₁Σ₂ = A·(AΣ₂) has the same
eigenvalues as A Σ₂ A, which is symmetric PSD; so Tr((Σ₁Σ₂)^{1/2}) = Σᵢ sqrt(λᵢ(A Σ₂ A)) from
``eigvalsh``. Unlike ``scipy.linalg.sqrtm(Σ₁Σ₂)`` (pytorch-fid) this never produces an imaginary part
and needs no ε·I retry on singular covariances (n < d). The analogue of pytorch-fid's "imaginary
component" check is a check on negative eigenvalues of A Σ₂ A: beyond rounding (1e-6 of the largest)
they mean the inputs are not covariance matrices, and `frechet_distance` raises.

FD is biased by the sample count (it falls as n grows): compare FD values only at equal n, and
record n, extractor name and weight SHA-256 (`lipstep.eval.features`) in every report. Its features:
InceptionV3 pool3 (FID), I3D (FVD) or lipstep's own (internal), all in `lipstep.eval.features`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lipstep.errors import DataError, LipstepError
from lipstep.fsutil import atomic_path

# ------------------------------------------------------------------------------ Gaussian statistics


@dataclass
class FeatureStats:
    """Mean and unbiased covariance of a feature set, with its size and the extractor's name."""

    mu: np.ndarray              # float64 [d]
    sigma: np.ndarray           # float64 [d, d]
    n: int                      # number of feature vectors
    extractor: str = ""         # name of the feature space (FD across different spaces is meaningless)

    def save(self, path: str | os.PathLike) -> Path:
        """Write to an ``.npz`` (atomically); reference-set stats are worth caching."""
        path = Path(path)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), extractor=np.str_(self.extractor))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Read stats written by `save`."""
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                return cls(z["mu"].astype(np.float64), z["sigma"].astype(np.float64), int(z["n"]),
                           str(z["extractor"]))
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"cannot read feature stats {path} ({e})") from None


def as_features(feats, what: str) -> np.ndarray:
    """Features [N, dim] (numpy or torch) as float64; `LipstepError` unless 2-D and finite."""
    a = np.asarray(feats.detach().cpu() if isinstance(feats, torch.Tensor) else feats, dtype=np.float64)
    if a.ndim != 2:
        raise LipstepError(f"{what}: expected a 2-D feature array [N, dim], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise LipstepError(f"{what}: features contain NaN or inf")
    return a


def feature_stats(feats, extractor: str = "") -> FeatureStats:
    """Mean and unbiased covariance (float64) of features [N, dim], N >= 2."""
    a = as_features(feats, "feature_stats")
    if len(a) < 2:
        raise LipstepError(f"feature_stats: need at least 2 feature vectors, got {len(a)}")
    return FeatureStats(a.mean(axis=0), np.atleast_2d(np.cov(a, rowvar=False)), len(a), extractor)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues below 0 are rounding: clamped)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _check_gaussian(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise LipstepError(f"frechet_distance: {name} needs mu [d] and sigma [d, d], got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise LipstepError(f"frechet_distance: {name} contains NaN or inf")
    scale = max(float(np.abs(sigma).max()), 1e-300)
    if float(np.abs(sigma - sigma.T).max()) > 1e-6 * scale:
        raise LipstepError(f"frechet_distance: {name} covariance is not symmetric")
    return mu, (sigma + sigma.T) / 2


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((Σ₁Σ₂)^{1/2}) via the symmetric matrix A Σ₂ A, A = Σ₁^{1/2} (see the module docstring)."""
    a = _sqrt_psd(s1)
    m = a @ s2 @ a
    w = np.linalg.eigvalsh((m + m.T) / 2)
    top = max(float(np.abs(w).max()), 1e-300)
    if w.min() < -1e-6 * top:   # sqrtm would return an imaginary part here
        raise LipstepError(f"frechet_distance: Σ₁Σ₂ has a negative eigenvalue ({w.min():.3g}, largest {top:.3g}); "
                           "the inputs are not positive semi-definite covariance matrices")
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, s1, mu2, s2) -> float:
    """Squared Fréchet distance between N(mu1, s1) and N(mu2, s2) (the FID/FVD formula), float64."""
    mu1, s1 = _check_gaussian(mu1, s1, "first Gaussian")
    mu2, s2 = _check_gaussian(mu2, s2, "second Gaussian")
    if len(mu1) != len(mu2):
        raise LipstepError(f"frechet_distance: feature dims differ ({len(mu1)} vs {len(mu2)})")
    diff = mu1 - mu2
    d2 = float(diff @ diff) + float(np.trace(s1) + np.trace(s2)) - 2.0 * trace_sqrt_product(s1, s2)
    return max(d2, 0.0)  # only rounding can make it negative


def fd_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """`frechet_distance` of two `FeatureStats`; refuses stats from different feature spaces."""
    if a.extractor and b.extractor and a.extractor != b.extractor:
        raise LipstepError(f"feature stats come from different extractors ({a.extractor!r} vs {b.extractor!r})")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fd_from_features(a, b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, dim] and [M, dim]."""
    return fd_from_stats(feature_stats(a), feature_stats(b))


__all__ = ["FeatureStats", "as_features", "fd_from_features", "fd_from_stats", "feature_stats", "frechet_distance",
           "trace_sqrt_product"]
