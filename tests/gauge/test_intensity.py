"""Intensity normalization: invariance of each method to the gauge maps it claims to remove."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import ImageError
from pipeline.gauge import (
    HarmonizationError,
    NyulStandardizer,
    fcm_normalize,
    normalize_t1w,
    whitestripe_normalize,
    zscore_normalize,
)


def t1_like(seed: int, shape=(22, 22, 22)) -> tuple[np.ndarray, np.ndarray]:
    """A sphere of CSF/GM/WM-like intensities (30/60/90 with noise) and its mask."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape) - (np.array(shape)[:, None, None, None] - 1) / 2
    r = np.sqrt((grid**2).sum(0)) / (min(shape) / 2)
    mask = r < 0.95
    tissue = np.where(r < 0.45, 90.0, np.where(r < 0.75, 60.0, 30.0))
    tissue = tissue * rng.uniform(0.9, 1.1) + rng.normal(0, 4.0, shape)
    return np.where(mask, tissue, 0.0), mask


@pytest.mark.parametrize("method", [zscore_normalize, whitestripe_normalize])
def test_gain_offset_invariance(method):
    img, mask = t1_like(0)
    ref = method(img, mask)
    moved = method(2.7 * img + 35.0, mask)
    np.testing.assert_allclose(moved[mask], ref[mask], atol=1e-6)
    if method is zscore_normalize:
        assert abs(ref[mask].mean()) < 1e-9 and abs(ref[mask].std() - 1.0) < 1e-9


def test_fcm_gain_invariance_and_wm_scale():
    img, mask = t1_like(1)
    ref = fcm_normalize(img, mask)
    np.testing.assert_allclose(fcm_normalize(3.1 * img, mask)[mask], ref[mask], rtol=1e-6)
    wm = np.indices(img.shape) - 10.5
    core = (np.sqrt((wm**2).sum(0)) < 3) & mask
    assert abs(ref[core].mean() - 1.0) < 0.05  # white matter lands on 1


def test_nyul_invariant_to_monotone_maps(tmp_path):
    train = [t1_like(s) for s in range(3)]
    nyul = NyulStandardizer().fit([i for i, _ in train], [m for _, m in train])
    img, mask = t1_like(10)
    ref = nyul.transform(img, mask)
    # exact for gain/offset
    np.testing.assert_allclose(nyul.transform(0.4 * img + 12.0, mask)[mask], ref[mask], atol=1e-8)
    # any monotone map: the output landmarks are the standard scale
    warped = nyul.transform(np.exp(img / 40.0) + img**2 / 100.0, mask)
    for out in (ref, warped):
        landmarks = np.percentile(out[mask], nyul.percentiles_)
        np.testing.assert_allclose(landmarks, nyul.standard_scale_, atol=0.05)
    path = nyul.save(tmp_path / "nyul")
    again = NyulStandardizer.load(path)
    np.testing.assert_array_equal(again.transform(img, mask), ref)
    assert again.n_training_images_ == 3


def test_nibabel_in_nibabel_out_and_errors():
    img, mask = t1_like(2)
    nii = nib.Nifti1Image(img.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    out = normalize_t1w(nii, mask.astype(np.uint8), "zscore")
    assert isinstance(out, nib.Nifti1Image) and np.allclose(out.affine, nii.affine)
    with pytest.raises(ImageError, match="mask has shape"):
        zscore_normalize(img, mask[:-1])
    bad = img.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ImageError, match="NaN or Inf"):
        zscore_normalize(bad, mask)
    with pytest.raises(HarmonizationError, match="needs a fitted NyulStandardizer"):
        normalize_t1w(img, mask, "nyul")
    with pytest.raises(HarmonizationError, match="must be one of"):
        normalize_t1w(img, mask, "histeq")
