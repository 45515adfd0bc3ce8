"""Thin Nipype interfaces around :mod:`pipeline.anat` (antspyx has no command-line programs).

Each interface validates nothing itself beyond its trait specs: it loads its inputs, calls one
library function and writes its outputs into the node's working directory. Only the sinks of
:mod:`pipeline.interfaces.bids` write into the output dataset.
"""

from __future__ import annotations

import json
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

from pipeline.data.templates import TEMPLATE_NAME
from pipeline.io import save_image, write_json, write_text


def _out(runtime, name: str) -> Path:
    return Path(runtime.cwd) / name


# --------------------------------------------------------------------------- template
class _TemplateFilesInputSpec(BaseInterfaceInputSpec):
    resolution = traits.Enum(2, 1, usedefault=True, desc="template resolution (res- index)")
    template = traits.Str(
        TEMPLATE_NAME, usedefault=True, desc="template name (shipped or TemplateFlow-cached)"
    )


class _TemplateFilesOutputSpec(TraitedSpec):
    t1w = File(exists=True)
    mask = File(exists=True)
    gm = File(exists=True)
    wm = File(exists=True)
    csf = File(exists=True)


class TemplateFiles(SimpleInterface):
    """Write the template (T1w, brain mask, GM/WM/CSF) at one resolution to files."""

    input_spec = _TemplateFilesInputSpec
    output_spec = _TemplateFilesOutputSpec

    def _run_interface(self, runtime):
        from pipeline.data.templates import load_template

        tpl = load_template(int(self.inputs.resolution), self.inputs.template)
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
    margin_mm = traits.Float(4.0, usedefault=True)


class _BrainMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class BrainMask(SimpleInterface):
    """Initial brain mask: the template's pulled back, dilated
    (:func:`pipeline.anat.segment.initial_brain_mask`)."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.segment import initial_brain_mask

        mask = initial_brain_mask(
            nib.load(self.inputs.in_file),
            nib.load(self.inputs.template_mask),
            self.inputs.inverse_transform,
            self.inputs.margin_mm,
        )
        self._results["out_file"] = str(save_image(mask, _out(runtime, "initial_mask.nii.gz")))
        return runtime


class _TissuesInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    mask = File(exists=True, mandatory=True, desc="initial brain mask")
    gm = File(exists=True, mandatory=True, desc="template GM prior")
    wm = File(exists=True, mandatory=True, desc="template WM prior")
    csf = File(exists=True, mandatory=True, desc="template CSF prior")
    inverse_transform = File(exists=True, mandatory=True)
    method = traits.Enum("atropos", "priors", usedefault=True)
    prior_weight = traits.Float(0.1, usedefault=True)


class _TissuesOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="GM, WM, CSF probability maps (T1w space)")
    out_mask = File(exists=True, desc="brain mask refined with the subject's segmentation")
    out_dseg = File(exists=True, desc="hard labels: 1 GM, 2 WM, 3 CSF")
    out_report = File(exists=True, desc="JSON: method, prior weight, failure, volumes")


class TissueMaps(SimpleInterface):
    """Subject segmentation and refined brain mask (:func:`pipeline.anat.segment.segment_subject`)."""

    input_spec = _TissuesInputSpec
    output_spec = _TissuesOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.segment import TISSUES, segment_subject

        priors = {k: nib.load(getattr(self.inputs, k.lower())) for k in TISSUES}
        mask, maps, dseg, record = segment_subject(
            nib.load(self.inputs.in_file),
            nib.load(self.inputs.mask),
            priors,
            self.inputs.inverse_transform,
            self.inputs.method,
            self.inputs.prior_weight,
        )
        self._results["out_files"] = [
            str(save_image(maps[k], _out(runtime, f"label-{k}_probseg.nii.gz"))) for k in TISSUES
        ]
        self._results["out_mask"] = str(save_image(mask, _out(runtime, "brain_mask.nii.gz")))
        self._results["out_dseg"] = str(save_image(dseg, _out(runtime, "dseg.nii.gz")))
        self._results["out_report"] = str(write_json(_out(runtime, "segmentation.json"), record))
        return runtime


class _ModulateInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="template-space GM probability")
    forward_transform = File(exists=True, mandatory=True, desc="template points -> T1w points")


class _ModulateOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class ModulateByJacobian(SimpleInterface):
    """Jacobian-modulated map (:func:`pipeline.anat.qc.modulate`)."""

    input_spec = _ModulateInputSpec
    output_spec = _ModulateOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.qc import modulate

        img = modulate(nib.load(self.inputs.in_file), self.inputs.forward_transform)
        self._results["out_file"] = str(save_image(img, _out(runtime, "gm_modulated.nii.gz")))
        return runtime


class _ClassesInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    mask = File(exists=True, mandatory=True, desc="brain mask")


class _ClassesOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="WM and GM classes (0/1 float32)")


class IntensityClasses(SimpleInterface):
    """The subject's WM and GM from its intensities alone
    (:func:`pipeline.anat.segment.intensity_classes`), for registration QC."""

    input_spec = _ClassesInputSpec
    output_spec = _ClassesOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.segment import intensity_classes

        t1w = nib.load(self.inputs.in_file)
        classes = intensity_classes(t1w, nib.load(self.inputs.mask))
        self._results["out_files"] = [
            str(
                save_image(
                    nib.Nifti1Image(classes[key].astype(np.float32), t1w.affine),
                    _out(runtime, f"class_{key}.nii.gz"),
                )
            )
            for key in ("WM", "GM")
        ]
        return runtime


# --------------------------------------------------------------------------- QC
class _QCInputSpec(BaseInterfaceInputSpec):
    template = File(exists=True, mandatory=True)
    template_mask = File(exists=True, mandatory=True)
    template_wm = File(exists=True, mandatory=True)
    template_gm = File(exists=True, mandatory=True)
    warped_t1w = File(exists=True, mandatory=True)
    warped_wm = File(
        exists=True, mandatory=True, desc="subject's own WM class on the template grid"
    )
    warped_gm = File(
        exists=True, mandatory=True, desc="subject's own GM class on the template grid"
    )
    forward_transform = File(exists=True, mandatory=True)
    segmentation_report = File(exists=True, desc="JSON of the tissue step (method, failure)")
    options = traits.Dict(desc="the qc_* AnatOptions")
    subject = traits.Str(mandatory=True)


class _QCOutputSpec(TraitedSpec):
    out_tsv = File(exists=True)
    out_json = File(exists=True)
    passed = traits.Bool()
    failures = traits.List(traits.Str)


class RegistrationQC(SimpleInterface):
    """Registration QC record and verdict (:func:`pipeline.anat.qc.qc_record`); never raises on failure."""

    input_spec = _QCInputSpec
    output_spec = _QCOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat.options import AnatOptions
        from pipeline.anat.qc import qc_record, qc_table, registration_qc

        options = (
            AnatOptions(**self.inputs.options) if isdefined(self.inputs.options) else AnatOptions()
        )
        metrics = registration_qc(
            nib.load(self.inputs.template),
            nib.load(self.inputs.template_mask),
            nib.load(self.inputs.warped_t1w),
            warped_wm=nib.load(self.inputs.warped_wm),
            template_wm=nib.load(self.inputs.template_wm),
            forward=self.inputs.forward_transform,
            warped_gm=nib.load(self.inputs.warped_gm),
            template_gm=nib.load(self.inputs.template_gm),
        )
        segmentation = (
            json.loads(Path(self.inputs.segmentation_report).read_text())
            if isdefined(self.inputs.segmentation_report)
            else None
        )
        record = qc_record(metrics, options, self.inputs.subject, segmentation)
        self._results["out_tsv"] = str(write_text(_out(runtime, "qc.tsv"), qc_table(record)))
        self._results["out_json"] = str(write_json(_out(runtime, "qc.json"), record))
        self._results["passed"] = record["passed"]
        self._results["failures"] = record["failures"]
        return runtime
