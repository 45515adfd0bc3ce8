"""The demo dataset on disk: BIDS files, sidecars and the ground truth under
``sourcedata/groundtruth/`` (:func:`make_demo_dataset`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation
from tqdm.auto import tqdm

from pipeline import __version__
from pipeline.data.demo._anatomy import (
    SubjectTruth,
    brain_centre,
    generate_t1w,
    subject_template_t1w,
)
from pipeline.data.demo._bold import between_scan_motion, generate_bold, network_correlation
from pipeline.data.demo._grid import coarse_grid, displacement_from_velocity, velocity_field
from pipeline.data.demo._sites import site_gauges
from pipeline.data.demo._spec import (
    DIAGNOSIS_CENTRE_MM,
    DIAGNOSIS_FC_EFFECT,
    DIAGNOSIS_SIGMA_MM,
    DIAGNOSIS_STRENGTH,
    DUMMY_SCANS,
    NETWORK_REGIONS,
    DemoSpec,
    stream,
)
from pipeline.data.epi import motion_parameters
from pipeline.data.templates import Template, load_template
from pipeline.io import save_image, write_json, write_text

logger = logging.getLogger(__name__)


def _participants(spec: DemoSpec) -> pd.DataFrame:
    rows = []
    width = max(2, len(str(spec.sites * spec.subjects_per_site)))
    n = 0
    for s in range(spec.sites):
        rng = stream(spec.seed, 2, s)
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
        int(stream(spec.seed, 3, n).integers(0, 2**31 - 1)) for n in range(len(participants))
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
