"""Distances between unit embeddings, as the service and the evaluation rank by."""

from __future__ import annotations

import numpy as np


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of unit vectors: 2 - 2 cos."""
    return np.clip(2.0 - 2.0 * (a @ b.T), 0.0, 4.0).astype(np.float32)
