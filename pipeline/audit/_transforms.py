r"""Random elements of the nuisance group applied to a subject's raw inputs.

One audit transform :math:`g = (T, \kappa, o, k)` combines

- a head pose :math:`T(p) = R\,(p - c) + c + t` with :math:`R` Haar-uniform on :math:`SO(3)`,
  :math:`c` the world centre of the T1w grid and :math:`t` a translation (mm), written into the
  header (``pose_mode="header"``: exact, the head moved in the scanner) or resampled into the
  voxels (``"resample"``);
- an intensity gauge :math:`\kappa`: gain, power-law contrast :math:`I \mapsto m (I/m)^\gamma`,
  smooth multiplicative bias field, Rician noise;
- a header orientation change :math:`o` (axis order and directions, world content unchanged);
- for BOLD, a circular shift :math:`k` of the volumes' order (off by default: dummy-scan removal
  and motion references are not shift-equivariant).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.io import save_image, write_json
from pipeline.symmetry import (
    BiasField,
    Gain,
    HeaderPose,
    MonotoneContrast,
    RicianNoise,
    TimeShift,
    random_rotations,
    reorient_image,
    rotate_image,
    rotation_angle,
)

__all__ = [
    "AuditTransform",
    "draw_transforms",
    "transform_t1w",
    "transform_bold",
    "write_transformed_dataset",
]

ORIENTATIONS = ("RAS", "LPS", "LAS", "PIR", "ASR", "SLP", "IRA")


@dataclass
class AuditTransform:
    """One random group element (see the module docstring); ``name`` labels it in tables."""

    name: str
    rotation: list[list[float]] = field(default_factory=lambda: np.eye(3).tolist())
    translation_mm: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    gain: float = 1.0
    gamma: float = 1.0
    bias_coefficients: list[float] = field(default_factory=lambda: [0.0] * 9)
    noise_fraction: float = 0.0
    orientation: str | None = None
    time_shift: int = 0
    pose_mode: str = "header"
    seed: int = 0

    @property
    def rotation_deg(self) -> float:
        return float(np.degrees(rotation_angle(np.asarray(self.rotation))))

    def summary(self) -> dict[str, float | str | int]:
        """Scalar description for residual tables."""
        return {
            "transform": self.name,
            "rotation_deg": round(self.rotation_deg, 2),
            "translation_mm": round(float(np.linalg.norm(self.translation_mm)), 2),
            "gain": round(self.gain, 4),
            "gamma": round(self.gamma, 4),
            "bias_max_abs": round(float(np.abs(self.bias_coefficients).max()), 4),
            "noise_fraction": round(self.noise_fraction, 4),
            "orientation": self.orientation or "",
            "time_shift": self.time_shift,
        }


def draw_transforms(
    n: int,
    seed: int = 0,
    *,
    max_translation_mm: float = 15.0,
    pose: bool = True,
    gauge: bool = True,
    orientation: bool = True,
    time_shifts: bool = False,
    n_volumes: int | None = None,
    pose_mode: str = "header",
) -> list[AuditTransform]:
    """``n`` random transforms, reproducible from ``seed``; each part can be switched off."""
    if pose_mode not in ("header", "resample"):
        raise ValueError(f"pose_mode must be 'header' or 'resample'; got {pose_mode!r}")
    rng = np.random.default_rng(seed)
    rotations = random_rotations(n, rng)
    out = []
    for i in range(n):
        t = rng.uniform(-1, 1, 3)
        t = t / max(np.linalg.norm(t), 1e-9) * rng.uniform(0, max_translation_mm)
        tr = AuditTransform(
            name=f"g{i + 1:02d}", pose_mode=pose_mode, seed=int(rng.integers(2**31))
        )
        if pose:
            tr.rotation, tr.translation_mm = rotations[i].tolist(), t.round(3).tolist()
        if gauge:
            tr.gain = float(rng.uniform(0.5, 2.0))
            tr.gamma = float(rng.uniform(0.75, 1.33))
            tr.bias_coefficients = rng.normal(0.0, 0.1, 9).round(4).tolist()
            tr.noise_fraction = float(rng.uniform(0.0, 0.02))
        if orientation:
            tr.orientation = str(rng.choice(ORIENTATIONS))
        if time_shifts and n_volumes:
            tr.time_shift = int(rng.integers(1, n_volumes))
        out.append(tr)
    return out


def _pose(img: nib.spatialimages.SpatialImage, tr: AuditTransform) -> HeaderPose:
    A = img.affine
    c = A[:3, :3] @ ((np.asarray(img.shape[:3]) - 1) / 2) + A[:3, 3]
    R = np.asarray(tr.rotation)
    return HeaderPose(R, tuple(c + np.asarray(tr.translation_mm) - R @ c))


def _gauge_array(data: np.ndarray, zooms, tr: AuditTransform, reference: float) -> np.ndarray:
    out = MonotoneContrast(tr.gamma, reference)(data)
    out = BiasField(tuple(tr.bias_coefficients), tuple(float(z) for z in zooms[:3]))(out)
    if tr.noise_fraction > 0:
        out = RicianNoise(tr.noise_fraction * reference, tr.seed)(out)
    return Gain(tr.gain)(out)


def transform_t1w(img: nib.spatialimages.SpatialImage, tr: AuditTransform) -> nib.Nifti1Image:
    """The T1w seen under ``tr``: gauge on the voxels, then pose, then header orientation."""
    data = np.asarray(img.get_fdata(), dtype=np.float64)
    reference = float(np.percentile(data[data > 0], 99)) if (data > 0).any() else 1.0
    data = _gauge_array(data, img.header.get_zooms(), tr, reference)
    out = nib.Nifti1Image(data.astype(np.float32), img.affine, img.header.copy())
    out.header.set_data_dtype(np.float32)
    pose = _pose(img, tr)
    if tr.pose_mode == "header":
        out = pose(out)
    else:  # rotate the content about the centre, keep the grid: T ∘ x
        A = pose.homogeneous
        c = img.affine[:3, :3] @ ((np.asarray(img.shape[:3]) - 1) / 2) + img.affine[:3, 3]
        moved = rotate_image(out, A[:3, :3], center=c)
        shift = np.eye(4)
        shift[:3, 3] = np.asarray(tr.translation_mm)
        out = nib.Nifti1Image(moved.get_fdata(dtype=np.float32), shift @ moved.affine, out.header)
    return reorient_image(out, tr.orientation) if tr.orientation else out


def transform_bold(
    img: nib.spatialimages.SpatialImage, tr: AuditTransform, t1w: nib.spatialimages.SpatialImage
) -> nib.Nifti1Image:
    """The BOLD run under ``tr``: the T1w's head pose (header), gain, circular time shift,
    orientation. The pose is the T1w's (same head), so the BOLD is always moved in the header."""
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    if tr.time_shift:
        data = TimeShift(tr.time_shift)(data)
    out = nib.Nifti1Image(Gain(tr.gain)(data), img.affine, img.header.copy())
    out = _pose(t1w, tr)(out)
    return reorient_image(out, tr.orientation) if tr.orientation else out


def write_transformed_dataset(
    bids_dir: Path, subject: str, t1w: Path, bold: list[Path], tr: AuditTransform, out: Path
) -> Path:
    """A one-subject BIDS dataset at ``out`` whose inputs are the subject's under ``tr``."""
    bids_dir, out = Path(bids_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("dataset_description.json", "participants.tsv", "participants.json"):
        if (bids_dir / name).is_file():
            shutil.copyfile(bids_dir / name, out / name)
    for sidecar in bids_dir.glob("*.json"):
        if not (out / sidecar.name).exists():
            shutil.copyfile(sidecar, out / sidecar.name)
    t1_img = nib.load(t1w)
    dest = out / Path(t1w).relative_to(bids_dir)
    save_image(transform_t1w(t1_img, tr), dest)
    for f in [*(Path(t1w).parent.glob("*.json"))]:
        shutil.copyfile(f, out / f.relative_to(bids_dir))
    for run in bold:
        save_image(transform_bold(nib.load(run), tr, t1_img), out / Path(run).relative_to(bids_dir))
        side = Path(str(run).replace(".nii.gz", ".json"))
        if side.is_file():
            shutil.copyfile(side, out / side.relative_to(bids_dir))
    write_json(out / "code" / "audit_transform.json", asdict(tr))
    return out
