"""A TemplateFlow cache made on the fly: one template that symprep does not ship."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

#: the name of the cached template (any name TemplateFlow could hold)
NAME = "SymprepTestCrop"
#: voxels cropped from each side of the shipped 2 mm template: a grid of its own
CROP = 3


def cached_template(home: Path, name: str = NAME, crop: int = CROP) -> tuple[int, ...]:
    """Write ``tpl-NAME`` (res-02) into the TemplateFlow cache ``home``, as TemplateFlow lays it
    out: the shipped template cropped by ``crop`` voxels on each side. Returns its shape."""
    from pipeline.data.templates import load_template

    tpl = load_template(2)
    affine = tpl.t1w.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.full(3, crop)
    folder = Path(home) / f"tpl-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "t1w": "T1w",
        "mask": "desc-brain_mask",
        "gm": "label-GM_probseg",
        "wm": "label-WM_probseg",
        "csf": "label-CSF_probseg",
    }
    for key, suffix in files.items():
        img = getattr(tpl, key)
        data = np.asarray(img.dataobj)[crop:-crop, crop:-crop, crop:-crop]
        nib.save(nib.Nifti1Image(data, affine), folder / f"tpl-{name}_res-02_{suffix}.nii.gz")
    return data.shape
