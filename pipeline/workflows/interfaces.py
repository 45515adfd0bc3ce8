"""Thin Nipype interfaces around :mod:`pipeline.anat` (antspyx has no command-line programs).

Each interface validates nothing itself beyond its trait specs: it loads its inputs, calls one
library function and writes its outputs into the node's working directory. Only
:class:`DerivativesDataSink` writes into the output dataset (atomically, through
:mod:`pipeline.io`, with names from :func:`pipeline.bids_names.derivative_path`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from pipeline.io import atomic_path, save_image, write_json, write_text


def _out(runtime, name: str) -> Path:
    return Path(runtime.cwd) / name


# --------------------------------------------------------------------------- template
class _TemplateFilesInputSpec(BaseInterfaceInputSpec):
    resolution = traits.Enum(2, 1, usedefault=True, desc="template resolution (mm)")


class _TemplateFilesOutputSpec(TraitedSpec):
    t1w = File(exists=True)
    mask = File(exists=True)
    gm = File(exists=True)
    wm = File(exists=True)
    csf = File(exists=True)


class TemplateFiles(SimpleInterface):
    """Write MNI152NLin2009aSym (T1w, brain mask, GM/WM/CSF) at one resolution to files."""

    input_spec = _TemplateFilesInputSpec
    output_spec = _TemplateFilesOutputSpec

    def _run_interface(self, runtime):
        from pipeline.data.templates import load_template

        tpl = load_template(int(self.inputs.resolution))
        for key in ("t1w", "mask", "gm", "wm", "csf"):
            path = _out(runtime, f"tpl-{tpl.name}_res-{tpl.resolution}_{key}.nii.gz")
            self._results[key] = str(save_image(getattr(tpl, key), path))
        return runtime


# --------------------------------------------------------------------------- validation
class _ValidateT1wInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="raw T1w image")


class _ValidateT1wOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="validated, RAS-reoriented float32 T1w")
    out_report = File(exists=True, desc="JSON header report")


class ValidateT1w(SimpleInterface):
    """Validate the header (qform/sform, obliquity, orientation) and reorient to RAS."""

    input_spec = _ValidateT1wInputSpec
    output_spec = _ValidateT1wOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.header import sanitize_t1w

        img, report = sanitize_t1w(self.inputs.in_file)
        self._results["out_file"] = str(save_image(img, _out(runtime, "t1w_ras.nii.gz")))
        self._results["out_report"] = str(write_json(_out(runtime, "header.json"), report))
        return runtime


# --------------------------------------------------------------------------- N4
class _N4InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    enabled = traits.Bool(True, usedefault=True, desc="False: pass the image through")
    shrink_factor = traits.Int(4, usedefault=True)


class _N4OutputSpec(TraitedSpec):
    out_file = File(exists=True)


class N4BiasCorrect(SimpleInterface):
    """N4 bias-field correction (:func:`pipeline.anat.bias.n4_correct`)."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.bias import n4_correct

        img = nib.load(self.inputs.in_file)
        if self.inputs.enabled:
            img = n4_correct(img, self.inputs.shrink_factor)
        self._results["out_file"] = str(save_image(img, _out(runtime, "t1w_n4.nii.gz")))
        return runtime


# --------------------------------------------------------------------------- registration
class _RegisterInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    template = File(exists=True, mandatory=True)
    template_mask = File(exists=True, mandatory=True)
    options = traits.Dict(desc="AnatOptions as a dict (model_dump)")
    seed = traits.Int(0, usedefault=True)


class _RegisterOutputSpec(TraitedSpec):
    forward_transform = File(exists=True, desc="ITK HDF5, template points -> T1w points")
    inverse_transform = File(exists=True, desc="ITK HDF5, T1w points -> template points")
    out_report = File(exists=True, desc="JSON: pose, affine, checked stages")


class RegisterToTemplate(SimpleInterface):
    """Pose search over SO(3), then checked rigid → affine → SyN (antspyx)."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.options import AnatOptions
        from pipeline.anat.registration import register_to_template

        options = (
            AnatOptions(**self.inputs.options) if isdefined(self.inputs.options) else AnatOptions()
        )
        result = register_to_template(
            nib.load(self.inputs.in_file),
            nib.load(self.inputs.template),
            nib.load(self.inputs.template_mask),
            runtime.cwd,
            options,
            seed=self.inputs.seed,
            threads=options.ants_threads,
        )
        self._results["forward_transform"] = str(result.forward)
        self._results["inverse_transform"] = str(result.inverse)
        self._results["out_report"] = str(
            write_json(_out(runtime, "registration.json"), result.report())
        )
        return runtime


# --------------------------------------------------------------------------- resampling
class _ApplyTransformsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    reference = File(exists=True, mandatory=True)
    transform = File(exists=True, mandatory=True)
    interpolation = traits.Enum(
        "linear", "nearestNeighbor", "genericLabel", "bSpline", usedefault=True
    )
    threshold = traits.Float(desc="binarise the result at this value (uint8 output)")


class _ApplyTransformsOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class ApplyTransforms(SimpleInterface):
    """Resample an image onto a reference grid through one ANTs transform file."""

    input_spec = _ApplyTransformsInputSpec
    output_spec = _ApplyTransformsOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.segment import warp_image

        img = warp_image(
            nib.load(self.inputs.in_file),
            nib.load(self.inputs.reference),
            self.inputs.transform,
            self.inputs.interpolation,
        )
        if isdefined(self.inputs.threshold):
            img = nib.Nifti1Image(
                (img.get_fdata() > self.inputs.threshold).astype(np.uint8), img.affine
            )
            img.header.set_xyzt_units("mm")
        name = Path(self.inputs.in_file).name.split(".")[0] + "_resampled.nii.gz"
        self._results["out_file"] = str(save_image(img, _out(runtime, name)))
        return runtime


# --------------------------------------------------------------------------- masks and tissues
class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    template_mask = File(exists=True, mandatory=True)
    inverse_transform = File(exists=True, mandatory=True)


class _BrainMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class BrainMask(SimpleInterface):
    """Template brain mask pulled back to the T1w and refined (:func:`pipeline.anat.segment.brain_mask`)."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.segment import brain_mask

        mask = brain_mask(
            nib.load(self.inputs.in_file),
            nib.load(self.inputs.template_mask),
            self.inputs.inverse_transform,
        )
        self._results["out_file"] = str(save_image(mask, _out(runtime, "brain_mask.nii.gz")))
        return runtime


class _TissuesInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    mask = File(exists=True, mandatory=True)
    gm = File(exists=True, mandatory=True, desc="template GM prior")
    wm = File(exists=True, mandatory=True, desc="template WM prior")
    csf = File(exists=True, mandatory=True, desc="template CSF prior")
    inverse_transform = File(exists=True, mandatory=True)
    method = traits.Enum("atropos", "priors", usedefault=True)


class _TissuesOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="GM, WM, CSF probability maps (T1w space)")


class TissueMaps(SimpleInterface):
    """GM/WM/CSF probability maps (:func:`pipeline.anat.segment.tissue_maps`)."""

    input_spec = _TissuesInputSpec
    output_spec = _TissuesOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.segment import TISSUES, tissue_maps

        priors = {k: nib.load(getattr(self.inputs, k.lower())) for k in TISSUES}
        maps = tissue_maps(
            nib.load(self.inputs.in_file),
            nib.load(self.inputs.mask),
            priors,
            self.inputs.inverse_transform,
            self.inputs.method,
        )
        self._results["out_files"] = [
            str(save_image(maps[k], _out(runtime, f"label-{k}_probseg.nii.gz"))) for k in TISSUES
        ]
        return runtime


# --------------------------------------------------------------------------- QC
class _QCInputSpec(BaseInterfaceInputSpec):
    template = File(exists=True, mandatory=True)
    template_mask = File(exists=True, mandatory=True)
    warped_t1w = File(exists=True, mandatory=True)
    warped_mask = File(exists=True, mandatory=True)
    forward_transform = File(exists=True, mandatory=True)
    options = traits.Dict(desc="AnatOptions as a dict (QC thresholds)")
    subject = traits.Str(mandatory=True)


class _QCOutputSpec(TraitedSpec):
    out_tsv = File(exists=True)
    out_json = File(exists=True)
    passed = traits.Bool()
    failures = traits.List(traits.Str)


class RegistrationQC(SimpleInterface):
    """Registration QC metrics and their verdict (:mod:`pipeline.anat.qc`); never raises on failure."""

    input_spec = _QCInputSpec
    output_spec = _QCOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.options import AnatOptions
        from pipeline.anat.qc import QC_COLUMNS, qc_failures, registration_qc

        options = (
            AnatOptions(**self.inputs.options) if isdefined(self.inputs.options) else AnatOptions()
        )
        metrics = registration_qc(
            nib.load(self.inputs.template),
            nib.load(self.inputs.template_mask),
            nib.load(self.inputs.warped_t1w),
            nib.load(self.inputs.warped_mask),
            self.inputs.forward_transform,
        )
        failures = qc_failures(metrics, options)
        record = {
            "subject": self.inputs.subject,
            **{k: round(metrics[k], 6) for k in QC_COLUMNS},
            "passed": not failures,
            "failures": failures,
            "thresholds": {
                k: getattr(options, k)
                for k in ("qc_min_mi", "qc_min_rank_corr", "qc_min_dice", "qc_max_folding")
            },
        }
        header = "\t".join(["participant_id", *QC_COLUMNS, "passed"])
        row = "\t".join(
            [
                f"sub-{self.inputs.subject}",
                *(f"{metrics[k]:.6g}" for k in QC_COLUMNS),
                str(not failures).lower(),
            ]
        )
        self._results["out_tsv"] = str(
            write_text(_out(runtime, "qc.tsv"), header + "\n" + row + "\n")
        )
        self._results["out_json"] = str(write_json(_out(runtime, "qc.json"), record))
        self._results["passed"] = not failures
        self._results["failures"] = failures
        return runtime


# --------------------------------------------------------------------------- sink
class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    subject = traits.Str(mandatory=True)
    in_file = File(exists=True, mandatory=True)
    datatype = traits.Str("anat", usedefault=True)
    suffix = traits.Str(mandatory=True)
    space = traits.Str()
    res = traits.Either(traits.Int, traits.Str)
    desc = traits.Str()
    label = traits.Str()
    xfm_from = traits.Str(desc="BIDS 'from' entity")
    xfm_to = traits.Str(desc="BIDS 'to' entity")
    mode = traits.Str()
    meta_dict = traits.Dict(desc="JSON sidecar content (none is written for .json files)")


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    out_meta = File(desc="the JSON sidecar")


def _extension(path: str) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".tsv.gz"):
        if name.endswith(ext):
            return ext
    return Path(path).suffix


class DerivativesDataSink(SimpleInterface):
    """Copy a result into the BIDS-Derivatives dataset under its BIDS name, with a JSON sidecar.

    Writes are atomic (:func:`pipeline.io.atomic_path`): a crash never leaves a partial file.
    """

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec
    _always_run = True  # a cached sink would not rewrite a deleted output

    def _run_interface(self, runtime):
        from pipeline.bids_names import derivative_path

        def opt(name):
            value = getattr(self.inputs, name)
            return value if isdefined(value) else None

        ext = _extension(self.inputs.in_file)
        dest = derivative_path(
            self.inputs.base_directory,
            self.inputs.subject,
            self.inputs.datatype,
            suffix=self.inputs.suffix,
            extension=ext,
            space=opt("space"),
            res=opt("res"),
            desc=opt("desc"),
            label=opt("label"),
            from_=opt("xfm_from"),
            to=opt("xfm_to"),
            mode=opt("mode"),
        )
        with atomic_path(dest) as tmp:
            shutil.copyfile(self.inputs.in_file, tmp)
        self._results["out_file"] = str(dest)
        if ext != ".json":
            meta = dict(self.inputs.meta_dict) if isdefined(self.inputs.meta_dict) else {}
            sidecar = dest.with_name(dest.name[: -len(ext)] + ".json")
            self._results["out_meta"] = str(write_json(sidecar, meta))
        return runtime
