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
from pipeline.bids_names import clean_label, derivative_path
from pipeline.errors import QCError, StageError
from pipeline.io import check_image, read_json
from pipeline.workflows._execute import run_workflow
from pipeline.workflows.interfaces import (
    ApplyTransforms,
    BrainMask,
    DerivativesDataSink,
    N4BiasCorrect,
    RegisterToTemplate,
    RegistrationQC,
    TemplateFiles,
    TissueMaps,
    ValidateT1w,
)

logger = logging.getLogger(__name__)

TEMPLATE = "MNI152NLin2009aSym"
_OUTPUT_FIELDS = [
    "t1w_preproc",
    "t1w_mask",
    "t1w_tpms",
    "std_t1w",
    "std_mask",
    "std_tpms",
    "anat2std_xfm",
    "std2anat_xfm",
    "qc_tsv",
    "qc_json",
    "qc_passed",
    "qc_failures",
    "header_report",
    "registration_report",
]


def init_anat_wf(
    *, options: AnatOptions, subject: str, seed: int = 0, name: str = "anat_wf"
) -> pe.Workflow:
    """Build (not run) the anatomical processing workflow.

    validate → N4 → pose search over SO(3) + checked rigid/affine/SyN → brain mask and tissues
    → resampling to the template → registration QC.

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
    t1w_preproc, t1w_mask, t1w_tpms
        Bias-corrected RAS T1w, its brain mask, GM/WM/CSF maps (T1w space).
    std_t1w, std_mask, std_tpms
        The same in template space (``options.resolution`` mm).
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

    template = pe.Node(TemplateFiles(resolution=options.resolution), name="template")
    validate = pe.Node(ValidateT1w(), name="validate")
    n4 = pe.Node(
        N4BiasCorrect(enabled=options.n4, shrink_factor=options.n4_shrink_factor), name="n4"
    )
    register = pe.Node(RegisterToTemplate(options=reg_opts, seed=seed), name="register")
    brainmask = pe.Node(BrainMask(), name="brainmask")
    tissues = pe.Node(TissueMaps(method=options.tissue_method), name="tissues")
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
        (brainmask, std_mask, [("out_file", "in_file")]),
        (template, std_mask, [("t1w", "reference")]),
        (register, std_mask, [("forward_transform", "transform")]),
        (tissues, std_tpms, [("out_files", "in_file")]),
        (template, std_tpms, [("t1w", "reference")]),
        (register, std_tpms, [("forward_transform", "transform")]),
        (template, qc, [("t1w", "template"), ("mask", "template_mask")]),
        (std_t1w, qc, [("out_file", "warped_t1w")]),
        (std_mask, qc, [("out_file", "warped_mask")]),
        (register, qc, [("forward_transform", "forward_transform")]),
        (n4, outputnode, [("out_file", "t1w_preproc")]),
        (brainmask, outputnode, [("out_file", "t1w_mask")]),
        (tissues, outputnode, [("out_files", "t1w_tpms")]),
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


def _outputs(output_dir: Path, subject: str, res: int) -> dict[str, dict]:
    """Every output of the stage: key → (workflow field, list index or None, BIDS entities)."""
    std = {"space": TEMPLATE, "res": res}
    out = {
        "t1w_preproc": ("t1w_preproc", None, {"desc": "preproc", "suffix": "T1w"}),
        "t1w_mask": ("t1w_mask", None, {"desc": "brain", "suffix": "mask"}),
        "std_t1w": ("std_t1w", None, {**std, "desc": "preproc", "suffix": "T1w"}),
        "std_mask": ("std_mask", None, {**std, "desc": "brain", "suffix": "mask"}),
        "anat2std_xfm": (
            "anat2std_xfm",
            None,
            {"xfm_from": "T1w", "xfm_to": TEMPLATE, "mode": "image", "suffix": "xfm"},
        ),
        "std2anat_xfm": (
            "std2anat_xfm",
            None,
            {"xfm_from": TEMPLATE, "xfm_to": "T1w", "mode": "image", "suffix": "xfm"},
        ),
        "qc_tsv": ("qc_tsv", None, {"desc": "registration", "suffix": "qc"}),
        "qc_json": ("qc_json", None, {"desc": "registration", "suffix": "qc"}),
    }
    for i, label in enumerate(("GM", "WM", "CSF")):
        out[f"std_{label.lower()}_probseg"] = (
            "std_tpms",
            i,
            {**std, "label": label, "suffix": "probseg"},
        )
    return out


def expected_paths(output_dir: Path, subject: str, resolution: int) -> dict[str, Path]:
    """The derivative paths :func:`run_anat_stage` writes (keys as in its return value)."""
    ext = {"anat2std_xfm": ".h5", "std2anat_xfm": ".h5", "qc_tsv": ".tsv", "qc_json": ".json"}
    paths = {}
    for key, (_, _, ents) in _outputs(output_dir, subject, resolution).items():
        ents = dict(ents)
        ents["from_"] = ents.pop("xfm_from", None)
        ents["to"] = ents.pop("xfm_to", None)
        suffix = ents.pop("suffix")
        paths[key] = derivative_path(
            output_dir, subject, "anat", suffix=suffix, extension=ext.get(key, ".nii.gz"), **ents
        )
    return paths


def init_ds_anat_wf(
    *, output_dir: Path, subject: str, resolution: int, metadata: dict, name: str = "ds_anat_wf"
) -> pe.Workflow:
    """Build the derivative sinks of the anatomical stage (one :class:`DerivativesDataSink` each).

    Inputs are the ``outputnode`` fields of :func:`init_anat_wf`; ``metadata`` (software versions,
    parameters, seed) goes into every JSON sidecar, with per-file descriptions added.
    """
    workflow = pe.Workflow(name=name)
    fields = sorted({field for field, _, _ in _outputs(output_dir, subject, resolution).values()})
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    descriptions = {
        "t1w_preproc": "T1w, header-sanitised, reoriented to RAS and N4 bias-corrected (native space).",
        "t1w_mask": "Brain mask: template mask pulled back through the inverse transform, refined.",
        "std_t1w": "Bias-corrected T1w resampled to the template.",
        "std_mask": "Brain mask resampled to the template (linear, thresholded at 0.5).",
        "anat2std_xfm": "ANTs composite transform (ITK HDF5) mapping template points to T1w points; "
        "use with ants.apply_transforms(fixed=template, moving=T1w-space image).",
        "std2anat_xfm": "ANTs composite transform (ITK HDF5) mapping T1w points to template points; "
        "use with ants.apply_transforms(fixed=T1w, moving=template-space image).",
        "qc_tsv": "Registration QC metrics (see pipeline.anat.qc).",
    }
    connections = []
    for key, (field, index, entities) in _outputs(output_dir, subject, resolution).items():
        meta = {
            **metadata,
            "Description": descriptions.get(
                key,
                f"{entities.get('label')} probability map "
                "(ants.atropos with template priors) in template space.",
            ),
        }
        if "space" in entities:
            meta["SpatialReference"] = f"{TEMPLATE} (nilearn, {resolution} mm)"
        sink = pe.Node(
            DerivativesDataSink(
                base_directory=str(output_dir),
                subject=clean_label(subject),
                meta_dict=meta,
                **entities,
            ),
            name=f"ds_{key}",
            run_without_submitting=True,
        )
        if index is None:
            connections.append((inputnode, sink, [(field, "in_file")]))
        else:
            connections.append((inputnode, sink, [((field, _pick, index), "in_file")]))
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
        Output paths keyed ``t1w_preproc``, ``t1w_mask``, ``std_t1w``, ``std_mask``,
        ``std_{gm,wm,csf}_probseg``, ``anat2std_xfm``, ``std2anat_xfm``, ``qc_tsv``, ``qc_json``.

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
        output_dir=output_dir, subject=sub, resolution=options.resolution, metadata=metadata
    )
    anat_wf.inputs.inputnode.t1w = str(Path(t1w).resolve())
    fields = sorted({f for f, _, _ in _outputs(output_dir, sub, options.resolution).values()})
    wf.connect([(anat_wf, ds_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in fields])])
    run_workflow(wf, work_dir=work_dir, nprocs=nprocs, what=f"sub-{sub}: anatomical workflow")
    paths = expected_paths(output_dir, sub, options.resolution)
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise StageError(f"sub-{sub}: anatomical outputs missing after the run: {missing[0]}")
    record = read_json(paths["qc_json"])
    if not record.get("passed", False):
        raise QCError(f"sub-{sub}: registration QC failed: {'; '.join(record.get('failures', []))}")
    return paths
