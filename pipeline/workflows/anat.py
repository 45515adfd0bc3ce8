"""The anatomical stage as a Nipype workflow: T1w → MNI152NLin2009aSym, pose-robust.

``init_anat_wf`` (processing) and ``init_ds_anat_wf`` (derivative sinks) are niworkflows-style
builders; :func:`run_anat_stage` assembles and runs both for one subject.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from pipeline.anat.options import AnatOptions
from pipeline.bids_names import clean_label
from pipeline.errors import QCError, StageError
from pipeline.interfaces.anat import (
    ApplyTransforms,
    BrainMask,
    IntensityClasses,
    ModulateByJacobian,
    N4BiasCorrect,
    RegisterToTemplate,
    RegistrationQC,
    TemplateFiles,
    TissueMaps,
    ValidateT1w,
)
from pipeline.interfaces.bids import DerivativesDataSink
from pipeline.io import check_image, read_json
from pipeline.outputs import ANAT_OUTPUTS, anat_source, output_path, spatial_reference
from pipeline.workflows.execution import run_workflow

logger = logging.getLogger(__name__)

_OUTPUT_FIELDS = [
    "t1w_preproc",
    "t1w_mask",
    "t1w_tpms",
    "t1w_dseg",
    "std_t1w",
    "std_mask",
    "std_tpms",
    "std_gm_modulated",
    "anat2std_xfm",
    "std2anat_xfm",
    "qc_tsv",
    "qc_json",
    "qc_passed",
    "qc_failures",
    "header_report",
    "registration_report",
    "segmentation_report",
]
#: declared output key → (outputnode field, index into a list field or None)
_FIELD_OF = {
    "t1w_preproc": ("t1w_preproc", None),
    "t1w_mask": ("t1w_mask", None),
    "t1w_dseg": ("t1w_dseg", None),
    "t1w_gm_probseg": ("t1w_tpms", 0),
    "t1w_wm_probseg": ("t1w_tpms", 1),
    "t1w_csf_probseg": ("t1w_tpms", 2),
    "std_t1w": ("std_t1w", None),
    "std_mask": ("std_mask", None),
    "std_gm_probseg": ("std_tpms", 0),
    "std_wm_probseg": ("std_tpms", 1),
    "std_csf_probseg": ("std_tpms", 2),
    "std_gm_modulated": ("std_gm_modulated", None),
    "anat2std_xfm": ("anat2std_xfm", None),
    "std2anat_xfm": ("std2anat_xfm", None),
    "qc_tsv": ("qc_tsv", None),
    "qc_json": ("qc_json", None),
}


def init_anat_wf(
    *, options: AnatOptions, subject: str, seed: int = 0, name: str = "anat_wf"
) -> pe.Workflow:
    """Build (not run) the anatomical processing workflow.

    validate → N4 → pose search over SO(3) + checked rigid/affine/SyN → initial brain mask
    (template's, pulled back) → Atropos segmentation of the subject with template priors →
    refined brain mask → resampling to the template → registration QC (measures that a wrong
    registration lowers, see :mod:`pipeline.anat.qc`).

    Parameters
    ----------
    options : AnatOptions
        The ``anat`` configuration section.
    subject : str
        Participant label (written into the QC record).
    seed : int, default=0
        ANTs random seed.
    name : str, default="anat_wf"

    Inputs
    ------
    t1w
        Raw T1w image.

    Outputs
    -------
    t1w_preproc, t1w_mask, t1w_tpms, t1w_dseg
        Bias-corrected RAS T1w, its brain mask, GM/WM/CSF maps and hard labels (T1w space).
    std_t1w, std_mask, std_tpms, std_gm_modulated
        The same in template space (``options.resolution`` mm), and the Jacobian-modulated GM.
    segmentation_report
        JSON of the tissue step (method, prior weight, failure, volumes).
    anat2std_xfm, std2anat_xfm
        ITK HDF5 transforms (see :mod:`pipeline.anat.registration`).
    qc_tsv, qc_json, qc_passed, qc_failures
        Registration QC record and verdict.
    header_report, registration_report
        JSON reports of header sanitisation and of the checked registration stages.
    """
    opts = options.model_dump()
    # each node gets only the options it uses, so that changing a QC threshold reruns only QC
    reg_opts = {
        k: v for k, v in opts.items() if not k.startswith("qc_") and k != "exclude_failed_qc"
    }
    qc_opts = {k: v for k, v in opts.items() if k.startswith("qc_")}
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=_OUTPUT_FIELDS), name="outputnode")

    template = pe.Node(
        TemplateFiles(resolution=options.resolution, template=options.template), name="template"
    )
    validate = pe.Node(ValidateT1w(), name="validate")
    n4 = pe.Node(
        N4BiasCorrect(enabled=options.n4, shrink_factor=options.n4_shrink_factor), name="n4"
    )
    register = pe.Node(RegisterToTemplate(options=reg_opts, seed=seed), name="register")
    brainmask = pe.Node(BrainMask(margin_mm=options.mask_margin_mm), name="brainmask")
    tissues = pe.Node(
        TissueMaps(method=options.tissue_method, prior_weight=options.prior_weight),
        name="tissues",
    )
    classes = pe.Node(IntensityClasses(), name="classes")
    std_classes = pe.MapNode(
        ApplyTransforms(interpolation="linear"), iterfield=["in_file"], name="std_classes"
    )
    modulated = pe.Node(ModulateByJacobian(), name="modulated")
    std_t1w = pe.Node(ApplyTransforms(interpolation="linear"), name="std_t1w")
    std_mask = pe.Node(ApplyTransforms(interpolation="linear", threshold=0.5), name="std_mask")
    std_tpms = pe.MapNode(
        ApplyTransforms(interpolation="linear"), iterfield=["in_file"], name="std_tpms"
    )
    qc = pe.Node(RegistrationQC(options=qc_opts, subject=clean_label(subject)), name="qc")

    # fmt: off
    workflow.connect([
        (inputnode, validate, [("t1w", "in_file")]),
        (validate, n4, [("out_file", "in_file")]),
        (n4, register, [("out_file", "in_file")]),
        (template, register, [("t1w", "template"), ("mask", "template_mask")]),
        (n4, brainmask, [("out_file", "in_file")]),
        (template, brainmask, [("mask", "template_mask")]),
        (register, brainmask, [("inverse_transform", "inverse_transform")]),
        (n4, tissues, [("out_file", "in_file")]),
        (brainmask, tissues, [("out_file", "mask")]),
        (template, tissues, [("gm", "gm"), ("wm", "wm"), ("csf", "csf")]),
        (register, tissues, [("inverse_transform", "inverse_transform")]),
        (n4, std_t1w, [("out_file", "in_file")]),
        (template, std_t1w, [("t1w", "reference")]),
        (register, std_t1w, [("forward_transform", "transform")]),
        (tissues, std_mask, [("out_mask", "in_file")]),
        (template, std_mask, [("t1w", "reference")]),
        (register, std_mask, [("forward_transform", "transform")]),
        (tissues, std_tpms, [("out_files", "in_file")]),
        (template, std_tpms, [("t1w", "reference")]),
        (register, std_tpms, [("forward_transform", "transform")]),
        (n4, classes, [("out_file", "in_file")]),
        (tissues, classes, [("out_mask", "mask")]),
        (classes, std_classes, [("out_files", "in_file")]),
        (template, std_classes, [("t1w", "reference")]),
        (register, std_classes, [("forward_transform", "transform")]),
        (std_tpms, modulated, [(("out_file", _pick, 0), "in_file")]),
        (register, modulated, [("forward_transform", "forward_transform")]),
        (template, qc, [("t1w", "template"), ("mask", "template_mask"),
                        ("wm", "template_wm"), ("gm", "template_gm")]),
        (std_t1w, qc, [("out_file", "warped_t1w")]),
        (std_classes, qc, [(("out_file", _pick, 0), "warped_wm"),
                           (("out_file", _pick, 1), "warped_gm")]),
        (register, qc, [("forward_transform", "forward_transform")]),
        (tissues, qc, [("out_report", "segmentation_report")]),
        (n4, outputnode, [("out_file", "t1w_preproc")]),
        (tissues, outputnode, [("out_mask", "t1w_mask"), ("out_files", "t1w_tpms"),
                               ("out_dseg", "t1w_dseg"),
                               ("out_report", "segmentation_report")]),
        (modulated, outputnode, [("out_file", "std_gm_modulated")]),
        (std_t1w, outputnode, [("out_file", "std_t1w")]),
        (std_mask, outputnode, [("out_file", "std_mask")]),
        (std_tpms, outputnode, [("out_file", "std_tpms")]),
        (register, outputnode, [("forward_transform", "anat2std_xfm"),
                                ("inverse_transform", "std2anat_xfm"),
                                ("out_report", "registration_report")]),
        (validate, outputnode, [("out_report", "header_report")]),
        (qc, outputnode, [("out_tsv", "qc_tsv"), ("out_json", "qc_json"),
                          ("passed", "qc_passed"), ("failures", "qc_failures")]),
    ])
    # fmt: on
    return workflow


def software_versions() -> dict[str, str]:
    """Versions of the software that shape the anatomical outputs."""
    import ants
    import nibabel
    import nilearn
    import nipype
    import numpy
    import scipy

    import pipeline

    return {
        "symprep": pipeline.__version__,
        "antspyx": ants.__version__,
        "nibabel": nibabel.__version__,
        "nilearn": nilearn.__version__,
        "nipype": nipype.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


def declared_outputs(options: AnatOptions) -> list[str]:
    """Keys of :data:`pipeline.outputs.ANAT_OUTPUTS` that a run with ``options`` writes."""
    return [k for k in ANAT_OUTPUTS if k != "std_gm_modulated" or options.write_modulated_gm]


def expected_paths(
    output_dir: Path, source: dict | str, options: AnatOptions | int
) -> dict[str, Path]:
    """The derivative paths :func:`run_anat_stage` writes (keys as in its return value).

    ``source`` is the T1w's entities (:func:`pipeline.outputs.anat_source`) or a subject label;
    ``options`` the stage options (or, for the default outputs, the template resolution).
    """
    if isinstance(options, int):
        options = AnatOptions(resolution=options)
    if isinstance(source, str):
        source = {"sub": clean_label(source)}
    return {
        key: output_path(
            ANAT_OUTPUTS[key], output_dir, source, space=options.template, res=options.resolution
        )
        for key in declared_outputs(options)
    }


def init_ds_anat_wf(
    *,
    output_dir: Path,
    source: dict,
    options: AnatOptions,
    metadata: dict,
    name: str = "ds_anat_wf",
) -> pe.Workflow:
    """Build the derivative sinks of the anatomical stage (one :class:`DerivativesDataSink` each).

    Inputs are the ``outputnode`` fields of :func:`init_anat_wf`; ``metadata`` (software versions,
    parameters, seed) goes into every JSON sidecar, with the declared description added, and the
    segmentation's method (and any failure) in the tissue maps' sidecars.
    """
    from pipeline.data.templates import template_voxel_mm

    workflow = pe.Workflow(name=name)
    keys = declared_outputs(options)
    voxel_mm = template_voxel_mm(options.template, options.resolution)  # header only
    fields = sorted({_FIELD_OF[k][0] for k in keys} | {"segmentation_report"})
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    connections = []
    for key in keys:
        field, index = _FIELD_OF[key]
        spec = ANAT_OUTPUTS[key]
        meta = dict(metadata)
        if spec.std:
            meta["SpatialReference"] = spatial_reference(options.template, voxel_mm)
        sink = pe.Node(
            DerivativesDataSink(
                base_directory=str(output_dir),
                stage="anat",
                output=key,
                source=source,
                res=options.resolution,
                space=options.template,
                meta_dict=meta,
            ),
            name=f"ds_{key}",
            run_without_submitting=True,
        )
        if index is None:
            connections.append((inputnode, sink, [(field, "in_file")]))
        else:
            connections.append((inputnode, sink, [((field, _pick, index), "in_file")]))
        if spec.suffix in ("probseg", "dseg", "mask"):
            connections.append((inputnode, sink, [("segmentation_report", "meta_file")]))
    workflow.connect(connections)
    return workflow


def _pick(values, index):
    return values[index]


def run_anat_stage(
    *,
    t1w: Path,
    subject: str,
    output_dir: Path,
    work_dir: Path,
    options: AnatOptions,
    seed: int = 0,
    nprocs: int = 1,
) -> dict[str, Path]:
    """Run the anatomical stage for one subject and write its derivatives.

    Parameters
    ----------
    t1w : Path
        Raw T1w image.
    subject : str
        Participant label (with or without ``sub-``).
    output_dir : Path
        Root of the BIDS-Derivatives dataset; files go to ``output_dir/sub-X/anat/``.
    work_dir : Path
        Nipype working directory (cached between runs).
    options : AnatOptions
    seed : int, default=0
        ANTs random seed (same seed and thread count → identical outputs).
    nprocs : int, default=1
        Nipype MultiProc processes (Linear plugin when 1).

    Returns
    -------
    dict of Path
        Output paths keyed as :data:`pipeline.outputs.ANAT_OUTPUTS` (``t1w_preproc``,
        ``t1w_mask``, ``t1w_dseg``, ``t1w_{gm,wm,csf}_probseg``, ``std_t1w``, ``std_mask``,
        ``std_{gm,wm,csf}_probseg``, ``anat2std_xfm``, ``std2anat_xfm``, ``qc_tsv``, ``qc_json``).

    Raises
    ------
    pipeline.errors.ImageError
        The T1w is unusable (4-D, 2-D, constant, non-finite, singular, extremely anisotropic).
    pipeline.errors.QCError
        Registration QC failed; every output and the QC record are written first.
    pipeline.errors.StageError
        A workflow node crashed (crash files are in ``work_dir``).
    """
    sub = clean_label(subject)
    check_image(t1w, ndim=3)  # one-line ImageError before any node runs
    source = {**anat_source(t1w), "sub": sub}
    output_dir, work_dir = Path(output_dir), Path(work_dir)
    metadata = {
        "Software": software_versions(),
        "Parameters": options.model_dump(),
        "Seed": seed,
        "Sources": [str(t1w)],
    }
    wf = pe.Workflow(name=f"anat_sub_{sub}_wf", base_dir=str(work_dir))
    anat_wf = init_anat_wf(options=options, subject=sub, seed=seed)
    ds_wf = init_ds_anat_wf(
        output_dir=output_dir, source=source, options=options, metadata=metadata
    )
    anat_wf.inputs.inputnode.t1w = str(Path(t1w).resolve())
    fields = ds_wf.get_node("inputnode").inputs.copyable_trait_names()
    wf.connect([(anat_wf, ds_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in fields])])
    run_workflow(wf, work_dir=work_dir, nprocs=nprocs, what=f"sub-{sub}: anatomical workflow")
    paths = expected_paths(output_dir, source, options)
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise StageError(f"sub-{sub}: anatomical outputs missing after the run: {missing[0]}")
    record = read_json(paths["qc_json"])
    if not record.get("passed", False):
        raise QCError(f"sub-{sub}: registration QC failed: {'; '.join(record.get('failures', []))}")
    return paths
