"""A tiny demo subject and truth-based anatomical outputs, made once per test session.

Shared by ``tests/func`` and ``tests/workflows/test_func_wf.py`` (module-level cache: both import
this module under the same name).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

FUNC_SPEC = dict(
    sites=1, subjects_per_site=1, resolution=4.0, bold_resolution=6.0, n_volumes=24, seed=1
)
_CACHE: dict[str, object] = {}


def truth_anat(bids_dir: Path, subject: str, out_dir: Path) -> dict[str, Path]:
    """Anatomical-stage outputs built from the demo's ground-truth pose (no registration).

    The template→T1w transform is the true rigid pose (the small anatomical warp is ignored);
    template-space maps are the 2 mm template's own.
    """
    from pipeline.anat._antsio import write_affine
    from pipeline.data.templates import load_template
    from pipeline.io import save_image

    tpl = load_template(2)
    record = json.loads(
        (bids_dir / "sourcedata/groundtruth" / subject / f"{subject}_groundtruth.json").read_text()
    )
    pose = np.asarray(record["pose"]["template_to_scanner"])
    t1w = nib.load(bids_dir / subject / "anat" / f"{subject}_T1w.nii.gz")
    out_dir.mkdir(parents=True, exist_ok=True)
    vox = np.linalg.inv(tpl.mask.affine) @ np.linalg.inv(pose) @ t1w.affine
    mask = ndimage.affine_transform(
        tpl.mask.get_fdata(), vox[:3, :3], vox[:3, 3], output_shape=t1w.shape, order=1
    )
    paths = {
        "t1w_preproc": bids_dir / subject / "anat" / f"{subject}_T1w.nii.gz",
        "t1w_mask": save_image(
            nib.Nifti1Image((mask > 0.5).astype(np.uint8), t1w.affine), out_dir / "mask.nii.gz"
        ),
        "std_mask": save_image(tpl.mask, out_dir / "std_mask.nii.gz"),
        "anat2std_xfm": write_affine(pose, out_dir / "template_to_t1w.mat"),
    }
    for key in ("gm", "wm", "csf"):
        paths[f"std_{key}_probseg"] = save_image(getattr(tpl, key), out_dir / f"std_{key}.nii.gz")
    return paths


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
