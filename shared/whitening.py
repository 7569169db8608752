"""The item adaptor's fixed whitening, from the federation's public catalogue text.

Before round 1 each site encodes its catalogue (item texts: public, no user data) with the base
encoder and reports the vectors' count, mean and covariance (``CatalogueMoments``); the
coordinator pools them and sets the PCA whitening of the pooled catalogue in the initial adapter
(``whitening_arrays``). It never changes afterwards and is never trained, so sites do not send it
back (shared/adapter.py). Whitened text vectors have zero mean and unit variance in every principal
direction, up to a small ridge (``RIDGE``) added to every eigenvalue, so that a direction the
catalogue barely uses is not blown up into noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MOMENT_ITEMS = 20_000  # items of a catalogue the moments are taken over (an even sample beyond)
RIDGE = 1e-3  # × the mean eigenvalue, added to each eigenvalue before it is inverted


class WhiteningError(ValueError):
    """Catalogue moments that cannot make a whitening (none, empty, or of another width)."""


@dataclass(frozen=True)
class CatalogueMoments:
    items: int
    mean: np.ndarray  # [d]
    covariance: np.ndarray  # [d, d]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "items": np.asarray([self.items], dtype=np.float64),
            "mean": self.mean.astype(np.float64),
            "covariance": self.covariance.astype(np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> CatalogueMoments:
        try:
            items = int(np.asarray(arrays["items"]).reshape(-1)[0])
            mean = np.asarray(arrays["mean"], dtype=np.float64)
            covariance = np.asarray(arrays["covariance"], dtype=np.float64)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise WhiteningError(
                f"catalogue moments lack a field or are malformed: {err}"
            ) from None
        d = mean.shape[0] if mean.ndim == 1 else -1
        if d < 1 or covariance.shape != (d, d) or items < 1:
            raise WhiteningError(
                f"catalogue moments of the wrong shape (items {items}, mean {mean.shape}, "
                f"covariance {covariance.shape})"
            )
        if not (np.isfinite(mean).all() and np.isfinite(covariance).all()):
            raise WhiteningError("catalogue moments hold NaN or infinite values")
        return cls(items, mean, covariance)


def sample_rows(count: int, limit: int = MOMENT_ITEMS) -> list[int]:
    """Rows of a catalogue of ``count`` items the moments use: all of them, or an even sample."""
    if count <= limit:
        return list(range(count))
    return np.linspace(0, count - 1, limit).round().astype(int).tolist()


def catalogue_moments(text_vectors: torch.Tensor) -> CatalogueMoments:
    x = text_vectors.detach().double().cpu().numpy()
    if not len(x):
        raise WhiteningError("an empty catalogue has no moments")
    centred = x - x.mean(0)
    return CatalogueMoments(len(x), x.mean(0), centred.T @ centred / len(x))


def pooled_moments(parts: list[CatalogueMoments]) -> CatalogueMoments:
    """The moments of the catalogues together (each item counted once)."""
    if not parts:
        raise WhiteningError("no site reported its catalogue, so there is no whitening to set")
    widths = {p.mean.shape[0] for p in parts}
    if len(widths) > 1:
        raise WhiteningError(
            f"sites encoded their catalogues with encoders of different widths {sorted(widths)}: "
            "every site must use the federation's model.encoder"
        )
    total = sum(p.items for p in parts)
    mean = sum(p.mean * p.items for p in parts) / total
    covariance = sum(
        (p.covariance + np.outer(p.mean - mean, p.mean - mean)) * p.items for p in parts
    )
    return CatalogueMoments(total, mean, covariance / total)


def whitening_arrays(moments: CatalogueMoments) -> dict[str, np.ndarray]:
    """The adaptor's fixed ``mean`` and ``whitening`` matrix (PCA whitening, with a ridge)."""
    values, vectors = np.linalg.eigh((moments.covariance + moments.covariance.T) / 2)
    values = np.clip(values, 0.0, None)
    matrix = vectors / np.sqrt(values + RIDGE * max(values.mean(), 1e-12))
    return {
        "adaptor.mean": moments.mean.astype(np.float32),
        "adaptor.whitening": matrix.astype(np.float32),
    }
