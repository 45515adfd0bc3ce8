"""Synthetic multi-site BIDS dataset with known ground truth, built from MNI152NLin2009aSym.

No network is reachable at run time, so the demo input is generated from the template that
nilearn ships. Every nuisance that symprep removes is planted with a recorded value:

* **anatomy** — a smooth random diffeomorphism :math:`\\varphi = \\exp(v)` of the template
  (stationary velocity field :math:`v` on a coarse grid, integrated by scaling and squaring);
* **diagnosis** — a local atrophy in a fixed template region (grey matter turned CSF-like with a
  Gaussian profile), for ``diagnosis == "ASD"`` subjects only; it lives in template space and so
  does not depend on the pose; ASD subjects' default-mode regions are also less correlated
  (:data:`DIAGNOSIS_FC_EFFECT`), a connectivity effect for diagnosis from FC;
* **pose** — a rotation :math:`R` drawn uniformly from SO(3) plus a translation :math:`t`, about
  the template's brain centre :math:`c`: a template point :math:`x` lies at scanner point
  :math:`p = R(x - c) + c + t`;
* **storage** — per site the voxel axes are stored RAS, LPS or permuted (sagittal slices), with the
  world (scanner) coordinates unchanged;
* **gauge** — per site a gain, a monotone contrast change :math:`I \\mapsto g\\,m\\,(I/m)^{\\gamma}`,
  a smooth multiplicative bias field (exponential of a quadratic polynomial in scanner
  coordinates), Rician noise, voxel size and field of view;
* **BOLD** — T2*-weighted EPI (CSF bright, GM above WM) with resting-state signals carrying a
  planted network (ground-truth correlation matrix between spherical regions), head motion in one
  of three regimes (rigid parameters per volume about the centre of the BOLD grid,
  :func:`pipeline.data.epi.motion_parameters`), susceptibility dropout and distortion along the
  phase-encoding axis from a recorded field map, respiratory and cardiac noise, thermal noise,
  drift and two non-steady-state volumes; sites differ in TR, volume count, slice order,
  phase-encoding direction and field-of-view placement (:mod:`pipeline.data.epi`).

The sampled image is ``value(p) = template'(phi(P^{-1}(p)))`` with one interpolation. Ground truth
goes to ``sourcedata/groundtruth/`` (allowed by BIDS): ``participants`` parameters as JSON,
per-volume motion as TSV, the velocity fields, the un-posed T1w in template space, the true
network, the susceptibility field map and dropout map (template space) and the physiological
traces.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel import orientations as ornt
from scipy import ndimage
from scipy.spatial.transform import Rotation
from tqdm.auto import tqdm

from pipeline import __version__
from pipeline.data.templates import Template, load_template
from pipeline.io import save_image, write_json, write_text

logger = logging.getLogger(__name__)

#: storage orientations cycled over sites (axis codes of the stored voxel array)
SITE_ORIENTATIONS: tuple[tuple[str, str, str], ...] = (
    ("R", "A", "S"),
    ("L", "P", "S"),
    ("A", "S", "R"),
)
#: planted atrophy: centre (MNI mm, left medial temporal lobe), Gaussian sigma (mm), strength
DIAGNOSIS_CENTRE_MM = (-26.0, -22.0, -14.0)
DIAGNOSIS_SIGMA_MM = 7.0
DIAGNOSIS_STRENGTH = 0.6
#: planted resting-state network: regions (MNI mm) and their network membership
NETWORK_REGIONS = pd.DataFrame(
    {
        "region": ["PCC", "mPFC", "lAG", "rAG", "lMotor", "rMotor"],
        "x": [0.0, 0.0, -46.0, 46.0, -38.0, 38.0],
        "y": [-54.0, 50.0, -66.0, -66.0, -22.0, -22.0],
        "z": [28.0, 4.0, 32.0, 32.0, 56.0, 56.0],
        "network": ["DMN", "DMN", "DMN", "DMN", "SMN", "SMN"],
    }
)
REGION_RADIUS_MM = 8.0
#: planted connectivity effect: ASD subjects' within-DMN correlation is scaled by (1 - this)
DIAGNOSIS_FC_EFFECT = 0.5
TISSUE_T2STAR = {"gm": 800.0, "wm": 640.0, "csf": 1000.0}
DUMMY_SCANS = 2


@dataclass(frozen=True)
class DemoSpec:
    """What to generate. The defaults are the demo of ``make demo``.

    Parameters
    ----------
    sites, subjects_per_site : int
        Number of sites and subjects per site.
    seed : int
        Seed of everything random (same seed, same bytes).
    resolution : float
        Base T1w voxel size in mm; sites scale it by up to 20 % (one site anisotropic).
    bold_resolution : float
        Base BOLD voxel size in mm.
    n_volumes : int
        BOLD volumes per run (including the non-steady-state ones).
    repetition_time : float
        BOLD TR in seconds.
    max_translation_mm : float
        Translations are uniform in ``[-max, max]`` per axis.
    warp_amplitude_mm : float
        Typical size of the anatomical displacements.
    motion_regime : {"still", "drift", "spiky"}
        Head-motion regime of every run (:func:`pipeline.data.epi.motion_parameters`).
    epi_effects : bool
        Plant susceptibility dropout and distortion and physiological noise, and vary TR, volume
        count and slice order across sites (:mod:`pipeline.data.epi`). ``False`` gives the
        earlier, easier BOLD (one acquisition for all sites, no distortion), for comparison.
    """

    sites: int = 3
    subjects_per_site: int = 4
    seed: int = 0
    resolution: float = 2.0
    bold_resolution: float = 4.0
    n_volumes: int = 60
    repetition_time: float = 2.0
    max_translation_mm: float = 15.0
    warp_amplitude_mm: float = 3.0
    site_names: tuple[str, ...] = field(default=())
    motion_regime: str = "spiky"
    epi_effects: bool = True

    def site_label(self, index: int) -> str:
        """BIDS-safe site label: ``siteA``, ``siteB``, …"""
        if self.site_names:
            return self.site_names[index]
        return "site" + "".join(chr(ord("A") + d) for d in _digits(index))


def _digits(index: int) -> list[int]:
    out = [index % 26]
    while index >= 26:
        index = index // 26 - 1
        out.insert(0, index % 26)
    return out


# --------------------------------------------------------------------------- geometry


def pose_matrix(rotation: np.ndarray, translation: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """4×4 RAS matrix mapping template points to scanner points: :math:`p = R(x-c)+c+t`
    (:func:`pipeline.anat.synthetic.rigid_about`, argument order of the demo's records)."""
    from pipeline.anat.synthetic import rigid_about

    return rigid_about(rotation, centre, translation)


def stored_grid(
    fov_mm: np.ndarray, voxel_mm: np.ndarray, axcodes: tuple[str, str, str]
) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a grid centred on the scanner origin, stored with axis codes ``axcodes``.

    The RAS grid has ``voxel_mm`` along R, A, S; storing it as ``axcodes`` permutes/flips the voxel
    axes but keeps every voxel's world position.
    """
    shape_ras = np.maximum(np.round(fov_mm / voxel_mm).astype(int), 2)
    affine_ras = np.diag([*voxel_mm, 1.0])
    affine_ras[:3, 3] = -(shape_ras - 1) / 2.0 * voxel_mm
    transform = ornt.ornt_transform(ornt.axcodes2ornt(("R", "A", "S")), ornt.axcodes2ornt(axcodes))
    affine = affine_ras @ ornt.inv_ornt_aff(transform, tuple(shape_ras))
    # the stored shape: axis j of the stored array is RAS axis k where transform[k, 0] == j
    shape = [0, 0, 0]
    for k, (j, _) in enumerate(transform):
        shape[int(j)] = int(shape_ras[k])
    return tuple(shape), affine


def voxel_world_coords(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) coordinates of every voxel, shape ``(3, *shape)``."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    return xyz.reshape(3, *shape)


# --------------------------------------------------------------------------- anatomy


def velocity_field(
    rng: np.random.Generator, template: Template, amplitude_mm: float, spacing_mm: float = 16.0
) -> nib.Nifti1Image:
    """A random stationary velocity field on a coarse grid covering the template (mm, RAS)."""
    shape_t = np.array(template.t1w.shape)
    zooms = np.array(template.t1w.header.get_zooms()[:3])
    coarse_shape = tuple(int(n) for n in np.ceil(shape_t * zooms / spacing_mm).astype(int) + 1)
    vel = rng.normal(0.0, amplitude_mm, size=(*coarse_shape, 3))
    vel = ndimage.gaussian_filter(vel, sigma=(0.7, 0.7, 0.7, 0)) * 2.0
    affine = template.t1w.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag(spacing_mm / zooms)
    return nib.Nifti1Image(vel.astype(np.float32), affine)


def trilinear(volumes: np.ndarray, vox: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Trilinear interpolation of ``volumes`` (C, X, Y, Z) at voxel coordinates ``vox`` (3, ...).

    Uses :func:`torch.nn.functional.grid_sample` (multi-channel, multi-threaded), in the dtype of
    ``volumes``. Points outside the grid get ``fill`` (``"border"``: the nearest edge value).
    Returns an array of shape ``(C, *vox.shape[1:])``.
    """
    import torch

    vols = torch.from_numpy(np.ascontiguousarray(volumes))
    size = torch.tensor(volumes.shape[1:][::-1], dtype=vols.dtype)
    pts = torch.from_numpy(np.ascontiguousarray(vox.reshape(3, -1)[::-1].T)).to(vols.dtype)
    grid = (2.0 * pts / (size - 1) - 1.0).reshape(1, 1, 1, -1, 3)
    padding = "border" if fill == "border" else "zeros"
    out = torch.nn.functional.grid_sample(
        vols[None], grid, mode="bilinear", padding_mode=padding, align_corners=True
    )[0, :, 0, 0]
    return out.numpy().reshape(volumes.shape[0], *vox.shape[1:])


def world_to_voxel(points_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel coordinates (3, ...) of world points (3, ...) for a grid with ``affine``."""
    inv = np.linalg.inv(affine)
    flat = points_mm.reshape(3, -1)
    return (inv[:3, :3] @ flat + inv[:3, 3:4]).reshape(points_mm.shape)


@dataclass(frozen=True)
class Displacement:
    """A displacement field ``u`` (mm, shape (3, X, Y, Z)) on a grid with ``affine``: :math:`\\varphi(x) = x + u(x)`."""

    field: np.ndarray
    affine: np.ndarray


def coarse_grid(image: nib.Nifti1Image, factor: int = 2) -> nib.Nifti1Image:
    """An empty image covering ``image``'s field of view with voxels ``factor`` times larger."""
    shape = tuple(int(np.ceil(n / factor)) for n in image.shape[:3])
    affine = image.affine.copy()
    affine[:3, :3] = affine[:3, :3] * factor
    return nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), affine)


def displacement_from_velocity(
    velocity: nib.Nifti1Image, grid: nib.Nifti1Image, sign: float = 1.0, steps: int = 6
) -> Displacement:
    """Displacement field of :math:`\\exp(\\pm v)` on ``grid`` (mm).

    The velocity is interpolated trilinearly onto the grid and integrated by scaling and squaring:
    :math:`u \\leftarrow u + u\\circ(\\mathrm{id}+u)`, ``steps`` times, from :math:`v/2^{steps}`.
    """
    shape = grid.shape[:3]
    world = voxel_world_coords(shape, grid.affine)
    vel = np.moveaxis(np.asarray(velocity.dataobj, dtype=np.float64), -1, 0)
    u = trilinear(vel, world_to_voxel(world, velocity.affine), fill="border")
    u = sign * u / 2.0**steps
    for _ in range(steps):
        u = u + trilinear(u, world_to_voxel(world + u, grid.affine), fill="border")
    return Displacement(u, grid.affine.copy())


def warp_points(points_mm: np.ndarray, displacement: Displacement) -> np.ndarray:
    """Apply :math:`\\varphi(x) = x + u(x)` to points (3, ...)."""
    disp = trilinear(
        displacement.field, world_to_voxel(points_mm, displacement.affine), fill="border"
    )
    return points_mm + disp


def planted_atrophy(template: Template) -> np.ndarray:
    """Weight map (template grid) of the planted diagnosis effect: Gaussian × grey matter."""
    world = voxel_world_coords(template.t1w.shape, template.t1w.affine)
    r2 = sum((world[k] - DIAGNOSIS_CENTRE_MM[k]) ** 2 for k in range(3))
    return np.exp(-r2 / (2 * DIAGNOSIS_SIGMA_MM**2)) * template.gm.get_fdata()


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


# --------------------------------------------------------------------------- gauges


def _stream(seed: int, *key: int) -> np.random.Generator:
    """An independent random stream per (seed, purpose, index): adding sites or subjects leaves
    the existing ones unchanged."""
    return np.random.default_rng([seed, *key])


def site_gauges(spec: DemoSpec) -> list[dict[str, Any]]:
    """Per-site scanner gauge: gain, contrast exponent, bias coefficients, noise, voxel size, FOV."""
    gauges = []
    for s in range(spec.sites):
        rng = _stream(spec.seed, 1, s)
        scale = 1.0 + 0.1 * (s % 3)
        voxel = np.full(3, spec.resolution * scale)
        if s % 3 == 2:  # one anisotropic site: thicker slices
            voxel[2] *= 1.2
        gauges.append(
            {
                "site": spec.site_label(s),
                "orientation": "".join(SITE_ORIENTATIONS[s % len(SITE_ORIENTATIONS)]),
                "gain": float(rng.uniform(0.6, 1.8)),
                "gamma": float(rng.uniform(0.7, 1.4)),
                "bias_coefficients": rng.normal(0.0, 0.12, size=9).round(4).tolist(),
                "noise_fraction": float(rng.uniform(0.01, 0.03)),
                "t1w_voxel_mm": voxel.round(3).tolist(),
                "t1w_fov_mm": [float(rng.uniform(236, 256))] * 3,
                "bold_voxel_mm": [spec.bold_resolution * (1.0 + 0.05 * (s % 2))] * 3,
                "bold_fov_mm": [float(rng.uniform(236, 250))] * 2 + [220.0],
                "bold_gain": float(rng.uniform(0.5, 2.0)),
                "manufacturer": ["Siemens", "GE", "Philips"][s % 3],
            }
        )
        gauges[-1].update(_site_acquisition(spec, s, gauges[-1], rng))
    return gauges


def _site_acquisition(
    spec: DemoSpec, index: int, gauge: dict[str, Any], rng: np.random.Generator
) -> dict[str, Any]:
    """TR, volume count, slice order, phase encoding and FOV placement of a site's BOLD."""
    from pipeline.data.epi import SITE_ACQUISITIONS

    scheme = SITE_ACQUISITIONS[index % len(SITE_ACQUISITIONS)] if spec.epi_effects else None
    if scheme is None:
        scheme = {**SITE_ACQUISITIONS[0], "tr": 1.0, "volumes": 1.0}
    offset = rng.uniform(-12.0, 12.0, size=3) if spec.epi_effects else np.zeros(3)
    shape, _ = stored_grid(
        np.array(gauge["bold_fov_mm"]),
        np.array(gauge["bold_voxel_mm"]),
        tuple(gauge["orientation"]),
    )
    n_pe = shape["ijk".index(scheme["pe"][0])]
    return {
        "bold_tr": round(spec.repetition_time * scheme["tr"], 4),
        "bold_volumes": max(int(round(spec.n_volumes * scheme["volumes"])), DUMMY_SCANS + 6),
        "slice_order": scheme["slice_order"],
        "phase_encoding_direction": scheme["pe"],
        "total_readout_time": round(scheme["echo_spacing"] * (n_pe - 1), 5)
        if spec.epi_effects
        else 0.0,
        "bold_fov_offset_mm": offset.round(3).tolist(),
    }


def bias_field(world_mm: np.ndarray, coefficients: list[float]) -> np.ndarray:
    """The site's smooth multiplicative bias at scanner positions (mm):
    :class:`pipeline.symmetry.BiasField` evaluated there, so the demo and the audit share it."""
    from pipeline.symmetry import BiasField

    return BiasField(tuple(coefficients)).field_at(world_mm)


def apply_gauge(intensity: np.ndarray, gauge: dict[str, Any], reference_max: float) -> np.ndarray:
    """The site's monotone gauge :math:`I \\mapsto g\\,m\\,(I/m)^{\\gamma}` (no bias, no noise):
    :class:`pipeline.symmetry.MonotoneContrast` then :class:`pipeline.symmetry.Gain`, the
    actions the invariance audit applies."""
    from pipeline.symmetry import Gain, MonotoneContrast

    return Gain(gauge["gain"])(MonotoneContrast(gauge["gamma"], reference_max)(intensity))


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Rician magnitude noise of ``sigma`` per channel: :class:`pipeline.symmetry.RicianNoise`,
    seeded from ``rng``."""
    from pipeline.symmetry import RicianNoise

    return RicianNoise(float(sigma), seed=int(rng.integers(2**32)))(signal)


# --------------------------------------------------------------------------- BOLD


def network_correlation(diagnosis: str = "TDC") -> np.ndarray:
    """Ground-truth correlation between the planted regions: 0.6 within a network, 0 across;
    for ``diagnosis == "ASD"`` the default-mode edges are weaker by :data:`DIAGNOSIS_FC_EFFECT`
    (the planted connectivity effect that a diagnosis classifier can find)."""
    nets = NETWORK_REGIONS["network"].to_numpy()
    corr = np.where(nets[:, None] == nets[None, :], 0.6, 0.0)
    if diagnosis == "ASD":
        dmn = (nets[:, None] == "DMN") & (nets[None, :] == "DMN")
        corr = np.where(dmn, corr * (1.0 - DIAGNOSIS_FC_EFFECT), corr)
    np.fill_diagonal(corr, 1.0)
    return corr


def network_signals(
    rng: np.random.Generator, times: np.ndarray, tr: float, diagnosis: str = "TDC"
) -> np.ndarray:
    """Band-limited (0.01–0.1 Hz) region signals with the planted correlation
    (:func:`network_correlation` of ``diagnosis``), sampled at ``times``.

    Signals are made on a fine grid (0.1 s), filtered identically (so the correlation structure is
    kept) and interpolated at arbitrary acquisition times (slice timing).
    """
    dt = 0.1
    fine = np.arange(-20.0, times.max() + 20.0, dt)
    chol = np.linalg.cholesky(network_correlation(diagnosis))
    white = rng.normal(size=(fine.size, chol.shape[0])) @ chol.T
    freqs = np.fft.rfftfreq(fine.size, dt)
    band = (freqs >= 0.01) & (freqs <= 0.1)
    spectrum = np.fft.rfft(white, axis=0) * band[:, None]
    fine_signals = np.fft.irfft(spectrum, n=fine.size, axis=0)
    fine_signals /= fine_signals.std(axis=0, keepdims=True)
    return np.stack(
        [np.interp(times, fine, fine_signals[:, k]) for k in range(chol.shape[0])], axis=-1
    )


def motion_matrix(row: pd.Series, centre: np.ndarray | None = None) -> np.ndarray:
    """4×4 RAS matrix of one volume's motion about ``centre`` (mm; the BOLD grid's centre in the
    demo): :func:`pipeline.func.motion.params_to_matrix` of the row."""
    from pipeline.func.motion import MOTION_COLUMNS, params_to_matrix

    return params_to_matrix([getattr(row, c) for c in MOTION_COLUMNS], centre)


# --------------------------------------------------------------------------- subject


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
        return pose_matrix(self.rotation, self.translation, self.centre)

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
    gauged = apply_gauge(clean, gauge, ref_max) * bias_field(world, gauge["bias_coefficients"])
    noisy = rician(gauged, gauge["noise_fraction"] * gauge["gain"] * ref_max, rng)
    img = nib.Nifti1Image(noisy.astype(np.float32), affine)
    _set_scanner_codes(img)
    # un-posed reference: same anatomy and monotone gauge, template grid, no bias field, no noise
    grid = voxel_world_coords(template.t1w.shape, template.t1w.affine)
    unposed = apply_gauge(
        sample_in_template(anatomy[None], template, grid, displacement)[0], gauge, ref_max
    )
    return img, nib.Nifti1Image(unposed.astype(np.float32), template.t1w.affine)


def between_scan_motion(rng: np.random.Generator, head_centre: np.ndarray) -> np.ndarray:
    """How the head moved between the T1w and the BOLD run: 1.5 mm per axis (sd) and a 0.5–2°
    rotation about the head centre — what coregistration has to find."""
    axis = rng.normal(size=3)
    angle = np.radians(rng.uniform(0.5, 2.0))
    rot = Rotation.from_rotvec(angle * axis / np.linalg.norm(axis)).as_matrix()
    mat = np.eye(4)
    mat[:3, :3] = rot
    mat[:3, 3] = head_centre - rot @ head_centre + rng.normal(0.0, 1.5, size=3)
    return mat


def bold_grid(gauge: dict[str, Any]) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of the site's BOLD grid: stored like its T1w, shifted by the FOV offset."""
    shape, affine = stored_grid(
        np.array(gauge["bold_fov_mm"]),
        np.array(gauge["bold_voxel_mm"]),
        tuple(gauge["orientation"]),
    )
    affine = affine.copy()
    affine[:3, 3] += np.asarray(gauge.get("bold_fov_offset_mm", (0.0, 0.0, 0.0)))
    return shape, affine


@dataclass
class BoldTruth:
    """What :func:`generate_bold` planted besides the image (saved to the ground-truth folder)."""

    slice_times: list[float]
    region_signals: np.ndarray
    fieldmap_hz: np.ndarray
    dropout: np.ndarray
    physiology: pd.DataFrame
    motion_centre: np.ndarray


def generate_bold(
    truth: SubjectTruth,
    gauge: dict[str, Any],
    spec: DemoSpec,
    template: Template,
    displacement: Displacement,
    motion: pd.DataFrame,
    rng: np.random.Generator,
    t1w_to_bold: np.ndarray | None = None,
) -> tuple[nib.Nifti1Image, BoldTruth]:
    """The BOLD run (stored like the site's T1w) and what was planted in it (:class:`BoldTruth`).

    Per volume: the T2*-weighted baseline with dropout, the network signals at each slice's
    acquisition time, global and physiological modulation, all sampled in the moved head (moved
    by ``t1w_to_bold`` between the T1w and volume 0, then by the run's motion); then
    distortion along the phase-encoding axis by the head's field map, the receive bias, drift, the site's gain and Rician noise.
    """
    from pipeline.data import epi
    from pipeline.func.motion import grid_centre

    tr, n_vol = gauge["bold_tr"], len(motion)
    shape, affine = bold_grid(gauge)
    centre = grid_centre(shape, affine)
    slice_times = epi.slice_timing(shape[2], tr, gauge["slice_order"])
    world_t = voxel_world_coords(template.t1w.shape, template.t1w.affine)
    field = epi.fieldmap_hz(world_t) if spec.epi_effects else np.zeros(template.t1w.shape)
    dropout = epi.dropout_fraction(world_t) if spec.epi_effects else np.zeros(template.t1w.shape)
    # baseline T2*-weighted contrast, region maps, field map and CSF, warped once into the head
    baseline = sum(TISSUE_T2STAR[t] * getattr(template, t).get_fdata() for t in ("gm", "wm", "csf"))
    maps = [baseline * (1.0 - dropout)]
    for _, reg in NETWORK_REGIONS.iterrows():
        r2 = (world_t[0] - reg.x) ** 2 + (world_t[1] - reg.y) ** 2 + (world_t[2] - reg.z) ** 2
        maps.append(np.exp(-r2 / (2 * (REGION_RADIUS_MM / 2) ** 2)) * template.gm.get_fdata())
    maps += [field, template.csf.get_fdata()]
    head_maps = sample_in_template(
        np.stack(maps).astype(np.float32), template, world_t, displacement
    )
    acq_times = np.arange(n_vol)[:, None] * tr + np.asarray(slice_times)[None, :]
    signals = network_signals(rng, acq_times.ravel(), tr, truth.diagnosis).reshape(
        n_vol, shape[2], -1
    )
    global_signal = network_signals(rng, np.arange(n_vol) * tr, tr)[:, 0]
    physio = epi.Physiology.draw(rng, np.arange(n_vol) * tr)
    pe = epi.PhaseEncoding.from_bids(gauge["phase_encoding_direction"], gauge["total_readout_time"])
    world = voxel_world_coords(shape, affine)
    flat = np.vstack([world.reshape(3, -1), np.ones((1, world[0].size))])
    bias = bias_field(world, gauge["bias_coefficients"])
    slope = rng.normal(0.01, 0.004, size=shape)
    data = np.empty((*shape, n_vol), dtype=np.float32)
    noise_sigma = 0.01 * TISSUE_T2STAR["gm"]
    n_regions = len(NETWORK_REGIONS)
    between = np.eye(4) if t1w_to_bold is None else np.asarray(t1w_to_bold, dtype=float)
    for t in range(n_vol):
        head = np.linalg.inv(
            motion_matrix(motion.iloc[t], centre) @ between @ truth.template_to_scanner
        )
        points = (head @ flat)[:3].reshape(world.shape)
        sampled = trilinear(head_maps, world_to_voxel(points, template.t1w.affine))
        base, amps = sampled[0], sampled[1 : 1 + n_regions]
        field_t, csf = sampled[1 + n_regions], sampled[2 + n_regions]
        modulation = 1.0 + 0.004 * global_signal[t]
        modulation = modulation + 0.03 * np.einsum("kxyz,zk->xyz", amps, signals[t])
        if spec.epi_effects:
            modulation = modulation + epi.RESPIRATORY_GAIN * physio.respiration[t]
            modulation = modulation + epi.CARDIAC_GAIN * physio.cardiac[t] * csf
        vol = base * modulation
        if spec.epi_effects:
            vol = epi.distort(vol, pe.shift_voxels(field_t), pe.axis)
        if t < DUMMY_SCANS:  # non-steady-state: T1 saturation not reached yet
            vol = vol * (1.6 - 0.25 * t)
        vol = vol * (1.0 + slope * t / max(n_vol - 1, 1)) * bias * gauge["bold_gain"]
        data[..., t] = rician(vol, noise_sigma * gauge["bold_gain"], rng)
    img = nib.Nifti1Image(data, affine)
    _set_scanner_codes(img)
    img.header.set_xyzt_units("mm", "sec")
    zooms = img.header.get_zooms()
    img.header.set_zooms((*zooms[:3], tr))
    img.header.set_dim_info(slice=2)
    planted = BoldTruth(
        slice_times=slice_times,
        region_signals=signals.mean(axis=1),
        fieldmap_hz=field,
        dropout=dropout,
        physiology=physio.as_frame(),
        motion_centre=centre,
    )
    return img, planted


def synthetic_bold_run(
    seed: int,
    *,
    regime: str = "spiky",
    bold_resolution: float = 3.0,
    n_volumes: int = 60,
    epi_effects: bool = True,
    site: int = 0,
) -> tuple[nib.Nifti1Image, np.ndarray]:
    """One demo BOLD run of a warped brain (not the template) in a random pose, without a T1w.

    The quick way to a run with known motion for tests and benchmarks: the same generator as
    :func:`make_demo_dataset` (anatomy warp, pose, site ``site``'s acquisition, EPI effects).

    Returns
    -------
    img : nibabel.Nifti1Image
        The run, non-steady-state volumes included (the first :data:`DUMMY_SCANS`).
    motion : ndarray of shape (T, 4, 4)
        True head motion: maps from the head's position at volume 0 to volume ``t`` (RAS mm).
    """
    from pipeline.data.epi import MOTION_REGIMES, motion_parameters

    if regime not in MOTION_REGIMES:
        raise ValueError(f"motion regime must be one of {MOTION_REGIMES}, got {regime!r}")
    spec = DemoSpec(
        sites=site + 1,
        bold_resolution=bold_resolution,
        n_volumes=n_volumes,
        seed=seed,
        motion_regime=regime,
        epi_effects=epi_effects,
    )
    template = load_template(2)
    gauge = site_gauges(spec)[site]
    truth, displacement = _simulated_subject(seed, spec.max_translation_mm, spec.warp_amplitude_mm)
    rng = np.random.default_rng([seed, 8, MOTION_REGIMES.index(regime)])
    motion = motion_parameters(rng, gauge["bold_volumes"], regime)
    img, planted = generate_bold(truth, gauge, spec, template, displacement, motion, rng)
    mats = np.stack([motion_matrix(row, planted.motion_centre) for row in motion.itertuples()])
    return img, mats


@functools.lru_cache(maxsize=4)
def _simulated_subject(
    seed: int, max_translation_mm: float, warp_amplitude_mm: float
) -> tuple[SubjectTruth, Displacement]:
    """Pose and anatomy warp of :func:`synthetic_bold_run`'s subject (cached: runs of several
    motion regimes share one brain)."""
    template = load_template(2)
    rng = np.random.default_rng([seed, 7])
    truth = SubjectTruth(
        participant_id="sub-sim",
        site="sim",
        age=30.0,
        sex="F",
        diagnosis="TD",
        rotation=Rotation.random(random_state=rng).as_matrix(),
        translation=rng.uniform(-max_translation_mm, max_translation_mm, size=3),
        centre=brain_centre(template),
        seed=seed,
    )
    velocity = velocity_field(rng, template, warp_amplitude_mm)
    return truth, displacement_from_velocity(velocity, coarse_grid(template.t1w, 2))


def _set_scanner_codes(img: nib.Nifti1Image) -> None:
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")


# --------------------------------------------------------------------------- dataset


def _participants(spec: DemoSpec) -> pd.DataFrame:
    rows = []
    width = max(2, len(str(spec.sites * spec.subjects_per_site)))
    n = 0
    for s in range(spec.sites):
        rng = _stream(spec.seed, 2, s)
        diagnoses = ["ASD", "TDC"] * ((spec.subjects_per_site + 1) // 2)
        rng.shuffle(diagnoses)
        for j in range(spec.subjects_per_site):
            n += 1
            rows.append(
                {
                    "participant_id": f"sub-{n:0{width}d}",
                    "site": spec.site_label(s),
                    "age": round(float(rng.uniform(8.0, 40.0)), 1),
                    "sex": str(rng.choice(["M", "F"])),
                    "diagnosis": diagnoses[j],
                }
            )
    return pd.DataFrame(rows)


PARTICIPANTS_JSON = {
    "participant_id": {"Description": "Participant label"},
    "site": {"Description": "Acquisition site (scanner)"},
    "age": {"Description": "Age at scan", "Units": "year"},
    "sex": {"Description": "Sex", "Levels": {"M": "male", "F": "female"}},
    "diagnosis": {
        "Description": "Planted diagnosis (synthetic): ASD subjects carry a local atrophy and "
        "weaker default-mode connectivity",
        "Levels": {"ASD": "planted effect", "TDC": "control"},
    },
}


def make_demo_dataset(
    out_dir: str | os.PathLike[str],
    spec: DemoSpec | None = None,
    *,
    progress: bool = True,
    n_jobs: int = 1,
) -> Path:
    """Write the synthetic BIDS dataset described by ``spec`` to ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Destination (created). Existing subject files are overwritten atomically.
    spec : DemoSpec, optional
        What to generate; defaults to the ``make demo`` dataset (3 sites × 4 subjects).
    progress : bool, default=True
        Show a progress bar.
    n_jobs : int, default=1
        Subjects generated in parallel processes. Every subject has its own random stream, so the
        files are the same whatever ``n_jobs`` is.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    spec = spec or DemoSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = load_template(2 if spec.resolution >= 1.5 else 1)
    centre = brain_centre(template)
    gauges = site_gauges(spec)
    participants = _participants(spec)
    truth_dir = out / "sourcedata" / "groundtruth"
    subject_seeds = [
        int(_stream(spec.seed, 3, n).integers(0, 2**31 - 1)) for n in range(len(participants))
    ]

    write_json(
        out / "dataset_description.json",
        {
            "Name": "symprep synthetic multi-site demo",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["symprep"],
            "GeneratedBy": [{"Name": "symprep demo-data", "Version": __version__}],
            "HowToAcknowledge": "Built from the MNI152 2009a template (Fonov et al. 2011) shipped with nilearn.",
        },
    )
    write_text(out / "README", _readme(spec))
    write_text(out / "participants.tsv", participants.to_csv(sep="\t", index=False))
    write_json(out / "participants.json", PARTICIPANTS_JSON)
    write_json(out / "task-rest_bold.json", {"TaskName": "rest"})  # TR differs across sites
    write_text(truth_dir / "sites.tsv", pd.DataFrame(gauges).to_csv(sep="\t", index=False))
    write_json(truth_dir / "sites.json", gauges)
    write_text(truth_dir / "network_regions.tsv", NETWORK_REGIONS.to_csv(sep="\t", index=False))
    corr = pd.DataFrame(
        network_correlation(), index=NETWORK_REGIONS.region, columns=NETWORK_REGIONS.region
    )
    write_text(truth_dir / "network_correlation.tsv", corr.to_csv(sep="\t"))
    corr_asd = pd.DataFrame(
        network_correlation("ASD"), index=NETWORK_REGIONS.region, columns=NETWORK_REGIONS.region
    )
    write_text(truth_dir / "network_correlation_ASD.tsv", corr_asd.to_csv(sep="\t"))
    write_json(
        truth_dir / "diagnosis_effect.json",
        {
            "centre_mm": DIAGNOSIS_CENTRE_MM,
            "sigma_mm": DIAGNOSIS_SIGMA_MM,
            "strength": DIAGNOSIS_STRENGTH,
            "description": "ASD subjects: template GM intensity moved towards CSF by strength * gaussian * GM",
            "connectivity": {
                "description": "ASD subjects: within-DMN correlation of the planted region "
                "signals scaled by (1 - fc_effect): network_correlation_ASD.tsv vs "
                "network_correlation.tsv",
                "fc_effect": DIAGNOSIS_FC_EFFECT,
            },
        },
    )
    write_json(truth_dir / "spec.json", {k: v for k, v in spec.__dict__.items()})

    site_of = {g["site"]: g for g in gauges}
    jobs = [
        (row, site_of[row.site], int(seed))
        for row, seed in zip(participants.itertuples(index=False), subject_seeds, strict=True)
    ]
    bar = tqdm(total=len(jobs), disable=not progress, desc="demo subjects", unit="subject")
    if n_jobs > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # no forked torch/BLAS thread state
        with ProcessPoolExecutor(
            min(n_jobs, len(jobs)), mp_context=context, initializer=_single_threaded
        ) as pool:
            futures = [
                pool.submit(_write_subject_job, out, spec, row._asdict(), gauge, seed)
                for row, gauge, seed in jobs
            ]
            for future in futures:
                future.result()
                bar.update()
    else:
        for row, gauge, seed in jobs:
            _write_subject(out, spec, template, centre, row, gauge, seed)
            bar.update()
    bar.close()
    logger.info("demo dataset with %d subjects written to %s", len(participants), out)
    return out


def _single_threaded() -> None:
    import torch

    torch.set_num_threads(1)


def _write_subject_job(out: Path, spec: DemoSpec, row: dict, gauge: dict, seed: int) -> None:
    """One subject in a worker process (loads the template there)."""
    from types import SimpleNamespace

    template = load_template(2 if spec.resolution >= 1.5 else 1)
    _write_subject(out, spec, template, brain_centre(template), SimpleNamespace(**row), gauge, seed)


def _write_subject(
    out: Path,
    spec: DemoSpec,
    template: Template,
    centre: np.ndarray,
    row: Any,
    gauge: dict[str, Any],
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    sub = row.participant_id
    truth = SubjectTruth(
        participant_id=sub,
        site=row.site,
        age=row.age,
        sex=row.sex,
        diagnosis=row.diagnosis,
        rotation=Rotation.random(random_state=rng).as_matrix(),
        translation=rng.uniform(-spec.max_translation_mm, spec.max_translation_mm, size=3),
        centre=centre,
        seed=seed,
    )
    velocity = velocity_field(rng, template, spec.warp_amplitude_mm)
    displacement = displacement_from_velocity(velocity, coarse_grid(template.t1w, 2))
    anatomy = subject_template_t1w(template, row.diagnosis)
    t1w, unposed = generate_t1w(truth, gauge, template, anatomy, displacement, rng)
    from pipeline.data.epi import motion_parameters

    motion = motion_parameters(rng, gauge["bold_volumes"], spec.motion_regime)
    between = (
        between_scan_motion(rng, truth.centre + truth.translation) if spec.epi_effects else None
    )
    bold, planted = generate_bold(
        truth, gauge, spec, template, displacement, motion, rng, t1w_to_bold=between
    )

    anat = out / sub / "anat"
    func = out / sub / "func"
    save_image(t1w, anat / f"{sub}_T1w.nii.gz")
    write_json(
        anat / f"{sub}_T1w.json",
        {
            "Manufacturer": gauge["manufacturer"],
            "MagneticFieldStrength": 3,
            "InstitutionName": gauge["site"],
            "MRAcquisitionType": "3D",
        },
    )
    save_image(bold, func / f"{sub}_task-rest_bold.nii.gz")
    write_json(
        func / f"{sub}_task-rest_bold.json",
        {
            "TaskName": "rest",
            "RepetitionTime": gauge["bold_tr"],
            "SliceTiming": planted.slice_times,
            "SliceEncodingDirection": "k",
            **(
                {
                    "PhaseEncodingDirection": gauge["phase_encoding_direction"],
                    "TotalReadoutTime": gauge["total_readout_time"],
                }
                if spec.epi_effects
                else {}
            ),
            "Manufacturer": gauge["manufacturer"],
            "InstitutionName": gauge["site"],
        },
    )
    gt = out / "sourcedata" / "groundtruth" / sub
    record = truth.as_json()
    record.update(
        {
            "gauge": gauge,
            "anatomy": {
                "velocity_field": f"{sub}_desc-velocity_field.nii.gz",
                "convention": "subject(x) = template(phi(x)), phi = exp(v) by scaling and squaring (6 steps)",
                "warp_amplitude_mm": spec.warp_amplitude_mm,
            },
            "bold": {
                "non_steady_state_volumes": DUMMY_SCANS,
                "repetition_time": gauge["bold_tr"],
                "n_volumes": gauge["bold_volumes"],
                "slice_order": gauge["slice_order"],
                "motion_regime": spec.motion_regime,
                "motion_convention": (
                    "desc-motion_timeseries.tsv: rigid map M_t from volume 0's head position to "
                    "volume t's, p -> R (p - c) + c + t (RAS mm, R = Rz Ry Rx), c = centre_mm"
                ),
                "motion_centre_mm": planted.motion_centre.round(6).tolist(),
                "t1w_to_bold_volume0": (np.eye(4) if between is None else between)
                .round(10)
                .tolist(),
                "t1w_to_bold_convention": (
                    "rigid RAS map from the head's position in the T1w to its position at BOLD "
                    "volume 0 (the subject moved between the scans)"
                ),
                "epi_effects": spec.epi_effects,
                "phase_encoding_direction": gauge["phase_encoding_direction"],
                "total_readout_time": gauge["total_readout_time"],
                "fieldmap": f"{sub}_space-MNI152NLin2009aSym_desc-susceptibility_fieldmap.nii.gz",
                "fieldmap_convention": (
                    "off-resonance in Hz at template points (moves with the head); a spin at "
                    "voxel y appears at y + sign * field * TotalReadoutTime voxels along the "
                    "phase-encoding axis"
                ),
                "dropout": f"{sub}_space-MNI152NLin2009aSym_desc-dropout_mask.nii.gz",
            },
        }
    )
    write_json(gt / f"{sub}_groundtruth.json", record)
    save_image(velocity, gt / f"{sub}_desc-velocity_field.nii.gz")
    save_image(unposed, gt / f"{sub}_space-MNI152NLin2009aSym_desc-unposed_T1w.nii.gz")
    write_text(
        gt / f"{sub}_task-rest_desc-motion_timeseries.tsv",
        motion.to_csv(sep="\t", index=False, float_format="%.8f"),
    )
    tpl_affine = template.t1w.affine
    save_image(
        nib.Nifti1Image(planted.fieldmap_hz.astype(np.float32), tpl_affine),
        gt / f"{sub}_space-MNI152NLin2009aSym_desc-susceptibility_fieldmap.nii.gz",
    )
    save_image(
        nib.Nifti1Image(planted.dropout.astype(np.float32), tpl_affine),
        gt / f"{sub}_space-MNI152NLin2009aSym_desc-dropout_mask.nii.gz",
    )
    write_text(
        gt / f"{sub}_task-rest_desc-physio_timeseries.tsv",
        planted.physiology.to_csv(sep="\t", index=False, float_format="%.6f"),
    )
    regions = pd.DataFrame(planted.region_signals, columns=NETWORK_REGIONS.region)
    write_text(
        gt / f"{sub}_task-rest_desc-regions_timeseries.tsv",
        regions.to_csv(sep="\t", index=False, float_format="%.6f"),
    )


def _readme(spec: DemoSpec) -> str:
    return (
        "symprep synthetic multi-site demo dataset\n"
        "==========================================\n\n"
        f"{spec.sites} sites x {spec.subjects_per_site} subjects, seed {spec.seed}, generated by "
        f"`symprep demo-data` (version {__version__}) from the MNI152 2009a symmetric template.\n"
        "Every subject has a head pose drawn uniformly from SO(3), a random smooth anatomical warp,\n"
        "and a site-specific intensity gauge, storage orientation, voxel size and field of view.\n"
        "ASD subjects carry a planted local atrophy and weaker default-mode connectivity.\n"
        "BOLD runs carry a planted network, head motion,\n"
        "slice timing, susceptibility dropout and distortion, respiratory and cardiac noise, drift\n"
        "and two non-steady-state volumes; sites differ in TR, volume count and slice order.\n"
        "Ground truth: sourcedata/groundtruth/.\n"
    )
