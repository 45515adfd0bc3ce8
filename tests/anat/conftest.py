"""Fixtures for the anatomical stage: a small template and posed subjects with known poses."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.data.templates import load_template


def downsample(img: nib.Nifti1Image, factor: int, order: int = 1) -> nib.Nifti1Image:
    """Block-smooth and subsample an image by an integer factor (affine updated)."""
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if order:
        data = ndimage.uniform_filter(data, factor)
    data = data[::factor, ::factor, ::factor]
    affine = img.affine @ np.diag([factor, factor, factor, 1.0])
    out = nib.Nifti1Image(data.astype(np.float32), affine)
    out.header.set_xyzt_units("mm")
    return out


@pytest.fixture(scope="session")
def template2():
    """MNI152NLin2009aSym at 2 mm (cached)."""
    return load_template(2)


@pytest.fixture(scope="session")
def small_template(template2):
    """(T1w, brain mask) of the template at 6 mm: enough for pose tests, and fast."""
    t1w = downsample(template2.t1w, 3)
    mask = nib.Nifti1Image(
        (downsample(template2.mask, 3).get_fdata() > 0.5).astype(np.uint8), t1w.affine
    )
    return t1w, mask


@pytest.fixture(scope="session")
def brain_points(small_template):
    """RAS points of the template brain (for displacement errors) and their centroid."""
    t1w, mask = small_template
    idx = np.argwhere(mask.get_fdata() > 0)
    pts = idx @ t1w.affine[:3, :3].T + t1w.affine[:3, 3]
    return pts, pts.mean(0)


@pytest.fixture(scope="session")
def small_priors(template2):
    """Template GM/WM/CSF maps at 6 mm, keyed by tissue."""
    return {k: downsample(getattr(template2, k.lower()), 3) for k in ("GM", "WM", "CSF")}


@pytest.fixture(scope="session")
def template4(template2):
    """(T1w, brain mask, GM/WM/CSF maps) of the template at 4 mm (segmentation tests)."""
    t1w = downsample(template2.t1w, 2)
    mask = nib.Nifti1Image(
        (downsample(template2.mask, 2).get_fdata() > 0.5).astype(np.uint8), t1w.affine
    )
    priors = {k: downsample(getattr(template2, k.lower()), 2) for k in ("GM", "WM", "CSF")}
    return t1w, mask, priors
