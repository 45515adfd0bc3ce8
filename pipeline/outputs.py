"""The one declaration of every derivative symprep writes.

Each stage's outputs are declared here once, as a key mapped to BIDS entities, suffix, extension and
a description, in the spirit of fMRIPrep's ``io_spec.json``. Everything that names or finds a
derivative reads this module: the Nipype sinks, the expected-path checks at the end of a stage,
the report collector, the group feature readers, the invariance audit and the Snakemake rules.

Names carry every entity of their source file: a BOLD run ``sub-01_ses-2_task-rest_run-3_bold``
gives ``sub-01/ses-2/func/sub-01_ses-2_task-rest_run-3_space-…_desc-preproc_bold.nii.gz``, so
several sessions and runs never overwrite each other.

Anatomy is one reference per subject (as fMRIPrep's default): the T1w of the first session and
run is processed, and its derivatives live at the subject level (``sub-X/anat/``, no ``ses``/``run``
entities; ``acq``, ``ce`` and ``rec`` are kept). Every session's functional runs use it.

>>> spec = FUNC_OUTPUTS["confounds"]
>>> output_path(spec, "out", {"sub": "01", "ses": "2", "task": "rest", "run": "3"}).as_posix()
'out/sub-01/ses-2/func/sub-01_ses-2_task-rest_run-3_desc-confounds_timeseries.tsv'
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.bids_names import bids_name, clean_label, parse_name
from pipeline.data.templates import TEMPLATE_NAME

#: the default template of ``space-`` outputs (the one symprep ships offline); a run's own is
#: ``anat.template`` (``--output-spaces``), filled in wherever a declaration says :data:`SPACE`
TEMPLATE = TEMPLATE_NAME
#: stands for the run's template in declared entities (``space``, ``from``/``to`` of transforms)
SPACE = "<space>"
#: entities of a raw file that its derivatives keep
SOURCE_ENTITIES = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo")
#: entities of the T1w kept by the (subject-level) anatomical derivatives
ANAT_SOURCE_ENTITIES = ("sub", "acq", "ce", "rec")


@dataclass(frozen=True)
class OutputSpec:
    """One declared derivative.

    Attributes
    ----------
    key : str
        Name used by stages, reports and readers (``"std_gm_probseg"``).
    datatype : str
        BIDS datatype folder (``anat``, ``func``).
    suffix, extension : str
        BIDS suffix and extension.
    entities : mapping
        Fixed entities (``desc``, ``label``, ``from``, ``to``, ``mode``, ``meas`` …).
    std : bool
        In template space: ``space`` and ``res`` are added.
    variable : tuple of str
        Entities filled per file (``atlas``, ``desc``, ``meas`` of the ROI outputs).
    description : str
        The sidecar's ``Description``.
    """

    key: str
    datatype: str
    suffix: str
    extension: str = ".nii.gz"
    entities: Mapping[str, str] = field(default_factory=dict)
    std: bool = False
    variable: tuple[str, ...] = ()
    description: str = ""


def _spec(key: str, datatype: str, suffix: str, description: str, **kw) -> OutputSpec:
    entities = {k.rstrip("_"): v for k, v in kw.pop("entities", {}).items()}
    return OutputSpec(key, datatype, suffix, description=description, entities=entities, **kw)


_XFM_NOTE = "ANTs composite transform (ITK HDF5)"
ANAT_OUTPUTS: dict[str, OutputSpec] = {
    s.key: s
    for s in (
        _spec(
            "t1w_preproc",
            "anat",
            "T1w",
            "T1w, header-sanitised, reoriented to RAS and N4 bias-corrected (native space).",
            entities={"desc": "preproc"},
        ),
        _spec(
            "t1w_mask",
            "anat",
            "mask",
            "Brain mask: the template mask pulled back through the inverse transform, refined "
            "with the subject's own tissue segmentation and morphology (antsBrainExtraction-like).",
            entities={"desc": "brain"},
        ),
        _spec(
            "t1w_dseg",
            "anat",
            "dseg",
            "Tissue segmentation (1 GM, 2 WM, 3 CSF; fMRIPrep's labels), the most probable tissue "
            "of the subject's own segmentation.",
        ),
        *(
            _spec(
                f"t1w_{t.lower()}_probseg",
                "anat",
                "probseg",
                f"{t} probability in the subject's space (see Method in this sidecar).",
                entities={"label": t},
            )
            for t in ("GM", "WM", "CSF")
        ),
        _spec(
            "std_t1w",
            "anat",
            "T1w",
            "Bias-corrected T1w resampled to the template.",
            entities={"desc": "preproc"},
            std=True,
        ),
        _spec(
            "std_mask",
            "anat",
            "mask",
            "Brain mask resampled to the template (linear, thresholded at 0.5).",
            entities={"desc": "brain"},
            std=True,
        ),
        *(
            _spec(
                f"std_{t.lower()}_probseg",
                "anat",
                "probseg",
                f"{t} probability of the subject's segmentation, warped to the template.",
                entities={"label": t},
                std=True,
            )
            for t in ("GM", "WM", "CSF")
        ),
        _spec(
            "std_gm_modulated",
            "anat",
            "probseg",
            "GM probability warped to the template and multiplied by the Jacobian determinant "
            "of the template -> subject map (tissue volume preserved; for VBM).",
            entities={"label": "GM", "desc": "modulated"},
            std=True,
        ),
        _spec(
            "anat2std_xfm",
            "anat",
            "xfm",
            f"{_XFM_NOTE} mapping template points to T1w points; use with "
            "ants.apply_transforms(fixed=template, moving=T1w-space image).",
            extension=".h5",
            entities={"from": "T1w", "to": SPACE, "mode": "image"},
        ),
        _spec(
            "std2anat_xfm",
            "anat",
            "xfm",
            f"{_XFM_NOTE} mapping T1w points to template points; use with "
            "ants.apply_transforms(fixed=T1w, moving=template-space image).",
            extension=".h5",
            entities={"from": SPACE, "to": "T1w", "mode": "image"},
        ),
        _spec(
            "qc_tsv",
            "anat",
            "qc",
            "Registration QC metrics (see pipeline.anat.qc).",
            extension=".tsv",
            entities={"desc": "registration"},
        ),
        _spec(
            "qc_json",
            "anat",
            "qc",
            "Registration QC record: metrics, thresholds, verdict.",
            extension=".json",
            entities={"desc": "registration"},
        ),
    )
}

FUNC_OUTPUTS: dict[str, OutputSpec] = {
    s.key: s
    for s in (
        _spec(
            "bold_std",
            "func",
            "bold",
            "BOLD with every volume (non-steady-state ones flagged in the confounds), head-motion "
            "and slice-timing corrected, resampled once to the template (motion, coregistration "
            "and T1w->template composed), unscaled.",
            entities={"desc": "preproc"},
            std=True,
        ),
        _spec(
            "bold_scaled",
            "func",
            "bold",
            "desc-preproc BOLD with the temporal gauge applied (see Parameters.scaling) and the "
            "non-steady-state volumes removed: the input of the ROI features.",
            entities={"desc": "scaled"},
            std=True,
        ),
        _spec(
            "bold_mask",
            "func",
            "mask",
            "BOLD brain mask: template brain mask within the BOLD field of view and signal.",
            entities={"desc": "brain"},
            std=True,
        ),
        _spec(
            "boldref",
            "func",
            "boldref",
            "Temporal mean of the template-space BOLD (steady-state volumes).",
            std=True,
        ),
        _spec(
            "tsnr",
            "func",
            "boldmap",
            "Temporal SNR (mean / standard deviation over time) of the preprocessed BOLD.",
            entities={"desc": "tsnr"},
            std=True,
        ),
        _spec(
            "confounds",
            "func",
            "timeseries",
            "Nuisance regressors, fMRIPrep column names (see pipeline.func.confounds).",
            extension=".tsv",
            entities={"desc": "confounds"},
        ),
        _spec(
            "carpet",
            "func",
            "timeseries",
            "Carpet-plot data: rows are volumes, columns sampled brain voxels "
            "({tissue}_{index}, z-scored over time), grouped by tissue.",
            extension=".tsv",
            entities={"desc": "carpet"},
        ),
        _spec(
            "coreg_xfm",
            "func",
            "xfm",
            "ITK affine, T1w points -> BOLD-reference points (ANTs convention: resamples "
            "BOLD-reference images onto the T1w grid).",
            extension=".txt",
            entities={"from": "boldref", "to": "T1w", "mode": "image", "desc": "coreg"},
        ),
        _spec(
            "hmc_xfm",
            "func",
            "xfm",
            "Head-motion transforms, one ITK affine per volume (LPS), each mapping BOLD-reference "
            "points to the points of that volume (fMRIPrep's from-orig_to-boldref layout).",
            extension=".txt",
            entities={"from": "orig", "to": "boldref", "mode": "image", "desc": "hmc"},
        ),
        _spec(
            "qc_tsv",
            "func",
            "qc",
            "Functional QC: motion, outliers, tSNR, coregistration metrics.",
            extension=".tsv",
            entities={"desc": "func"},
        ),
        _spec(
            "qc_json",
            "func",
            "qc",
            "Functional QC record.",
            extension=".json",
            entities={"desc": "func"},
        ),
    )
}

#: per-atlas (× denoising strategy × measure) outputs of the functional stage
ROI_OUTPUTS: dict[str, OutputSpec] = {
    s.key: s
    for s in (
        _spec(
            "timeseries",
            "func",
            "timeseries",
            "Denoised ROI time series (atlas and denoising strategy in the entities).",
            extension=".tsv",
            entities={"space": SPACE},
            variable=("atlas", "desc"),
        ),
        _spec(
            "relmat",
            "func",
            "relmat",
            "Connectivity matrix of the denoised ROI series.",
            extension=".tsv",
            entities={"space": SPACE},
            variable=("atlas", "meas", "desc"),
        ),
        _spec(
            "spectrum",
            "func",
            "spectrum",
            "Amplitude spectra of the motion/CompCor-cleaned, unfiltered ROI series "
            "(exactly invariant to circular time shifts).",
            extension=".tsv",
            entities={"space": SPACE, "desc": "amplitude"},
            variable=("atlas",),
        ),
        _spec(
            "alff",
            "func",
            "features",
            "ALFF and fALFF per ROI.",
            extension=".tsv",
            entities={"space": SPACE, "desc": "alff"},
            variable=("atlas",),
        ),
    )
}

#: every stage's declared outputs, by stage name
STAGE_OUTPUTS: dict[str, dict[str, OutputSpec]] = {
    "anat": ANAT_OUTPUTS,
    "func": {**FUNC_OUTPUTS, **{f"roi.{k}": v for k, v in ROI_OUTPUTS.items()}},
}


def spatial_reference(space: str, voxel_mm: float) -> str:
    """The sidecar's ``SpatialReference`` of a template-space output: the template and its origin.

    >>> spatial_reference("MNI152NLin2009aSym", 3.0)
    'MNI152NLin2009aSym (nilearn), 3 mm'
    """
    origin = "nilearn" if space == TEMPLATE else "TemplateFlow"
    return f"{space} ({origin}), {voxel_mm:g} mm"


def space_of(path: str | os.PathLike[str], default: str | None = None) -> str:
    """The template a derivative is in: its ``space`` entity (or a transform's ``to``).

    ``default`` is returned for a name without one (a work-directory file); without a default
    that is a ValueError.

    >>> space_of("sub-01_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz")
    'MNI152NLin6Asym'
    >>> space_of("std_mask.nii.gz", default=TEMPLATE)
    'MNI152NLin2009aSym'
    """
    try:
        entities, _, _ = parse_name(Path(path).name)
    except ValueError:
        entities = {}
    space = entities.get("space") or entities.get("to") or default
    if not space:
        raise ValueError(f"{Path(path).name} has no space entity")
    return space


def res_label(resolution: float) -> str:
    """BIDS ``res`` label of a voxel size: ``3`` for 3.0 mm, ``2p5`` for 2.5 mm.

    >>> res_label(2.0), res_label(2.5)
    ('2', '2p5')
    """
    return f"{resolution:g}".replace(".", "p")


def source_entities(path: str | os.PathLike[str], keep: Iterable[str] = SOURCE_ENTITIES) -> dict:
    """The entities of a raw BIDS file that its derivatives carry.

    >>> source_entities("/d/sub-01/ses-2/func/sub-01_ses-2_task-rest_acq-mb_run-1_bold.nii.gz")
    {'sub': '01', 'ses': '2', 'task': 'rest', 'acq': 'mb', 'run': '1'}
    """
    entities, _, _ = parse_name(Path(path).name)
    keep = tuple(keep)
    return {k: v for k, v in entities.items() if k in keep}


def anat_source(t1w: str | os.PathLike[str]) -> dict:
    """Entities of a T1w that its (subject-level) anatomical derivatives carry."""
    return source_entities(t1w, ANAT_SOURCE_ENTITIES)


def output_path(
    spec: OutputSpec,
    output_dir: str | os.PathLike[str],
    source: Mapping[str, str],
    *,
    space: str = TEMPLATE,
    res: str | int | float | None = None,
    extension: str | None = None,
    **values: str,
) -> Path:
    """Path of one declared output of one source file.

    Parameters
    ----------
    spec : OutputSpec
    output_dir : path-like
        Root of the derivatives dataset.
    source : mapping
        Entities of the source (``sub`` required; from :func:`source_entities`).
    space : str, default TEMPLATE
        Template of ``std`` outputs and of declared :data:`SPACE` entities.
    res : optional
        Resolution label of ``std`` outputs.
    extension : str, optional
        Overrides the declared one (never needed by the stages).
    **values
        The spec's ``variable`` entities.
    """
    missing = [v for v in spec.variable if v not in values]
    if missing:
        raise ValueError(f"output {spec.key!r} needs entities {missing}")
    extra = set(values) - set(spec.variable)
    if extra:
        raise ValueError(f"output {spec.key!r} has no variable entities {sorted(extra)}")
    sub = clean_label(source["sub"])
    entities = {k: v for k, v in source.items() if k != "sub"}
    if spec.datatype == "anat":
        entities = {k: v for k, v in entities.items() if k in ANAT_SOURCE_ENTITIES}
    if spec.std:
        entities["space"] = space
        if res is not None:
            entities["res"] = res if isinstance(res, str) else res_label(float(res))
    entities.update({k: space if v == SPACE else v for k, v in spec.entities.items()})
    entities.update(values)
    folder = Path(output_dir) / f"sub-{sub}"
    if "ses" in entities:
        folder = folder / f"ses-{entities['ses']}"
    return (
        folder
        / spec.datatype
        / bids_name(spec.suffix, extension or spec.extension, sub=sub, **entities)
    )


def matches(spec: OutputSpec, path: str | os.PathLike[str], **filters: str | None) -> bool:
    """Whether a file name is an instance of ``spec`` (and has the ``filters`` entity values).

    A filter value of None asks for the entity to be absent.
    """
    try:
        entities, suffix, ext = parse_name(Path(path).name)
    except ValueError:
        return False
    if suffix != spec.suffix or ext != spec.extension:
        return False
    if any(
        (k not in entities) if v == SPACE else entities.get(k) != v
        for k, v in spec.entities.items()
    ):
        return False
    if (spec.std or "space" in spec.entities) != ("space" in entities):
        return False
    allowed = set(SOURCE_ENTITIES) | set(spec.entities) | set(spec.variable)
    if spec.std:
        allowed |= {"space", "res"}
    if set(entities) - allowed:
        return False
    return all(entities.get(k) == (None if v is None else str(v)) for k, v in filters.items())


def find_outputs(
    spec: OutputSpec, output_dir: str | os.PathLike[str], subject: str, **filters: str | None
) -> list[Path]:
    """Every existing instance of ``spec`` for ``subject`` (all sessions and runs), sorted.

    ``filters`` select entity values (``task="rest"``, ``atlas="power2011"``, ``res="2"``).
    """
    sub = clean_label(subject)
    root = Path(output_dir) / f"sub-{sub}"
    folders = [root / spec.datatype, *sorted(root.glob(f"ses-*/{spec.datatype}"))]
    hits = [
        p
        for folder in folders
        if folder.is_dir()
        for p in folder.glob(f"sub-{sub}_*{spec.suffix}{spec.extension}")
        if not p.name.startswith(".") and matches(spec, p, **filters)
    ]
    return sorted(hits)


def find_output(
    spec: OutputSpec, output_dir: str | os.PathLike[str], subject: str, **filters: str | None
) -> Path | None:
    """The first instance of ``spec`` for ``subject`` (see :func:`find_outputs`), or None."""
    hits = find_outputs(spec, output_dir, subject, **filters)
    return hits[0] if hits else None


def run_label(source: Mapping[str, str]) -> str:
    """Short name of a run from its entities, for keys and work folders.

    >>> run_label({"sub": "01", "ses": "2", "task": "rest", "run": "1"})
    'ses-2_task-rest_run-1'
    """
    return "_".join(f"{k}-{source[k]}" for k in SOURCE_ENTITIES[1:] if k in source)


# --------------------------------------------------------------------------- records
#: success record of a subject's participant stages, relative to OUTPUT_DIR (Snakemake's target)
STATUS_RECORD = "logs/sub-{subject}_participant.json"
#: failure record of a subject, relative to OUTPUT_DIR
FAILURE_RECORD = "logs/sub-{subject}_failure.json"


def output_dir_of(record: str | os.PathLike[str]) -> Path:
    """The ``OUTPUT_DIR`` of a status or failure record path (inverse of :func:`status_path`)."""
    return Path(record).parents[len(Path(STATUS_RECORD).parts) - 1]


def status_path(output_dir: str | os.PathLike[str], subject: str) -> Path:
    """Success record of a subject's participant stages (the participant rule's target)."""
    return Path(output_dir) / STATUS_RECORD.format(subject=clean_label(subject))


def failure_path(output_dir: str | os.PathLike[str], subject: str) -> Path:
    """Failure record of a subject."""
    return Path(output_dir) / FAILURE_RECORD.format(subject=clean_label(subject))


def report_path(output_dir: str | os.PathLike[str], subject: str) -> Path:
    """Per-subject HTML report."""
    return Path(output_dir) / f"sub-{clean_label(subject)}.html"
