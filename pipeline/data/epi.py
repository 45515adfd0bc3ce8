r"""EPI physics for the demo's BOLD runs: susceptibility dropout and distortion, physiological noise,
head-motion regimes and per-site acquisition schemes.

The demo's BOLD must look like BOLD, or the functional stage is only ever tested on an easy job.
What a gradient-echo EPI adds to a T2*-weighted image, and what we plant:

* **Susceptibility field.** A smooth off-resonance field :math:`\Delta B_0` (Hz) in the head's
  frame: a low-order background plus strong lobes next to the air–tissue boundaries (sinuses above
  the orbitofrontal cortex, ear canals below the temporal poles). It moves with the head.
* **Dropout.** Through-slice dephasing in the same places removes signal:
  :math:`S \leftarrow S\,(1 - d(x))` with :math:`d` up to 0.8.
* **Distortion.** Along the phase-encoding axis a spin at :math:`y` appears at
  :math:`y + \Delta B_0(y)\,T_{ro}\,\Delta_{pe}` (mm, with the total readout time :math:`T_{ro}` and
  the voxel size :math:`\Delta_{pe}` along that axis); the intensity is scaled by the Jacobian of
  that map (pile-up / stretching). The sign follows ``PhaseEncodingDirection`` (``j`` or ``j-``).
* **Physiological noise.** Respiration (0.3 Hz) and cardiac pulsation (1.1 Hz), aliased by the TR:
  a small global respiratory modulation and cardiac pulsation weighted by CSF. The respiratory
  off-resonance shift along the phase-encoding axis ("pseudo-motion") is left out on purpose: it
  moves the image without moving the head, so the recorded motion would no longer be the motion
  an estimator can see.

Everything is written to the ground-truth folder (the field map in Hz on the template grid, the
dropout map, and the parameters), so distortion correction and coregistration can be scored
against the truth. No library models EPI acquisition for synthetic data at this level (fMRI
simulators such as ``neuRosim`` or ``fmrisim`` plant activation, not susceptibility), so it is
written here, with the simplest forward model that has each effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: air–tissue boundaries (MNI mm) where susceptibility lobes and dropout are planted:
#: name → (centre, sigma mm, field Hz, dropout fraction)
SUSCEPTIBILITY_SOURCES: dict[str, tuple[tuple[float, float, float], float, float, float]] = {
    "orbitofrontal": ((0.0, 38.0, -24.0), 11.0, 50.0, 0.8),
    "left_temporal_pole": ((-40.0, 12.0, -36.0), 9.0, 35.0, 0.7),
    "right_temporal_pole": ((40.0, 12.0, -36.0), 9.0, 35.0, 0.7),
}
#: per-site acquisition scheme (cycled over sites): TR factor, volume-count factor, slice order,
#: phase-encoding direction, effective echo spacing (s; TotalReadoutTime = spacing × (N_pe − 1))
SITE_ACQUISITIONS: tuple[dict, ...] = (
    {"tr": 1.0, "volumes": 1.0, "slice_order": "interleaved", "pe": "j-", "echo_spacing": 4.5e-4},
    {"tr": 1.25, "volumes": 0.8, "slice_order": "ascending", "pe": "j", "echo_spacing": 4.0e-4},
    {"tr": 0.8, "volumes": 1.25, "slice_order": "descending", "pe": "j-", "echo_spacing": 5.0e-4},
)
MOTION_REGIMES = ("still", "drift", "spiky")
RESPIRATION_HZ = 0.3
CARDIAC_HZ = 1.1


# --------------------------------------------------------------------------- acquisition
def slice_timing(n_slices: int, tr: float, order: str) -> list[float]:
    """Slice acquisition times (s) for ``order`` in ``{"interleaved", "ascending", "descending"}``.

    ``interleaved`` is ascending with odd slices (0, 2, …) first, as Siemens' default.

    >>> slice_timing(4, 2.0, "descending")
    [1.5, 1.0, 0.5, 0.0]
    """
    if order == "interleaved":
        sequence = list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))
    elif order == "ascending":
        sequence = list(range(n_slices))
    elif order == "descending":
        sequence = list(range(n_slices))[::-1]
    else:
        raise ValueError(f"unknown slice order {order!r}")
    times = np.empty(n_slices)
    times[sequence] = np.arange(n_slices) * tr / n_slices
    return times.round(4).tolist()


# --------------------------------------------------------------------------- head motion
def motion_parameters(
    rng: np.random.Generator, n_volumes: int, regime: str = "spiky"
) -> pd.DataFrame:
    """Rigid head motion per volume in fMRIPrep's columns; volume 0 is the origin.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_volumes : int
    regime : {"still", "drift", "spiky"}, default="spiky"
        ``still``: a cooperative subject (random walk of 0.005 mm / 0.005° per volume);
        ``drift``: a slow random walk (0.04 mm / 0.04° per volume, about 0.5 mm in 100 volumes);
        ``spiky``: the drift plus four sudden moves of 0.3–1.5 mm and 0.3–1.5° (half of them
        return after 1–2 volumes, half stay: a jerk and a new position).

    Returns
    -------
    DataFrame
        ``trans_x/y/z`` (mm) and ``rot_x/y/z`` (rad), about the centre of the BOLD grid
        (:mod:`pipeline.func.motion`'s convention).
    """
    if regime not in MOTION_REGIMES:
        raise ValueError(f"motion regime must be one of {MOTION_REGIMES}, got {regime!r}")
    scale = {"still": 0.005, "drift": 0.04, "spiky": 0.04}[regime]
    steps = rng.normal(0.0, 1.0, size=(n_volumes, 6)) * scale / np.sqrt(3.0)
    steps[:, 3:] = np.radians(steps[:, 3:])
    steps[0] = 0.0
    params = np.cumsum(steps, axis=0)
    if regime == "spiky" and n_volumes > 8:
        times = rng.choice(np.arange(4, n_volumes - 2), size=min(4, n_volumes - 6), replace=False)
        for k, t in enumerate(sorted(times)):
            direction = rng.normal(size=3)
            axis = rng.normal(size=3)
            move = np.concatenate(
                [
                    rng.uniform(0.3, 1.5) * direction / np.linalg.norm(direction),
                    np.radians(rng.uniform(0.3, 1.5)) * axis / np.linalg.norm(axis),
                ]
            )
            stop = t + int(rng.integers(1, 3)) if k % 2 == 0 else n_volumes
            params[t:stop] += move
    return pd.DataFrame(
        params, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    )


# --------------------------------------------------------------------------- susceptibility
def _lobes(world_mm: np.ndarray, column: int) -> np.ndarray:
    out = np.zeros(world_mm.shape[1:])
    for centre, sigma, field_hz, dropout in SUSCEPTIBILITY_SOURCES.values():
        weight = (field_hz, dropout)[column]
        r2 = sum((world_mm[k] - centre[k]) ** 2 for k in range(3))
        out += weight * np.exp(-r2 / (2.0 * sigma**2))
    return out


def fieldmap_hz(world_mm: np.ndarray, background: Sequence[float] = (4.0, -6.0, 8.0)) -> np.ndarray:
    """Off-resonance (Hz) at template-space points ``(3, ...)``: lobes plus a linear background."""
    linear = sum(b * world_mm[k] / 80.0 for k, b in enumerate(background))
    return _lobes(world_mm, 0) + linear


def dropout_fraction(world_mm: np.ndarray) -> np.ndarray:
    """Fraction of signal lost to through-slice dephasing at template-space points (0 to 0.8)."""
    return np.clip(_lobes(world_mm, 1), 0.0, 0.8)


@dataclass(frozen=True)
class PhaseEncoding:
    """The phase-encoding axis of a stored grid and the distortion scale.

    Attributes
    ----------
    axis : int
        Voxel axis of the stored array (BIDS ``i``/``j``/``k`` = 0/1/2).
    sign : float
        +1 for ``j``, −1 for ``j-``.
    readout_s : float
        ``TotalReadoutTime`` in seconds.
    """

    axis: int
    sign: float
    readout_s: float

    @classmethod
    def from_bids(cls, direction: str, readout_s: float) -> PhaseEncoding:
        """From a ``PhaseEncodingDirection`` (``"j-"``) and a ``TotalReadoutTime``."""
        return cls("ijk".index(direction[0]), -1.0 if direction.endswith("-") else 1.0, readout_s)

    def shift_voxels(self, field_hz: np.ndarray) -> np.ndarray:
        """Displacement along the axis, in voxels, of a spin at off-resonance ``field_hz``."""
        return self.sign * np.asarray(field_hz) * self.readout_s


def distort(volume: np.ndarray, shift_vox: np.ndarray, axis: int) -> np.ndarray:
    r"""The image as EPI sees it: :math:`I_d(y) = I(y - s(y))\,(1 - \partial_y s)` along ``axis``.

    ``shift_vox`` is the displacement (voxels) of the spins, sampled on the same grid; the
    first-order pull-back keeps the total signal (pile-up where :math:`s` decreases).
    """
    from scipy import ndimage

    coords = np.indices(volume.shape, dtype=np.float64)
    coords[axis] -= shift_vox
    warped = ndimage.map_coordinates(volume, coords, order=1, mode="nearest")
    jac = 1.0 - np.gradient(shift_vox, axis=axis)
    return (warped * np.clip(jac, 0.2, 3.0)).astype(np.float32)


# --------------------------------------------------------------------------- physiology
@dataclass(frozen=True)
class Physiology:
    """Respiratory and cardiac traces of one run (arbitrary units, zero mean, unit sd).

    Attributes
    ----------
    respiration, cardiac : ndarray of shape (T,)
        The traces sampled at the volume times (aliased by the TR, as they are in real data).
    """

    respiration: np.ndarray
    cardiac: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, times_s: np.ndarray) -> Physiology:
        """Quasi-periodic traces with slowly wandering rates (±10%)."""
        out = []
        for rate in (RESPIRATION_HZ, CARDIAC_HZ):
            wander = np.cumsum(rng.normal(0.0, 0.02 * rate, size=times_s.size))
            phase = 2 * np.pi * rate * times_s + wander + rng.uniform(0, 2 * np.pi)
            trace = np.sin(phase) + 0.3 * np.sin(2 * phase)
            out.append((trace - trace.mean()) / (trace.std() + 1e-12))
        return cls(*out)

    def as_frame(self) -> pd.DataFrame:
        """The traces as a table (``respiratory``, ``cardiac``)."""
        return pd.DataFrame({"respiratory": self.respiration, "cardiac": self.cardiac})


#: physiological noise amplitudes: global respiratory modulation, cardiac pulsation in CSF
RESPIRATORY_GAIN = 0.004
CARDIAC_GAIN = 0.02
