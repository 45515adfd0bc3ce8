"""Fixtures for the functional stage (data made once per session by :mod:`_funcdata`)."""

from __future__ import annotations

from pathlib import Path

import _funcdata
import pytest


@pytest.fixture(scope="session")
def func_bids(tmp_path_factory) -> Path:
    """One tiny demo subject (6 mm BOLD, 24 volumes); read-only."""
    return _funcdata.func_bids(tmp_path_factory)


@pytest.fixture(scope="session")
def func_anat(tmp_path_factory) -> dict[str, Path]:
    """Anatomical outputs of the tiny subject, from its ground-truth pose."""
    return _funcdata.func_anat(tmp_path_factory)
