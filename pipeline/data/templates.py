"""Registration templates: the shipped ``MNI152NLin2009aSym`` and any template TemplateFlow has cached.

nilearn ships the ICBM 2009a nonlinear symmetric template (``mni_icbm152_*_tal_nlin_sym_09a``)
with its brain mask and GM/WM maps, so no network is needed. CSF is what remains of the brain
mask after GM and WM (clipped to [0, 1]).

Any other template is read from TemplateFlow's cache (``$TEMPLATEFLOW_HOME``, default
``~/.cache/templateflow``) as TemplateFlow lays it out: ``tpl-NAME/tpl-NAME_res-01_T1w.nii.gz``,
``…_res-01_desc-brain_mask.nii.gz`` and ``…_res-01_label-{GM,WM,CSF}_probseg.nii.gz`` (CSF is
derived as above when the cache has none). The files are read directly rather than through the
``templateflow`` client, which fetches what is missing over the network: a run never downloads,
and a template or file that is not cached is refused with one line naming it. ``res-N`` is
TemplateFlow's resolution index; its voxel size is the file's own.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

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


def templateflow_home() -> Path:
    """TemplateFlow's cache folder (``$TEMPLATEFLOW_HOME``, default ``~/.cache/templateflow``)."""
    return Path(os.environ.get("TEMPLATEFLOW_HOME", Path.home() / ".cache" / "templateflow"))


#: the files of a TemplateFlow template that registration and segmentation need (CSF optional)
_TEMPLATEFLOW_FILES = {
    "t1w": "T1w.nii.gz",
    "mask": "desc-brain_mask.nii.gz",
    "gm": "label-GM_probseg.nii.gz",
    "wm": "label-WM_probseg.nii.gz",
    "csf": "label-CSF_probseg.nii.gz",
}


class TemplateNotAvailableError(ValueError):
    """A template (or one of its files) that symprep cannot load offline; the message is one line."""


def templateflow_files(name: str, resolution: int) -> dict[str, Path]:
    """The cached TemplateFlow files of ``name`` at resolution index ``resolution``.

    Raises
    ------
    TemplateNotAvailableError
        The template is not in the cache, or a file other than the CSF map is missing (named).
    """
    home = templateflow_home()
    folder = home / f"tpl-{name}"
    if not folder.is_dir():
        raise TemplateNotAvailableError(
            f"template {name!r} is neither shipped ({TEMPLATE_NAME}) nor in TemplateFlow's cache "
            f"({home}); fetch it with TemplateFlow on a machine with network, or use {TEMPLATE_NAME}"
        )
    files = {
        k: folder / f"tpl-{name}_res-{resolution:02d}_{v}" for k, v in _TEMPLATEFLOW_FILES.items()
    }
    missing = [p.name for k, p in files.items() if k != "csf" and not p.is_file()]
    if missing:
        raise TemplateNotAvailableError(
            f"template {name} res-{resolution}: TemplateFlow's cache ({folder}) lacks "
            + ", ".join(missing)
        )
    return {k: p for k, p in files.items() if p.is_file()}


def check_template(name: str, resolution: int) -> None:
    """Raise :class:`TemplateNotAvailableError` unless ``name`` at ``resolution`` can be loaded."""
    if name == TEMPLATE_NAME:
        if resolution not in (1, 2):
            raise TemplateNotAvailableError(
                f"{TEMPLATE_NAME} ships res-1 (1 mm) and res-2 (2 mm), not res-{resolution}"
            )
        return
    templateflow_files(name, resolution)


def template_voxel_mm(name: str, resolution: int) -> float:
    """Voxel size (mm) of template ``name`` at ``resolution``, from its header only (no data read).

    >>> template_voxel_mm(TEMPLATE_NAME, 1)
    1.0
    """
    check_template(name, resolution)
    if name == TEMPLATE_NAME:
        return float(resolution)
    header = nib.load(templateflow_files(name, resolution)["t1w"]).header
    return float(header.get_zooms()[0])


def load_template(resolution: int = 2, name: str = TEMPLATE_NAME) -> Template:
    """Load template ``name`` at resolution ``resolution``.

    ``MNI152NLin2009aSym`` (the default) comes from nilearn's packaged data (``resolution`` 1 or
    2 mm); any other name from TemplateFlow's cache (``resolution`` is TemplateFlow's ``res-``
    index). Returns float32 images on the T1w's grid. Cached: repeated calls are free.

    Raises
    ------
    TemplateNotAvailableError
        The template or one of its files is not available offline.
    """
    check_template(name, resolution)
    if name == TEMPLATE_NAME:
        return _load_nilearn_template(resolution)
    return _load_templateflow_template(name, resolution, str(templateflow_home()))


def _tissue_template(
    name: str,
    resolution: int,
    t1w: nib.Nifti1Image,
    mask: nib.Nifti1Image,
    gm: nib.Nifti1Image,
    wm: nib.Nifti1Image,
    csf: nib.Nifti1Image | None,
) -> Template:
    """The :class:`Template` of these images: float32 maps on ``t1w``'s grid, CSF derived if absent."""
    from nilearn import image

    gm, wm, mask = (_on_grid(x, t1w, image) for x in (gm, wm, mask))

    def _f32(data: np.ndarray) -> nib.Nifti1Image:
        out = nib.Nifti1Image(np.asarray(data, dtype=np.float32), t1w.affine)
        out.header.set_xyzt_units("mm")
        return out

    gm_d = np.clip(gm.get_fdata(), 0, 1)
    wm_d = np.clip(wm.get_fdata(), 0, 1)
    mask_d = (mask.get_fdata() > 0.5).astype(np.float32)
    if csf is None:
        csf_d = np.clip(mask_d - gm_d - wm_d, 0, 1) * mask_d
    else:
        csf_d = np.clip(_on_grid(csf, t1w, image).get_fdata(), 0, 1)
    return Template(
        name=name,
        resolution=resolution,
        t1w=_f32(t1w.get_fdata()),
        mask=nib.Nifti1Image(mask_d.astype(np.uint8), t1w.affine),
        gm=_f32(gm_d),
        wm=_f32(wm_d),
        csf=_f32(csf_d),
    )


@functools.lru_cache(maxsize=4)
def _load_templateflow_template(name: str, resolution: int, home: str) -> Template:
    files = templateflow_files(name, resolution)
    images = {k: nib.load(p) for k, p in files.items()}
    return _tissue_template(
        name,
        resolution,
        images["t1w"],
        images["mask"],
        images["gm"],
        images["wm"],
        images.get("csf"),
    )


@functools.lru_cache(maxsize=4)
def _load_nilearn_template(resolution: int) -> Template:
    """``MNI152NLin2009aSym`` at ``resolution`` mm (1 or 2) from nilearn's packaged data."""
    from nilearn import datasets

    t1w = datasets.load_mni152_template(resolution=resolution)
    return _tissue_template(
        TEMPLATE_NAME,
        resolution,
        t1w,
        datasets.load_mni152_brain_mask(resolution=resolution),
        datasets.load_mni152_gm_template(resolution=resolution),
        datasets.load_mni152_wm_template(resolution=resolution),
        None,
    )
