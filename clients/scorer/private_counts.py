"""User-level DP for a site's own counts (optional): for a site that wants the recommendations
shown to one of its users to reveal nothing certain about another.

The counts the site's collaborative signals are built from, the item–item co-occurrence matrix
(its diagonal is each item's count, which is also the popularity), are released once with Gaussian
noise. Each user contributes at most ``max_items`` = L distinct items (their most recent), so
adding or removing one user changes the released numbers (the upper triangle, diagonal included)
in at most L(L+1)/2 entries, each by 1:

    Δ = √(L(L+1)/2),

and the noise on every number is N(0, (z·Δ)²). The noise multiplier z is the smallest that makes
the release (ε, δ)-DP by the analytic Gaussian mechanism (Balle & Wang 2018, Theorem 8), which is
exact for one Gaussian release; ``releases`` Gaussian releases of the same users compose exactly
into one with multiplier z/√releases, so each is calibrated with z·√releases. Everything built
from the noisy counts (popularity, ItemKNN neighbours, EASE) is post-processing and costs nothing.

This budget is the site's own and separate from the federation's. What it does not cover: the
fusion weights (a few numbers chosen on the site's validation split) and the history of the user
being ranked (their own data, used for them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from clients.scorer.defaults import DEFAULT_MAX_ITEMS


@dataclass(frozen=True)
class CountPrivacy:
    epsilon: float  # the site's budget for its counts (user-level), separate from the federation's
    delta: float
    max_items: int = DEFAULT_MAX_ITEMS  # distinct items counted per user (their most recent)
    releases: int = 1  # Gaussian releases of the same users' counts this budget covers

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"the counts' ε must be > 0 and finite, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"the counts' δ must be in (0, 1), got {self.delta}")
        if self.max_items < 1:
            raise ValueError(f"items counted per user must be at least 1, got {self.max_items}")
        if self.releases < 1:
            raise ValueError(f"releases must be at least 1, got {self.releases}")

    @property
    def sensitivity(self) -> float:
        items = self.max_items
        return math.sqrt(items * (items + 1) / 2)

    @property
    def noise_multiplier(self) -> float:
        """z of each release: the releases together are (ε, δ)-DP."""
        return gaussian_noise_multiplier(self.epsilon, self.delta) * math.sqrt(self.releases)

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.sensitivity

    def describe(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "unit": "one user of this site (all of their interactions)",
            "max_items_per_user": self.max_items,
            "releases": self.releases,
            "noise_multiplier": round(self.noise_multiplier, 6),
            "noise_std": round(self.noise_std, 6),
            "mechanism": "analytic Gaussian",
        }


def gaussian_delta(epsilon: float, noise_multiplier: float) -> float:
    """The smallest δ for which one Gaussian release with noise multiplier z (noise std z·Δ) is
    (ε, δ)-DP: Φ(1/(2z) − εz) − e^ε·Φ(−1/(2z) − εz) (Balle & Wang 2018, Theorem 8)."""
    from scipy.stats import norm  # a second to import; only DP counts need it

    z = noise_multiplier
    if z <= 0:
        return 1.0
    a, b = 1 / (2 * z) - epsilon * z, -1 / (2 * z) - epsilon * z
    # e^ε·Φ(b) in log space: e^ε overflows long before Φ(b) underflows to 0
    return float(norm.cdf(a) - math.exp(epsilon + norm.logcdf(b)))


def gaussian_noise_multiplier(epsilon: float, delta: float) -> float:
    """The smallest z (to 1e-6 relative) with gaussian_delta(ε, z) ≤ δ."""
    low, high = 1e-3, 1.0
    while gaussian_delta(epsilon, high) > delta:
        low, high = high, high * 2
        if high > 1e7:
            raise ValueError(f"no noise multiplier reaches ε={epsilon}, δ={delta}")
    while (high - low) > 1e-6 * high:
        mid = (low + high) / 2
        low, high = (mid, high) if gaussian_delta(epsilon, mid) > delta else (low, mid)
    return high


def recent_distinct_positions(sequence: Sequence[int], max_items: int) -> list[int]:
    """Positions of the user's ``max_items`` most recent distinct items, oldest first (an item
    seen twice counts once, at its last time)."""
    seen: set[int] = set()
    kept: list[int] = []
    for position in range(len(sequence) - 1, -1, -1):
        if sequence[position] not in seen:
            seen.add(sequence[position])
            kept.append(position)
            if len(kept) == max_items:
                break
    return kept[::-1]


def noisy_gram(matrix: sp.csr_matrix, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """XᵀX + symmetric Gaussian noise: one draw per entry of the upper triangle, mirrored."""
    gram = (matrix.T @ matrix).toarray().astype(np.float64)
    noise = np.triu(rng.normal(0.0, noise_std, size=gram.shape))
    return gram + noise + np.triu(noise, 1).T


def nearest_psd(gram: np.ndarray) -> np.ndarray:
    """The symmetric matrix with gram's eigenvectors and its negative eigenvalues set to 0."""
    values, vectors = np.linalg.eigh(gram)
    return (vectors * np.maximum(values, 0.0)) @ vectors.T
