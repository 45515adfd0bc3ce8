"""BIDS names and participant labels."""

from __future__ import annotations

import pytest

from pipeline.bids_names import bids_name, clean_label, derivative_path
from pipeline.errors import ParticipantError


@pytest.mark.parametrize(
    ("label", "expected"), [("01", "01"), ("sub-01", "01"), (" sub-A1 ", "A1")]
)
def test_clean_label(label, expected):
    assert clean_label(label) == expected


@pytest.mark.parametrize("label", ["../x", "sub-../../etc", "01/02", "a_b", "", "sub-"])
def test_unsafe_labels_are_rejected(label):
    with pytest.raises(ParticipantError, match="invalid sub label"):
        clean_label(label)


def test_entity_order_follows_bids():
    name = bids_name("xfm", ".h5", sub="01", mode="image", to="MNI152NLin2009aSym", from_="T1w")
    assert name == "sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5"


def test_derivative_path_fmriprep_style(tmp_path):
    path = derivative_path(
        tmp_path, "sub-01", "anat", space="MNI152NLin2009aSym", res=2, label="GM", suffix="probseg"
    )
    assert (
        path
        == tmp_path / "sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-2_label-GM_probseg.nii.gz"
    )
    with pytest.raises(ValueError, match="unknown BIDS entities"):
        bids_name("T1w", sub="01", colour="red")
