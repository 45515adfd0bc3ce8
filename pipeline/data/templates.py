"""The MNI152 2009a symmetric template (``MNI152NLin2009aSym``) and its tissue maps.

nilearn ships the ICBM 2009a nonlinear symmetric template (``mni_icbm152_*_tal_nlin_sym_09a``)
with its brain mask and GM/WM maps, so no network is needed. CSF is what remains of the brain
mask after GM and WM (clipped to [0, 1]).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import nibabel as nib
import numpy as np

TEMPLATE_NAME = "MNI152NLin2009aSym"


@dataclass(frozen=True)
class Template:
    """A template at one resolution: T1w, brain mask and GM/WM/CSF probability maps (RAS, mm)."""

    name: str
    resolution: int
    t1w: nib.Nifti1Image
    mask: nib.Nifti1Image
    gm: nib.Nifti1Image
    wm: nib.Nifti1Image
    csf: nib.Nifti1Image


def _on_grid(img: nib.Nifti1Image, ref: nib.Nifti1Image, image_module) -> nib.Nifti1Image:
    """``img`` on ``ref``'s grid (resampled only when the grids differ)."""
    if img.shape[:3] == ref.shape[:3] and np.allclose(img.affine, ref.affine):
        return img
    return image_module.resample_to_img(
        img, ref, interpolation="continuous", force_resample=True, copy_header=True
    )


@functools.lru_cache(maxsize=4)
def load_template(resolution: int = 2) -> Template:
    """Load ``MNI152NLin2009aSym`` at ``resolution`` mm (1 or 2) from nilearn's packaged data.

    Returns float32 images on the same grid. Cached: repeated calls are free.
    """
    from nilearn import datasets, image

    if resolution not in (1, 2):
        raise ValueError(f"template resolution must be 1 or 2 mm, got {resolution!r}")
    t1w = datasets.load_mni152_template(resolution=resolution)
    mask = datasets.load_mni152_brain_mask(resolution=resolution)
    gm = _on_grid(datasets.load_mni152_gm_template(resolution=resolution), t1w, image)
    wm = _on_grid(datasets.load_mni152_wm_template(resolution=resolution), t1w, image)

    def _f32(img: nib.Nifti1Image, data: np.ndarray | None = None) -> nib.Nifti1Image:
        arr = np.asarray(img.get_fdata() if data is None else data, dtype=np.float32)
        out = nib.Nifti1Image(arr, t1w.affine)
        out.header.set_xyzt_units("mm")
        return out

    gm_d = np.clip(gm.get_fdata(), 0, 1)
    wm_d = np.clip(wm.get_fdata(), 0, 1)
    mask_d = (mask.get_fdata() > 0.5).astype(np.float32)
    csf_d = np.clip(mask_d - gm_d - wm_d, 0, 1) * mask_d
    return Template(
        name=TEMPLATE_NAME,
        resolution=resolution,
        t1w=_f32(t1w),
        mask=nib.Nifti1Image(mask_d.astype(np.uint8), t1w.affine),
        gm=_f32(gm, gm_d),
        wm=_f32(wm, wm_d),
        csf=_f32(gm, csf_d),
    )
