"""The functional stage as a Nipype workflow: BOLD → MNI152NLin2009aSym, confounds, connectivity.

``init_func_wf`` (processing) and ``init_ds_func_wf`` (derivative sinks) are niworkflows-style
builders; :func:`run_func_stage` validates the inputs, assembles and runs both for one BOLD run of
one subject, after that subject's anatomical stage.

validate → non-steady-state volumes → head motion (reference, six parameters) → slice timing →
BOLD→T1w coregistration → one-shot resampling to the template (motion ∘ coregistration ∘
T1w→template, one interpolation) → confounds → temporal gauge → denoising presets → ROI series,
connectivity, spectral features → QC.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from pipeline.bids_names import clean_label, derivative_path
from pipeline.errors import StageError
from pipeline.func.options import FuncOptions
from pipeline.workflows._execute import run_workflow
from pipeline.workflows.func_interfaces import (
    BoldQC,
    Confounds,
    Coregister,
    FuncDataSink,
    FuncDataSinkMany,
    HeadMotion,
    OneShotResample,
    RoiConnectivity,
    SliceTimingCorrection,
    TemporalGauge,
    ValidateBold,
)

logger = logging.getLogger(__name__)

TEMPLATE = "MNI152NLin2009aSym"
_INPUT_FIELDS = [
    "bold",
    "t1w_preproc",
    "t1w_mask",
    "std_mask",
    "std_gm",
    "std_wm",
    "std_csf",
    "anat2std_xfm",
]
#: single-file outputs: outputnode field → BIDS entities (``space``/``res`` added when ``std``)
_SINGLE = {
    "bold_std": ({"desc": "preproc", "suffix": "bold"}, True),
    "bold_mask": ({"desc": "brain", "suffix": "mask"}, True),
    "boldref": ({"suffix": "boldref"}, True),
    "tsnr": ({"desc": "tsnr", "suffix": "boldmap"}, True),
    "confounds": ({"desc": "confounds", "suffix": "timeseries"}, False),
    "carpet": ({"desc": "carpet", "suffix": "timeseries"}, False),
    "coreg_xfm": (
        {"from_": "boldref", "to": "T1w", "mode": "image", "desc": "coreg", "suffix": "xfm"},
        False,
    ),
    "qc_tsv": ({"desc": "func", "suffix": "qc"}, False),
    "qc_json": ({"desc": "func", "suffix": "qc"}, False),
}
_OUTPUT_FIELDS = [*_SINGLE, "confounds_json", "bold_meta", "roi_files", "roi_entities"]


def res_label(resolution: float) -> str:
    """BIDS ``res`` label of a voxel size: ``3`` for 3.0 mm, ``2p5`` for 2.5 mm."""
    return f"{resolution:g}".replace(".", "p")


def init_func_wf(
    *, options: FuncOptions, subject: str, seed: int = 0, name: str = "func_wf"
) -> pe.Workflow:
    """Build (not run) the functional processing workflow of one BOLD run.

    Parameters
    ----------
    options : FuncOptions
        The ``func`` configuration section.
    subject : str
        Participant label (for the QC record).
    seed : int, default=0
        ANTs random seed (coregistration).
    name : str, default="func_wf"

    Inputs
    ------
    bold
        Raw BOLD run.
    t1w_preproc, t1w_mask
        Anatomical stage: bias-corrected T1w and its brain mask.
    std_mask, std_gm, std_wm, std_csf
        Anatomical stage: template-space brain mask and tissue probabilities.
    anat2std_xfm
        List of ANTs transform files mapping template points to T1w points.

    Outputs
    -------
    bold_std, bold_mask, boldref, tsnr
        Template-space preprocessed (scaled) BOLD, its brain mask, mean, tSNR map.
    confounds, confounds_json, carpet, coreg_xfm, qc_tsv, qc_json, bold_meta
        Confounds table and description, carpet data, BOLD→T1w transform, QC, run metadata.
    roi_files, roi_entities
        ROI series, connectivity matrices, spectra and ALFF tables with their BIDS entities.
    """
    opts = options.model_dump(mode="json")
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=_INPUT_FIELDS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=_OUTPUT_FIELDS), name="outputnode")

    validate = pe.Node(
        ValidateBold(
            min_volumes=options.min_volumes,
            dummy_scans=options.dummy_scans,
            drop_nonsteady=options.drop_nonsteady,
        ),
        name="validate",
    )
    hmc = pe.Node(HeadMotion(method=options.hmc_method, passes=options.hmc_passes), name="hmc")
    stc = pe.Node(
        SliceTimingCorrection(enabled=options.slice_timing, ref=options.slice_timing_ref),
        name="stc",
    )
    coreg = pe.Node(Coregister(iterations=list(options.coreg_iterations), seed=seed), name="coreg")
    resample = pe.Node(OneShotResample(resolution=options.output_resolution), name="resample")
    confounds = pe.Node(Confounds(options=opts), name="confounds")
    gauge = pe.Node(TemporalGauge(method=options.scaling), name="gauge")
    rois = pe.Node(RoiConnectivity(options=opts), name="rois")
    qc = pe.Node(BoldQC(subject=clean_label(subject)), name="qc")

    # fmt: off
    workflow.connect([
        (inputnode, validate, [("bold", "in_file")]),
        (validate, hmc, [("out_file", "in_file"), ("n_flagged", "n_flagged")]),
        (validate, stc, [("out_file", "in_file"), ("out_meta", "meta")]),
        (hmc, coreg, [("reference", "bold_ref")]),
        (inputnode, coreg, [("t1w_preproc", "t1w"), ("t1w_mask", "t1w_mask")]),
        (stc, resample, [("out_file", "in_file")]),
        (hmc, resample, [("matrices", "motion")]),
        (coreg, resample, [("matrix", "coreg")]),
        (inputnode, resample, [("anat2std_xfm", "anat2std_xfm"), ("std_mask", "std_mask")]),
        (resample, confounds, [("out_file", "in_file"), ("out_mask", "mask")]),
        (inputnode, confounds, [("std_wm", "wm"), ("std_csf", "csf")]),
        (hmc, confounds, [("params", "params")]),
        (validate, confounds, [("n_flagged", "n_flagged")]),
        (resample, gauge, [("out_file", "in_file"), ("out_mask", "mask")]),
        (gauge, rois, [("out_file", "in_file")]),
        (resample, rois, [("out_mask", "mask")]),
        (confounds, rois, [("out_tsv", "confounds")]),
        (resample, qc, [("out_file", "in_file"), ("out_mask", "mask")]),
        (confounds, qc, [("out_tsv", "confounds")]),
        (inputnode, qc, [("std_gm", "gm"), ("std_wm", "wm"), ("std_csf", "csf")]),
        (coreg, qc, [("out_report", "coreg_report")]),
        (validate, qc, [("out_meta", "meta")]),
        (stc, qc, [("applied", "stc_applied")]),
        (gauge, outputnode, [("out_file", "bold_std")]),
        (resample, outputnode, [("out_mask", "bold_mask"), ("out_ref", "boldref")]),
        (qc, outputnode, [("tsnr", "tsnr"), ("carpet", "carpet"),
                          ("out_tsv", "qc_tsv"), ("out_json", "qc_json")]),
        (confounds, outputnode, [("out_tsv", "confounds"), ("out_json", "confounds_json")]),
        (coreg, outputnode, [("itk", "coreg_xfm")]),
        (stc, outputnode, [("out_meta", "bold_meta")]),
        (rois, outputnode, [("out_files", "roi_files"), ("entities", "roi_entities")]),
    ])
    # fmt: on
    return workflow


def _entities(key: str, task: str, resolution: float) -> dict:
    ents, std = _SINGLE[key]
    out = {"task": task, **ents}
    if std:
        out = {"task": task, "space": TEMPLATE, "res": res_label(resolution), **ents}
    return out


_DESCRIPTIONS = {
    "bold_std": "BOLD after non-steady-state removal, head-motion and slice-timing correction, "
    "resampled once to the template (motion, coregistration and T1w->template composed), "
    "temporal gauge applied (see Parameters.scaling).",
    "bold_mask": "BOLD brain mask: template brain mask within the BOLD field of view and signal.",
    "boldref": "Temporal mean of the template-space BOLD (before the temporal gauge).",
    "tsnr": "Temporal SNR (mean / standard deviation over time) of the preprocessed BOLD.",
    "confounds": "Nuisance regressors, fMRIPrep column names (see pipeline.func.confounds).",
    "carpet": "Carpet-plot data: rows are volumes, columns sampled brain voxels "
    "({tissue}_{index}, z-scored over time), grouped by tissue.",
    "coreg_xfm": "ITK affine, T1w points -> BOLD-reference points (ANTs convention: resamples "
    "BOLD-reference images onto the T1w grid).",
    "qc_tsv": "Functional QC: motion, outliers, tSNR, coregistration metrics.",
}


def init_ds_func_wf(
    *,
    output_dir: Path,
    subject: str,
    options: FuncOptions,
    metadata: dict,
    name: str = "ds_func_wf",
) -> pe.Workflow:
    """Derivative sinks of the functional stage (one :class:`FuncDataSink` per output, one
    :class:`FuncDataSinkMany` for the atlas × strategy outputs). Inputs are :func:`init_func_wf`'s outputs."""
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=_OUTPUT_FIELDS), name="inputnode")
    sub = clean_label(subject)
    connections = []
    for key in _SINGLE:
        meta = {**metadata, "Description": _DESCRIPTIONS.get(key, _DESCRIPTIONS["qc_tsv"])}
        ents = _entities(key, options.task, options.output_resolution)
        if "space" in ents:
            meta["SpatialReference"] = f"{TEMPLATE} (nilearn), {options.output_resolution:g} mm"
        sink = pe.Node(
            FuncDataSink(
                base_directory=str(output_dir), subject=sub, entities=ents, meta_dict=meta
            ),
            name=f"ds_{key}",
            run_without_submitting=True,
        )
        connections.append((inputnode, sink, [(key, "in_file")]))
        if key == "confounds":
            connections.append((inputnode, sink, [("confounds_json", "meta_file")]))
        if key == "bold_std":
            connections.append((inputnode, sink, [("bold_meta", "meta_file")]))
    ds_rois = pe.Node(
        FuncDataSinkMany(
            base_directory=str(output_dir),
            subject=sub,
            meta_dict={**metadata, "Description": "ROI-level output (see the BIDS entities)"},
        ),
        name="ds_rois",
        run_without_submitting=True,
    )
    connections.append(
        (
            inputnode,
            ds_rois,
            [("roi_files", "in_files"), (("roi_entities", _with_task, options.task), "entities")],
        )
    )
    workflow.connect(connections)
    return workflow


def _with_task(entities, task):
    # runs from its source inside Nipype: no module globals
    return [{"task": task, "space": "MNI152NLin2009aSym", **e} for e in entities]


def expected_paths(output_dir: Path, subject: str, options: FuncOptions) -> dict[str, Path]:
    """The derivative paths :func:`run_func_stage` writes, keyed as in its return value."""
    from pipeline.func.atlases import COORDINATE_ATLASES
    from pipeline.func.connectivity import MEASURES

    ext = {
        "confounds": ".tsv",
        "carpet": ".tsv",
        "coreg_xfm": ".txt",
        "qc_tsv": ".tsv",
        "qc_json": ".json",
    }
    paths = {}
    for key in _SINGLE:
        ents = dict(_entities(key, options.task, options.output_resolution))
        suffix = ents.pop("suffix")
        paths[key] = derivative_path(
            output_dir, subject, "func", suffix=suffix, extension=ext.get(key, ".nii.gz"), **ents
        )
    labels = [COORDINATE_ATLASES[a][0] for a in options.atlases]
    labels += list(options.coordinate_atlases) + list(options.label_atlases)
    base = {"task": options.task, "space": TEMPLATE}
    for atlas in labels:
        for strategy in options.denoise_strategies:
            desc = strategy.replace("_", "")
            paths[f"timeseries.{atlas}.{desc}"] = derivative_path(
                output_dir,
                subject,
                "func",
                suffix="timeseries",
                extension=".tsv",
                atlas=atlas,
                desc=desc,
                **base,
            )
            for kind in options.connectivity:
                meas = MEASURES[kind][1]
                paths[f"relmat.{atlas}.{meas}.{desc}"] = derivative_path(
                    output_dir,
                    subject,
                    "func",
                    suffix="relmat",
                    extension=".tsv",
                    atlas=atlas,
                    meas=meas,
                    desc=desc,
                    **base,
                )
        paths[f"spectrum.{atlas}"] = derivative_path(
            output_dir,
            subject,
            "func",
            suffix="spectrum",
            extension=".tsv",
            atlas=atlas,
            desc="amplitude",
            **base,
        )
        paths[f"alff.{atlas}"] = derivative_path(
            output_dir,
            subject,
            "func",
            suffix="features",
            extension=".tsv",
            atlas=atlas,
            desc="alff",
            **base,
        )
    return paths


def _anat_transforms(anat: dict[str, Path]) -> list[str]:
    xfm = anat["anat2std_xfm"]
    return [str(x) for x in xfm] if isinstance(xfm, list | tuple) else [str(xfm)]


def run_func_stage(
    *,
    bold: Path,
    subject: str,
    output_dir: Path,
    work_dir: Path,
    options: FuncOptions,
    anat: dict[str, Path],
    seed: int = 0,
    nprocs: int = 1,
) -> dict[str, Path]:
    """Run the functional stage for one BOLD run of one subject and write its derivatives.

    Parameters
    ----------
    bold : Path
        Raw BOLD run; its sidecar metadata are read with BIDS inheritance.
    subject : str
        Participant label (with or without ``sub-``).
    output_dir : Path
        Root of the BIDS-Derivatives dataset; files go to ``output_dir/sub-X/func/``.
    work_dir : Path
        Nipype working directory (cached between runs).
    options : FuncOptions
    anat : dict of Path
        Anatomical stage outputs: ``t1w_preproc``, ``t1w_mask``, ``std_mask``,
        ``std_{gm,wm,csf}_probseg`` and ``anat2std_xfm`` (one ANTs file or a list, template→T1w).
    seed : int, default=0
    nprocs : int, default=1

    Returns
    -------
    dict of Path
        Keys of :func:`expected_paths`.

    Raises
    ------
    pipeline.errors.ImageError
        3-D BOLD, too few volumes, NaN/Inf voxels, header TR ≠ sidecar TR.
    pipeline.errors.InputError
        Missing or invalid ``RepetitionTime`` / ``SliceTiming``.
    pipeline.errors.StageError
        A workflow node crashed (crash files in ``work_dir``), or an output is missing.
    """
    from pipeline.func.bold import bold_metadata, check_bold
    from pipeline.workflows.anat import software_versions

    sub = clean_label(subject)
    bold = Path(bold).resolve()
    meta = bold_metadata(bold)
    check_bold(bold, meta, min_volumes=options.min_volumes)  # one-line errors before any node
    missing = [
        k
        for k in (
            "t1w_preproc",
            "t1w_mask",
            "std_mask",
            "std_gm_probseg",
            "std_wm_probseg",
            "std_csf_probseg",
            "anat2std_xfm",
        )
        if k not in anat
    ]
    if missing:
        raise StageError(f"sub-{sub}: functional stage needs anatomical outputs {missing}")
    output_dir, work_dir = Path(output_dir), Path(work_dir)
    metadata = {
        "Software": software_versions(),
        "Parameters": options.model_dump(mode="json"),
        "Seed": seed,
        "Sources": [str(bold)],
    }
    wf = pe.Workflow(name=f"func_sub_{sub}_wf", base_dir=str(work_dir))
    func_wf = init_func_wf(options=options, subject=sub, seed=seed)
    ds_wf = init_ds_func_wf(output_dir=output_dir, subject=sub, options=options, metadata=metadata)
    inputs = func_wf.inputs.inputnode
    inputs.bold = str(bold)
    inputs.t1w_preproc = str(anat["t1w_preproc"])
    inputs.t1w_mask = str(anat["t1w_mask"])
    inputs.std_mask = str(anat["std_mask"])
    inputs.std_gm = str(anat["std_gm_probseg"])
    inputs.std_wm = str(anat["std_wm_probseg"])
    inputs.std_csf = str(anat["std_csf_probseg"])
    inputs.anat2std_xfm = _anat_transforms(anat)
    func_wf.get_node("validate").inputs.metadata = meta
    wf.connect([(func_wf, ds_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in _OUTPUT_FIELDS])])
    run_workflow(wf, work_dir=work_dir, nprocs=nprocs, what=f"sub-{sub}: functional workflow")
    paths = expected_paths(output_dir, sub, options)
    absent = [str(p) for p in paths.values() if not p.exists()]
    if absent:
        raise StageError(f"sub-{sub}: functional outputs missing after the run: {absent[0]}")
    return paths
