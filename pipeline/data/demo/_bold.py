"""The demo's BOLD run: planted network signals, head motion, EPI effects and the site's gauge."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from pipeline.data import epi
from pipeline.data.demo._anatomy import SubjectTruth, brain_centre, sample_in_template
from pipeline.data.demo._grid import (
    Displacement,
    coarse_grid,
    displacement_from_velocity,
    set_scanner_codes,
    stored_grid,
    trilinear,
    velocity_field,
    voxel_world_coords,
    world_to_voxel,
)
from pipeline.data.demo._sites import noise_action, site_gauges
from pipeline.data.demo._spec import (
    DIAGNOSIS_FC_EFFECT,
    DUMMY_SCANS,
    NETWORK_REGIONS,
    REGION_RADIUS_MM,
    TISSUE_T2STAR,
    DemoSpec,
)
from pipeline.data.templates import Template, load_template
from pipeline.func.motion import MOTION_COLUMNS, grid_centre, params_to_matrix
from pipeline.symmetry import BiasField, Gain


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
    return params_to_matrix([getattr(row, c) for c in MOTION_COLUMNS], centre)


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
    bias = BiasField(tuple(gauge["bias_coefficients"])).field_at(world)
    gain = Gain(gauge["bold_gain"])
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
        vol = gain(vol * (1.0 + slope * t / max(n_vol - 1, 1)) * bias)
        data[..., t] = noise_action(noise_sigma * gauge["bold_gain"], rng)(vol)
    img = nib.Nifti1Image(data, affine)
    set_scanner_codes(img)
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
    if regime not in epi.MOTION_REGIMES:
        raise ValueError(f"motion regime must be one of {epi.MOTION_REGIMES}, got {regime!r}")
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
    rng = np.random.default_rng([seed, 8, epi.MOTION_REGIMES.index(regime)])
    motion = epi.motion_parameters(rng, gauge["bold_volumes"], regime)
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
