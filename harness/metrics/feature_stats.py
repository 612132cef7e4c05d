"""Set statistics on feature vectors: FID, unbiased KID, precision / recall, each with bootstrap replicates.

Generated features are compared with a fixed reference set. Replicates (see `harness.bootstrap`) reweight
the generated images by a shared resampling plan, so any two cells' replicates pair up; the reference set
is held fixed (it is the same for every cell, so it enters every difference equally).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

KID_DEGREE, KID_COEF0 = 3, 1.0  # torch-fidelity's / Binkowski et al.'s polynomial kernel (x.y / d + 1)^3


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def kid_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + KID_COEF0) ** KID_DEGREE


@dataclass
class ReferenceSet:
    """A reference set's features (M, d) and what FID and KID need of them, computed once."""

    features: np.ndarray
    kid_scale: float = 1.0  # features are divided by this inside the KID kernel
    mean: np.ndarray = field(init=False)
    cov: np.ndarray = field(init=False)
    cov_sqrt: np.ndarray = field(init=False)
    kernel_mean_offdiag: float = field(init=False)

    def __post_init__(self):
        f = np.asarray(self.features, dtype=np.float64)
        self.features = f
        self.mean = f.mean(axis=0)
        self.cov = np.cov(f, rowvar=False)
        self.cov_sqrt = _sqrtm_psd(self.cov)
        k = kid_kernel(f / self.kid_scale, f / self.kid_scale)
        m = len(f)
        self.kernel_mean_offdiag = float((k.sum() - np.trace(k)) / (m * (m - 1)))


def frechet_distance(features: np.ndarray, reference: ReferenceSet, weights: np.ndarray | None = None) -> np.ndarray:
    """FID of generated features (N, d) against the reference; with weights (B, N) one value per row of weights.

    tr sqrt(S_g S_r) is the sum of sqrt eigenvalues of S_r^1/2 S_g S_r^1/2 (same spectrum, symmetric).
    The point value (no weights) is float64; replicates are float32 in chunks (their offsets from the
    point are what matters, and they are stored as float16).
    """
    if weights is None:
        return _fid(np.asarray(features, dtype=np.float64)[None], np.ones((1, len(features))), reference, torch.float64)
    return np.concatenate([_fid(np.asarray(features), np.asarray(weights[lo:lo + FID_CHUNK]), reference, torch.float32)
                           for lo in range(0, len(weights), FID_CHUNK)])


FID_CHUNK = 50  # replicates per batched matrix product (memory: chunk x N x d floats)


def _fid(features: np.ndarray, weights: np.ndarray, reference: ReferenceSet, dtype: torch.dtype) -> np.ndarray:
    f = torch.from_numpy(np.asarray(features, dtype=np.float64).reshape(-1, features.shape[-1])).to(dtype)
    w = torch.from_numpy(np.asarray(weights, dtype=np.float64)).to(dtype)  # (B, N)
    n = w.sum(dim=1)  # (B,)
    mean = (w @ f) / n[:, None]  # (B, d)
    centred = w.sqrt()[:, :, None] * (f[None] - mean[:, None, :])  # (B, N, d)
    cov = centred.transpose(1, 2) @ centred / (n - 1)[:, None, None]
    root = torch.from_numpy(reference.cov_sqrt).to(dtype)
    inner = torch.linalg.eigvalsh(root @ cov @ root).clamp_min(0).sqrt().sum(dim=1)
    diff = mean - torch.from_numpy(reference.mean).to(dtype)
    fid = (diff * diff).sum(1) + cov.diagonal(dim1=1, dim2=2).sum(1) + float(np.trace(reference.cov)) - 2 * inner
    return fid.double().numpy()


def kernel_distance(features: np.ndarray, reference: ReferenceSet, weights: np.ndarray | None = None) -> np.ndarray:
    """Unbiased KID (MMD^2, polynomial kernel) on the whole sets; with weights (B, N), one value per row.

    No subsets: the sets are small enough for whole kernel matrices, and the estimator's uncertainty
    comes from the bootstrap instead of from subset-to-subset spread. Off-diagonal pairs only, so a
    resampled image paired with its own duplicate counts as a pair (a small, common shift).
    """
    f = np.asarray(features, dtype=np.float64) / reference.kid_scale
    w = np.ones((1, len(f))) if weights is None else np.asarray(weights, dtype=np.float64)
    n = w.sum(axis=1)
    k_gg = kid_kernel(f, f)
    gg = (np.einsum("bi,ij,bj->b", w, k_gg, w) - w @ np.diag(k_gg)) / (n * (n - 1))
    gr = (w @ kid_kernel(f, reference.features / reference.kid_scale).sum(axis=1)) / (n * len(reference.features))
    return gg + reference.kernel_mean_offdiag - 2 * gr


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0))


def precision_recall(features: np.ndarray, reference: ReferenceSet, k: int = 3) -> tuple[float, float]:
    """Improved precision / recall (Kynkaanniemi et al. 2019): k-NN balls of one set, share of the other inside."""
    f, r = np.asarray(features, dtype=np.float64), reference.features
    radius_r = np.sort(_distances(r, r), axis=1)[:, k]  # column 0 is the point itself
    radius_f = np.sort(_distances(f, f), axis=1)[:, k]
    cross = _distances(f, r)  # (N, M)
    precision = float((cross <= radius_r[None, :]).any(axis=1).mean())
    recall = float((cross <= radius_f[:, None]).any(axis=0).mean())
    return precision, recall
