"""``run_audit(reference_dir=...)`` (``audit.reference: outputs``): the subject's existing
derivatives are the reference, so only the transformed copies are processed. The participant
stage is replaced by a copy of the reference (what a perfectly invariant pipeline would write)."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from pipeline.audit import _run
from pipeline.config import load_config
from pipeline.errors import StageError
from pipeline.workflows.participant import SubjectResult


def _reference(out, subject: str, rng) -> None:
    """A template-space T1w and mask as the participant stage names them."""
    anat = out / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True)
    stem = f"sub-{subject}_space-MNI152NLin2009aSym_res-2"
    data = rng.uniform(0, 1, (8, 9, 10)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), anat / f"{stem}_desc-preproc_T1w.nii.gz")
    mask = (data > 0.2).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, np.eye(4)), anat / f"{stem}_desc-brain_mask.nii.gz")


def test_reference_outputs_replace_the_untransformed_rerun(tiny_bids, tmp_path, monkeypatch, rng):
    subject = sorted(p.name[4:] for p in tiny_bids.glob("sub-*"))[0]
    out = tmp_path / "out"
    _reference(out, subject, rng)
    processed = []

    def fake_run(inputs, derivatives, work, sub, config, nprocs):
        processed.append(derivatives.parent.name)
        shutil.copytree(out / f"sub-{sub}", derivatives / f"sub-{sub}")
        return SubjectResult(sub, ok=True)

    monkeypatch.setattr(_run, "_run_one", fake_run)
    config = load_config(None, func={"enabled": False})
    table = _run.run_audit(
        tiny_bids, out, subject, 2, config, work_dir=tmp_path / "work", reference_dir=out
    )
    assert processed == ["g01", "g02"]  # no "reference" run
    assert set(table["transform"]) == {"g01", "g02"} and table["run_ok"].all()
    assert len(table) and np.allclose(table["residual"], 0.0)  # compared with OUTPUT_DIR itself
    assert _run.residuals_path(out, subject).is_file()

    with pytest.raises(StageError, match="no reference outputs"):
        _run.run_audit(tiny_bids, out, subject, 1, config, reference_dir=tmp_path / "empty")
