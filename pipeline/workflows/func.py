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

from pipeline.bids_names import clean_label
from pipeline.errors import StageError
from pipeline.func.options import FuncOptions
from pipeline.interfaces.bids import DerivativesDataSink, DerivativesDataSinkMany
from pipeline.interfaces.func import (
    BoldQC,
    Confounds,
    Coregister,
    HeadMotion,
    OneShotResample,
    RoiConnectivity,
    SliceTimingCorrection,
    TemporalGauge,
    ValidateBold,
)
from pipeline.outputs import (
    FUNC_OUTPUTS,
    ROI_OUTPUTS,
    TEMPLATE,
    output_path,
    res_label,
    run_label,
    source_entities,
    space_of,
    spatial_reference,
)
from pipeline.workflows.execution import run_workflow

logger = logging.getLogger(__name__)

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
#: outputnode fields: one per declared single-file output, then the run's metadata and ROI files
_OUTPUT_FIELDS = [*FUNC_OUTPUTS, "confounds_json", "bold_meta", "roi_files", "roi_entities"]
__all__ = ["expected_paths", "init_ds_func_wf", "init_func_wf", "res_label", "run_func_stage"]


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
    bold_std, bold_scaled, bold_mask, boldref, tsnr
        Template-space preprocessed BOLD (unscaled, every volume), the same with the temporal
        gauge applied and the non-steady-state volumes removed, brain mask, mean, tSNR map.
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
    # desc-preproc keeps every volume (flagged in the confounds); features drop the flagged ones
    rois = pe.Node(RoiConnectivity(options=opts), name="rois")
    qc = pe.Node(BoldQC(subject=clean_label(subject)), name="qc")

    # fmt: off
    workflow.connect([
        (inputnode, validate, [("bold", "in_file")]),
        (validate, hmc, [("out_file", "in_file"), ("n_flagged", "n_flagged")]),
        (validate, stc, [("out_file", "in_file"), ("out_meta", "meta"), ("n_flagged", "n_skip")]),
        (hmc, coreg, [("reference", "bold_ref")]),
        (inputnode, coreg, [("t1w_preproc", "t1w"), ("t1w_mask", "t1w_mask")]),
        (stc, resample, [("out_file", "in_file")]),
        (hmc, resample, [("matrices", "motion")]),
        (coreg, resample, [("matrix", "coreg")]),
        (inputnode, resample, [("anat2std_xfm", "anat2std_xfm"), ("std_mask", "std_mask")]),
        (resample, confounds, [("out_file", "in_file"), ("out_mask", "mask")]),
        (inputnode, confounds, [("std_wm", "wm"), ("std_csf", "csf")]),
        (hmc, confounds, [("params", "params"), ("centre", "motion_centre")]),
        (validate, confounds, [("n_flagged", "n_flagged")]),
        (resample, gauge, [("out_file", "in_file"), ("out_mask", "mask")]),
        (validate, gauge, [("n_flagged", "n_drop")]),
        (gauge, rois, [("out_file", "in_file")]),
        (validate, rois, [("n_flagged", "n_drop")]),
        (resample, rois, [("out_mask", "mask")]),
        (confounds, rois, [("out_tsv", "confounds")]),
        (resample, qc, [("out_file", "in_file"), ("out_mask", "mask")]),
        (confounds, qc, [("out_tsv", "confounds")]),
        (inputnode, qc, [("std_gm", "gm"), ("std_wm", "wm"), ("std_csf", "csf")]),
        (coreg, qc, [("out_report", "coreg_report")]),
        (validate, qc, [("out_meta", "meta"), ("n_flagged", "n_drop")]),
        (stc, qc, [("applied", "stc_applied")]),
        (resample, outputnode, [("out_file", "bold_std")]),
        (gauge, outputnode, [("out_file", "bold_scaled")]),
        (resample, outputnode, [("out_mask", "bold_mask"), ("out_ref", "boldref")]),
        (qc, outputnode, [("tsnr", "tsnr"), ("carpet", "carpet"),
                          ("out_tsv", "qc_tsv"), ("out_json", "qc_json")]),
        (confounds, outputnode, [("out_tsv", "confounds"), ("out_json", "confounds_json")]),
        (coreg, outputnode, [("itk", "coreg_xfm")]),
        (hmc, outputnode, [("itk", "hmc_xfm")]),
        (stc, outputnode, [("out_meta", "bold_meta")]),
        (rois, outputnode, [("out_files", "roi_files"), ("entities", "roi_entities")]),
    ])
    # fmt: on
    return workflow


def init_ds_func_wf(
    *,
    output_dir: Path,
    source: dict,
    options: FuncOptions,
    metadata: dict,
    space: str = TEMPLATE,
    name: str = "ds_func_wf",
) -> pe.Workflow:
    """Derivative sinks of the functional stage: one :class:`DerivativesDataSink` per declared
    output (:data:`pipeline.outputs.FUNC_OUTPUTS`), one :class:`DerivativesDataSinkMany` for the
    atlas × strategy outputs. Names carry every entity of ``source`` (the BOLD run's)."""
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=_OUTPUT_FIELDS), name="inputnode")
    res = res_label(options.output_resolution)
    connections = []
    for key, spec in FUNC_OUTPUTS.items():
        meta = dict(metadata)
        if spec.std:
            meta["SpatialReference"] = spatial_reference(space, options.output_resolution)
        sink = pe.Node(
            DerivativesDataSink(
                base_directory=str(output_dir),
                stage="func",
                output=key,
                source=source,
                res=res,
                space=space,
                meta_dict=meta,
            ),
            name=f"ds_{key}",
            run_without_submitting=True,
        )
        connections.append((inputnode, sink, [(key, "in_file")]))
        if key == "confounds":
            connections.append((inputnode, sink, [("confounds_json", "meta_file")]))
        if key in ("bold_std", "bold_scaled"):
            connections.append((inputnode, sink, [("bold_meta", "meta_file")]))
    ds_rois = pe.Node(
        DerivativesDataSinkMany(
            base_directory=str(output_dir),
            stage="func",
            source=source,
            space=space,
            meta_dict={**metadata, "Description": "ROI-level output (see the BIDS entities)"},
        ),
        name="ds_rois",
        run_without_submitting=True,
    )
    connections.append(
        (inputnode, ds_rois, [("roi_files", "in_files"), ("roi_entities", "outputs")])
    )
    workflow.connect(connections)
    return workflow


def roi_outputs(options: FuncOptions) -> dict[str, tuple[str, dict]]:
    """The atlas × strategy × measure outputs a run with ``options`` writes:
    key → (declared ROI output, its variable entities)."""
    from pipeline.func.atlases import COORDINATE_ATLASES
    from pipeline.func.connectivity import MEASURES

    labels = [COORDINATE_ATLASES[a][0] for a in options.atlases]
    labels += list(options.coordinate_atlases) + list(options.label_atlases)
    out: dict[str, tuple[str, dict]] = {}
    for atlas in labels:
        for strategy in options.denoise_strategies:
            desc = strategy.replace("_", "")
            out[f"timeseries.{atlas}.{desc}"] = ("timeseries", {"atlas": atlas, "desc": desc})
            for kind in options.connectivity:
                meas = MEASURES[kind][1]
                out[f"relmat.{atlas}.{meas}.{desc}"] = (
                    "relmat",
                    {"atlas": atlas, "meas": meas, "desc": desc},
                )
        out[f"spectrum.{atlas}"] = ("spectrum", {"atlas": atlas})
        out[f"alff.{atlas}"] = ("alff", {"atlas": atlas})
    return out


def expected_paths(
    output_dir: Path, source: dict | str, options: FuncOptions, space: str = TEMPLATE
) -> dict[str, Path]:
    """The derivative paths :func:`run_func_stage` writes for one run, keyed as in its return value.

    ``source`` is the BOLD run's entities (:func:`pipeline.outputs.source_entities`); a subject
    label stands for ``{"sub": label, "task": options.task}``. ``space`` is the run's template
    (the anatomical stage's, :func:`pipeline.outputs.space_of` its outputs).
    """
    if isinstance(source, str):
        source = {"sub": clean_label(source), "task": options.task}
    res = res_label(options.output_resolution)
    paths = {
        key: output_path(spec, output_dir, source, space=space, res=res)
        for key, spec in FUNC_OUTPUTS.items()
    }
    for key, (name, values) in roi_outputs(options).items():
        paths[key] = output_path(ROI_OUTPUTS[name], output_dir, source, space=space, **values)
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
    source = {**source_entities(bold), "sub": sub}
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
    # one work folder per run: runs and sessions never share cached nodes
    run_name = run_label(source).replace("-", "_") or "bold"
    wf = pe.Workflow(name=f"func_sub_{sub}_{run_name}_wf", base_dir=str(work_dir))
    func_wf = init_func_wf(options=options, subject=sub, seed=seed)
    # the anatomical stage's template (its outputs' space entity) is the run's
    space = space_of(anat["std_mask"], default=TEMPLATE)
    ds_wf = init_ds_func_wf(
        output_dir=output_dir, source=source, options=options, metadata=metadata, space=space
    )
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
    what = f"sub-{sub} {run_label(source)}: functional workflow"
    run_workflow(wf, work_dir=work_dir, nprocs=nprocs, what=what)
    paths = expected_paths(output_dir, source, options, space)
    absent = [str(p) for p in paths.values() if not p.exists()]
    if absent:
        raise StageError(f"{bold.name}: functional outputs missing after the run: {absent[0]}")
    return paths
