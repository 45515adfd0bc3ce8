"""Brain mask and tissue maps pulled back from the template."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pipeline.anat._antsio import write_affine
from pipeline.anat.segment import TISSUES, brain_mask, tissue_maps


@pytest.mark.parametrize("method", ["priors", "atropos"])
def test_mask_and_tissues_on_the_template_itself(small_template, small_priors, tmp_path, method):
    t1w, mask = small_template
    identity = write_affine(np.eye(4), tmp_path / "identity.h5")
    bm = brain_mask(t1w, mask, identity)
    a, b = bm.get_fdata() > 0, mask.get_fdata() > 0
    assert 2 * np.sum(a & b) / (a.sum() + b.sum()) > 0.9
    maps = tissue_maps(t1w, bm, small_priors, identity, method=method)
    total = sum(m.get_fdata() for m in maps.values())
    np.testing.assert_allclose(total[a], 1.0, atol=1e-4)
    assert np.all(total[~a] == 0)
    for k in TISSUES:
        corr = np.corrcoef(maps[k].get_fdata()[a], small_priors[k].get_fdata()[a])[0, 1]
        assert corr > 0.6, (k, corr)
    assert isinstance(maps["GM"], nib.Nifti1Image)
