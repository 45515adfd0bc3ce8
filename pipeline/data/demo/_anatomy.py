"""The demo's anatomy: the planted atrophy, the subject's pose (:class:`SubjectTruth`) and the
posed, gauged T1w sampled with one interpolation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from pipeline.anat.synthetic import rigid_about
from pipeline.data.demo._grid import (
    Displacement,
    set_scanner_codes,
    stored_grid,
    trilinear,
    voxel_world_coords,
    warp_points,
    world_to_voxel,
)
from pipeline.data.demo._sites import gauge_actions, noise_action
from pipeline.data.demo._spec import DIAGNOSIS_CENTRE_MM, DIAGNOSIS_SIGMA_MM, DIAGNOSIS_STRENGTH
from pipeline.data.templates import Template


def planted_atrophy(
    template: Template,
    sigma_mm: float = DIAGNOSIS_SIGMA_MM,
    centre_mm: tuple[float, float, float] = DIAGNOSIS_CENTRE_MM,
) -> np.ndarray:
    """Weight map (template grid) of the planted diagnosis effect: Gaussian × grey matter.

    Parameters
    ----------
    template : Template
        The template whose grid and grey-matter map carry the effect.
    sigma_mm : float, default=DIAGNOSIS_SIGMA_MM
        Gaussian width in mm (coarse benchmarks use a wider one).
    centre_mm : tuple of float, default=DIAGNOSIS_CENTRE_MM
        Centre in template (MNI) mm: the left medial temporal lobe.
    """
    world = voxel_world_coords(template.t1w.shape, template.t1w.affine)
    r2 = sum((world[k] - centre_mm[k]) ** 2 for k in range(3))
    return np.exp(-r2 / (2 * sigma_mm**2)) * template.gm.get_fdata()


def subject_template_t1w(template: Template, diagnosis: str) -> np.ndarray:
    """The template T1w with the diagnosis effect planted (GM → CSF-like intensity)."""
    t1 = template.t1w.get_fdata()
    if diagnosis != "ASD":
        return t1
    csf_level = np.percentile(t1[template.csf.get_fdata() > 0.5], 25)
    return t1 + DIAGNOSIS_STRENGTH * planted_atrophy(template) * (csf_level - t1)


def sample_in_template(
    images: np.ndarray, template: Template, points_mm: np.ndarray, displacement: Displacement
) -> np.ndarray:
    """Sample template-grid ``images`` (C, X, Y, Z) at :math:`\\varphi(x) = x + u(x)` for points ``x`` (3, ...)."""
    warped = warp_points(points_mm, displacement)
    return trilinear(images, world_to_voxel(warped, template.t1w.affine))


@dataclass
class SubjectTruth:
    """Ground truth of one generated subject (what the pipeline should recover)."""

    participant_id: str
    site: str
    age: float
    sex: str
    diagnosis: str
    rotation: np.ndarray
    translation: np.ndarray
    centre: np.ndarray
    seed: int

    @property
    def template_to_scanner(self) -> np.ndarray:
        """4×4 RAS matrix mapping template-space points to scanner points (the head pose)."""
        return rigid_about(self.rotation, self.centre, self.translation)

    def as_json(self) -> dict[str, Any]:
        """JSON-friendly record."""
        return {
            "participant_id": self.participant_id,
            "site": self.site,
            "age": self.age,
            "sex": self.sex,
            "diagnosis": self.diagnosis,
            "seed": self.seed,
            "pose": {
                "convention": "RAS mm; template point x lies at scanner point p = R (x - c) + c + t",
                "rotation_matrix": self.rotation.round(10).tolist(),
                "rotation_vector_rad": Rotation.from_matrix(self.rotation)
                .as_rotvec()
                .round(10)
                .tolist(),
                "rotation_angle_deg": float(
                    np.degrees(Rotation.from_matrix(self.rotation).magnitude())
                ),
                "translation_mm": self.translation.round(6).tolist(),
                "centre_mm": self.centre.round(6).tolist(),
                "template_to_scanner": self.template_to_scanner.round(10).tolist(),
            },
        }


def brain_centre(template: Template) -> np.ndarray:
    """Centre of mass (mm) of the template brain mask."""
    mask = template.mask.get_fdata() > 0
    com = np.array(ndimage.center_of_mass(mask))
    return template.mask.affine[:3, :3] @ com + template.mask.affine[:3, 3]


def generate_t1w(
    truth: SubjectTruth,
    gauge: dict[str, Any],
    template: Template,
    anatomy: np.ndarray,
    displacement: Displacement,
    rng: np.random.Generator,
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """The posed, gauged T1w in its site's storage, and the un-posed noise-free one on the template grid."""
    shape, affine = stored_grid(
        np.array(gauge["t1w_fov_mm"]), np.array(gauge["t1w_voxel_mm"]), tuple(gauge["orientation"])
    )
    world = voxel_world_coords(shape, affine)
    to_template = np.linalg.inv(truth.template_to_scanner)
    points = (to_template[:3, :3] @ world.reshape(3, -1) + to_template[:3, 3:4]).reshape(
        world.shape
    )
    clean = sample_in_template(anatomy[None], template, points, displacement)[0]
    ref_max = float(np.percentile(anatomy[anatomy > 0], 99))
    contrast, gain, bias = gauge_actions(gauge, ref_max)
    gauged = gain(contrast(clean)) * bias.field_at(world)
    noisy = noise_action(gauge["noise_fraction"] * gauge["gain"] * ref_max, rng)(gauged)
    img = nib.Nifti1Image(noisy.astype(np.float32), affine)
    set_scanner_codes(img)
    # un-posed reference: same anatomy and monotone gauge, template grid, no bias field, no noise
    grid = voxel_world_coords(template.t1w.shape, template.t1w.affine)
    unposed = gain(contrast(sample_in_template(anatomy[None], template, grid, displacement)[0]))
    return img, nib.Nifti1Image(unposed.astype(np.float32), template.t1w.affine)
