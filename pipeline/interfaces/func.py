"""Thin Nipype interfaces around :mod:`pipeline.func` (one library call each).

Each interface loads its inputs, calls the library and writes its results into the node's working
directory. Only the sinks of :mod:`pipeline.interfaces.bids` write into the output dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from pipeline.io import save_image, write_json, write_text


def _out(runtime, name: str) -> Path:
    return Path(runtime.cwd) / name


def _image(data: np.ndarray, affine: np.ndarray, tr: float | None = None) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if tr is not None and img.ndim == 4:
        img.header.set_zooms((*img.header.get_zooms()[:3], tr))
    return img


def _load_meta(path: str) -> dict:
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- validation
class _ValidateBoldInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="raw BOLD run")
    metadata = traits.Dict(mandatory=True, desc="merged sidecar metadata")
    min_volumes = traits.Int(10, usedefault=True)
    dummy_scans = traits.Either(None, traits.Int, usedefault=True, desc="None: detect")
    drop_nonsteady = traits.Bool(True, usedefault=True)


class _ValidateBoldOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="float32 BOLD (non-steady-state volumes dropped if asked)")
    out_meta = File(exists=True, desc="JSON: TR, slice times, slice axis, non-steady volumes")
    n_nonsteady = traits.Int(desc="non-steady-state volumes detected")
    n_flagged = traits.Int(desc="non-steady-state volumes still in out_file")


class ValidateBold(SimpleInterface):
    """Validate a BOLD run, detect (and drop) its non-steady-state volumes."""

    input_spec = _ValidateBoldInputSpec
    output_spec = _ValidateBoldOutputSpec

    def _run_interface(self, runtime):
        from pipeline.errors import ImageError
        from pipeline.func.bold import check_bold, detect_nonsteady, slice_axis

        meta = dict(self.inputs.metadata)
        img, tr = check_bold(self.inputs.in_file, meta, min_volumes=1)
        data = np.asarray(img.dataobj, dtype=np.float32)
        dummies = self.inputs.dummy_scans
        n_dummy = detect_nonsteady(data) if dummies is None else int(dummies)
        keep = data.shape[3] - n_dummy
        if keep < self.inputs.min_volumes:
            raise ImageError(
                f"BOLD run has {keep} steady-state volumes after {n_dummy} non-steady-state ones, "
                f"at least {self.inputs.min_volumes} are needed",
                self.inputs.in_file,
            )
        drop = n_dummy if self.inputs.drop_nonsteady else 0
        out = _image(data[..., drop:], img.affine, tr)
        out.header.set_dim_info(slice=slice_axis(img, meta))
        self._results["out_file"] = str(save_image(out, _out(runtime, "bold_valid.nii")))
        record = {
            "RepetitionTime": tr,
            "SliceTiming": meta.get("SliceTiming"),
            "SliceAxis": slice_axis(img, meta),
            "SliceEncodingDirection": meta.get("SliceEncodingDirection"),
            "NonSteadyStateVolumes": n_dummy,
            "NumberOfVolumesDiscardedByUser": drop,
            "VolumesIn": int(data.shape[3]),
        }
        self._results["out_meta"] = str(write_json(_out(runtime, "bold_meta.json"), record))
        self._results["n_nonsteady"] = n_dummy
        self._results["n_flagged"] = n_dummy - drop
        return runtime


# --------------------------------------------------------------------------- head motion
class _HeadMotionInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    n_flagged = traits.Int(0, usedefault=True, desc="leading volumes to leave out of the reference")
    method = traits.Enum("gauss-newton", "ants", usedefault=True)
    passes = traits.Int(2, usedefault=True)


class _HeadMotionOutputSpec(TraitedSpec):
    params = File(exists=True, desc="TSV of the six motion parameters per volume")
    matrices = File(exists=True, desc=".npy (T, 4, 4): reference -> volume point maps (RAS)")
    itk = File(
        exists=True, desc="the same as one ITK text file of affines (LPS), fMRIPrep's format"
    )
    reference = File(exists=True, desc="BOLD reference (mean of realigned volumes)")
    centre = traits.List(traits.Float, desc="rotation centre of the parameters (mm, RAS)")


class HeadMotion(SimpleInterface):
    """Rigid head-motion estimation (:func:`pipeline.func.motion.estimate_motion`)."""

    input_spec = _HeadMotionInputSpec
    output_spec = _HeadMotionOutputSpec

    def _run_interface(self, runtime):
        from pipeline.antsio import write_itk_affines
        from pipeline.func.motion import estimate_motion, matrices_to_frame, register_rigid

        img = nib.load(self.inputs.in_file)
        data = np.asarray(img.dataobj, dtype=np.float32)
        skip = self.inputs.n_flagged
        est = estimate_motion(
            data[..., skip:], img.affine, method=self.inputs.method, n_passes=self.inputs.passes
        )
        matrices = np.concatenate([np.tile(np.eye(4), (skip, 1, 1)), est.matrices])
        for t in range(skip):  # flagged volumes: registered to the reference, not used for it
            matrices[t] = register_rigid(
                est.reference, data[..., t], img.affine, init=matrices[skip]
            )
        np.save(_out(runtime, "hmc.npy"), matrices)
        self._results["matrices"] = str(_out(runtime, "hmc.npy"))
        self._results["itk"] = str(write_itk_affines(matrices, _out(runtime, "hmc_itk.txt")))
        self._results["params"] = str(
            write_text(
                _out(runtime, "motion.tsv"),
                matrices_to_frame(matrices, est.centre).to_csv(
                    sep="\t", index=False, float_format="%.8g"
                ),
            )
        )
        self._results["centre"] = [float(v) for v in est.centre]
        ref = _image(est.reference.astype(np.float32), img.affine)
        self._results["reference"] = str(save_image(ref, _out(runtime, "boldref.nii.gz")))
        return runtime


# --------------------------------------------------------------------------- slice timing
class _STCInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    meta = File(exists=True, mandatory=True, desc="ValidateBold's JSON")
    enabled = traits.Bool(True, usedefault=True)
    ref = traits.Float(0.5, usedefault=True)
    n_skip = traits.Int(
        0, usedefault=True, desc="leading non-steady-state volumes left as they are"
    )


class _STCOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    applied = traits.Bool()
    out_meta = File(
        exists=True, desc="run metadata for the outputs (SliceTimingCorrected, StartTime)"
    )


class SliceTimingCorrection(SimpleInterface):
    """Slice-timing correction; passes the run through (logged) when it cannot be done."""

    input_spec = _STCInputSpec
    output_spec = _STCOutputSpec

    def _run_interface(self, runtime):
        import logging

        from pipeline.func.slicetiming import reference_time, slice_time_correct

        log = logging.getLogger("pipeline.func")
        meta = _load_meta(self.inputs.meta)
        img = nib.load(self.inputs.in_file)
        times = meta.get("SliceTiming")
        reason = None
        if not self.inputs.enabled:
            reason = "disabled in the configuration"
        elif not times:
            reason = "no SliceTiming in the sidecar"
        elif img.shape[3] < 5:
            reason = f"only {img.shape[3]} volumes"
        elif len(times) != img.shape[meta["SliceAxis"]]:
            reason = (
                f"SliceTiming has {len(times)} entries for {img.shape[meta['SliceAxis']]} slices"
            )
        elif np.ptp(times) == 0:
            reason = "all slices acquired at the same time"
        record = {
            k: v for k, v in meta.items() if k not in ("SliceAxis", "SliceTiming") and v is not None
        }
        if reason:
            log.info("slice-timing correction skipped: %s", reason)
            self._results["out_file"] = self.inputs.in_file
            self._results["applied"] = False
            record.update({"SliceTimingCorrected": False, "SliceTimingSkipped": reason})
            if times:
                record["SliceTiming"] = times
            self._results["out_meta"] = str(write_json(_out(runtime, "run_meta.json"), record))
            return runtime
        # as 3dTshift -ignore in fMRIPrep: the bright non-steady-state volumes would ring through
        # the whole run in a Fourier-domain shift
        data = np.asarray(img.dataobj, dtype=np.float32).copy()
        skip = int(self.inputs.n_skip)
        direction = meta.get("SliceEncodingDirection")
        data[..., skip:] = slice_time_correct(
            data[..., skip:],
            times,
            meta["RepetitionTime"],
            axis=None if direction else meta["SliceAxis"],
            ref=self.inputs.ref,
            direction=direction,
        )
        out = _image(data, img.affine, meta["RepetitionTime"])
        self._results["out_file"] = str(save_image(out, _out(runtime, "bold_stc.nii")))
        self._results["applied"] = True
        record.update(
            {"SliceTimingCorrected": True, "StartTime": reference_time(times, self.inputs.ref)}
        )
        self._results["out_meta"] = str(write_json(_out(runtime, "run_meta.json"), record))
        return runtime


# --------------------------------------------------------------------------- coregistration
class _CoregInputSpec(BaseInterfaceInputSpec):
    bold_ref = File(exists=True, mandatory=True)
    t1w = File(exists=True, mandatory=True)
    t1w_mask = File(exists=True, mandatory=True)
    iterations = traits.List(traits.Int, [100, 50], usedefault=True)
    seed = traits.Int(0, usedefault=True)
    itk_threads = traits.Int(
        1, usedefault=True, desc="ITK threads (0: this process's default, not bit-reproducible)"
    )


class _CoregOutputSpec(TraitedSpec):
    matrix = File(exists=True, desc=".npy 4x4: T1w -> BOLD reference points (RAS)")
    itk = File(exists=True, desc="ITK text transform (from-boldref to-T1w, ANTs convention)")
    out_report = File(exists=True, desc="JSON QC record")


class Coregister(SimpleInterface):
    """BOLD→T1w rigid MI registration (:func:`pipeline.func.coreg.coregister`)."""

    input_spec = _CoregInputSpec
    output_spec = _CoregOutputSpec

    def _run_interface(self, runtime):
        from pipeline._itk_child import call_with_itk_threads
        from pipeline.antsio import write_affine
        from pipeline.func.coreg import coregister

        args = (
            nib.load(self.inputs.bold_ref),
            nib.load(self.inputs.t1w),
            nib.load(self.inputs.t1w_mask),
        )
        kwargs = {"iterations": list(self.inputs.iterations), "seed": self.inputs.seed}
        pinned = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
        if self.inputs.itk_threads > 0 and pinned != str(self.inputs.itk_threads):
            # this process's ITK may run another thread count: a child pinned to the count
            # gives the same bits for a given seed, whatever else runs
            result = call_with_itk_threads(
                self.inputs.itk_threads, "pipeline.func.coreg:coregister", *args, **kwargs
            )
        else:
            result = coregister(*args, **kwargs)
        np.save(_out(runtime, "coreg.npy"), result.matrix)
        self._results["matrix"] = str(_out(runtime, "coreg.npy"))
        self._results["itk"] = str(write_affine(result.matrix, _out(runtime, "coreg.txt")))
        self._results["out_report"] = str(write_json(_out(runtime, "coreg.json"), result.as_dict()))
        return runtime


# --------------------------------------------------------------------------- resampling
class _ResampleInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="(slice-timing-corrected) BOLD")
    motion = File(exists=True, mandatory=True)
    coreg = File(exists=True, mandatory=True)
    anat2std_xfm = traits.List(File(exists=True), mandatory=True)
    std_mask = File(exists=True, mandatory=True, desc="template-space brain mask (anat)")
    resolution = traits.Float(3.0, usedefault=True)


class _ResampleOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    out_mask = File(exists=True, desc="BOLD brain mask on the output grid")
    out_ref = File(exists=True, desc="temporal mean on the output grid")


class OneShotResample(SimpleInterface):
    """Motion + coregistration + T1w→template in one interpolation (:mod:`pipeline.func.resample`)."""

    input_spec = _ResampleInputSpec
    output_spec = _ResampleOutputSpec

    def _run_interface(self, runtime):
        from scipy import ndimage

        from pipeline.func.motion import foreground
        from pipeline.func.resample import one_shot_resample, resample_to_grid, template_grid

        std_mask = nib.load(self.inputs.std_mask)  # on the run's template grid
        grid = template_grid(self.inputs.resolution, reference=std_mask)
        brain = resample_to_grid(std_mask, grid).get_fdata() > 0.5
        select = ndimage.binary_dilation(brain, iterations=2)
        bold = nib.load(self.inputs.in_file)
        img, coverage = one_shot_resample(
            bold,
            grid,
            motion=np.load(self.inputs.motion),
            coreg=np.load(self.inputs.coreg),
            anat_to_template=list(self.inputs.anat2std_xfm),
            mask=select,
        )
        data = img.get_fdata(dtype=np.float32)
        mean = data.mean(axis=3)
        signal = foreground(mean, fraction=0.1) if mean.max() > 0 else np.zeros_like(brain)
        mask = brain & coverage & signal
        tr = float(bold.header.get_zooms()[3])
        self._results["out_file"] = str(
            save_image(
                _image(data * mask[..., None], grid.affine, tr), _out(runtime, "bold_std.nii")
            )
        )
        self._results["out_mask"] = str(
            save_image(_image(mask.astype(np.uint8), grid.affine), _out(runtime, "mask_std.nii.gz"))
        )
        self._results["out_ref"] = str(
            save_image(_image(mean * mask, grid.affine), _out(runtime, "boldref_std.nii.gz"))
        )
        return runtime


# --------------------------------------------------------------------------- confounds
class _ConfoundsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="template-space BOLD")
    mask = File(exists=True, mandatory=True)
    wm = File(exists=True, mandatory=True, desc="template-space WM probability")
    csf = File(exists=True, mandatory=True, desc="template-space CSF probability")
    params = File(exists=True, mandatory=True)
    motion_centre = traits.List(traits.Float, desc="rotation centre of the parameters (mm)")
    n_flagged = traits.Int(0, usedefault=True)
    options = traits.Dict(desc="FuncOptions as a dict")


class _ConfoundsOutputSpec(TraitedSpec):
    out_tsv = File(exists=True)
    out_json = File(exists=True)


def _tissue_masks(mask: np.ndarray, wm_img: str, csf_img: str, grid) -> tuple[np.ndarray, ...]:
    """WM and CSF voxels of the mask: probability ≥ 0.9 (relaxed to 0.7/0.5 when too few)."""
    from pipeline.func.resample import resample_to_grid

    wm = resample_to_grid(nib.load(wm_img), grid).get_fdata()[mask]
    csf = resample_to_grid(nib.load(csf_img), grid).get_fdata()[mask]
    out = []
    for prob in (wm, csf):
        for thr in (0.9, 0.7, 0.5):
            sel = prob >= thr
            if sel.sum() >= 10:
                break
        out.append(sel)
    return tuple(out)


class Confounds(SimpleInterface):
    """fMRIPrep-style confounds (:func:`pipeline.func.confounds.compute_confounds`)."""

    input_spec = _ConfoundsInputSpec
    output_spec = _ConfoundsOutputSpec

    def _run_interface(self, runtime):
        from pipeline.func.confounds import compute_confounds, write_confounds_tsv
        from pipeline.func.options import FuncOptions

        opts = (
            FuncOptions(**self.inputs.options) if isdefined(self.inputs.options) else FuncOptions()
        )
        img = nib.load(self.inputs.in_file)
        mask_img = nib.load(self.inputs.mask)
        mask = np.asarray(mask_img.dataobj) > 0
        voxels = img.get_fdata(dtype=np.float32)[mask]
        wm, csf = _tissue_masks(mask, self.inputs.wm, self.inputs.csf, mask_img)
        table, meta = compute_confounds(
            voxels,
            pd.read_csv(self.inputs.params, sep="\t"),
            float(img.header.get_zooms()[3]),
            wm=wm,
            csf=csf,
            n_nonsteady=self.inputs.n_flagged,
            fd_threshold=opts.fd_threshold,
            dvars_threshold=opts.dvars_threshold,
            highpass_period=opts.highpass_period,
            fd_radius_mm=opts.fd_radius_mm,
            compcor_criterion=opts.compcor_variance,
            motion_centre_mm=(
                self.inputs.motion_centre if isdefined(self.inputs.motion_centre) else None
            ),
        )
        self._results["out_tsv"] = str(
            write_text(_out(runtime, "confounds.tsv"), write_confounds_tsv(table))
        )
        self._results["out_json"] = str(write_json(_out(runtime, "confounds.json"), meta))
        return runtime


# --------------------------------------------------------------------------- temporal gauge
class _GaugeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    method = traits.Enum("grand_mean", "psc", "zscore", "none", usedefault=True)
    n_drop = traits.Int(0, usedefault=True, desc="leading non-steady-state volumes to remove")


class _GaugeOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    factor = traits.Float()


class TemporalGauge(SimpleInterface):
    """Grand-mean scaling / PSC / z-score (:func:`pipeline.func.denoise.temporal_gauge`) of the
    steady-state volumes (the leading ``n_drop`` are removed first)."""

    input_spec = _GaugeInputSpec
    output_spec = _GaugeOutputSpec

    def _run_interface(self, runtime):
        from pipeline.func.denoise import temporal_gauge

        img = nib.load(self.inputs.in_file)
        mask = np.asarray(nib.load(self.inputs.mask).dataobj) > 0
        data = img.get_fdata(dtype=np.float32)[..., int(self.inputs.n_drop) :]
        scaled, factor = temporal_gauge(data[mask], self.inputs.method)
        out = np.zeros_like(data)
        out[mask] = scaled
        tr = float(img.header.get_zooms()[3])
        self._results["out_file"] = str(
            save_image(_image(out, img.affine, tr), _out(runtime, "bold_scaled.nii"))
        )
        self._results["factor"] = float(factor)
        return runtime


# --------------------------------------------------------------------------- ROIs and connectivity
class _RoiInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="template-space, scaled BOLD")
    mask = File(exists=True, mandatory=True)
    confounds = File(exists=True, mandatory=True)
    options = traits.Dict(desc="FuncOptions as a dict")
    n_drop = traits.Int(
        0, usedefault=True, desc="leading confound rows whose volumes in_file no longer has"
    )


class _RoiOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True))
    entities = traits.List(
        traits.Dict, desc="declared output ('output') and its variable entities, per file"
    )
    denoised_bold = File(desc="denoised 4-D BOLD of the first strategy (when asked)")


class RoiConnectivity(SimpleInterface):
    """Denoised ROI series, connectivity matrices and spectral features for every atlas × strategy.

    Series are extracted once per atlas from the scaled BOLD and cleaned per strategy (cleaning is
    linear, so it commutes with the ROI average).
    """

    input_spec = _RoiInputSpec
    output_spec = _RoiOutputSpec

    def _run_interface(self, runtime):
        from pipeline.func.features import roi_features
        from pipeline.func.options import FuncOptions

        opts = (
            FuncOptions(**self.inputs.options) if isdefined(self.inputs.options) else FuncOptions()
        )
        conf = pd.read_csv(self.inputs.confounds, sep="\t", na_values="n/a")
        tables, denoised = roi_features(
            nib.load(self.inputs.in_file),
            nib.load(self.inputs.mask),
            conf,
            opts,
            n_drop=int(self.inputs.n_drop),
        )
        self._results["out_files"] = [
            str(write_text(_out(runtime, t.name), t.text)) for t in tables
        ]
        self._results["entities"] = [t.entities for t in tables]
        if denoised is not None:
            self._results["denoised_bold"] = str(
                save_image(denoised, _out(runtime, "bold_denoised.nii"))
            )
        return runtime


# --------------------------------------------------------------------------- QC
class _BoldQCInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="template-space BOLD (before the gauge)")
    mask = File(exists=True, mandatory=True)
    confounds = File(exists=True, mandatory=True)
    gm = File(exists=True, mandatory=True)
    wm = File(exists=True, mandatory=True)
    csf = File(exists=True, mandatory=True)
    coreg_report = File(exists=True, mandatory=True)
    meta = File(exists=True, mandatory=True, desc="ValidateBold's JSON")
    stc_applied = traits.Bool(False, usedefault=True)
    subject = traits.Str(mandatory=True)
    n_drop = traits.Int(0, usedefault=True, desc="leading non-steady-state volumes")


class _BoldQCOutputSpec(TraitedSpec):
    tsnr = File(exists=True)
    carpet = File(exists=True)
    out_tsv = File(exists=True)
    out_json = File(exists=True)


class BoldQC(SimpleInterface):
    """tSNR map, carpet-plot data and the QC record (:mod:`pipeline.func.qc`)."""

    input_spec = _BoldQCInputSpec
    output_spec = _BoldQCOutputSpec

    def _run_interface(self, runtime):
        from pipeline.func.qc import carpet, format_tsv, qc_summary, tsnr
        from pipeline.func.resample import resample_to_grid

        img = nib.load(self.inputs.in_file)
        mask_img = nib.load(self.inputs.mask)
        mask = np.asarray(mask_img.dataobj) > 0
        # tSNR and carpet of the steady-state volumes
        voxels = img.get_fdata(dtype=np.float32)[..., int(self.inputs.n_drop) :][mask]
        snr = tsnr(voxels)
        snr_map = np.zeros(mask.shape, np.float32)
        snr_map[mask] = snr
        self._results["tsnr"] = str(
            save_image(_image(snr_map, img.affine), _out(runtime, "tsnr.nii.gz"))
        )
        probs = np.stack(
            [
                resample_to_grid(nib.load(getattr(self.inputs, k)), mask_img).get_fdata()[mask]
                for k in ("gm", "wm", "csf")
            ]
        )
        tissue = np.array(["gm", "wm", "csf"])[np.argmax(probs, axis=0)]
        self._results["carpet"] = str(
            write_text(
                _out(runtime, "carpet.tsv"),
                format_tsv(carpet(voxels, tissue), digits=4),
            )
        )
        conf = pd.read_csv(self.inputs.confounds, sep="\t", na_values="n/a")
        meta = _load_meta(self.inputs.meta)
        coreg = _load_meta(self.inputs.coreg_report)
        record = {
            "subject": self.inputs.subject,
            **qc_summary(
                conf,
                snr,
                meta["NonSteadyStateVolumes"],
                {
                    "coreg_mi": coreg["coreg_mi"],
                    "coreg_mi_before": coreg["coreg_mi_before"],
                    "coreg_dice": coreg["coreg_dice"],
                    "coreg_accepted": coreg["coreg_accepted"],
                    "slice_timing_corrected": bool(self.inputs.stc_applied),
                    "mask_voxels": int(mask.sum()),
                },
            ),
        }
        keys = [k for k in record if k != "subject"]
        header = "\t".join(["participant_id", *keys])
        row = "\t".join([f"sub-{self.inputs.subject}", *(f"{record[k]}" for k in keys)])
        self._results["out_tsv"] = str(
            write_text(_out(runtime, "qc.tsv"), header + "\n" + row + "\n")
        )
        self._results["out_json"] = str(write_json(_out(runtime, "qc.json"), record))
        return runtime
