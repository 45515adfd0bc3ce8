"""Shared fixtures: seeded randomness and small on-the-fly data."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

# two cores: keep BLAS / torch / ITK from oversubscribing
for _var in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
):
    os.environ.setdefault(_var, "2")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed Python, numpy and (when imported) torch before every test."""
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 (legacy global state, for code that uses it)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.manual_seed(0)


#: test folders run with torch single-threaded: on a busy 2-core machine, OpenMP barriers between
#: two threads make small convolutions tens of times slower than one thread
ONE_TORCH_THREAD = ("models", "symmetry")


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """torch single-threaded in the :data:`ONE_TORCH_THREAD` folders (restored afterwards)."""
    if request.path.parent.name not in ONE_TORCH_THREAD:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy Generator."""
    return np.random.default_rng(0)


TINY_SPEC = dict(
    sites=2, subjects_per_site=1, resolution=4.0, bold_resolution=6.0, n_volumes=12, seed=3
)


@pytest.fixture(scope="session")
def tiny_spec() -> dict:
    """Parameters of the ``tiny_bids`` dataset (for :class:`pipeline.data.demo.DemoSpec`)."""
    return dict(TINY_SPEC)


@pytest.fixture(scope="session")
def tiny_bids(tmp_path_factory):
    """A tiny synthetic BIDS dataset (2 sites × 1 subject, 4 mm T1w, 6 mm BOLD), made once per session.

    Treat it as read-only; copy it (``shutil.copytree``) before changing anything.
    """
    from pipeline.data.demo import DemoSpec, make_demo_dataset

    return make_demo_dataset(
        tmp_path_factory.mktemp("tiny") / "bids", DemoSpec(**TINY_SPEC), progress=False
    )
