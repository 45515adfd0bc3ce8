"""A tiny demo subject and truth-based anatomical outputs (:mod:`pipeline.data.groundtruth`),
made once per test session.

Shared by ``tests/func`` and ``tests/workflows/test_func_wf.py`` (module-level cache: both import
this module under the same name).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.groundtruth import truth_anat

FUNC_SPEC = dict(
    sites=1, subjects_per_site=1, resolution=4.0, bold_resolution=6.0, n_volumes=24, seed=1
)
_CACHE: dict[str, object] = {}


def func_bids(tmp_path_factory) -> Path:
    """One demo subject: 4 mm T1w, 6 mm BOLD, 24 volumes (2 non-steady-state). Read-only."""
    if "bids" not in _CACHE:
        from pipeline.data.demo import DemoSpec, make_demo_dataset

        _CACHE["bids"] = make_demo_dataset(
            tmp_path_factory.mktemp("func") / "bids", DemoSpec(**FUNC_SPEC), progress=False
        )
    return _CACHE["bids"]


def func_anat(tmp_path_factory) -> dict[str, Path]:
    """Truth-based anatomical outputs of ``sub-01`` of :func:`func_bids`."""
    if "anat" not in _CACHE:
        _CACHE["anat"] = truth_anat(
            func_bids(tmp_path_factory), "sub-01", tmp_path_factory.mktemp("anat")
        )
    return _CACHE["anat"]
