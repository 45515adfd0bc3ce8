r"""N4 bias-field correction (Tustison et al. 2010) through antspyx.

The image is modelled as :math:`v(x) = u(x)\, b(x)` with a smooth multiplicative field :math:`b`;
N4 estimates :math:`\log b` with B-splines and returns :math:`u = v / b` inside the head mask.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from pipeline.anat.pose import foreground_mask
from pipeline.antsio import ants_to_nib, nib_to_ants


def n4_correct(img: nib.spatialimages.SpatialImage, shrink_factor: int = 4) -> nib.Nifti1Image:
    """Bias-correct a T1w image (negative values are clipped to 0 first; N4 needs positive data).

    Parameters
    ----------
    img : nibabel image
        T1w image (3-D).
    shrink_factor : int, default=4
        Downsampling used while fitting the field (higher is faster).

    Returns
    -------
    nibabel.Nifti1Image
        float32, same grid; background (outside the head mask) keeps its input value.
    """
    import ants

    data = np.clip(np.asarray(img.get_fdata(dtype=np.float32)), 0, None)
    mask = foreground_mask(data)
    if mask.sum() < 10:
        return nib.Nifti1Image(data, img.affine)
    offset = 1e-3 * float(data[mask].max())  # keep strictly positive values for the log model
    src = nib_to_ants(nib.Nifti1Image(data + offset, img.affine))
    amask = nib_to_ants(nib.Nifti1Image(mask.astype(np.float32), img.affine))
    corrected = ants.n4_bias_field_correction(
        src,
        mask=amask,
        shrink_factor=int(shrink_factor),
        convergence={"iters": [50, 50, 30], "tol": 1e-6},
    )
    out = ants_to_nib(corrected).get_fdata(dtype=np.float32) - offset
    result = np.where(mask, np.clip(out, 0, None), data).astype(np.float32)
    return nib.Nifti1Image(result, img.affine)
