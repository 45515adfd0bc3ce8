"""Tissue maps and brain mask from the subject's own intensities (Atropos with template priors).

Each test changes the *subject* and checks that the outputs follow it: a map that would look the
same for any brain (the pulled-back priors) fails them.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.anat.segment import (
    DSEG_LABELS,
    TISSUES,
    initial_brain_mask,
    intensity_classes,
    segment_subject,
)
from pipeline.antsio import write_affine


def _dice(a, b) -> float:
    return float(2 * np.sum(a & b) / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def subject(template4):
    """The template at 4 mm with its own GM/WM/CSF maps and brain mask."""
    return template4


def _atrophy(t1w, priors, center_vox, radius_vox=3.0):
    """Grey matter in a ball turned to the CSF intensity: (image, the changed voxels)."""
    data = t1w.get_fdata().copy()
    gm = priors["GM"].get_fdata() > 0.5
    ijk = np.indices(data.shape)
    ball = np.sqrt(((ijk - np.asarray(center_vox)[:, None, None, None]) ** 2).sum(0)) <= radius_vox
    region = ball & gm
    csf = np.median(data[priors["CSF"].get_fdata() > 0.8])
    data[region] = csf
    return nib.Nifti1Image(data.astype(np.float32), t1w.affine), region


def test_grey_matter_change_shows_at_its_place_and_nowhere_else(subject, tmp_path):
    t1w, mask, priors = subject
    identity = write_affine(np.eye(4), tmp_path / "identity.h5")
    initial = initial_brain_mask(t1w, mask, identity)
    gm_voxels = np.argwhere((priors["GM"].get_fdata() > 0.6) & (mask.get_fdata() > 0))
    center = gm_voxels[len(gm_voxels) // 3]
    atrophied, region = _atrophy(t1w, priors, center)
    assert region.sum() >= 10

    results = {}
    for method in ("atropos", "priors"):
        _, before, _, record = segment_subject(t1w, initial, priors, identity, method)
        _, after, _, _ = segment_subject(atrophied, initial, priors, identity, method)
        diff = before["GM"].get_fdata() - after["GM"].get_fdata()
        results[method] = (diff, record)
    diff, record = results["atropos"]
    assert record["Method"] == "atropos" and record["Failure"] is None
    near = ndimage.binary_dilation(region, iterations=2)
    assert diff[region].mean() > 0.3, diff[region].mean()  # the subject's GM loss is found...
    assert np.abs(diff[~near]).mean() < 0.01  # ...and nothing moves elsewhere
    # per voxel, the change at the place is two orders of magnitude above the drift elsewhere
    # (a mixture model's class parameters move a little with any change)
    assert diff[region].mean() > 100 * np.abs(diff[~near]).mean()
    # the pulled-back priors carry no subject information: the same map for both brains
    diff_priors, record_priors = results["priors"]
    assert record_priors["Method"] == "priors"
    assert "carries no information" in record_priors["MethodDescription"]
    assert np.abs(diff_priors[region]).max() < 0.05


def test_maps_sum_to_one_in_the_refined_mask_and_dseg_is_their_argmax(subject, tmp_path):
    t1w, mask, priors = subject
    identity = write_affine(np.eye(4), tmp_path / "identity.h5")
    initial = initial_brain_mask(t1w, mask, identity)
    refined, probs, dseg, record = segment_subject(t1w, initial, priors, identity)
    m = refined.get_fdata() > 0
    total = sum(p.get_fdata() for p in probs.values())
    np.testing.assert_allclose(total[m], 1.0, atol=1e-4)
    assert np.all(total[~m] == 0)
    labels = np.asarray(dseg.dataobj)
    stack = np.stack([probs[k].get_fdata() for k in TISSUES])
    expected = np.asarray([DSEG_LABELS[k] for k in TISSUES])[np.argmax(stack, 0)]
    np.testing.assert_array_equal(labels[m], expected[m])
    assert np.all(labels[~m] == 0)
    assert record["VolumeMl"]["WM"] > 100 and record["BrainVolumeMl"] > 800


def test_refined_mask_follows_the_subject_when_the_template_mask_is_off(subject, tmp_path):
    """Pulled through a transform 8 mm off, the template's mask misses the brain; the mask refined
    with the subject's own segmentation comes back towards it (truth: the image's own mask)."""
    t1w, mask, priors = subject
    off = np.eye(4)
    off[:3, 3] = [0, 8, 0]
    shifted = write_affine(off, tmp_path / "shift.h5")
    initial = initial_brain_mask(t1w, mask, shifted, margin_mm=8.0)
    refined, _, _, _ = segment_subject(t1w, initial, priors, shifted)
    truth = mask.get_fdata() > 0
    from pipeline.anat.segment import warp_image

    pulled = warp_image(mask, t1w, shifted).get_fdata() > 0.5
    assert _dice(refined.get_fdata() > 0, truth) > _dice(pulled, truth) + 0.03


def test_intensity_classes_order_by_brightness(subject):
    t1w, mask, _ = subject
    classes = intensity_classes(t1w, mask)
    data = t1w.get_fdata()
    means = {k: data[v].mean() for k, v in classes.items()}
    assert means["CSF"] < means["GM"] < means["WM"]


def test_atropos_failure_is_reported_not_hidden(subject, tmp_path, monkeypatch):
    import ants

    t1w, mask, priors = subject
    identity = write_affine(np.eye(4), tmp_path / "identity.h5")

    def boom(**kwargs):
        raise RuntimeError("no convergence")

    monkeypatch.setattr(ants, "atropos", boom)
    _, _, _, record = segment_subject(t1w, mask, priors, identity, "atropos")
    assert record["Method"] == "priors"
    assert record["Failure"] == "atropos failed: no convergence"
