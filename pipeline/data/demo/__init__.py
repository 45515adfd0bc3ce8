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

The modules, by job: :mod:`._spec` (what to generate, the planted constants), :mod:`._grid`
(grids, interpolation, warps), :mod:`._sites` (site gauges and acquisitions; the nuisances as
:mod:`pipeline.symmetry` actions), :mod:`._anatomy` (atrophy, pose, T1w), :mod:`._bold` (the BOLD
run) and :mod:`._writer` (the dataset on disk). Head poses are :func:`pipeline.anat.synthetic.rigid_about`.
"""

from pipeline.data.demo._anatomy import (
    SubjectTruth,
    brain_centre,
    generate_t1w,
    planted_atrophy,
    sample_in_template,
    subject_template_t1w,
)
from pipeline.data.demo._bold import (
    BoldTruth,
    between_scan_motion,
    bold_grid,
    generate_bold,
    motion_matrix,
    network_correlation,
    network_signals,
    synthetic_bold_run,
)
from pipeline.data.demo._grid import (
    Displacement,
    coarse_grid,
    displacement_from_velocity,
    stored_grid,
    trilinear,
    velocity_field,
    voxel_world_coords,
    warp_points,
    world_to_voxel,
)
from pipeline.data.demo._sites import gauge_actions, noise_action, site_gauges
from pipeline.data.demo._spec import (
    DIAGNOSIS_CENTRE_MM,
    DIAGNOSIS_FC_EFFECT,
    DIAGNOSIS_SIGMA_MM,
    DIAGNOSIS_STRENGTH,
    DUMMY_SCANS,
    NETWORK_REGIONS,
    REGION_RADIUS_MM,
    SITE_ORIENTATIONS,
    TISSUE_T2STAR,
    DemoSpec,
)
from pipeline.data.demo._writer import PARTICIPANTS_JSON, make_demo_dataset

__all__ = [
    "DIAGNOSIS_CENTRE_MM",
    "DIAGNOSIS_FC_EFFECT",
    "DIAGNOSIS_SIGMA_MM",
    "DIAGNOSIS_STRENGTH",
    "DUMMY_SCANS",
    "NETWORK_REGIONS",
    "PARTICIPANTS_JSON",
    "REGION_RADIUS_MM",
    "SITE_ORIENTATIONS",
    "TISSUE_T2STAR",
    "BoldTruth",
    "DemoSpec",
    "Displacement",
    "SubjectTruth",
    "between_scan_motion",
    "bold_grid",
    "brain_centre",
    "coarse_grid",
    "displacement_from_velocity",
    "gauge_actions",
    "generate_bold",
    "generate_t1w",
    "make_demo_dataset",
    "motion_matrix",
    "network_correlation",
    "network_signals",
    "noise_action",
    "planted_atrophy",
    "sample_in_template",
    "site_gauges",
    "stored_grid",
    "subject_template_t1w",
    "synthetic_bold_run",
    "trilinear",
    "velocity_field",
    "voxel_world_coords",
    "warp_points",
    "world_to_voxel",
]
