"""Shared fixtures: seeded randomness and small on-the-fly data."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

# two cores: keep BLAS / torch / ITK from oversubscribing
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ.setdefault(_var, "2")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed Python, numpy and (when imported) torch before every test."""
    random.seed(0)
    np.random.seed(0)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.manual_seed(0)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy Generator."""
    return np.random.default_rng(0)
