"""Index fixtures: a Ray config for index actors, and clustered embeddings (the Ray cluster
itself is tests/conftest.py's ray_local)."""
from __future__ import annotations

import numpy as np
import pytest

from afmrl.config import RayConfig


@pytest.fixture(scope="session")
def ray_config() -> RayConfig:
    return RayConfig(namespace="afmrl-test-index", call_timeout_s=60.0)


def _clustered(n: int, dim: int, n_clusters: int, seed: int = 0, noise: float = 0.15
               ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, n_clusters, n)
    x = centres[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.fixture(scope="session")
def clustered():
    """``clustered(n, dim, n_clusters, seed)`` -> unit vectors around random centres and each
    vector's cluster: products with several images each, the structure real embeddings have
    (uniform random vectors are the worst case for approximate indexes)."""
    return _clustered
